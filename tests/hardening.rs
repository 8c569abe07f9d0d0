//! What a hostile neighbour, a redirect or a flood can do (docs/usage/security.md): each
//! test runs the real binary and shows the attack failing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// An agent that confirms and writes its result at once.
const QUICK_AGENT: &str = r#"
touch "$RESULTS_DIR/$TASK_ID.started"
printf '{"status":"success","output":"done"}' > "$RESULTS_DIR/.$TASK_ID.tmp"
mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json"
"#;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Runs the binary with `args` to its end (at most [`WAIT`]); (exit code, stdout, stderr).
fn run_bin(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), out, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Item 1: 300 idle connections to the metrics endpoint, under a descriptor limit of 64 that
/// cannot be raised: the endpoint holds only a few, and a result the agent finished meanwhile
/// is reported as the success it is, its agent started once.
#[test]
fn a_connection_flood_on_the_metrics_port_does_not_fail_a_finished_task() {
    let hub = hub();
    let port = free_port();
    let sidecar = sidecar_with_script_via(
        &hub,
        QUICK_AGENT,
        json!({"metrics_listen": format!("127.0.0.1:{port}")}),
        &["sh", "-c", "ulimit -n 64 && exec \"$@\"", "sh"],
        &[],
    );
    sidecar.wait_event("metrics_listening");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let flood: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                (0..30)
                    .filter_map(|_| {
                        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let held: Vec<TcpStream> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(!held.is_empty(), "no connection to the metrics endpoint");
    let task_id = submit(&hub, json!({"description": "work under a flood"}));
    let complete = wait_task_frame(&hub, "task_complete", &task_id, 1);
    assert_eq!(complete["result"]["status"], "success", "{complete}");
    assert!(task_frames(&hub, "task_failed", &task_id).is_empty());
    assert_eq!(wake_attempts(&sidecar, &task_id), 1);
    drop(held);
}

/// Item 1: the soft descriptor limit is raised to the hard one at start.
#[test]
fn the_soft_descriptor_limit_is_raised_at_start() {
    let hub = hub();
    let sidecar = sidecar_with_script_via(
        &hub,
        QUICK_AGENT,
        json!({}),
        &["sh", "-c", "ulimit -S -n 100 && exec \"$@\"", "sh"],
        &[],
    );
    let raised = sidecar.wait_event("fd_limit_raised");
    assert_eq!(raised["from"], 100, "{raised}");
    assert!(raised["to"].as_u64().unwrap() > 100, "{raised}");
}

/// Item 2: the demo's directory is new, private and not named after anything guessable.
#[test]
fn the_demo_works_in_a_fresh_private_directory_with_a_random_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    let dir = loop {
        let mut buf = [0u8; 4096];
        let n = stdout.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(rest) = seen.split("config and log in ").nth(1) {
            if let Some(dir) = rest.split(';').next().filter(|_| rest.contains(';')) {
                break std::path::PathBuf::from(dir);
            }
        }
        assert!(
            n > 0 && Instant::now() < deadline,
            "no directory line: {seen}"
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(dir.parent(), Some(tmp.path()), "{seen}");
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(!name.contains(&pid.to_string()), "guessable name {name}");
    assert!(name.len() >= "agentcom-sidecar-demo-".len() + 16, "{name}");
    assert_eq!(mode(&dir), 0o700);
}

/// Item 3: the agent's environment has none of the service manager's or credential
/// variables of the sidecar's, and keeps the rest.
#[test]
fn the_agent_does_not_inherit_credentials_or_the_service_managers_variables() {
    let hub = hub();
    let script = format!("env > \"$RESULTS_DIR/../agent-env\"\n{QUICK_AGENT}");
    let private = [
        (
            "CREDENTIALS_DIRECTORY",
            "/run/credentials/agentcom-sidecar@a.service",
        ),
        ("NOTIFY_SOCKET", "/run/systemd/notify-test-absent"),
        ("WATCHDOG_PID", "1"),
        ("LISTEN_FDS", "1"),
        ("NODE_CHANNEL_FD", "3"),
    ];
    let mut env: Vec<(&str, String)> = private.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.push(("OPERATOR_SETTING", "kept".to_string()));
    let sidecar = sidecar_with_script_via(&hub, &script, json!({}), &[], &env);
    let task_id = submit(&hub, json!({"description": "look around"}));
    wait_task_frame(&hub, "task_complete", &task_id, 1);
    let seen = std::fs::read_to_string(sidecar.dir.path().join("agent-env")).unwrap();
    assert!(seen.lines().any(|l| l == "OPERATOR_SETTING=kept"), "{seen}");
    for (name, _) in private {
        assert!(
            !seen.lines().any(|l| l.starts_with(&format!("{name}="))),
            "{name} reached the agent"
        );
    }
}

/// A loopback HTTP server that answers every request with `answer`; counts requests.
fn answering(answer: String) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (addr, hits)
}

/// Item 4: a redirect is not followed, and says where it pointed; nothing is written.
#[test]
fn register_does_not_follow_a_redirect() {
    let body = r#"{"agent_id":"a1","token":"stolen-token","hub_ws_url":"ws://x/ws"}"#;
    let (elsewhere, elsewhere_hits) = answering(format!(
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let target = format!("http://{elsewhere}/api/onboard/register");
    let (hub_addr, _) = answering(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let hub_url = format!("http://{hub_addr}");
    let (code, _, err) = run_bin(
        &[
            "register",
            "--hub",
            &hub_url,
            "--agent-id",
            "a1",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("redirect") && err.contains(&target), "{err}");
    assert_eq!(elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(!config.exists());
}

/// Item 5: a link planted at the queue's lock file is refused; its target keeps its bytes.
#[test]
fn a_link_planted_at_the_lock_file_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("queue.json.lock")).unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, &fast_config("ws://127.0.0.1:9/ws"));
    let (code, _, err) = run_bin(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// Item 5: a link planted at the log file is not written through: the lines go to stderr.
#[test]
fn a_link_planted_at_the_log_file_is_not_written_through() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("sidecar.log")).unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, &fast_config(&hub.ws_url()));
    let mut sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
    eventually("the refusal on stderr", || {
        sidecar.stderr().contains("log_file_unwritable")
            && sidecar.stderr().contains("symbolic link")
    });
    sidecar.signal(SIGTERM);
    sidecar.wait_exit(WAIT).expect("exits");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// Item 5: a link planted at a task's wake log is not written through.
#[test]
fn a_link_planted_at_a_wake_log_is_not_written_through() {
    let hub = hub();
    let sidecar = sidecar_with_script(
        &hub,
        &format!("echo agent output\n{QUICK_AGENT}"),
        json!({"wake_retry_delays_ms": [50]}),
    );
    let victim = sidecar.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let tasks = sidecar.dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::os::unix::fs::symlink(&victim, tasks.join("t-link.wake.log")).unwrap();
    assign(&hub, json!({"task_id": "t-link", "generation": 1}));
    let error = sidecar.wait_for(WAIT, |l| {
        l["event"] == "wake_failed" || l["event"] == "wake_error"
    });
    let error = error.expect("the attempt fails");
    assert!(error.to_string().contains("symbolic link"), "{error}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// Item 5: a state directory others can write to is said loudly at start and by
/// check-config.
#[test]
fn a_state_directory_others_can_write_is_warned_about() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir(&results).unwrap();
    std::fs::set_permissions(&results, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, &fast_config(&hub.ws_url()));
    let (code, _, err) = run_bin(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("results_dir") && err.contains("writable by"),
        "{err}"
    );
    let sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    let warning = sidecar.wait_for(WAIT, |l| {
        l["event"] == "config_warning"
            && l["message"].as_str().unwrap_or("").contains("writable by")
    });
    assert!(warning.is_some(), "{}", sidecar.dump());
}

/// Item 6: a FIFO at `status_file` hangs neither the start nor `status`.
#[test]
fn a_fifo_at_the_status_file_hangs_neither_start_nor_status() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("status.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let path = dir.path().join("config.json");
    write_config(&path, &fast_config(&hub.ws_url()));
    let (code, _, err) = run_bin(&["status", "--config", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("not a regular file"), "{err}");
    let _sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
}

/// Item 7: a descriptor the launcher passed down does not reach the agent.
#[test]
fn an_inherited_descriptor_does_not_reach_the_agent() {
    let hub = hub();
    let secret = tempfile::NamedTempFile::new().unwrap();
    let script = format!("ls /proc/$$/fd > \"$RESULTS_DIR/../agent-fds\"\n{QUICK_AGENT}");
    let wrapper = format!("exec 7<'{}' && exec \"$@\"", secret.path().display());
    let sidecar =
        sidecar_with_script_via(&hub, &script, json!({}), &["sh", "-c", &wrapper, "sh"], &[]);
    let task_id = submit(&hub, json!({"description": "look around"}));
    wait_task_frame(&hub, "task_complete", &task_id, 1);
    let fds = std::fs::read_to_string(sidecar.dir.path().join("agent-fds")).unwrap();
    let fds: Vec<&str> = fds.lines().collect();
    assert!(fds.contains(&"1"), "{fds:?}");
    assert!(
        !fds.contains(&"7"),
        "the launcher's descriptor reached the agent: {fds:?}"
    );
}

/// Item 8: as PID 1 (a PID namespace of its own, as in a container without an init),
/// agents that detach from their wake command are reaped when they end.
#[test]
fn as_pid_1_detached_agents_are_reaped() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare --pid --fork --mount-proc is not available here");
        return;
    }
    let hub = hub();
    let detached = r#"
touch "$RESULTS_DIR/$TASK_ID.started"
( sleep 0.1
  printf '{"status":"success","output":"done"}' > "$RESULTS_DIR/.$TASK_ID.tmp"
  mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json" ) >/dev/null 2>&1 </dev/null &
"#;
    let sidecar = sidecar_with_script_via(
        &hub,
        detached,
        json!({}),
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        &[],
    );
    for n in 0..3 {
        let task_id = submit(&hub, json!({"description": format!("detached {n}")}));
        wait_task_frame(&hub, "task_complete", &task_id, 1);
    }
    // The sidecar is unshare's child; its zombies are its children in state Z.
    let unshare = sidecar.pid();
    let children = |pid: i32| -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let init = children(unshare)[0];
    let zombies = || {
        children(init)
            .into_iter()
            .filter(|c| {
                std::fs::read_to_string(format!("/proc/{c}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
                    .unwrap_or(false)
            })
            .count()
    };
    eventually("no zombie left", || zombies() == 0);
}

/// Item 10: an open dev hub on a non-loopback address needs --open.
#[test]
fn an_open_dev_hub_off_loopback_needs_an_explicit_flag() {
    let (code, _, err) = run_bin(&["dev-hub", "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--tokens") && err.contains("--open"), "{err}");
}

/// Item 11: a cleartext hub off this machine is warned about, and credentials in URLs are
/// redacted from check-config and the startup line.
#[test]
fn cleartext_hubs_are_warned_about_and_url_credentials_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let secrets = json!({
        "wake_command": ["agent", "--model-url", "https://bob:hunter2@models.example/v1?api_key=SECRETKEY"],
        "ollama_url": "http://ollama:pa55word@127.0.0.1:11434",
    });
    write_config(
        &path,
        &with(fast_config("ws://hub.example:4000/ws"), secrets.clone()),
    );
    let (_, out, err) = run_bin(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert!(err.contains("clear text"), "{err}");
    for secret in ["hunter2", "SECRETKEY", "pa55word"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} shown: {out}{err}"
        );
    }
    let (code, _, err) = run_bin(
        &[
            "register",
            "--hub",
            "http://hub.example:4000",
            "--agent-id",
            "",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("clear text"), "{err}");

    let hub = hub();
    let sidecar = sidecar_with_script(
        &hub,
        QUICK_AGENT,
        json!({"wake_commands": {"claude": secrets["wake_command"].clone()}, "ollama_url": secrets["ollama_url"].clone()}),
    );
    let startup: Value = sidecar.wait_event("startup");
    let text = startup.to_string();
    for secret in ["hunter2", "SECRETKEY", "pa55word"] {
        assert!(
            !text.contains(secret),
            "{secret} in the startup line: {text}"
        );
    }
    assert!(text.contains("***@models.example"), "{text}");
}
