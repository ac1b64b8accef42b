//! The settings as people read about them: README.md's table and the deploy files must agree with
//! the flags and environment variables the service actually reads.

// A failed expectation is a failed test, reported by panicking like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The 60-line limit (clippy.toml) is for the service's own code: a test, or a fake that
// plays a protocol, reads best whole.
#![allow(clippy::too_many_lines)]

use std::path::Path;

use chat_service::config::Settings;
use clap::{Arg, ArgAction, Command};

fn command() -> Command {
    <Settings as clap::Args>::augment_args(Command::new("chat-service"))
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of README.md's settings table, cells trimmed and still in their backticks.
#[derive(Debug)]
struct Row {
    variable: String,
    flag: String,
    default: String,
}

/// The rows of the table under `## Settings`, without its header and separator lines.
fn settings_table(readme: &str) -> Vec<Row> {
    readme
        .lines()
        .skip_while(|line| line.trim() != "## Settings")
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            assert!(cells.len() == 4, "a settings row has four cells: {line}");
            Row {
                variable: cells[0].trim().to_owned(),
                flag: cells[1].trim().to_owned(),
                default: cells[2].trim().to_owned(),
            }
        })
        .collect()
}

/// Whether `cell` is exactly one value in backticks, which reads as a default in the table.
fn is_single_value(cell: &str) -> bool {
    cell.len() > 2 && cell.starts_with('`') && cell.ends_with('`') && cell.matches('`').count() == 2
}

/// What the default column must say for `arg`; `None` when clap supplies no default.
fn documented_default(arg: &Arg) -> Option<String> {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() {
        Some(format!("`{}`", defaults.join(",")))
    } else if matches!(arg.get_action(), ArgAction::SetTrue) {
        // clap only fills in a flag's implicit `false` when the command is built.
        Some("`false`".to_owned())
    } else {
        None
    }
}

#[test]
fn the_readme_documents_every_setting_as_clap_defines_it() {
    let rows = settings_table(&read("README.md"));
    assert!(
        rows.len() > 20,
        "too few settings rows ({}): is the table still under ## Settings?",
        rows.len()
    );
    let command = command();
    let documented: Vec<&Arg> = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && arg.get_env().is_some())
        .collect();

    for arg in &documented {
        let variable = arg
            .get_env()
            .map(|env| format!("`{}`", env.to_string_lossy()))
            .unwrap_or_default();
        let matching: Vec<&Row> = rows.iter().filter(|row| row.variable == variable).collect();
        let [row] = matching.as_slice() else {
            panic!(
                "README.md should have exactly one row for {variable}, not {}",
                matching.len()
            );
        };
        let flag = arg
            .get_long()
            .map(|long| format!("`--{long}`"))
            .unwrap_or_default();
        assert_eq!(row.flag, flag, "the flag of {variable}");
        match documented_default(arg) {
            Some(default) => assert_eq!(row.default, default, "the default of {variable}"),
            None => assert!(
                !is_single_value(&row.default),
                "{variable} has no default, yet README.md gives it {}",
                row.default
            ),
        }
    }

    for row in &rows {
        assert!(
            documented.iter().any(|arg| {
                arg.get_env()
                    .is_some_and(|env| format!("`{}`", env.to_string_lossy()) == row.variable)
            }),
            "README.md documents {}, which is not a visible setting of the service",
            row.variable
        );
    }
}

/// Environment variables that `deploy/` sets for other containers, not for this service.
const FOREIGN_VARIABLES: [&str; 3] = ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"];

/// The variable names a deploy file sets: YAML keys, `- name:` entries and Dockerfile
/// `ENV` assignments, including commented-out examples.
fn variables_in(text: &str) -> Vec<String> {
    let is_name = |s: &str| {
        s.len() > 1
            && s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches('#').trim();
        let line = line.strip_prefix("ENV ").unwrap_or(line);
        let candidate = if let Some(rest) = line.strip_prefix("- name:") {
            rest.trim()
        } else if let Some((key, _)) = line.split_once(':') {
            key.trim()
        } else if let Some((key, _)) = line.split_once('=') {
            key.trim()
        } else {
            continue;
        };
        if is_name(candidate) {
            names.push(candidate.to_owned());
        }
    }
    names
}

#[test]
fn deploy_files_set_only_variables_the_service_reads() {
    let command = command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files = vec![deploy.join("Dockerfile"), deploy.join("docker-compose.yml")];
    let k8s = std::fs::read_dir(deploy.join("k8s")).unwrap_or_else(|e| panic!("{e}"));
    files.extend(k8s.flatten().map(|entry| entry.path()));
    let mut checked = 0;
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for name in variables_in(&text) {
            assert!(
                known.contains(&name) || FOREIGN_VARIABLES.contains(&name.as_str()),
                "{} sets {name}, which the service does not read",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "too few variables found ({checked}): is the scan broken?"
    );
    assert!(variables_in("  - name: CHAT_TYPO\n  CHAT_OTHER: x\nENV A_B=1").len() == 3);
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let kustomization =
        std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let listed: Vec<&str> = kustomization
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- "))
        .filter(|item| item.ends_with(".yaml"))
        .collect();
    let mut manifests: Vec<String> = std::fs::read_dir(&k8s)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    manifests.sort();
    let mut listed_sorted: Vec<String> = listed.iter().map(|s| (*s).to_owned()).collect();
    listed_sorted.sort();
    assert_eq!(listed_sorted, manifests);
}
