//! The tools a reply may call: the service's own, and those the client defines and runs,
//! checked before anything is written.

use std::{collections::HashSet, sync::Arc};

use super::service::{ClientTool, Turns};
use crate::{chat::ChatError, domain::ToolSpec, tools::Catalog};

/// The tools a reply may call: the service's, and the client's.
pub(super) struct Offer {
    pub catalog: Arc<Catalog>,
    pub client: Vec<ToolSpec>,
}

impl Offer {
    /// Every tool offered, the service's first.
    pub fn specs(&self) -> Arc<[ToolSpec]> {
        if self.client.is_empty() {
            return self.catalog.specs().clone();
        }
        self.catalog
            .specs()
            .iter()
            .chain(&self.client)
            .cloned()
            .collect()
    }
}

impl Turns {
    /// The tools on offer now with the client's own, which must be valid, at most
    /// [`ToolSpec::MAX_CLIENT_TOOLS`], and named unlike each other and the service's.
    pub(super) fn offer(&self, tools: Vec<ClientTool>) -> Result<Offer, ChatError> {
        let catalog = self.runtime.toolbox.offered();
        if tools.len() > ToolSpec::MAX_CLIENT_TOOLS {
            return Err(ChatError::invalid(
                "tools",
                format!("at most {} tools may be given", ToolSpec::MAX_CLIENT_TOOLS),
            ));
        }
        let bytes: usize = tools
            .iter()
            .map(|t| t.name.len() + t.description.len() + t.parameters_json.len())
            .sum();
        if bytes > ToolSpec::MAX_CLIENT_TOOLS_BYTES {
            return Err(ChatError::invalid(
                "tools",
                format!(
                    "the tools take {bytes} bytes together; at most {} are allowed",
                    ToolSpec::MAX_CLIENT_TOOLS_BYTES
                ),
            ));
        }
        let taken: HashSet<&str> = catalog.specs().iter().map(|s| s.name.as_str()).collect();
        let mut names = HashSet::new();
        let mut client = Vec::with_capacity(tools.len());
        for (index, tool) in tools.into_iter().enumerate() {
            let spec = ToolSpec::parse_client(tool.name, tool.description, &tool.parameters_json)
                .map_err(|e| ChatError::invalid("tools", format!("tools[{index}]: {e}")))?;
            if taken.contains(spec.name.as_str()) {
                return Err(ChatError::invalid(
                    "tools",
                    format!(
                        "tools[{index}]: the service offers a tool named {:?} itself",
                        spec.name
                    ),
                ));
            }
            if !names.insert(spec.name.clone()) {
                return Err(ChatError::invalid(
                    "tools",
                    format!("tools[{index}]: {:?} is defined twice", spec.name),
                ));
            }
            client.push(spec);
        }
        Ok(Offer { catalog, client })
    }
}
