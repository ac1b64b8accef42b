use super::ModelToolCall;

/// Assembles tool calls from the fragments of a stream: the first fragment of a call carries
/// its id and name, later ones append to its arguments, and `index` says which call a fragment
/// belongs to.
#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: Vec<ModelToolCall>,
}

impl ToolCallAssembler {
    pub fn push(
        &mut self,
        index: usize,
        id: Option<&str>,
        name: Option<&str>,
        arguments: Option<&str>,
    ) {
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
    fn fragments_are_joined_per_index() {
        let mut calls = ToolCallAssembler::default();
        calls.push(0, Some("call_a"), Some("get_weather"), Some("{\"ci"));
        calls.push(1, Some("call_b"), Some("get_time"), None);
        calls.push(0, None, None, Some("ty\": \"Lisbon\"}"));
        calls.push(1, None, None, Some("{}"));
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
