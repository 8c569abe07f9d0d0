//! The ResourceActor in the real binary against the dev hub: `resource_report` frames at
//! the configured interval, with sane numbers, that the hub's validation accepts; none with
//! the interval set to 0.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::{json, Value};

const INTERVAL_MS: u64 = 200;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn number(frame: &Value, key: &str) -> f64 {
    frame[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {frame}"))
}

#[test]
fn reports_come_at_the_interval_with_sane_numbers_and_the_hub_accepts_them() {
    let hub = hub();
    let started_ms = now_ms();
    let mut sidecar = Sidecar::start(with(
        fast_config(&hub.ws_url()),
        json!({"resource_report_interval_ms": INTERVAL_MS}),
    ));
    let frames = wait_frames(&hub, "resource_report", 5);
    let frames = &frames[..5];

    for f in frames {
        assert_eq!(f["protocol_version"], 1, "{f}");
        let total = number(f, "ram_total_bytes");
        let used = number(f, "ram_used_bytes");
        assert!(total > 16.0 * 1024.0 * 1024.0, "RAM total {total} in {f}");
        assert!(
            used > 0.0 && used <= total,
            "RAM used {used} of {total} in {f}"
        );
        let ts = number(f, "timestamp") as u64;
        assert!(ts >= started_ms && ts <= now_ms(), "timestamp {ts} in {f}");
        if let (Some(vu), Some(vt)) = (
            f["vram_used_bytes"].as_f64(),
            f["vram_total_bytes"].as_f64(),
        ) {
            assert!(vu <= vt, "{f}");
        }
        let cpu = number(f, "cpu_percent");
        assert!((0.0..=100.0).contains(&cpu), "cpu_percent {cpu} in {f}");
        // Only the protocol's fields.
        for key in f.as_object().unwrap().keys() {
            assert!(
                [
                    "type",
                    "protocol_version",
                    "cpu_percent",
                    "ram_used_bytes",
                    "ram_total_bytes",
                    "vram_used_bytes",
                    "vram_total_bytes",
                    "timestamp"
                ]
                .contains(&key.as_str()),
                "unexpected {key} in {f}"
            );
        }
    }

    // At the interval: the first one interval after the identify (the reading at the
    // identify is the baseline of its CPU %), then one per interval. On average no closer
    // than half the interval (one late reading does not fail this), and never a burst.
    let identified_at = wait_identified(&hub, 1).at;
    let first_at = hub
        .events()
        .into_iter()
        .find(|e| e.frame_type() == Some("resource_report"))
        .unwrap()
        .at;
    let after = first_at.duration_since(identified_at);
    assert!(
        after.as_millis() as u64 >= INTERVAL_MS / 2,
        "first report {after:?} after identify"
    );
    let ts: Vec<u64> = frames
        .iter()
        .map(|f| number(f, "timestamp") as u64)
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    let mean_gap = (ts[4] - ts[0]) / 4;
    assert!(
        mean_gap >= INTERVAL_MS / 2,
        "mean gap {mean_gap} ms: {ts:?}"
    );

    // Accepted: the hub answered none of them with an error (validation_failed,
    // unknown_message_type), and the session was never dropped for it.
    let errors = sidecar.events("hub_error");
    assert!(
        errors.is_empty(),
        "hub errors: {errors:?}\n{}",
        sidecar.dump()
    );
    assert_eq!(hub.violations(AGENT), 0, "{:?}", hub.validation_failures());
    assert_eq!(identified(&hub).len(), 1);
    // The hub kept the numbers for its routing.
    let kept = hub
        .resource_report(AGENT)
        .expect("the hub keeps the last report");
    assert!(
        kept["ram_total_bytes"].as_f64().is_some_and(|t| t > 0.0),
        "{kept}"
    );
    assert!(kept["cpu_percent"].is_number(), "{kept}");

    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn reports_stop_with_the_session_and_start_again_with_the_next() {
    let hub = hub();
    let mut sidecar = Sidecar::start(with(
        fast_config(&hub.ws_url()),
        json!({"resource_report_interval_ms": INTERVAL_MS}),
    ));
    wait_frames(&hub, "resource_report", 2);
    assert_eq!(hub.kill_connections(AGENT), 1);
    let second = wait_identified(&hub, 2);
    // Reports on the new connection, and none on the old one after it was gone.
    eventually("reports on the second session", || {
        conn_reports(&hub, second.conn).len() >= 2
    });
    let on_second = conn_reports(&hub, second.conn);
    assert!(on_second[0]["cpu_percent"].is_number(), "{}", on_second[0]);
    let first_conn = identified(&hub)[0].conn;
    let disconnected = hub
        .events()
        .into_iter()
        .position(|e| e.conn == first_conn && matches!(e.kind, HubEventKind::Disconnected));
    let last_on_first = hub
        .events()
        .into_iter()
        .rposition(|e| e.conn == first_conn && e.frame_type() == Some("resource_report"));
    assert!(
        last_on_first < disconnected,
        "a report after the connection was gone"
    );

    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn an_interval_of_zero_sends_none() {
    let hub = hub();
    let mut sidecar = Sidecar::start(with(
        fast_config(&hub.ws_url()),
        json!({"resource_report_interval_ms": 0}),
    ));
    // Five heartbeats at 200 ms: a reporting sidecar would have sent several reports by then.
    wait_frames(&hub, "ping", 5);
    assert!(frames_of(&hub, "resource_report").is_empty());
    let startup = sidecar.wait_event("startup");
    assert_eq!(startup["config"]["resource_report_interval_ms"], 0);

    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

/// `resource_report` frames the hub received on connection `conn`.
fn conn_reports(hub: &DevHub, conn: u64) -> Vec<Value> {
    hub.events()
        .into_iter()
        .filter(|e| e.conn == conn)
        .filter_map(|e| match e.kind {
            HubEventKind::Frame { json, .. } if json["type"] == "resource_report" => Some(json),
            _ => None,
        })
        .collect()
}
