//! The layering that src/lib.rs and README.md describe, checked against the sources: every module
//! of the crate may name only the modules below it, so there are no import cycles and a change to
//! an outer layer can never break an inner one.

// A failed expectation is a failed test, reported by panicking like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The 60-line limit (clippy.toml) is for the service's own code: a test, or a fake that
// plays a protocol, reads best whole.
#![allow(clippy::too_many_lines)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Each top-level module and the modules it may use. `config` is the outermost: it builds every
/// layer's settings, so nothing may use it (but the binary, which is not part of the library).
const ALLOWED: [(&str, &[&str]); 11] = [
    (
        "config",
        &[
            "server",
            "api",
            "chat",
            "store",
            "llm",
            "tools",
            "events",
            "telemetry",
            "domain",
        ],
    ),
    (
        "server",
        &[
            "api",
            "chat",
            "store",
            "llm",
            "tools",
            "events",
            "telemetry",
            "domain",
        ],
    ),
    ("api", &["chat", "telemetry", "domain"]),
    (
        "chat",
        &["store", "llm", "tools", "events", "telemetry", "domain"],
    ),
    ("transfer", &["store", "telemetry", "domain"]),
    ("store", &["telemetry", "domain"]),
    ("llm", &["telemetry", "domain"]),
    ("tools", &["telemetry", "domain"]),
    ("events", &["telemetry", "domain"]),
    ("telemetry", &[]),
    ("domain", &[]),
];

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The text of a source file without its tests: a `#[cfg(test)]` item and everything after it
/// (the crate keeps its unit tests last), and a file that is a test module as a whole.
fn code(path: &Path) -> String {
    if path.file_name().is_some_and(|name| name == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end].to_owned()
}

/// The crate's top-level modules that `code` names, through `crate::x` paths or
/// `use crate::{x, y::z}` lists.
fn used_modules(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // Names at the list's top level, up to its closing brace.
            let mut depth = 0;
            let mut item = String::new();
            for c in list.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        used.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            used.insert(first_segment(&item));
        } else {
            used.insert(first_segment(rest));
        }
    }
    used.remove("");
    used
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.into_iter().collect();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap_or(file);
        let first = relative
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .unwrap_or_default();
        let Some(may_use) = allowed.get(first.as_str()) else {
            // lib.rs declares the modules, main.rs is the binary, proto is generated.
            assert!(
                ["lib", "main"].contains(&first.as_str()),
                "{} is in no known layer: add it to ALLOWED",
                relative.display()
            );
            continue;
        };
        for module in used_modules(&code(file)) {
            if module == first || !allowed.contains_key(module.as_str()) {
                continue;
            }
            assert!(
                may_use.contains(&module.as_str()),
                "{} uses crate::{module}, which is not below `{first}`",
                relative.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "too few uses found ({checked}): is the scan broken?"
    );
}

#[test]
fn the_allowed_uses_have_no_cycle() {
    // Each layer may use only layers listed after it: the order is a topological one.
    for (position, (module, uses)) in ALLOWED.iter().enumerate() {
        for used in *uses {
            let at = ALLOWED.iter().position(|(name, _)| name == used);
            assert!(
                at.is_some_and(|at| at > position),
                "{module} may use {used}, which is not below it"
            );
        }
    }
}

#[test]
fn the_scan_reads_nested_use_lists() {
    let used = used_modules(
        "use crate::{\n    api::{a, b::{c}},\n    chat::X,\n};\nfn f() { crate::store::g() }",
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["api", "chat", "store"]
    );
}
