//! Running as a service: systemd's notify protocol on a real datagram socket,
//! `check-config`, log rotation under a flood, `status` through the process's life, and the
//! metrics endpoint over real HTTP.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`; collects what arrives.
struct FakeSystemd {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    received: Vec<(Instant, String)>,
}

impl FakeSystemd {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        FakeSystemd {
            socket,
            _dir: dir,
            path,
            received: Vec::new(),
        }
    }

    /// Reads until a message containing `needle` arrives; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((_, m)) = self.received.iter().find(|(_, m)| m.contains(needle)) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from the sidecar; got {:?}",
                self.received
            );
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.received.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
    }

    /// Reads until `n` messages containing `needle` have arrived.
    fn wait_count(&mut self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self
            .received
            .iter()
            .filter(|(_, m)| m.contains(needle))
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} {needle:?}; got {:?}",
                self.received
            );
            let mut buf = [0u8; 4096];
            if let Ok(len) = self.socket.recv(&mut buf) {
                self.received.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..len]).into_owned(),
                ));
            }
        }
    }
}

fn start_with_env(config: Value, env: &[(&str, String)]) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    Sidecar::start_with_env(dir, &["--config", path.to_str().unwrap()], env)
}

#[test]
fn systemd_gets_ready_status_watchdog_and_stopping() {
    let hub = hub();
    let mut systemd = FakeSystemd::new();
    let env = [
        ("NOTIFY_SOCKET", systemd.path.display().to_string()),
        ("WATCHDOG_USEC", "200000".to_string()),
    ];
    let mut sidecar = start_with_env(fast_config(&hub.ws_url()), &env);
    systemd.wait_for("READY=1");
    let status = systemd.wait_for("identified to ws://");
    assert!(status.starts_with("STATUS="), "{status}");
    // Pings keep coming, at about half the watchdog interval.
    systemd.wait_count("WATCHDOG=1", 4);
    let pings: Vec<Instant> = systemd
        .received
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(60)),
        "pinged faster than half of 200 ms"
    );
    sidecar.signal(SIGTERM);
    systemd.wait_for("STOPPING=1");
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    sidecar.wait_event("heartbeat");
    assert!(sidecar.events("watchdog_enabled").is_empty());
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

fn check_config(config: &Value) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, config);
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_passes_a_good_config_and_names_each_problem_of_a_bad_one() {
    let good = with(
        fast_config("wss://hub.example:4000/ws"),
        json!({"wake_command": "sh -c 'echo $TASK_ID'"}),
    );
    let (code, stdout, stderr) = check_config(&good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("config OK"));
    let effective: Value = serde_json::from_str(
        stdout
            .rsplit_once("}\n")
            .map(|(j, _)| format!("{j}}}"))
            .unwrap()
            .as_str(),
    )
    .unwrap();
    assert_eq!(effective["token"], "<redacted>");
    assert_eq!(effective["heartbeat_interval_ms"], 200);
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    let blocker = tempfile::NamedTempFile::new().unwrap();
    let bad = with(
        fast_config("ws://hub:4000/ws"),
        json!({
            "wake_command": "no-such-agent-program --run",
            "results_dir": blocker.path().join("results"),
        }),
    );
    let (code, _, stderr) = check_config(&bad);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("\"wake_command\"") && stderr.contains("no-such-agent-program"),
        "{stderr}"
    );
    assert!(stderr.contains("\"results_dir\""), "{stderr}");

    let (code, _, stderr) = check_config(&json!({"agent_id": "a"}));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("\"token\" is missing"), "{stderr}");
}

#[test]
fn rotation_under_a_flood_loses_no_line_tears_none_and_keeps_at_most_log_keep_files() {
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"log_max_bytes": 50_000, "log_keep": 2}),
    );
    let mut sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    const FLOOD: u64 = 3000;
    // Each frame's type carries its number, so the log shows which ones it kept.
    for n in 0..FLOOD {
        hub.send(
            AGENT,
            RawFrame::Text(json!({"type": format!("flood-{n}")}).to_string()),
        );
    }
    sidecar
        .wait_for(WAIT, |l| l["frame"] == format!("flood-{}", FLOOD - 1))
        .expect("the whole flood logged");
    sidecar.signal(SIGTERM);
    sidecar.wait_exit(WAIT).expect("exits");
    let dir = sidecar.dir.path();
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("sidecar.log"))
        .collect();
    logs.sort();
    assert_eq!(logs, ["sidecar.log", "sidecar.log.1", "sidecar.log.2"]);
    let mut seen = Vec::new();
    for name in ["sidecar.log.2", "sidecar.log.1", "sidecar.log"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.len() <= 50_000, "{name} is {} bytes", text.len());
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("torn line in {name} ({e}): {line}"));
            if let Some(n) = v["frame"].as_str().and_then(|f| f.strip_prefix("flood-")) {
                seen.push(n.parse::<u64>().unwrap());
            }
        }
    }
    // The kept lines are the newest ones, without a gap, up to the end of the flood.
    assert_eq!(*seen.last().unwrap(), FLOOD - 1);
    assert!(seen.len() > 100, "only {} flood lines kept", seen.len());
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "a line is missing between rotations"
    );
    assert_eq!(sidecar.lines().last().unwrap()["phase"], "complete");
}

fn status(sidecar: &Sidecar, json: bool) -> (Option<i32>, String) {
    let config = sidecar.dir.path().join("config.json");
    let mut args = vec!["status", "--config", config.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn status_reports_the_running_sidecar_its_reconnects_and_staleness_after_a_kill() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    eventually("status to show the identified session", || {
        let (code, out) = status(&sidecar, false);
        code == Some(0) && out.contains("running") && out.contains("identified to ws://")
    });
    let (_, out) = status(&sidecar, false);
    assert!(
        out.contains("last pong:") && out.contains("outbox 0"),
        "{out}"
    );

    hub.kill_connections(AGENT);
    wait_identified(&hub, 2);
    eventually("a reconnect counted", || {
        let (_, out) = status(&sidecar, true);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        v["reconnects"].as_u64() >= Some(1)
            && v["session"]["state"] == "identified"
            && v["liveness"] == "running"
    });

    sidecar.signal(SIGKILL);
    sidecar.wait_exit(WAIT);
    let (code, out) = status(&sidecar, false);
    assert_eq!(code, Some(3));
    assert!(
        out.contains("NOT RUNNING") && out.contains("stale"),
        "{out}"
    );
}

#[test]
fn status_after_an_orderly_stop_says_stopped() {
    let hub = hub();
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    let (code, out) = status(&sidecar, false);
    assert_eq!(code, Some(3));
    assert!(out.contains("STOPPED"), "{out}");
}

/// A plain HTTP/1.1 GET on loopback: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
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

#[test]
fn metrics_health_and_readiness_over_real_http() {
    let hub = hub();
    let hub_addr = hub.addr();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let sidecar = Sidecar::start(with(
        fast_config(&hub.ws_url()),
        json!({"metrics_listen": addr}),
    ));
    wait_identified(&hub, 1);
    sidecar.wait_event("metrics_listening");
    assert_eq!(get(&addr, "/healthz").0, 200);
    eventually("ready once identified", || get(&addr, "/readyz").0 == 200);
    eventually("a heartbeat round trip in the metrics", || {
        get(&addr, "/metrics")
            .1
            .contains("agentcom_sidecar_heartbeat_rtt_seconds")
    });
    let (code, text) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    for metric in [
        "agentcom_sidecar_up 1",
        "agentcom_sidecar_session_state{state=\"identified\"} 1",
        "agentcom_sidecar_reconnects_total 0",
        "agentcom_sidecar_outbox_length 0",
        "agentcom_sidecar_tasks_total{outcome=\"complete\"} 0",
        "agentcom_sidecar_log_lines_dropped_total 0",
        "agentcom_sidecar_stdout_lines_dropped_total 0",
    ] {
        assert!(text.contains(metric), "no {metric:?} in\n{text}");
    }
    hub.stop();
    eventually("not ready without a hub", || get(&addr, "/readyz").0 == 503);
    let _ = hub_addr;
    eventually("the reconnects counted", || {
        !get(&addr, "/metrics")
            .1
            .contains("agentcom_sidecar_reconnects_total 0")
    });
}

#[test]
fn a_public_metrics_address_needs_to_be_asked_for() {
    let (code, _, stderr) = check_config(&with(
        fast_config("ws://h/ws"),
        json!({"metrics_listen": "0.0.0.0:9464"}),
    ));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("\"metrics_listen\"") && stderr.contains("metrics_public"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config(&with(
        fast_config("ws://h/ws"),
        json!({"metrics_listen": "0.0.0.0:9464", "metrics_public": true}),
    ));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_metrics_port_in_use_is_logged_and_the_sidecar_keeps_working() {
    let hub = hub();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut sidecar = Sidecar::start(with(
        fast_config(&hub.ws_url()),
        json!({ "metrics_listen": addr }),
    ));
    let failed = sidecar.wait_event("metrics_bind_failed");
    assert_eq!(failed["address"], addr);
    wait_identified(&hub, 1);
    sidecar.wait_event("heartbeat");
    assert!(sidecar.is_running());
}
