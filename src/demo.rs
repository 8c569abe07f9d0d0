//! `agentcom-sidecar demo`: the dev hub and a sidecar together, for a first look.
//!
//! Starts the dev hub on a free loopback port, writes a config for one agent into a fresh
//! temporary directory (with `config/sample-agent.sh` as the wake command), and runs the
//! sidecar against it in this process. Once the agent is identified, a sample task is
//! submitted to the hub's queue through its HTTP API (`POST /api/tasks`), as an operator would
//! with curl; the hub's scheduler assigns it to the idle agent, so a task's whole life —
//! submitted, assigned, received, accepted, woken, confirmed, completed, acknowledged —
//! scrolls by on stdout next to the hub's presence lines and the heartbeats, until Ctrl-C
//! stops both in good order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::devhub::{DevHub, DevHubOptions, HubEventKind};

const AGENT: &str = "demo-agent";
/// The wake command's agent, shipped in `config/`.
const SAMPLE_AGENT: &str = include_str!("../config/sample-agent.sh");

/// Runs the demo to its end; returns the exit code.
pub fn run() -> i32 {
    match start() {
        Ok((hub, config, dir)) => {
            let hub = Arc::new(hub);
            let token = config.token.expose().to_string();
            let pusher = hub.clone();
            std::thread::spawn(move || push_sample_task(&pusher, &token));
            let code = crate::runtime::run(config);
            drop(hub);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "demo: stopped; its files are in {}", dir.display());
            code
        }
        Err(e) => {
            eprintln!("{}: demo could not start: {e}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}

fn start() -> Result<(DevHub, Config, PathBuf), String> {
    let token = format!("demo-{:016x}", fastrand::u64(..));
    let hub = DevHub::start(DevHubOptions {
        tokens: Some(HashMap::from([(AGENT.to_string(), token.clone())])),
        print_presence: true,
        ..DevHubOptions::default()
    })
    .map_err(|e| format!("dev hub: {e}"))?;
    let dir = private_temp_dir().map_err(|e| format!("a directory for the demo: {e}"))?;
    let mut config = serde_json::json!({
        "agent_id": AGENT,
        "token": token,
        "hub_url": hub.ws_url(),
        "capabilities": ["demo"],
        "heartbeat_interval_ms": 3000,
        "heartbeat_timeout_ms": 2000,
        "log_level": "debug",
    });
    let agent = dir.join("sample-agent.sh");
    std::fs::write(&agent, SAMPLE_AGENT).map_err(|e| format!("{}: {e}", agent.display()))?;
    // The sample agent does every task, whatever the hub routed it to (no bundled agent).
    let command = format!("sh '{}'", agent.display());
    config["wake_command"] = command.clone().into();
    config["wake_commands"] =
        serde_json::json!({"ollama": command, "claude": command, "sidecar": command});
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    write_private(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "demo: dev hub at {}; sidecar config and log in {}; Ctrl-C to stop",
        hub.ws_url(),
        dir.display()
    );
    Ok((hub, config, dir))
}

/// Waits for the agent to be identified, then submits one task through the hub's HTTP API.
fn push_sample_task(hub: &DevHub, token: &str) {
    let identified = hub.wait_for(
        Duration::from_secs(60),
        |e| matches!(&e.kind, HubEventKind::Identified { agent_id } if agent_id == AGENT),
    );
    if identified.is_none() {
        return;
    }
    std::thread::sleep(Duration::from_secs(1));
    let body = serde_json::json!({
        "description": "Say hello to the new operator",
        "metadata": {"source": "demo"},
    })
    .to_string();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "demo: submitting a task: curl -X POST {}/api/tasks -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' -d '{body}'",
        hub.http_url()
    );
    drop(out);
    if let Err(e) = http_post(hub.addr(), "/api/tasks", token, &body) {
        eprintln!(
            "{}: demo could not submit its task: {e}",
            env!("CARGO_PKG_NAME")
        );
    }
}

/// A minimal HTTP/1.1 POST to the dev hub on loopback; returns the response text of a 2xx
/// answer.
fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    body: &str,
) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 2") {
        return Err(std::io::Error::other(
            response.lines().next().unwrap_or("no response").to_string(),
        ));
    }
    Ok(response)
}

/// A new directory in the temporary directory, mode 0700, with a random name: never one
/// that existed (whoever made it could have put their own script where the demo's agent
/// goes).
fn private_temp_dir() -> std::io::Result<PathBuf> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let mut last = None;
    for _ in 0..16 {
        let dir =
            std::env::temp_dir().join(format!("agentcom-sidecar-demo-{:016x}", fastrand::u64(..)));
        // Not recursive: an existing directory (or link) at the name is an error, not reused.
        match builder.create(&dir) {
            Ok(()) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
}

/// Writes a file only its owner can read (it holds a token).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}
