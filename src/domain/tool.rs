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
