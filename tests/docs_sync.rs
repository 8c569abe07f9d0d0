//! Each config key is declared once: `KNOWN_KEYS` and its parsing in `src/config.rs` (the
//! defaults are what a minimal config loads to). These tests hold the other places that
//! list keys to it — the example config, the README's table, configuration.md, the migration
//! guide and the config `register` writes — so that none can drift. The same for the other
//! lists the docs keep of the code's: the outcomes a task ends with (as `/metrics` exports
//! them), the subcommands (as `--help` lists them), and what `wake_timeout_ms` kills.

use std::path::Path;

use agentcom_sidecar::config::{Config, KNOWN_KEYS};
use agentcom_sidecar::status::Status;
use agentcom_sidecar::tasks::model::Release;
use serde_json::Value;

const MINIMAL: &str = r#"{"agent_id":"a1","token":"t0k3n","hub_url":"ws://127.0.0.1:4000/ws"}"#;
/// Keys whose value in the example is a sample, not the default.
const SAMPLES: &[&str] = &["agent_id", "token", "hub_url", "name", "wake_command"];

fn defaults() -> Value {
    Config::from_json(MINIMAL, Path::new("/etc/agentcom-sidecar/config.json"))
        .expect("the minimal config loads")
        .effective()
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_example_config_lists_every_key_with_its_default() {
    let text = repo_file("config/config.json.example");
    let example: Value = serde_json::from_str(&text).expect("the example is JSON");
    let example_keys: Vec<&String> = example.as_object().unwrap().keys().collect();
    for key in KNOWN_KEYS {
        assert!(
            example_keys.iter().any(|k| k == key),
            "config.json.example lacks \"{key}\""
        );
    }
    for key in &example_keys {
        assert!(
            KNOWN_KEYS.contains(&key.as_str()),
            "config.json.example has \"{key}\", which the sidecar does not know"
        );
    }
    // Loaded as a config (its paths resolved like the minimal one's), every value that is
    // not a sample is the default.
    let loaded = Config::from_json(&text, Path::new("/etc/agentcom-sidecar/config.json"))
        .expect("the example loads")
        .effective();
    let defaults = defaults();
    for key in KNOWN_KEYS.iter().filter(|k| !SAMPLES.contains(k)) {
        assert_eq!(
            loaded[key], defaults[key],
            "config.json.example's \"{key}\" is not the default"
        );
    }
}

/// The README's config table: `| \`key\` | default | meaning |`, a row may name two keys
/// (`` `a` / `b` ``) with two defaults.
fn readme_rows() -> Vec<(Vec<String>, String)> {
    let text = repo_file("README.md");
    let start = text
        .find("| key | default | meaning |")
        .expect("the config table");
    text[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let keys = cells[0]
                .trim_start_matches("| ")
                .split(" / ")
                .map(|k| k.trim_matches('`').to_string())
                .collect();
            (keys, cells[1].to_string())
        })
        .collect()
}

#[test]
fn the_readme_table_lists_every_key_with_its_default() {
    let rows = readme_rows();
    let defaults = defaults();
    for key in KNOWN_KEYS {
        assert!(
            rows.iter().any(|(keys, _)| keys.iter().any(|k| k == key)),
            "README's config table lacks `{key}`"
        );
    }
    for (keys, default) in &rows {
        let values: Vec<&str> = default.split(" / ").map(|d| d.trim_matches('`')).collect();
        for (key, shown) in keys.iter().zip(values) {
            assert!(
                KNOWN_KEYS.contains(&key.as_str()),
                "README's table has `{key}`, which the sidecar does not know"
            );
            // Only values the README shows as JSON are compared (not "required", "none",
            // paths relative to the config's directory, or a reference to another key).
            let Ok(shown) = serde_json::from_str::<Value>(shown) else {
                continue;
            };
            if shown.is_string() {
                continue;
            }
            assert_eq!(shown, defaults[key], "README's default of `{key}`");
        }
    }
}

#[test]
fn configuration_md_documents_every_key() {
    let text = repo_file("docs/usage/configuration.md");
    for key in KNOWN_KEYS {
        assert!(
            text.contains(&format!("| `{key}` |")),
            "configuration.md has no row for `{key}`"
        );
    }
}

#[test]
fn the_migration_guide_names_every_key() {
    let text = repo_file("docs/usage/migrating-from-node.md");
    for key in KNOWN_KEYS {
        assert!(
            text.contains(&format!("`{key}`")),
            "migrating-from-node.md does not name `{key}` (a Node key, or one of the new keys)"
        );
    }
}

/// The outcomes `/metrics` exports: `agentcom_sidecar_tasks_total{outcome="…"}`.
fn exported_outcomes() -> Vec<String> {
    let prefix = "agentcom_sidecar_tasks_total{outcome=\"";
    Status::default()
        .prometheus()
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

/// Every way a task is released, by its outcome name (a new variant fails to compile here).
fn release_outcomes() -> Vec<&'static str> {
    [
        Release::Reassigned,
        Release::Aborted,
        Release::Cancelled,
        Release::Refused,
    ]
    .into_iter()
    .map(|r| match r {
        Release::Reassigned | Release::Aborted | Release::Cancelled | Release::Refused => {
            r.as_str()
        }
    })
    .collect()
}

/// The event each outcome is logged with.
const OUTCOME_EVENTS: &[(&str, &str)] = &[
    ("complete", "task_complete"),
    ("failed", "task_failed"),
    ("rejected", "task_rejected"),
    ("cancelled", "task_cancelled"),
    ("aborted", "task_aborted"),
    ("reassigned", "recovery_reassigned"),
    ("refused", "report_refused"),
];

/// The backticked words of the table row that starts with `first_cell`, after `after`.
fn listed_in_row(text: &str, first_cell: &str, after: &str) -> Vec<String> {
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("| {first_cell} |")))
        .unwrap_or_else(|| panic!("no row {first_cell}"));
    let rest = &row[row.find(after).unwrap_or_else(|| panic!("{row}")) + after.len()..];
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_outcome_is_exported_and_documented() {
    let mut exported = exported_outcomes();
    assert!(!exported.is_empty());
    for released in release_outcomes() {
        assert!(
            exported.iter().any(|o| o == released),
            "/metrics does not export the outcome `{released}`"
        );
    }
    let mut logged: Vec<String> = OUTCOME_EVENTS.iter().map(|(o, _)| o.to_string()).collect();
    exported.sort();
    logged.sort();
    assert_eq!(exported, logged, "OUTCOME_EVENTS here");

    let service = repo_file("docs/usage/running-as-a-service.md");
    for (row, after) in [
        ("`finished:`", "by outcome:"),
        ("`agentcom_sidecar_tasks_total{outcome}`", "by outcome:"),
    ] {
        let mut listed = listed_in_row(&service, row, after);
        listed.sort();
        assert_eq!(
            listed, exported,
            "running-as-a-service.md's {row} row lists other outcomes than the code"
        );
    }

    // Each "How tasks ended" recipe selects the event of every outcome.
    for path in [
        "README.md",
        "docs/usage/logs.md",
        "docs/usage/running-as-a-service.md",
    ] {
        let text = repo_file(path);
        let recipes: Vec<&str> = text
            .lines()
            .zip(text.lines().skip(1))
            .filter(|(comment, _)| comment.starts_with("# How tasks ended"))
            .map(|(_, jq)| jq)
            .collect();
        assert!(!recipes.is_empty(), "{path}: no \"How tasks ended\" recipe");
        for jq in recipes {
            for (outcome, event) in OUTCOME_EVENTS {
                assert!(
                    jq.contains(&format!("\"{event}\"")),
                    "{path}: the \"How tasks ended\" recipe misses {event} (outcome {outcome})"
                );
            }
        }
    }
}

/// The subcommands `agentcom-sidecar --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar"))
        .arg("--help")
        .output()
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands = help
        .split("Commands:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Commands: in\n{help}"));
    let mut names: Vec<String> = commands
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
fn the_readme_lists_every_subcommand() {
    let text = repo_file("README.md");
    let start = text
        .find("| command | what it does |")
        .expect("the subcommand table");
    let mut listed: Vec<String> = Vec::new();
    for row in text[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let cell = row.split(" | ").next().unwrap();
        let name = cell
            .split("`agentcom-sidecar ")
            .nth(1)
            .and_then(|rest| rest.split([' ', '`']).next())
            .unwrap_or_else(|| panic!("a row without a command: {row}"));
        if name.starts_with(['[', '-']) {
            // The sidecar itself: `agentcom-sidecar [--config PATH]` (or `run`).
            assert!(cell.contains("(or `run`)"), "{row}");
            listed.push("run".to_string());
        } else {
            listed.push(name.to_string());
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        subcommands(),
        "README's subcommand table and `agentcom-sidecar --help` disagree"
    );
}

/// Paragraphs, and table rows one by one, of a Markdown text.
fn passages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut paragraph = String::new();
    for line in text.lines() {
        if line.starts_with('|') {
            out.push(line.to_string());
        } else if line.trim().is_empty() {
            out.push(std::mem::take(&mut paragraph));
        } else {
            paragraph.push_str(line);
            paragraph.push('\n');
        }
    }
    out.push(paragraph);
    out
}

/// A wake command past `wake_timeout_ms` is killed unless its agent confirmed
/// (`actors/waker.rs`; tested in tests/core_defects.rs): no passage may say it is killed without
/// saying so.
#[test]
fn every_word_on_wake_timeout_kills_says_a_confirmed_agent_is_spared() {
    let mut docs = vec!["README.md".to_string()];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/usage");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            docs.push(format!("docs/usage/{name}"));
        }
    }
    for path in docs {
        for passage in passages(&repo_file(&path)) {
            // (`room_wake_timeout_ms` is the room command's own timeout: it has no exception.)
            let about_wake = passage
                .replace("room_wake_timeout", "")
                .contains("wake_timeout");
            if about_wake && passage.contains("kill") {
                assert!(
                    passage.contains("confirm") || passage.contains(".started"),
                    "{path}: says a wake command is killed at wake_timeout_ms without the exception for a confirmed agent:\n{passage}"
                );
            }
        }
    }
}
