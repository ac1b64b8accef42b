//! Tool calls put together from the fragments a model streams.

use super::ModelToolCall;

/// Assembles tool calls from the fragments of a stream: the first fragment of a call carries
/// its id and name, later ones append to its arguments, and `index` says which call a fragment
/// belongs to.
#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: Vec<ModelToolCall>,
}

/// More tool calls in one reply than any model makes: a larger index is a malformed reply, not
/// an allocation.
pub const MAX_TOOL_CALLS: usize = 128;

/// A fragment whose index is beyond [`MAX_TOOL_CALLS`].
#[derive(Debug, PartialEq, Eq)]
pub struct IndexOutOfRange(pub usize);

impl ToolCallAssembler {
    pub fn push(
        &mut self,
        index: usize,
        id: Option<&str>,
        name: Option<&str>,
        arguments: Option<&str>,
    ) -> Result<(), IndexOutOfRange> {
        if index >= MAX_TOOL_CALLS {
            return Err(IndexOutOfRange(index));
        }
        if index >= self.calls.len() {
            self.calls.resize_with(index + 1, || ModelToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        let call = &mut self.calls[index];
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            id.clone_into(&mut call.id);
        }
        if let Some(name) = name {
            call.name.push_str(name);
        }
        if let Some(arguments) = arguments {
            call.arguments.push_str(arguments);
        }
        Ok(())
    }

    /// The assembled calls in index order, skipping indices that never received a fragment.
    pub fn finish(self) -> Vec<ModelToolCall> {
        self.calls
            .into_iter()
            .filter(|call| !call.name.is_empty() || !call.id.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_beyond_any_real_reply_is_refused_without_allocating() {
        let mut calls = ToolCallAssembler::default();
        assert_eq!(
            calls.push(usize::MAX, Some("x"), None, None),
            Err(IndexOutOfRange(usize::MAX))
        );
        assert!(calls.finish().is_empty());
    }

    #[test]
    fn fragments_are_joined_per_index() {
        let mut calls = ToolCallAssembler::default();
        for (index, id, name, arguments) in [
            (0, Some("call_a"), Some("get_weather"), Some("{\"ci")),
            (1, Some("call_b"), Some("get_time"), None),
            (0, None, None, Some("ty\": \"Lisbon\"}")),
            (1, None, None, Some("{}")),
        ] {
            assert_eq!(calls.push(index, id, name, arguments), Ok(()));
        }
        assert_eq!(
            calls.finish(),
            vec![
                ModelToolCall {
                    id: "call_a".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\": \"Lisbon\"}".into()
                },
                ModelToolCall {
                    id: "call_b".into(),
                    name: "get_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
    }
}
