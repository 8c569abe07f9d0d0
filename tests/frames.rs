//! Hostile and odd frames from the hub: each is logged precisely, the sidecar stays up, and
//! the session survives unless the frame is over `max_frame_bytes`.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::{json, Value};

/// Sends `frame`, then waits for a log line matching `pred` and for two more pings on the
/// same connection: the session is still alive after it.
fn survives(
    hub: &DevHub,
    sidecar: &Sidecar,
    frame: RawFrame,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let before = frames_of(hub, "ping").len();
    assert_eq!(hub.send(AGENT, frame), 1);
    let line = sidecar
        .wait_for(WAIT, &pred)
        .unwrap_or_else(|| panic!("no matching log line\n{}", sidecar.dump()));
    wait_frames(hub, "ping", before + 2);
    assert_eq!(
        identified(hub).len(),
        1,
        "the session was replaced\n{}",
        sidecar.dump()
    );
    line
}

fn rejected_with(reason: &'static str) -> impl Fn(&Value) -> bool {
    move |l| {
        l["event"] == "frame_rejected" && l["reason"].as_str().is_some_and(|r| r.contains(reason))
    }
}

#[test]
fn bad_frames_are_logged_and_the_session_survives() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"heartbeat_interval_ms": 50}),
    );
    let mut sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);

    let line = survives(
        &hub,
        &sidecar,
        RawFrame::Text("{not json".into()),
        rejected_with("invalid JSON"),
    );
    assert_eq!(line["preview"], "{not json");
    survives(
        &hub,
        &sidecar,
        RawFrame::Text("[1,2,3]".into()),
        rejected_with("not a JSON object"),
    );
    survives(
        &hub,
        &sidecar,
        RawFrame::Text(r#"{"no_type":1}"#.into()),
        rejected_with("no \"type\""),
    );
    survives(
        &hub,
        &sidecar,
        RawFrame::Binary(vec![0, 159, 146, 150]),
        rejected_with("binary"),
    );
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    survives(
        &hub,
        &sidecar,
        RawFrame::Text(deep),
        rejected_with("recursion limit"),
    );
    survives(
        &hub,
        &sidecar,
        RawFrame::Text(r#"{"type":"task_assign","description":"no id"}"#.into()),
        rejected_with("task_assign without task_id"),
    );
    let line = survives(
        &hub,
        &sidecar,
        RawFrame::Text(r#"{"type":"channel_message","text":"hi"}"#.into()),
        |l| l["event"] == "frame_ignored",
    );
    assert_eq!(line["frame"], "channel_message");
    assert_eq!(line["level"], "debug");
    assert!(sidecar.is_running());
}

#[test]
fn large_and_fragmented_messages_within_the_limit_are_accepted() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);

    let big = json!({"type": "room_message", "from": "ann", "text": "x".repeat(1 << 20),
        "seq": 1, "message_type": "chat"})
    .to_string();
    survives(&hub, &sidecar, RawFrame::Text(big), |l| {
        l["event"] == "room_message_received" && l["bytes"] == 1 << 20
    });

    let fragmented = json!({"type": "fragmented_hello", "body": "y".repeat(10_000)}).to_string();
    survives(
        &hub,
        &sidecar,
        RawFrame::FragmentedText(fragmented, 1000),
        |l| l["event"] == "frame_ignored" && l["frame"] == "fragmented_hello",
    );
    assert!(sidecar.is_running());
}

#[test]
fn a_frame_over_max_frame_bytes_drops_the_session_and_the_sidecar_reconnects() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"max_frame_bytes": 65536}),
    );
    let mut sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);

    let huge = json!({"type": "room_message", "body": "z".repeat(100_000)}).to_string();
    hub.send(AGENT, RawFrame::Text(huge.clone()));
    let line = sidecar.wait_event("frame_too_large");
    assert_eq!(line["max_frame_bytes"], 65536);
    wait_identified(&hub, 2);

    // The same size in fragments is caught while reassembling.
    hub.send(AGENT, RawFrame::FragmentedText(huge, 16_000));
    let lines = sidecar.wait_count("frame_too_large", 2);
    assert!(lines[1]["bytes"].as_u64().unwrap() > 65536);
    wait_identified(&hub, 3);
    assert!(sidecar.is_running());
}
