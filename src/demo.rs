//! `agentcom-sidecar demo`: the dev hub and a sidecar together, for a first look.
//!
//! Starts the dev hub on a free loopback port, writes a config for one agent into a fresh
//! temporary directory, and runs the sidecar against it in this process, so its lifecycle
//! (connect, identify, heartbeats) scrolls by on stdout next to the hub's presence lines,
//! until Ctrl-C stops both in good order.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use crate::config::Config;
use crate::devhub::{DevHub, DevHubOptions};

const AGENT: &str = "demo-agent";

/// Runs the demo to its end; returns the exit code.
pub fn run() -> i32 {
    match start() {
        Ok((hub, config, dir)) => {
            let code = crate::runtime::run(config);
            hub.stop();
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
    let dir = std::env::temp_dir().join(format!("agentcom-sidecar-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = serde_json::json!({
        "agent_id": AGENT,
        "token": token,
        "hub_url": hub.ws_url(),
        "capabilities": ["demo"],
        "heartbeat_interval_ms": 3000,
        "heartbeat_timeout_ms": 2000,
        "log_level": "debug",
    });
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

/// Writes a file only its owner can read (it holds a token).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}
