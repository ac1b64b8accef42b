//! The order inside each layer, checked against the sources: no module uses a sibling that uses
//! it back (directly or round a circle), and the files of a turn each use only those their
//! `mod.rs` lists before them, so that the turn reads from the bottom up.

// A failed expectation is a failed test, reported by panicking like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A module's path from the crate root, e.g. `["chat", "turn", "relay"]`.
type ModulePath = Vec<String>;

/// Every source file of the crate, by its module path, with its code (tests left out).
fn modules() -> BTreeMap<ModulePath, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(&src).unwrap();
            let mut path: ModulePath = relative
                .iter()
                .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if path
                .last()
                .is_some_and(|last| last == "mod" || last == "lib")
            {
                path.pop();
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let end = text.find("#[cfg(test)]").unwrap_or(text.len());
            (path, text[..end].to_owned())
        })
        .collect()
}

fn collect(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The module paths `code`, in module `at`, names through `crate::`, `super::` and `self::`,
/// with `use` lists expanded: `use super::{a::X, b::{c, d}}` names `a::X`, `b::c` and `b::d`.
fn named_paths(at: &[String], code: &str) -> Vec<ModulePath> {
    let mut named = Vec::new();
    let bytes = code.as_bytes();
    let mut index = 0;
    while index < code.len() {
        let rest = &code[index..];
        let starts_word = index == 0 || !is_ident(bytes[index - 1]) && bytes[index - 1] != b':';
        let base = if !starts_word {
            None
        } else if rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with("self::") {
            Some((at.to_vec(), "self::".len()))
        } else if rest.starts_with("super::") {
            let mut base = at.to_vec();
            let mut skipped = 0;
            while code[index + skipped..].starts_with("super::") {
                base.pop();
                skipped += "super::".len();
            }
            Some((base, skipped))
        } else {
            None
        };
        let Some((base, skipped)) = base else {
            index += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let (paths, used) = use_tree(&code[index + skipped..]);
        named.extend(paths.into_iter().map(|path| [base.clone(), path].concat()));
        index += skipped + used.max(1);
    }
    named
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The paths of a use tree at the start of `text` (`a::b`, `a::{b, c::d}`, `{a, b}`), and how
/// many bytes it took.
fn use_tree(text: &str) -> (Vec<ModulePath>, usize) {
    let mut prefix = Vec::new();
    let mut at = 0;
    loop {
        let rest = &text[at..];
        if rest.starts_with('{') {
            let mut paths = Vec::new();
            at += 1;
            loop {
                let item = text[at..].trim_start();
                at = text.len() - item.len();
                if item.starts_with('}') {
                    at += 1;
                    break;
                }
                if item.is_empty() {
                    break;
                }
                let (inner, used) = use_tree(item);
                paths.extend(
                    inner
                        .into_iter()
                        .map(|path| [prefix.clone(), path].concat()),
                );
                at += used;
                let after = text[at..].trim_start();
                at = text.len() - after.len();
                if after.starts_with(',') {
                    at += 1;
                }
            }
            return (paths, at);
        }
        let word: String = rest
            .bytes()
            .take_while(|b| is_ident(*b))
            .map(char::from)
            .collect();
        if word.is_empty() {
            return (vec![prefix], at);
        }
        at += word.len();
        prefix.push(word);
        if text[at..].starts_with("::") {
            at += 2;
        } else {
            return (vec![prefix], at);
        }
    }
}

/// Which child each item a module's own file re-exports (`pub use child::Item`) comes from.
fn reexports(code: &str) -> BTreeMap<String, String> {
    let mut from = BTreeMap::new();
    for (at, _) in code.match_indices("pub use ") {
        let (paths, _) = use_tree(&code[at + "pub use ".len()..]);
        for path in paths {
            let path: Vec<String> = path.into_iter().filter(|s| s != "self").collect();
            if let (Some(child), Some(item)) = (path.first(), path.last())
                && path.len() > 1
            {
                from.insert(item.clone(), child.clone());
            }
        }
    }
    from
}

/// For each module with children: which child uses which other child.
fn sibling_uses() -> BTreeMap<ModulePath, BTreeMap<String, BTreeSet<String>>> {
    let modules = modules();
    let mut uses: BTreeMap<ModulePath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (path, code) in &modules {
        for depth in 0..path.len() {
            let parent = &path[..depth];
            let child = &path[depth];
            let siblings: BTreeSet<&String> = modules
                .keys()
                .filter(|other| other.len() > depth && other[..depth] == *parent)
                .map(|other| &other[depth])
                .collect();
            let exported = reexports(modules.get(parent).map_or("", String::as_str));
            for named in named_paths(path, code) {
                if named.len() <= depth || named[..depth] != *parent {
                    continue;
                }
                let used = exported
                    .get(&named[depth])
                    .filter(|_| named.len() == depth + 1)
                    .unwrap_or(&named[depth]);
                if used != child && siblings.contains(used) {
                    uses.entry(parent.to_vec())
                        .or_default()
                        .entry(child.clone())
                        .or_default()
                        .insert(used.clone());
                }
            }
        }
    }
    uses
}

/// A circle of uses among `uses`, if there is one.
fn circle(uses: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        trail: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = trail.iter().position(|n| n == node) {
            return Some(trail[start..].to_vec());
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        trail.push(node.to_owned());
        for next in uses.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, uses, trail, done) {
                return Some(found);
            }
        }
        trail.pop();
        None
    }
    let mut done = BTreeSet::new();
    uses.keys()
        .find_map(|node| visit(node, uses, &mut Vec::new(), &mut done))
}

/// The children `mod.rs` of `dir` declares, in its order.
fn declared(dir: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("mod.rs");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("mod ").or(line.strip_prefix("pub mod ")))
        .map(|name| name.trim_end_matches(';').to_owned())
        .collect()
}

/// The uses of `dir`'s children that point at a child listed after the user.
fn upward_uses(dir: &[&str]) -> Vec<String> {
    let order = declared(&format!("src/{}", dir.join("/")));
    let parent: ModulePath = dir.iter().map(|s| (*s).to_owned()).collect();
    let uses = sibling_uses().remove(&parent).unwrap_or_default();
    let mut upward = Vec::new();
    for (user, used) in &uses {
        let at = order.iter().position(|m| m == user);
        for target in used {
            if order.iter().position(|m| m == target) > at {
                upward.push(format!("{user} uses {target}"));
            }
        }
    }
    upward
}

#[test]
fn no_module_uses_a_sibling_that_uses_it_back() {
    let uses = sibling_uses();
    assert!(
        uses.get(&vec!["chat".to_owned(), "turn".to_owned()])
            .is_some_and(|turn| turn.len() > 10),
        "too few uses found inside chat::turn: is the scan broken?"
    );
    for (parent, children) in &uses {
        if let Some(found) = circle(children) {
            panic!(
                "a circle of uses in crate::{}: {found:?}",
                parent.join("::")
            );
        }
    }
}

#[test]
fn each_file_of_a_turn_uses_only_those_listed_before_it() {
    assert_eq!(upward_uses(&["chat", "turn"]), Vec::<String>::new());
}

#[test]
fn at_most_three_uses_inside_chat_point_upward() {
    let upward = upward_uses(&["chat"]);
    assert!(upward.len() <= 3, "{upward:?}");
}

#[test]
fn every_file_begins_with_what_it_owns() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not begin with a //! comment saying what it owns",
            file.display()
        );
    }
}

#[test]
fn the_scan_finds_uses_through_lists_and_parents() {
    let at = ["chat".to_owned(), "turn".to_owned(), "relay".to_owned()];
    let named = named_paths(
        &at,
        "use super::{events::{A, B}, state::C};\nfn f() { super::super::Limit::x(); crate::store::Y }",
    );
    let named: Vec<String> = named.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        named,
        [
            "chat::turn::events::A",
            "chat::turn::events::B",
            "chat::turn::state::C",
            "chat::Limit::x",
            "store::Y",
        ]
    );
    let mut circular = BTreeMap::new();
    circular.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    circular.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(circle(&circular).is_some());
    circular.remove("b");
    assert!(circle(&circular).is_none());
}
