//! The hub's refusals of the agent are visible beyond the log: a wrong token or a lockout
//! shows in `status`, `status --json`, `/readyz` and `/metrics` within a second, and is
//! cleared once an identify succeeds. A real sidecar process against the dev hub.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A loopback address with a free port, for `metrics_listen`.
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// A plain HTTP/1.1 GET on loopback: (status code, body); (0, "") when nothing answers yet.
fn get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// `agentcom-sidecar status [--json]` for this sidecar's config: its output.
fn status(sidecar: &Sidecar, json: bool) -> String {
    let config = sidecar.dir.path().join("config.json");
    let mut args = vec!["status", "--config", config.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    let out = Command::new(bin()).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_json(sidecar: &Sidecar) -> Value {
    serde_json::from_str(&status(sidecar, true)).unwrap_or(Value::Null)
}

/// Waits, at most `within`, until both the state file and `/readyz` name `error`.
fn shown_within(sidecar: &Sidecar, addr: &str, error: &str, within: Duration) -> (Value, String) {
    let deadline = Instant::now() + within;
    loop {
        let state = status_json(sidecar);
        let (code, body) = get(addr, "/readyz");
        if state["session"]["last_error"]["error"] == error && code == 503 && body.contains(error) {
            return (state, body);
        }
        assert!(
            Instant::now() < deadline,
            "{error} not shown within {within:?}: status {state}, /readyz {code} {body:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(addr: &str, line: &str) -> bool {
    get(addr, "/metrics").1.lines().any(|l| l == line)
}

#[test]
fn a_wrong_token_shows_in_status_readyz_and_metrics_until_the_token_is_fixed() {
    // An open dev hub (no tokens file), with an agent registered as `register` does it: its
    // token is checked all the same.
    let hub = DevHub::start(DevHubOptions::default()).expect("dev hub starts");
    let token = hub.register_agent("newbie").expect("registered");
    let addr = free_addr();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"agent_id": "newbie", "token": "a-mistyped-token", "metrics_listen": addr}),
    );
    let mut sidecar = Sidecar::start(config.clone());
    let refused = sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "hub_error" && l["error"] == "invalid_token"
        })
        .unwrap_or_else(|| panic!("no invalid_token\n{}", sidecar.dump()));
    let (state, body) = shown_within(&sidecar, &addr, "invalid_token", Duration::from_secs(1));
    assert_ne!(state["session"]["state"], "identified", "{state}");
    assert!(
        state["session"]["last_error"]["since"].is_string(),
        "{state}"
    );
    assert!(
        state["session"]["last_error"]["cooldown_until"].is_null(),
        "{state}"
    );
    assert!(body.contains("check token"), "{body}");
    assert!(refused["agent_id_sent"] == "newbie", "{refused}");

    let text = status(&sidecar, false);
    let session_line = text.lines().find(|l| l.contains("session:")).unwrap();
    assert_eq!(session_line.matches("(attempt").count(), 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("hub says:") && l.contains("invalid_token")),
        "{text}"
    );
    assert!(metric(
        &addr,
        "agentcom_sidecar_hub_refused{reason=\"invalid_token\"} 1"
    ));
    assert!(
        !metric(
            &addr,
            "agentcom_sidecar_hub_refusals_total{reason=\"invalid_token\"} 0"
        ),
        "{}",
        get(&addr, "/metrics").1
    );
    assert!(metric(&addr, "agentcom_sidecar_up 0"));

    // Fixed: the right token, and a restart.
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    write_config(
        &sidecar.dir.path().join("config.json"),
        &with(config, json!({"token": token})),
    );
    sidecar.restart();
    eventually("identified with the right token, refusal gone", || {
        let state = status_json(&sidecar);
        state["liveness"] == "running"
            && state["session"]["state"] == "identified"
            && state["session"]["last_error"].is_null()
    });
    eventually("ready", || {
        get(&addr, "/readyz") == (200, "identified\n".into())
    });
    assert!(metric(
        &addr,
        "agentcom_sidecar_hub_refused{reason=\"invalid_token\"} 0"
    ));
    assert!(!status(&sidecar, false).contains("hub says:"));
}

#[test]
fn a_lockout_shows_its_cooldown_and_clears_once_identified() {
    let cooldown = Duration::from_secs(4);
    let hub = hub_with(
        HubTimings::default(),
        HubLimits {
            violation_threshold: 3,
            cooldowns: [cooldown, cooldown * 2, cooldown * 4],
            ..HubLimits::default()
        },
    );
    lock_out(&hub, 3);
    let locked_at = Instant::now();
    let addr = free_addr();
    let sidecar = Sidecar::start(with(
        fast_config(&hub.ws_url()),
        json!({"metrics_listen": addr}),
    ));
    sidecar.wait_event("hub_lockout");
    let (state, body) = shown_within(&sidecar, &addr, "hub_lockout", Duration::from_secs(1));
    let refusal = &state["session"]["last_error"];
    assert!(
        refusal["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("cooldown active: retry in")),
        "{state}"
    );
    assert!(refusal["cooldown_until"].is_string(), "{state}");
    assert!(body.contains("no attempt before"), "{body}");
    assert!(
        status(&sidecar, false)
            .lines()
            .any(|l| l.contains("hub says:") && l.contains("no attempt before")),
        "{}",
        status(&sidecar, false)
    );
    assert!(metric(
        &addr,
        "agentcom_sidecar_hub_refused{reason=\"hub_lockout\"} 1"
    ));

    // The cooldown waited out, the identify succeeds and the refusal is gone.
    wait_identified(&hub, 2);
    assert!(locked_at.elapsed() >= cooldown - Duration::from_secs(1));
    eventually("the refusal cleared", || {
        let state = status_json(&sidecar);
        state["session"]["state"] == "identified" && state["session"]["last_error"].is_null()
    });
    eventually("ready", || get(&addr, "/readyz").0 == 200);
    assert!(metric(
        &addr,
        "agentcom_sidecar_hub_refused{reason=\"hub_lockout\"} 0"
    ));
    assert!(metric(
        &addr,
        "agentcom_sidecar_hub_refusals_total{reason=\"hub_lockout\"} 1"
    ));
}
