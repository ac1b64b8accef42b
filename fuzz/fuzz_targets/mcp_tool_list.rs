//! The tool lists of several MCP servers (a JSON array of `tools/list` results), whatever they
//! hold: every tool offered has a name models accept, unique among those offered, and routes
//! to a tool its server listed; a description and a schema within a client tool's limits; and
//! no server offers more than its share.
#![no_main]

use chat_service::{
    domain::ToolSpec,
    tools::{Catalog, MAX_TOOLS_PER_SERVER, is_model_name, listed_tools},
};
use libfuzzer_sys::fuzz_target;
use rmcp::model::ListToolsResult;

fuzz_target!(|data: &[u8]| {
    let Ok(lists) = serde_json::from_slice::<Vec<ListToolsResult>>(data) else {
        return;
    };
    let servers: Vec<(String, Option<Vec<_>>)> = lists
        .into_iter()
        .enumerate()
        .map(|(index, list)| (format!("s{index}"), Some(listed_tools(list.tools))))
        .collect();
    let catalog = Catalog::build(&servers);
    let specs = catalog.specs();
    let mut names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), specs.len(), "a name offered twice");
    assert!(specs.len() <= servers.len() * MAX_TOOLS_PER_SERVER);
    for spec in specs.iter() {
        assert!(is_model_name(&spec.name), "{:?} offered", spec.name);
        assert!(catalog.offers(&spec.name));
        assert!(spec.description.chars().count() <= ToolSpec::MAX_DESCRIPTION_CHARS);
        assert!(spec.parameters.is_object());
        let schema = serde_json::to_vec(&spec.parameters).map_or(usize::MAX, |b| b.len());
        assert!(schema <= ToolSpec::MAX_PARAMETERS_BYTES);
        let listed = servers.iter().flat_map(|(server, tools)| {
            tools.iter().flatten().filter(move |tool| {
                spec.name == tool.name || spec.name == format!("{server}__{}", tool.name)
            })
        });
        assert!(
            listed.count() >= 1,
            "{:?} was listed by no server",
            spec.name
        );
    }
});
