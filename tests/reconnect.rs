//! Losing the hub and coming back: backoff with jitter and its reset rule, refused
//! identify, the hub's cooldown, connect timeouts, and a dead session found by heartbeat.
#![cfg(unix)]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn ms(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// A loopback port nobody listens on.
fn closed_port_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("ws://127.0.0.1:{port}/ws")
}

#[test]
fn backoff_doubles_to_the_cap_with_delays_between_half_and_whole_step() {
    let config = with(
        fast_config(&closed_port_url()),
        json!({"reconnect_initial_ms": 20, "reconnect_max_ms": 160}),
    );
    let sidecar = Sidecar::start(config);
    let scheduled = sidecar.wait_count("reconnect_scheduled", 7);
    let steps: Vec<u64> = scheduled.iter().take(7).map(|l| ms(l, "step_ms")).collect();
    assert_eq!(steps, [20, 40, 80, 160, 160, 160, 160]);
    for l in &scheduled {
        let (delay, step) = (ms(l, "delay_ms"), ms(l, "step_ms"));
        assert!(
            delay >= step / 2 && delay <= step,
            "delay {delay} ms outside [{}, {step}]",
            step / 2
        );
    }
    // Every refused attempt is logged with its cause.
    let errors = sidecar.events("ws_error");
    assert!(errors.len() >= 7, "{}", sidecar.dump());
    assert!(errors
        .iter()
        .all(|e| e["stage"] == "connect" && e["error"].as_str().is_some_and(|s| !s.is_empty())));
}

#[test]
fn backoff_resets_only_after_an_identified_session_answered_a_heartbeat() {
    let hub = hub();
    hub.set_behaviour(Behaviour {
        answer_pings: false,
        ..hub.behaviour()
    });
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 150, "reconnect_initial_ms": 50, "reconnect_max_ms": 1600}),
    );
    let sidecar = Sidecar::start(config);
    // Identified, but the pings go unanswered: each session dies and the step keeps growing.
    let scheduled = sidecar.wait_count("reconnect_scheduled", 3);
    let steps: Vec<u64> = scheduled.iter().map(|l| ms(l, "step_ms")).collect();
    assert_eq!(
        steps[..3],
        [50, 100, 200],
        "a session that never answered must not reset the backoff"
    );
    assert!(sidecar.events("heartbeat_timeout").len() >= 3);

    hub.set_behaviour(Behaviour {
        answer_pings: true,
        ..hub.behaviour()
    });
    sidecar.wait_event("heartbeat");
    let before = sidecar.events("reconnect_scheduled").len();
    assert!(hub.kill_connections(AGENT) >= 1);
    let after = sidecar.wait_count("reconnect_scheduled", before + 1);
    assert_eq!(
        ms(&after[before], "step_ms"),
        50,
        "the step resets after a pong"
    );
}

#[test]
fn hub_that_stops_answering_pings_is_detected_within_interval_plus_timeout() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"heartbeat_interval_ms": 200, "heartbeat_timeout_ms": 300}),
    );
    let sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    sidecar.wait_event("heartbeat");
    let silenced = Instant::now();
    hub.set_behaviour(Behaviour {
        answer_pings: false,
        ..hub.behaviour()
    });
    let timeout = sidecar.wait_event("heartbeat_timeout");
    let detected = silenced.elapsed();
    // interval + timeout, plus slack for a slow machine (the log is read by polling).
    assert!(
        detected <= Duration::from_millis(200 + 300 + 1500),
        "took {detected:?}"
    );
    assert!(ms(&timeout, "waited_ms") >= 300);
    hub.set_behaviour(Behaviour {
        answer_pings: true,
        ..hub.behaviour()
    });
    wait_identified(&hub, 2);
}

#[test]
fn refused_identify_is_logged_closed_by_the_sidecar_and_retried_at_the_backoff() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"token": "wrong-token", "reconnect_initial_ms": 100, "reconnect_max_ms": 400}),
    );
    let started = Instant::now();
    let sidecar = Sidecar::start(config);
    let error = sidecar.wait_event("hub_error");
    assert_eq!(error["error"], "invalid_token");
    assert_eq!(error["level"], "error");
    // The hub keeps the socket open; the sidecar closes it itself at once.
    let close = sidecar.wait_event("ws_close");
    assert_eq!(close["initiator"], "sidecar");
    assert_eq!(close["reason"], "identify refused");

    let scheduled = sidecar.wait_count("reconnect_scheduled", 4);
    let steps: Vec<u64> = scheduled.iter().take(4).map(|l| ms(l, "step_ms")).collect();
    assert_eq!(steps, [100, 200, 400, 400]);
    let elapsed = started.elapsed();
    let attempts = hub
        .events()
        .iter()
        .filter(|e| matches!(e.kind, HubEventKind::Connected))
        .count();
    // 4 retries take at least 50 + 100 + 200 + 200 ms; a hot loop would make hundreds.
    assert!(
        attempts <= 2 + (elapsed.as_millis() as usize / 50),
        "{attempts} connections in {elapsed:?}"
    );
    assert!(!sidecar.stdout().contains("wrong-token") && !sidecar.stderr().contains("wrong-token"));
    assert!(!std::fs::read_to_string(&sidecar.log_path)
        .unwrap()
        .contains("wrong-token"));
}

#[test]
fn token_agent_mismatch_is_logged_as_such() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"agent_id": "someone-else"}),
    );
    let sidecar = Sidecar::start(config);
    let error = sidecar.wait_for(WAIT, |l| l["event"] == "hub_error");
    let error = error.expect("hub_error");
    // The token is valid, for another agent: the hub says which of the two is wrong.
    assert_eq!(error["error"], "token_agent_mismatch", "{error}");
}

#[test]
fn cooldown_close_1008_delays_the_next_attempt_by_at_least_its_seconds() {
    let hub = hub();
    let sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    let sent = Instant::now();
    hub.send(
        AGENT,
        RawFrame::Close(1008, "cooldown active: retry in 1s".into()),
    );
    let second = wait_identified(&hub, 2);
    let connected_again = hub
        .events()
        .into_iter()
        .find(|e| e.conn == second.conn && matches!(e.kind, HubEventKind::Connected))
        .expect("connected event of the second session");
    assert!(
        connected_again.at - sent >= Duration::from_secs(1),
        "came back after {:?}",
        connected_again.at - sent
    );
    let scheduled = sidecar.wait_event("reconnect_scheduled");
    assert_eq!(scheduled["cooldown"], true);
}

#[test]
fn connect_timeout_covers_a_silent_server_and_a_missing_identify_reply() {
    // A listener that never accepts: TCP completes in the backlog, the upgrade never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", silent.local_addr().unwrap());
    let sidecar = Sidecar::start(with(fast_config(&url), json!({"connect_timeout_ms": 300})));
    let error = sidecar.wait_for(WAIT, |l| {
        l["event"] == "ws_error" && l["stage"] == "connect"
    });
    assert!(error.is_some(), "{}", sidecar.dump());
    drop(sidecar);

    let hub = hub();
    hub.set_behaviour(Behaviour {
        answer_identify: false,
        ..hub.behaviour()
    });
    let sidecar = Sidecar::start(with(
        fast_config(&hub.ws_url()),
        json!({"connect_timeout_ms": 300}),
    ));
    let error = sidecar.wait_for(WAIT, |l| {
        l["event"] == "ws_error" && l["stage"] == "identify"
    });
    assert!(error.is_some(), "{}", sidecar.dump());
    hub.set_behaviour(Behaviour {
        answer_identify: true,
        ..hub.behaviour()
    });
    wait_identified(&hub, 1);
}
