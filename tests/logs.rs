//! The JSON-lines log: every line well formed and free of the token, a human line per event
//! on stdout, no line lost in a burst, and an unwritable log file that falls back to stderr
//! without stopping the sidecar.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::OpenOptionsExt;

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

#[test]
fn a_config_under_a_directory_whose_name_is_not_utf8_runs_and_logs_the_path_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let hub = hub();
    // "café" in Latin-1: the byte 0xE9 alone is not UTF-8. Every path in the config is
    // resolved against this directory, so every logged path holds it.
    let dir = tempfile::Builder::new()
        .prefix(std::ffi::OsStr::from_bytes(b"caf\xe9-"))
        .tempdir()
        .unwrap();
    assert!(dir.path().to_str().is_none());
    write_config(&dir.path().join("config.json"), &fast_config(&hub.ws_url()));
    let mut sidecar = Sidecar::start_in(dir, &["--config", "config.json"]);
    wait_identified(&hub, 1);
    let startup = sidecar.wait_event("startup");
    let config_file = startup["config_file"].as_str().unwrap();
    assert!(
        config_file.contains("caf\u{FFFD}-") && config_file.ends_with("/config.json"),
        "{config_file}"
    );
    assert!(startup["config"]["log_file"]
        .as_str()
        .is_some_and(|p| p.contains("caf\u{FFFD}-")));
    sidecar.signal(SIGTERM);
    assert_eq!(
        sidecar.wait_exit(WAIT).and_then(|s| s.code()),
        Some(0),
        "{}",
        sidecar.dump()
    );
    assert!(!sidecar.stderr().contains("panicked"), "{}", sidecar.dump());
    assert_eq!(sidecar.lines().last().unwrap()["phase"], "complete");
}

/// Starts the binary with `config`, stdout and (when `log_fifo`) the log file going into pipes
/// that nobody reads: the sidecar's writes block once the pipe's buffer is full. Returns the
/// process, its directory, the read ends (kept open, never read) and stderr's collector.
fn start_with_stuck_output(
    config: Value,
    log_fifo: bool,
) -> (
    std::process::Child,
    tempfile::TempDir,
    Vec<std::fs::File>,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    let mut held = Vec::new();
    if log_fifo {
        let fifo = dir.path().join("sidecar.log");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A reader that never reads: the sidecar can open the FIFO, and its writes fill it.
        held.push(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap(),
        );
    }
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors; each is owned by one File below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    held.push(read_end);
    let mut child = std::process::Command::new(bin())
        .args(["--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = collected.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stderr = stderr;
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, dir, held, collected)
}

/// Sends a burst of unknown frames (one debug line each) to the connected sidecar.
fn burst(hub: &DevHub, n: usize) {
    for i in 0..n {
        hub.send(
            AGENT,
            RawFrame::Text(json!({"type": "burst", "n": i, "pad": "x".repeat(200)}).to_string()),
        );
    }
}

/// SIGTERM, then how long the process took to exit (None: still running after `limit`).
/// SIGTERM: the sidecar exits 0 by its shutdown deadline (with room for a slow machine; a
/// shutdown blocked by its output would take until the limit of `terminate`).
fn stops_within_its_deadline(child: &mut std::process::Child, stderr: &std::sync::Mutex<String>) {
    let (took, code) = terminate(child, std::time::Duration::from_millis(SHUTDOWN_MS + 5000))
        .unwrap_or_else(|| panic!("still running after SIGTERM\n{}", stderr.lock().unwrap()));
    assert_eq!(code, 0, "{}", stderr.lock().unwrap());
    assert!(
        took < std::time::Duration::from_millis(SHUTDOWN_MS + 2000),
        "exit took {took:?}"
    );
}

fn terminate(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<(std::time::Duration, i32)> {
    let start = std::time::Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, SIGTERM) };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some((start.elapsed(), status.code().unwrap_or(-1)));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

const SHUTDOWN_MS: u64 = 1500;

/// A burst of thousands of frames on a loaded machine can hold a pong back (it queues behind
/// them on the socket) past the fast heartbeat timeout, and a session dropped meanwhile
/// loses the frames sent to it: these tests are about the log, so the heartbeat is patient.
fn stuck_output_timings() -> Value {
    json!({
        "shutdown_timeout_ms": SHUTDOWN_MS,
        "heartbeat_interval_ms": 5000,
        "heartbeat_timeout_ms": 10000,
    })
}

#[test]
fn a_stdout_nobody_reads_loses_no_log_file_line_and_shutdown_keeps_its_deadline() {
    let hub = hub();
    let config = with(fast_config(&hub.ws_url()), stuck_output_timings());
    let (mut child, dir, _held, stderr) = start_with_stuck_output(config, false);
    wait_identified(&hub, 1);
    const BURST: usize = 3000;
    burst(&hub, BURST);
    let log = dir.path().join("sidecar.log");
    let count = |event: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .count()
    };
    // The JSON log keeps up although stdout is stuck.
    eventually("the whole burst in the log file", || {
        count("frame_ignored") == BURST
    });
    stops_within_its_deadline(&mut child, &stderr);
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["phase"], "complete", "{last}");
    // The human lines stdout could not take are counted and said, not silently dropped.
    let dropped = last["stdout_lines_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "{last}");
    assert!(last.get("log_lines_lost").is_none(), "{last}");
    // The state file's last word counts them too (what `status` and `/metrics` show).
    let status: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("status.json")).unwrap()).unwrap();
    assert!(status["stopped_at"].is_string(), "{status}");
    assert!(
        status["log"]["stdout_lines_dropped"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );
}

#[test]
fn a_log_file_that_stops_taking_writes_loses_counted_lines_and_shutdown_keeps_its_deadline() {
    let hub = hub();
    let config = with(fast_config(&hub.ws_url()), stuck_output_timings());
    let (mut child, _dir, _held, stderr) = start_with_stuck_output(config, true);
    wait_identified(&hub, 1);
    // More than the FIFO's buffer (64 KiB), the writer's channel (1024) and the logger's
    // backlog (4096) hold together.
    burst(&hub, 8000);
    // A task id the sidecar refuses at once: its answer comes after the whole burst.
    assign(&hub, json!({"task_id": "../after-the-burst"}));
    eventually("the answer to the frame after the burst", || {
        hub.events().iter().any(|e| {
            matches!(&e.kind, HubEventKind::Frame { json, .. } if json["task_id"] == "../after-the-burst")
        })
    });
    stops_within_its_deadline(&mut child, &stderr);
    // The lines that could not be written are accounted for on stderr.
    let stderr = stderr.lock().unwrap().clone();
    let report: Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "log_lines_lost")
        .unwrap_or_else(|| panic!("no log_lines_lost on stderr:\n{stderr}"));
    assert!(report["count"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_log_file_that_takes_writes_again_says_how_many_lines_were_lost() {
    let hub = hub();
    let (mut child, _dir, held, stderr) = start_with_stuck_output(
        with(fast_config(&hub.ws_url()), stuck_output_timings()),
        true,
    );
    wait_identified(&hub, 1);
    burst(&hub, 8000);
    assign(&hub, json!({"task_id": "../after-the-burst"}));
    eventually("the answer to the frame after the burst", || {
        hub.events().iter().any(|e| {
            matches!(&e.kind, HubEventKind::Frame { json, .. } if json["task_id"] == "../after-the-burst")
        })
    });
    // The log's reader comes back: everything the FIFO gets from now on is read.
    let mut fifo = held.into_iter().next().unwrap();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match fifo.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
                // Non-blocking: nothing there yet.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
    });
    eventually("log_lines_lost in the log", || {
        text.lock()
            .unwrap()
            .contains("\"event\":\"log_lines_lost\"")
    });
    let report: Value = text
        .lock()
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "log_lines_lost")
        .unwrap();
    assert!(report["count"].as_u64().unwrap() > 0, "{report}");
    assert!(report["first_ts"].as_str().unwrap() <= report["last_ts"].as_str().unwrap());
    let (_, code) = terminate(&mut child, std::time::Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running after SIGTERM\n{}", stderr.lock().unwrap()));
    assert_eq!(code, 0);
}
