//! The tools on offer, under names unique across servers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use crate::{domain::ToolSpec, telemetry::metrics::Metrics};

/// The most tools of one server that are offered: each goes into every model request.
pub const MAX_TOOLS_PER_SERVER: usize = 128;

/// Whether models take `name` as a function's name: 1 to 64 ASCII letters, digits, `_`, `-`.
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A tool as one server lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedTool {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// The tools on offer at one moment, and which server serves each.
#[derive(Debug, Default)]
pub struct Catalog {
    specs: Arc<[ToolSpec]>,
    /// The name the model knows a tool by → the server's index and the server's own name for it.
    routes: HashMap<String, (usize, String)>,
}

impl Catalog {
    /// The tools, in the order of the servers in the configuration, then of each server's list.
    pub fn specs(&self) -> &Arc<[ToolSpec]> {
        &self.specs
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Whether a tool of that name is on offer.
    pub fn offers(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The server's index and the server's own name for the tool the model calls `name`.
    pub(super) fn route(&self, name: &str) -> Option<(usize, &str)> {
        self.routes
            .get(name)
            .map(|(server, tool)| (*server, tool.as_str()))
    }

    /// Every server's tools under one namespace (at most [`MAX_TOOLS_PER_SERVER`] of each). A name that two servers both use is given,
    /// on each of them, as `<server>__<tool>`, so that no tool hides another and no name
    /// depends on which server answered first.
    pub fn build(servers: &[(String, Option<Vec<ListedTool>>)]) -> Self {
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for (_, tools) in servers {
            for tool in tools.iter().flatten() {
                *uses.entry(tool.name.as_str()).or_default() += 1;
            }
        }
        let mut routes = HashMap::new();
        let mut specs = Vec::new();
        for (index, (server, tools)) in servers.iter().enumerate() {
            for tool in tools.iter().flatten().take(MAX_TOOLS_PER_SERVER) {
                let name = if uses.get(tool.name.as_str()).copied().unwrap_or(0) > 1 {
                    format!("{server}__{}", tool.name)
                } else {
                    tool.name.clone()
                };
                if !is_model_name(&name) {
                    tracing::warn!(server = %server, tool = %name, "a tool whose name models refuse is not offered");
                    continue;
                }
                if routes.contains_key(&name) {
                    // One server listing a name twice: the first wins.
                    continue;
                }
                routes.insert(name.clone(), (index, tool.name.clone()));
                specs.push(ToolSpec {
                    name,
                    description: tool.description.clone(),
                    parameters: tool.parameters.clone(),
                });
            }
        }
        Self {
            specs: specs.into(),
            routes,
        }
    }
}

/// What every server lists now, and the catalog made of it.
pub(super) struct Shared {
    /// Each server's name and tools, `None` while it does not answer.
    lists: Mutex<Vec<(String, Option<Vec<ListedTool>>)>>,
    current: RwLock<Arc<Catalog>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(servers: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            lists: Mutex::new(vec![(String::new(), None); servers]),
            current: RwLock::new(Arc::new(Catalog::default())),
            metrics,
        }
    }

    pub fn current(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Server `index`, called `server`, now lists `tools` (`None`: it stopped answering).
    pub fn update(&self, index: usize, server: &str, tools: Option<Vec<ListedTool>>) {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = lists.get_mut(index) {
            *entry = (server.to_owned(), tools);
        }
        let catalog = Arc::new(Catalog::build(&lists));
        let offered = catalog.specs.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = catalog;
        // Only once the tools are on offer, so that the gauge can be trusted to say they are.
        self.metrics.set_tools_offered(offered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> ListedTool {
        ListedTool {
            name: name.to_owned(),
            description: format!("does {name}"),
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    fn names(catalog: &Catalog) -> Vec<&str> {
        catalog.specs().iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn names_two_servers_share_are_prefixed_on_both() {
        let catalog = Catalog::build(&[
            ("tasks".into(), Some(vec![tool("add"), tool("search")])),
            ("web".into(), Some(vec![tool("search"), tool("fetch")])),
        ]);
        assert_eq!(
            names(&catalog),
            ["add", "tasks__search", "web__search", "fetch"]
        );
        assert_eq!(catalog.route("web__search"), Some((1, "search")));
        assert_eq!(catalog.route("tasks__search"), Some((0, "search")));
        assert_eq!(catalog.route("search"), None);
        assert_eq!(catalog.route("add"), Some((0, "add")));
    }

    #[test]
    fn names_models_refuse_are_not_offered() {
        let long = "x".repeat(60);
        let catalog = Catalog::build(&[
            (
                "tasks".into(),
                Some(vec![tool("a.b"), tool("ok"), tool(&long)]),
            ),
            ("web".into(), Some(vec![tool(&long)])),
        ]);
        assert_eq!(
            names(&catalog),
            ["ok"],
            "tasks__xxx… and web__xxx… are over 64"
        );
    }

    #[test]
    fn a_server_that_does_not_answer_offers_nothing_and_frees_its_names() {
        let catalog = Catalog::build(&[
            ("tasks".into(), Some(vec![tool("search")])),
            ("web".into(), None),
        ]);
        assert_eq!(names(&catalog), ["search"]);
    }

    #[test]
    fn updates_replace_the_current_catalog() {
        let shared = Shared::new(2, Metrics::new());
        assert!(shared.current().is_empty());
        shared.update(1, "web", Some(vec![tool("fetch")]));
        assert_eq!(names(&shared.current()), ["fetch"]);
        shared.update(0, "tasks", Some(vec![tool("fetch")]));
        assert_eq!(names(&shared.current()), ["tasks__fetch", "web__fetch"]);
        shared.update(1, "web", None);
        assert_eq!(names(&shared.current()), ["fetch"]);
    }
}
