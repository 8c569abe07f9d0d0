//! Every config error of R1: exit code 1 and one clear message on stderr naming the file,
//! the key and the fix; warnings for unknown keys and a config others can read.
#![cfg(unix)]

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

/// Runs the binary in `dir` with `args` and `SIDECAR_CONFIG` as given; returns (exit code, stderr).
fn run(dir: &std::path::Path, args: &[&str], env_config: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(dir).env_remove("SIDECAR_CONFIG");
    if let Some(path) = env_config {
        cmd.env("SIDECAR_CONFIG", path);
    }
    let out = cmd.output().expect("binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_with_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, text).unwrap();
    set_mode(&path, 0o600);
    run(dir.path(), &["--config", path.to_str().unwrap()], None)
}

const VALID: &str = r#"{"agent_id":"a1","token":"sekrit-token","hub_url":"ws://127.0.0.1:9/ws"}"#;

#[test]
fn missing_file_names_the_path_and_the_command_that_writes_one() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(dir.path(), &[], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("config.json not found"), "{err}");
    assert!(
        err.contains(
            "agentcom-sidecar register --hub http://HUB:4000 --agent-id ID --config config.json"
        ),
        "{err}"
    );
    // Nothing inside a source tree the operator may not have.
    assert!(!err.contains("config/"), "{err}");
    assert_eq!(err.lines().count(), 1, "one message: {err}");
}

#[test]
fn sidecar_config_variable_names_the_file_and_config_flag_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(dir.path(), &[], Some("/nonexistent/from-env.json"));
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/from-env.json"), "{err}");
    let (_, err) = run(
        dir.path(),
        &["--config", "/nonexistent/from-flag.json"],
        Some("/nonexistent/from-env.json"),
    );
    assert!(
        err.contains("from-flag.json") && !err.contains("from-env"),
        "{err}"
    );
}

#[test]
fn invalid_json_gives_line_and_column() {
    let (code, err) = run_with_config(
        "{\n  \"agent_id\": \"a1\",\n  \"token\": \"t\"\n  \"hub_url\": \"ws://h/ws\"\n}",
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not valid JSON") && err.contains("line 4, column 3"),
        "{err}"
    );
}

#[test]
fn each_missing_required_key_is_named() {
    for key in ["agent_id", "token", "hub_url"] {
        let mut config: serde_json::Value = serde_json::from_str(VALID).unwrap();
        config.as_object_mut().unwrap().remove(key);
        let (code, err) = run_with_config(&config.to_string());
        assert_eq!(code, Some(1));
        assert!(
            err.contains(&format!("required key \"{key}\" is missing")),
            "{err}"
        );
    }
}

#[test]
fn wrong_types_and_values_name_the_key_and_never_echo_the_token() {
    let cases = [
        (
            json!({"heartbeat_interval_ms": "30s"}),
            "heartbeat_interval_ms",
        ),
        (json!({"capabilities": "code"}), "capabilities"),
        (
            json!({"wake_retry_delays_ms": [5000, "x"]}),
            "wake_retry_delays_ms",
        ),
        (json!({"max_frame_bytes": 10}), "max_frame_bytes"),
        (json!({"hub_url": "ftp://hub:4000/ws"}), "hub_url"),
        (json!({"log_level": 5}), "log_level"),
        (json!({"ca_file": "missing-ca.pem"}), "ca_file"),
        (json!({"token": ["sekrit-token"]}), "token"),
    ];
    for (extra, key) in cases {
        let config = with(serde_json::from_str(VALID).unwrap(), extra);
        let (code, err) = run_with_config(&config.to_string());
        assert_eq!(code, Some(1), "{key}: {err}");
        assert!(err.contains(&format!("\"{key}\"")), "{key}: {err}");
        assert!(!err.contains("sekrit-token"), "token leaked: {err}");
    }
}

#[test]
fn unknown_keys_and_a_world_readable_file_are_warnings_and_the_sidecar_runs() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"heartbeat_intervall_ms": 5, "pm2_name": "x"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    set_mode(&path, 0o644);
    let sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
    let warnings: Vec<String> = sidecar
        .events("config_warning")
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"heartbeat_intervall_ms\"")
                && w.contains("did you mean \"heartbeat_interval_ms\"")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("\"pm2_name\"")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("chmod 600")),
        "{warnings:?}"
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_file_not_the_working_directory() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    let path = dir.path().join("etc/config.json");
    write_config(
        &path,
        &with(
            fast_config(&hub.ws_url()),
            json!({"log_file": "logs/side.log"}),
        ),
    );
    let cwd = dir.path().to_path_buf();
    let mut sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    sidecar.log_path = cwd.join("etc/logs/side.log");
    wait_identified(&hub, 1);
    sidecar.wait_event("identified");
}

#[test]
fn a_second_sidecar_on_the_same_queue_file_refuses_to_start() {
    let hub = hub();
    let first = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    let config = first.dir.path().join("config.json");
    let (code, err) = run(
        first.dir.path(),
        &["--config", config.to_str().unwrap()],
        None,
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("another sidecar (pid {})", first.pid()))
            && err.contains("queue_file"),
        "{err}"
    );
    assert_eq!(identified(&hub).len(), 1, "the second one never connected");
}

#[test]
fn a_wrongly_typed_value_with_a_multibyte_character_at_the_cut_is_a_config_error() {
    // The value's text is shortened for the message; a cut inside "é" (two bytes in UTF-8)
    // must land on a character boundary, never panic.
    for prefix in ["", "x", "xx", "xxx"] {
        let value = format!("{prefix}{}", "é".repeat(100));
        let config = with(
            serde_json::from_str(VALID).unwrap(),
            json!({ "heartbeat_interval_ms": value }),
        );
        let (code, err) = run_with_config(&config.to_string());
        assert_eq!(code, Some(1), "prefix {prefix:?}: {err}");
        assert!(
            err.contains("\"heartbeat_interval_ms\" must be a whole number")
                && err.contains("got a string \"")
                && err.contains("éé...")
                && !err.contains("panicked"),
            "prefix {prefix:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one message: {err}");
    }
}
