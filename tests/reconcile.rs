//! Tasks the hub pushed into a dead connection: the current hub keeps a session that died
//! without a close registered for pushes until its idle timeout, so a task assigned
//! meanwhile sits `assigned` to the agent and never arrives. The sidecar asks the hub's
//! HTTP API what it holds (after such a session, and while idle) and takes the task as if
//! it had been pushed, once.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A hub that keeps a cut session for 20 s (pushes go into it meanwhile) and takes an
/// unaccepted task back only after 60 s: far beyond the tests' waits, so only the sidecar's
/// reconciliation can bring the task in time.
fn lingering_hub() -> DevHub {
    hub_with(
        HubTimings {
            idle_timeout: ms(20_000),
            acceptance_timeout: ms(60_000),
            stuck_sweep_interval: ms(100),
            overdue_sweep_interval: ms(100),
            ..HubTimings::default()
        },
        HubLimits::default(),
    )
}

fn success() -> Value {
    json!({"status": "success", "output": "done"})
}

/// Cuts the agent's link (no close, the hub's side lingers) and waits for the sidecar to be
/// identified on a new connection.
fn cut_and_reconnect(hub: &DevHub, sidecar: &Sidecar) {
    let before = identified(hub).len();
    hub.cut_connections(AGENT);
    sidecar.wait_event("heartbeat_timeout");
    wait_identified(hub, before + 1);
}

#[test]
fn a_task_pushed_into_the_dead_connection_is_found_after_the_reconnect_and_run_once() {
    let hub = lingering_hub();
    let sidecar = recording_sidecar(
        &hub,
        json!({"stale_session_reidentify_ms": 0, "reconcile_interval_ms": 600_000}),
    );
    let before = identified(&hub).len();
    hub.cut_connections(AGENT);
    // Assigned while the link is dead: pushed into the lingering session, lost.
    let task_id = submit(&hub, json!({"description": "pushed into the void"}));
    eventually("assigned to the agent", || {
        task_field(&hub, &task_id, "assigned_to") == AGENT
    });
    sidecar.wait_event("heartbeat_timeout");
    wait_identified(&hub, before + 1);
    let found = sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "reconcile_found" && l["task_id"] == task_id.as_str()
        })
        .expect("found through the hub's task list");
    assert_eq!(found["generation"], 1);
    eventually("the agent's start", || starts_of(&sidecar, &task_id) == 1);
    release(&sidecar, &task_id, &success());
    wait_status(&hub, &task_id, "completed");
    assert_eq!(starts_of(&sidecar, &task_id), 1);
    assert!(hub.take_backs().is_empty(), "{:?}", hub.take_backs());
    assert_eq!(hub.violations(AGENT), 0, "{:?}", hub.validation_failures());
}

#[test]
fn while_idle_a_task_the_hub_still_pushes_to_the_lingering_session_is_found_and_run_once() {
    let hub = lingering_hub();
    let sidecar = recording_sidecar(
        &hub,
        json!({"stale_session_reidentify_ms": 0, "reconcile_interval_ms": 300}),
    );
    cut_and_reconnect(&hub, &sidecar);
    // The new session is identified, but the hub's pushes still go to the dead one.
    let task_id = submit(&hub, json!({"description": "lost push"}));
    sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "reconcile_found" && l["task_id"] == task_id.as_str()
        })
        .expect("found by the periodic look while idle");
    eventually("the agent's start", || starts_of(&sidecar, &task_id) == 1);
    release(&sidecar, &task_id, &success());
    wait_status(&hub, &task_id, "completed");
    // Asked again while idle afterwards: nothing is found twice, nothing started twice.
    let asked = sidecar.events("reconcile_asked").len();
    eventually("asked again", || {
        sidecar.events("reconcile_asked").len() >= asked + 2
    });
    assert_eq!(starts_of(&sidecar, &task_id), 1);
    let found = sidecar
        .events("reconcile_found")
        .into_iter()
        .filter(|l| l["task_id"] == task_id.as_str())
        .count();
    assert_eq!(found, 1);
}

#[test]
fn a_task_in_progress_is_not_asked_about_and_its_push_is_not_taken_twice() {
    let hub = lingering_hub();
    let sidecar = recording_sidecar(&hub, json!({"reconcile_interval_ms": 200}));
    let task_id = submit(&hub, json!({"description": "normal push"}));
    eventually("the agent's start", || starts_of(&sidecar, &task_id) == 1);
    // While the task is held, the periodic look does not run.
    let asked = sidecar.events("reconcile_asked").len();
    eventually("progress frames while it runs", || {
        task_frames(&hub, "task_progress", &task_id).len() >= 2
    });
    assert_eq!(sidecar.events("reconcile_asked").len(), asked);
    release(&sidecar, &task_id, &success());
    wait_status(&hub, &task_id, "completed");
    assert!(sidecar.events("reconcile_found").is_empty());
    assert_eq!(starts_of(&sidecar, &task_id), 1);
}
