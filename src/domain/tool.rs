//! Tools offered to the model, tool calls and their outcomes.

/// A tool the model may call, as it is offered: its name, what it does, and a JSON Schema of its
/// arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    /// Unique among the tools offered with it.
    pub name: String,
    pub description: String,
    /// A JSON Schema object.
    pub parameters: serde_json::Value,
}

/// Why a client's tool definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToolDefinition {
    #[error(
        "a name is 1 to {} ASCII letters, digits, '_' or '-'",
        ToolSpec::MAX_NAME_CHARS
    )]
    Name,
    #[error(
        "a description is at most {} characters",
        ToolSpec::MAX_DESCRIPTION_CHARS
    )]
    Description,
    #[error(
        "parameters_json must be a JSON object (a JSON Schema) of at most {} bytes",
        ToolSpec::MAX_PARAMETERS_BYTES
    )]
    Parameters,
}

impl ToolSpec {
    /// What models accept as a function's name.
    pub const MAX_NAME_CHARS: usize = 64;
    pub const MAX_DESCRIPTION_CHARS: usize = 4096;
    pub const MAX_PARAMETERS_BYTES: usize = 64 * 1024;
    /// How many tools a client may define for one request...
    pub const MAX_CLIENT_TOOLS: usize = 64;
    /// ...and how many bytes of names, descriptions and parameters they may take together.
    pub const MAX_CLIENT_TOOLS_BYTES: usize = 128 * 1024;

    /// A tool the client defines. Empty parameters mean none.
    pub fn parse_client(
        name: String,
        description: String,
        parameters_json: &str,
    ) -> Result<Self, InvalidToolDefinition> {
        let valid_name = !name.is_empty()
            && name.len() <= Self::MAX_NAME_CHARS
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(InvalidToolDefinition::Name);
        }
        if description.chars().count() > Self::MAX_DESCRIPTION_CHARS {
            return Err(InvalidToolDefinition::Description);
        }
        if parameters_json.len() > Self::MAX_PARAMETERS_BYTES {
            return Err(InvalidToolDefinition::Parameters);
        }
        let parameters = match parameters_json.trim() {
            "" => serde_json::json!({"type": "object", "properties": {}}),
            text => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(object @ serde_json::Value::Object(_)) => object,
                _ => return Err(InvalidToolDefinition::Parameters),
            },
        };
        Ok(Self {
            name,
            description,
            parameters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_definitions_are_checked_as_models_need_them() {
        let tool = ToolSpec::parse_client("get_time".into(), "Now".into(), "")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tool.parameters["type"], "object");
        let parse = |name: &str, parameters: &str| {
            ToolSpec::parse_client(name.to_owned(), String::new(), parameters).map(|_| ())
        };
        assert_eq!(parse("", ""), Err(InvalidToolDefinition::Name));
        assert_eq!(parse("two words", ""), Err(InvalidToolDefinition::Name));
        assert_eq!(parse(&"x".repeat(65), ""), Err(InvalidToolDefinition::Name));
        assert_eq!(parse("x", "[1]"), Err(InvalidToolDefinition::Parameters));
        assert_eq!(parse("x", "{"), Err(InvalidToolDefinition::Parameters));
        assert_eq!(parse("x", r#"{"type": "object"}"#), Ok(()));
        assert_eq!(
            ToolSpec::parse_client("x".into(), "é".repeat(4097), "").map(|_| ()),
            Err(InvalidToolDefinition::Description)
        );
    }
}
