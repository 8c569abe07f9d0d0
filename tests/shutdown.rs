//! Signals: orderly stop with close code 1000 and exit 0, a second signal that exits at
//! once, a hub that never answers the close, and SIGHUP reopening the log.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn stops_in_good_order(signal: i32, name: &str) {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    let session = wait_identified(&hub, 1);
    sidecar.signal(signal);
    let status = sidecar.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", sidecar.dump());
    assert!(saw_close(&hub, session.conn, 1000));
    let lines = sidecar.lines();
    let begin = lines
        .iter()
        .find(|l| l["event"] == "shutdown")
        .expect("shutdown line");
    assert_eq!(begin["signal"], name);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "shutdown", "last line: {last}");
    assert_eq!(last["phase"], "complete");
    assert_eq!(last["exit_code"], 0);
    // Reverse start order (the child list, whatever rows it has; the logger stops last and
    // cannot log it): the task actors first (no new tasks), the hub, the shutdown actor last.
    let stopped: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "actor_stopped")
        .map(|l| l["actor"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = agentcom_sidecar::actors::children()
        .iter()
        .map(|c| c.name.to_string())
        .filter(|n| n != "logger")
        .collect();
    expected.reverse();
    assert_eq!(stopped, expected);
    let at = |name: &str| stopped.iter().position(|n| n == name).unwrap();
    assert!(
        at("queue") < at("hub") && at("hub") < at("shutdown"),
        "{stopped:?}"
    );
}

#[test]
fn sigterm_closes_with_1000_flushes_the_log_and_exits_0() {
    stops_in_good_order(SIGTERM, "SIGTERM");
}

#[test]
fn sigint_closes_with_1000_flushes_the_log_and_exits_0() {
    stops_in_good_order(SIGINT, "SIGINT");
}

/// A sidecar identified at a hub that never answers a close frame.
fn with_a_hub_that_ignores_close(shutdown_timeout_ms: u64) -> (DevHub, Sidecar) {
    let hub = hub();
    hub.set_behaviour(Behaviour {
        echo_close: false,
        ..hub.behaviour()
    });
    let config = with(
        fast_config(&hub.ws_url()),
        json!({ "shutdown_timeout_ms": shutdown_timeout_ms }),
    );
    let sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    (hub, sidecar)
}

#[test]
fn shutdown_does_not_wait_long_for_a_hub_that_never_answers_the_close() {
    let (_hub, mut sidecar) = with_a_hub_that_ignores_close(1000);
    let sent = Instant::now();
    sidecar.signal(SIGTERM);
    let status = sidecar.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(sidecar.lines().last().unwrap()["phase"], "complete");
}

#[test]
fn a_second_signal_exits_at_once() {
    // The close wait would be 1 s: the second signal must not wait for it.
    let (_hub, mut sidecar) = with_a_hub_that_ignores_close(8000);
    sidecar.signal(SIGTERM);
    sidecar.wait_event("shutdown");
    let sent = Instant::now();
    sidecar.signal(SIGINT);
    let status = sidecar.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(130), "{}", sidecar.dump());
    assert!(
        sent.elapsed() < Duration::from_millis(900),
        "took {:?}",
        sent.elapsed()
    );
    assert!(sidecar.stderr().contains("second SIGINT"));
}

#[test]
fn sighup_reopens_a_log_file_that_was_moved_away() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    sidecar.wait_event("heartbeat");
    let moved = sidecar.dir.path().join("sidecar.log.1");
    std::fs::rename(&sidecar.log_path, &moved).unwrap();
    sidecar.signal(SIGHUP);
    // New lines land in a new file at the configured path.
    let reopened = sidecar.wait_event("signal_received");
    assert_eq!(reopened["action"], "reopen_log");
    sidecar.wait_event("heartbeat");
    assert!(sidecar.is_running());
    let old = std::fs::read_to_string(&moved).unwrap();
    assert!(old
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[test]
fn the_same_signal_delivered_twice_at_once_is_one_request() {
    // `timeout` and some service managers signal both the process and its group.
    let (_hub, mut sidecar) = with_a_hub_that_ignores_close(8000);
    sidecar.signal(SIGTERM);
    sidecar.signal(SIGTERM);
    let status = sidecar.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", sidecar.dump());
    assert_eq!(sidecar.lines().last().unwrap()["phase"], "complete");
}

#[test]
fn restart_sidecar_from_the_hub_stops_in_good_order_with_exit_75() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    let session = wait_identified(&hub, 1);
    hub.send(
        AGENT,
        RawFrame::Text(json!({"type": "restart_sidecar", "reason": "upgrade"}).to_string()),
    );
    let status = sidecar.wait_exit(WAIT).expect("exits");
    assert_eq!(
        status.code(),
        Some(75),
        "non-zero, so the service manager starts it again"
    );
    let requested = sidecar.wait_event("restart_requested");
    assert_eq!(requested["reason"], "upgrade");
    assert!(saw_close(&hub, session.conn, 1000));
    let last = sidecar.lines().last().unwrap().clone();
    assert_eq!(
        (last["phase"].as_str(), last["exit_code"].as_i64()),
        (Some("complete"), Some(75))
    );
}
