//! Each config key is declared once: `KNOWN_KEYS` and its parsing in `src/config.rs` (the
//! defaults are what a minimal config loads to). These tests hold the other places that
//! list keys to it — the example config, the README's table, configuration.md and the config
//! `register` writes — so that none can drift.

use std::path::Path;

use agentcom_sidecar::config::{Config, KNOWN_KEYS};
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
