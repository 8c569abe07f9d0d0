//! The hub session against the real dev hub: identify, heartbeat, WebSocket control frames,
//! and coming back after a hub restart.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn identify_is_first_and_every_frame_carries_protocol_version() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"name": "Builder", "capabilities": ["code", "review"]}),
    );
    let sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    wait_frames(&hub, "ping", 3);

    let frames: Vec<_> = hub
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            HubEventKind::Frame { json, .. } => Some(json),
            _ => None,
        })
        .collect();
    let identify = &frames[0];
    assert_eq!(identify["type"], "identify", "first frame: {identify}");
    assert_eq!(identify["agent_id"], AGENT);
    assert_eq!(identify["token"], TOKEN);
    assert_eq!(identify["name"], "Builder");
    assert_eq!(identify["status"], "idle");
    assert_eq!(identify["capabilities"], json!(["code", "review"]));
    assert_eq!(identify["client_type"], "sidecar");
    for f in &frames {
        assert_eq!(
            f["protocol_version"], 1,
            "frame without protocol_version: {f}"
        );
    }
    sidecar.wait_event("identified");
}

#[test]
fn heartbeat_pings_at_the_configured_interval() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"heartbeat_interval_ms": 150}),
    );
    let _sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    wait_frames(&hub, "ping", 6);
    let times: Vec<_> = hub
        .events()
        .into_iter()
        .filter(|e| e.frame_type() == Some("ping"))
        .map(|e| e.at)
        .collect();
    // The first ping goes out at identify; the rest follow the interval.
    for pair in times[1..6].windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(120) && gap <= Duration::from_millis(1500),
            "pings {gap:?} apart with a 150 ms interval"
        );
    }
}

#[test]
fn websocket_ping_is_answered_with_pong_and_hub_close_is_echoed() {
    let hub = hub();
    let sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    let first = wait_identified(&hub, 1);
    assert_eq!(
        hub.send(AGENT, RawFrame::Ping(b"are-you-there".to_vec())),
        1
    );
    eventually("a WebSocket pong with the ping's payload", || {
        hub.events()
            .iter()
            .any(|e| matches!(&e.kind, HubEventKind::WsPong(p) if p == b"are-you-there"))
    });

    hub.send(AGENT, RawFrame::Close(4000, "hub going away".into()));
    eventually("the sidecar's echo of the hub's close", || {
        saw_close(&hub, first.conn, 4000)
    });
    let close = sidecar.wait_for(WAIT, |l| {
        l["event"] == "ws_close" && l["initiator"] == "hub"
    });
    assert_eq!(close.expect("ws_close logged")["code"], 4000);
    // …and it comes back on a new connection.
    let second = wait_identified(&hub, 2);
    assert_ne!(second.conn, first.conn);
}

#[test]
fn hub_restart_is_followed_by_a_new_identify() {
    let hub = hub();
    let addr = hub.addr();
    let sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    hub.stop();
    sidecar.wait_event("reconnect_scheduled");

    let hub = DevHub::start(DevHubOptions {
        listen: addr,
        tokens: Some([(AGENT.to_string(), TOKEN.to_string())].into()),
        ..DevHubOptions::default()
    })
    .expect("hub restarts on the same port");
    wait_identified(&hub, 1);
    sidecar.wait_count("identified", 2);
}
