//! Which program a task starts, by the hub's routing target: the bundled agents for `ollama`,
//! `claude` and `sidecar` out of the box (the sidecar's own program, never looked up on
//! `PATH`), `wake_command` for un-routed tasks and `wake`, any `wake_commands` entry first;
//! the bundled agents' settings in every wake command's environment; `check-config`'s table.
#![cfg(unix)]

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// Shell text (for `sh -c`) that confirms and writes a success result by rename.
const DONE: &str = r#"touch "$RESULTS_DIR/$TASK_ID.started"; echo '{"status":"success"}' > "$RESULTS_DIR/.$TASK_ID.tmp"; mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json""#;

/// A task frame routed to `target` (the hub's `routing_decision`).
fn routed(task_id: &str, target: Option<&str>) -> Value {
    let mut task = json!({"task_id": task_id, "generation": 1});
    if let Some(target) = target {
        task["routing_decision"] =
            json!({"target_type": target, "selected_model": "m1", "effective_tier": "complex"});
    }
    task
}

/// The sidecar's own program as the running sidecar sees it (`current_exe`).
fn own_program() -> String {
    std::fs::canonicalize(bin())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The `wake_attempt` line of `task_id` (the test waits for it).
fn attempt_of(sidecar: &Sidecar, task_id: &str) -> Value {
    eventually(&format!("a wake_attempt for {task_id}"), || {
        wake_attempts(sidecar, task_id) > 0
    });
    sidecar
        .events("wake_attempt")
        .into_iter()
        .find(|e| e["task_id"] == task_id)
        .unwrap()
}

/// A dev hub and a sidecar whose `wake_command` (for un-routed and `wake` tasks) touches
/// `marker` and succeeds. One per task below: tasks pushed straight to the agent are not in
/// the hub's queue, so their reports are refused (`not_found`) and the sidecar identifies
/// again, which would abort the next raw task on the same sidecar.
fn fresh() -> (DevHub, Sidecar, std::path::PathBuf) {
    let hub = hub();
    let sidecar_dir = tempfile::tempdir().unwrap();
    // Beside the sidecar's own files: the directory lives as long as the sidecar.
    let marker = sidecar_dir.path().join("wake-command-ran");
    let config = with(
        fast_config(&hub.ws_url()),
        json!({
            "wake_command": ["sh", "-c", format!("touch {}; {DONE}", marker.display())],
            "wake_retry_delays_ms": [],
            "claude_command": "/nonexistent/claude",
        }),
    );
    let path = sidecar_dir.path().join("config.json");
    write_config(&path, &config);
    let sidecar = Sidecar::start_in(sidecar_dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
    (hub, sidecar, marker)
}

#[test]
fn a_claude_task_without_a_wake_commands_entry_starts_the_bundled_claude_agent() {
    let (hub, sidecar, marker) = fresh();
    assign(&hub, routed("t-claude", Some("claude")));
    let attempt = attempt_of(&sidecar, "t-claude");
    assert_eq!(
        attempt["command"],
        json!([own_program(), "agent", "claude"]),
        "{attempt}"
    );
    assert_eq!(attempt["bundled"], true);
    assert_eq!(attempt["target_type"], "claude");
    // The bundled agent finds no `claude` program: the task fails with its reason, after
    // exactly one start and no other program.
    let failed = wait_task_frame(&hub, "task_failed", "t-claude", 1);
    assert_eq!(failed["reason"], "claude_not_installed", "{failed}");
    assert_eq!(wake_attempts(&sidecar, "t-claude"), 1);
    assert!(!marker.exists(), "wake_command ran for a routed task");
}

#[test]
fn the_other_bundled_targets_and_wake_and_unrouted_tasks_each_start_one_program() {
    for (task_id, target, expected) in [
        (
            "t-ollama",
            Some("ollama"),
            json!([own_program(), "agent", "ollama"]),
        ),
        (
            "t-shell",
            Some("sidecar"),
            json!([own_program(), "agent", "shell"]),
        ),
    ] {
        let (hub, sidecar, marker) = fresh();
        assign(&hub, routed(task_id, target));
        let attempt = attempt_of(&sidecar, task_id);
        assert_eq!(attempt["command"], expected);
        wait_task_frame(&hub, "task_failed", task_id, 1);
        assert_eq!(wake_attempts(&sidecar, task_id), 1);
        assert!(!marker.exists(), "wake_command ran for a routed task");
    }
    for (task_id, target) in [("t-wake", Some("wake")), ("t-none", None)] {
        let (hub, sidecar, marker) = fresh();
        assign(&hub, routed(task_id, target));
        let attempt = attempt_of(&sidecar, task_id);
        assert_eq!(attempt["bundled"], false);
        assert_eq!(attempt["command"][0], "sh", "{attempt}");
        wait_task_frame(&hub, "task_complete", task_id, 1);
        assert!(marker.exists());
        assert_eq!(wake_attempts(&sidecar, task_id), 1);
    }
}

#[test]
fn a_wake_commands_entry_overrides_the_bundled_agent_and_every_command_gets_its_settings() {
    let hub = self::hub();
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let record = format!(
        r#"printf '%s|%s|%s\n' "${{AGENTCOM_OLLAMA_URL-unset}}" "${{AGENTCOM_ALLOW_HUB_COMMANDS-unset}}" "${{AGENTCOM_CLAUDE_COMMAND-unset}}" >> {}; {DONE}"#,
        seen.display()
    );
    let config = with(
        fast_config(&hub.ws_url()),
        json!({
            "wake_commands": {"claude": ["sh", "-c", record]},
            "ollama_url": "http://127.0.0.1:11434",
            "allow_hub_commands": true,
            "claude_command": "/opt/claude/bin/claude",
        }),
    );
    let sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    assign(&hub, routed("t-1", Some("claude")));
    let attempt = attempt_of(&sidecar, "t-1");
    assert_eq!(attempt["bundled"], false);
    assert_eq!(attempt["command"][0], "sh");
    wait_task_frame(&hub, "task_complete", "t-1", 1);
    assert_eq!(wake_attempts(&sidecar, "t-1"), 1);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "http://127.0.0.1:11434|1|/opt/claude/bin/claude\n"
    );

    // Without the opt-in and the URL, the variables are not set at all (not inherited).
    drop(sidecar);
    let hub = self::hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"wake_commands": {"claude": ["sh", "-c", record]}}),
    );
    std::fs::remove_file(&seen).unwrap();
    let home = tempfile::tempdir().unwrap();
    let config_path = home.path().join("config.json");
    write_config(&config_path, &config);
    let mut sidecar = Sidecar::start_with_env(
        home,
        &["--config", config_path.to_str().unwrap()],
        &[
            ("AGENTCOM_OLLAMA_URL", "http://inherited:1".to_string()),
            ("AGENTCOM_ALLOW_HUB_COMMANDS", "1".to_string()),
        ],
    );
    wait_identified(&hub, 1);
    assign(&hub, routed("t-2", Some("claude")));
    wait_task_frame(&hub, "task_complete", "t-2", 1);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "unset|unset|claude\n"
    );
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn check_config_prints_the_routing_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    write_config(
        &path,
        &with(
            fast_config("wss://hub.example:4000/ws"),
            json!({"wake_command": "true", "wake_commands": {"claude": ["true"], "ollama": ""}}),
        ),
    );
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let row = |target: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{target} ")))
            .unwrap_or_else(|| panic!("no row for {target}: {stdout}"))
            .to_string()
    };
    assert!(stdout.contains("routing (routing_decision.target_type -> what runs):"));
    assert!(
        row("claude").ends_with(r#"-> ["true"] (wake_commands)"#),
        "{stdout}"
    );
    assert!(row("ollama").contains("-> nothing (not woken"), "{stdout}");
    let shell = row("sidecar");
    assert!(
        shell.contains(&format!(
            r#"-> ["{}","agent","shell"] (bundled;"#,
            own_program()
        )) && shell.contains("allow_hub_commands is false"),
        "{stdout}"
    );
    assert!(
        row("wake").ends_with(r#"-> "true" (wake_command)"#),
        "{stdout}"
    );
    assert!(
        row("any other, or none").ends_with(r#"-> "true" (wake_command)"#),
        "{stdout}"
    );

    // The bundled claude agent's program is looked for: a note, not an error.
    write_config(
        &path,
        &with(
            fast_config("wss://hub.example:4000/ws"),
            json!({"claude_command": "/nonexistent/claude"}),
        ),
    );
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("note: claude_command: \"/nonexistent/claude\" is not found"),
        "{stderr}"
    );
}
