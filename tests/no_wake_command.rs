//! A task that no wake command applies to: it fails at once with reason `no_wake_command`
//! (a `task_failed` the hub shows, naming the keys to set), unless the config says the agent
//! starts by itself; then the sidecar says so in its log (task and deadline) and waits
//! `confirmation_timeout_ms` for `.started`, or fails the task with `confirmation_timeout`.
#![cfg(unix)]

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn sidecar(hub: &DevHub, extra: Value) -> Sidecar {
    let mut config = with(fast_config(&hub.ws_url()), extra);
    if config["agent_starts_itself"].is_null() {
        config
            .as_object_mut()
            .unwrap()
            .remove("agent_starts_itself");
    }
    let sidecar = Sidecar::start(config);
    wait_identified(hub, 1);
    sidecar
}

#[test]
fn without_a_wake_command_a_task_fails_at_once_and_the_hub_is_told_why() {
    let hub = hub();
    let sidecar = sidecar(&hub, json!({"agent_starts_itself": null}));
    // Pushed without a routing decision (as POST /api/admin/push-task does).
    assign(&hub, json!({"task_id": "t-none", "generation": 1}));
    wait_task_frame(&hub, "task_accepted", "t-none", 1);
    let failed = wait_task_frame(&hub, "task_failed", "t-none", 1);
    assert_eq!(failed["reason"], "no_wake_command", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("\"wake_command\"") && error.contains("\"agent_starts_itself\""),
        "{error}"
    );
    let line = sidecar.wait_event("no_wake_command");
    assert_eq!(line["task_id"], "t-none");
    assert_eq!(line["level"], "error");
    assert!(sidecar.events("wake_attempt").is_empty());
}

#[test]
fn check_config_says_which_tasks_have_no_wake_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut config = fast_config("ws://127.0.0.1:9/ws");
    config
        .as_object_mut()
        .unwrap()
        .remove("agent_starts_itself");
    write_config(&path, &config);
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("wake       -> nothing (NO WAKE COMMAND")
            && stdout.contains("any other, or none -> nothing (NO WAKE COMMAND"),
        "{stdout}"
    );
    assert!(
        stderr.contains("no wake command for \"wake\"") && stderr.contains("no_wake_command"),
        "{stderr}"
    );

    write_config(&path, &with(config, json!({"agent_starts_itself": true})));
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("(not woken: the agent starts by itself"),
        "{stdout}"
    );
    assert!(
        stderr.contains("agent_starts_itself: no command runs for"),
        "{stderr}"
    );
}

#[test]
fn a_self_starting_agent_is_waited_for_and_one_that_never_starts_times_out() {
    let hub = hub();
    let sidecar = sidecar(
        &hub,
        json!({"agent_starts_itself": true, "confirmation_timeout_ms": 1500}),
    );
    // It starts by itself: the test plays the agent.
    assign(&hub, json!({"task_id": "t-self", "generation": 1}));
    wait_task_frame(&hub, "task_accepted", "t-self", 1);
    let wait = sidecar.wait_event("agent_self_start_wait");
    assert_eq!(wait["task_id"], "t-self");
    assert_eq!(wait["level"], "info");
    assert_eq!(wait["timeout_ms"], 1500);
    assert!(
        wait["deadline"].as_str().is_some_and(|d| d.ends_with('Z')),
        "{wait}"
    );
    std::fs::write(sidecar.results_dir().join("t-self.started"), "").unwrap();
    sidecar.wait_event("confirmation_received");
    sidecar.write_result("t-self", r#"{"status":"success","output":"by itself"}"#);
    let complete = wait_task_frame(&hub, "task_complete", "t-self", 1);
    assert_eq!(complete["result"]["output"], "by itself");

    // One that never starts: confirmation_timeout after the window. On a sidecar of its own:
    // raw tasks are not in the hub's queue, so the report above is refused (`not_found`) and
    // the sidecar identifies again, whose `state_report` would abort the next raw task.
    let hub = self::hub();
    let sidecar = self::sidecar(
        &hub,
        json!({"agent_starts_itself": true, "confirmation_timeout_ms": 1500}),
    );
    let before = std::time::Instant::now();
    assign(&hub, json!({"task_id": "t-never", "generation": 1}));
    let failed = wait_task_frame(&hub, "task_failed", "t-never", 1);
    assert_eq!(failed["reason"], "confirmation_timeout", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("t-never.started"),
        "{failed}"
    );
    assert!(before.elapsed() >= std::time::Duration::from_millis(1400));
    assert!(sidecar.events("wake_attempt").is_empty());
}
