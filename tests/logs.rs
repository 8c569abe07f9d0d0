//! The JSON-lines log: every line well formed and free of the token, a human line per event
//! on stdout, no line lost in a burst, and an unwritable log file that falls back to stderr
//! without stopping the sidecar.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::{json, Value};

fn assert_well_formed(line: &Value) {
    let ts = line["ts"]
        .as_str()
        .unwrap_or_else(|| panic!("no ts: {line}"));
    // RFC 3339, UTC, milliseconds: 2026-02-10T05:48:28.120Z
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(
        ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.',
        "{ts}"
    );
    assert!(
        ["debug", "info", "warn", "error"].contains(&line["level"].as_str().unwrap()),
        "{line}"
    );
    assert!(
        line["event"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
    assert_eq!(line["agent_id"], AGENT);
}

/// The first four keys, in the order they are written: ts, level, event, agent_id.
fn assert_key_order(raw: &str) {
    let at = |key: &str| raw.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
    assert!(raw.starts_with("{\"ts\":"), "{raw}");
    assert!(
        at("level") < at("event") && at("event") < at("agent_id"),
        "key order of {raw}"
    );
}

#[test]
fn every_line_is_well_formed_and_the_token_appears_nowhere() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    hub.send(AGENT, RawFrame::Text("{oops".into()));
    sidecar.wait_event("frame_rejected");
    sidecar.wait_count("heartbeat", 2);
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));

    let raw = std::fs::read_to_string(&sidecar.log_path).unwrap();
    let lines = sidecar.lines();
    assert!(lines.len() > 10);
    lines.iter().for_each(assert_well_formed);
    raw.lines().for_each(assert_key_order);
    for event in [
        "startup",
        "ready",
        "ws_connecting",
        "ws_open",
        "identify_sent",
        "identified",
        "shutdown",
    ] {
        assert!(lines.iter().any(|l| l["event"] == event), "no {event} line");
    }
    let startup = &lines.iter().find(|l| l["event"] == "startup").unwrap()["config"];
    assert_eq!(startup["token"], "<redacted>");
    for (what, text) in [
        ("log", raw),
        ("stdout", sidecar.stdout()),
        ("stderr", sidecar.stderr()),
    ] {
        assert!(!text.contains(TOKEN), "token in {what}");
    }
    // One human line per event on stdout.
    let stdout = sidecar.stdout();
    assert_eq!(stdout.lines().count(), lines.len(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.contains(" INFO  identified ")),
        "{stdout}"
    );
}

#[test]
fn a_burst_of_events_loses_no_line() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    const BURST: usize = 5000;
    for i in 0..BURST {
        hub.send(
            AGENT,
            RawFrame::Text(json!({"type": "burst", "n": i}).to_string()),
        );
    }
    sidecar.wait_count("frame_ignored", BURST);
    // The burst did not starve the heartbeat (actix yields between stream items).
    assert!(
        sidecar.events("heartbeat_timeout").is_empty(),
        "{}",
        sidecar.dump()
    );
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    assert_eq!(sidecar.events("frame_ignored").len(), BURST);
    assert_eq!(sidecar.lines().last().unwrap()["phase"], "complete");
}

#[test]
fn an_unwritable_log_file_falls_back_to_stderr_and_the_sidecar_keeps_working() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the log's directory should be: the log cannot be created.
    std::fs::write(dir.path().join("blocker"), "not a directory").unwrap();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"log_file": "blocker/sidecar.log"}),
    );
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    let mut sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
    eventually("JSON log lines on stderr", || {
        sidecar.stderr().contains("\"event\":\"identified\"")
    });
    let stderr = sidecar.stderr();
    assert!(
        stderr.contains("\"event\":\"log_file_unwritable\""),
        "{stderr}"
    );
    wait_frames(&hub, "ping", 3);
    assert!(sidecar.is_running());
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    assert!(sidecar.stderr().contains("\"phase\":\"complete\""));
}
