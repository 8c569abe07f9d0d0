//! `agentcom-sidecar demo`: the dev hub and a sidecar together, for a first look.
//!
//! Starts the dev hub on a free loopback port, writes a config for one agent into a fresh
//! temporary directory (with `config/sample-agent.sh` as the wake command), and runs the
//! sidecar against it in this process. Once the agent is identified, a sample task is
//! submitted to the hub's queue through its HTTP API (`POST /api/tasks`), as an operator would
//! with curl; the hub's scheduler assigns it to the idle agent, so a task's whole life —
//! submitted, assigned, received, accepted, woken, confirmed, completed, acknowledged —
//! goes by on stdout next to the hub's presence lines (at `info`: no heartbeats). Once the
//! hub has the result, the demo ends the story with a summary: the task, the agent's output
//! as the hub received it, the time it took, where the files are, and a command that pushes
//! another task (each later task gets a summary of its own). Then a second task, routed
//! the way the hub routes standard tasks (to `ollama`), is done by the bundled Ollama agent
//! (`agentcom-sidecar agent ollama`) against a small stand-in Ollama server the demo starts
//! on loopback: its text streams to the hub's live view, and the summary shows the model,
//! the tokens and how much of the text the live view received. Nothing needs to be
//! installed. Ctrl-C stops everything in good order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::devhub::ollama::{OllamaBehaviour, StandinOllama};
use crate::devhub::{DevHub, DevHubOptions, HubEventKind};

const AGENT: &str = "demo-agent";
/// The wake command's agent, shipped in `config/`.
const SAMPLE_AGENT: &str = include_str!("../config/sample-agent.sh");

/// Runs the demo to its end; returns the exit code.
pub fn run() -> i32 {
    // The model server the bundled Ollama agent talks to: a stand-in on loopback.
    let ollama = match StandinOllama::start(OllamaBehaviour::Reply) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "{}: demo could not start: a stand-in Ollama server: {e}",
                env!("CARGO_PKG_NAME")
            );
            return 1;
        }
    };
    match start(&ollama.url()) {
        Ok((hub, config, dir)) => {
            let hub = Arc::new(hub);
            let token = config.token.expose().to_string();
            let pusher = hub.clone();
            let files = dir.clone();
            std::thread::spawn(move || push_sample_task(&pusher, &token, &files));
            let code = crate::runtime::run(config);
            drop(hub);
            drop(ollama);
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

fn start(ollama_url: &str) -> Result<(DevHub, Config, PathBuf), String> {
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
        // Every event is in the log file; stdout tells the story without the heartbeats.
        "log_level": "info",
        // The hub routes standard tasks here (identify's `ollama_url`).
        "ollama_url": ollama_url,
    });
    let agent = dir.join("sample-agent.sh");
    std::fs::write(&agent, SAMPLE_AGENT).map_err(|e| format!("{}: {e}", agent.display()))?;
    // The sample agent plays the operator's own agent (un-routed, `sidecar` and `claude`
    // tasks); `ollama` tasks go to the bundled Ollama agent.
    let command = format!("sh '{}'", agent.display());
    config["wake_command"] = command.clone().into();
    config["wake_commands"] = serde_json::json!({"claude": command, "sidecar": command});
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

/// Waits for the agent to be identified, submits one task through the hub's HTTP API, and
/// prints a summary of every task that ends at the hub from then on.
fn push_sample_task(hub: &DevHub, token: &str, dir: &Path) {
    let identified = hub.wait_for(
        Duration::from_secs(60),
        |e| matches!(&e.kind, HubEventKind::Identified { agent_id } if agent_id == AGENT),
    );
    if identified.is_none() {
        return;
    }
    std::thread::sleep(Duration::from_secs(1));
    // Trivial: the hub routes it to `sidecar`, which the sample agent does here.
    let body = serde_json::json!({
        "description": "Say hello to the new operator",
        "metadata": {"source": "demo"},
        "complexity_tier": "trivial",
    })
    .to_string();
    say(&format!(
        "demo: submitting a task: curl -X POST {}/api/tasks -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' -d '{body}'",
        hub.http_url()
    ));
    let submitted = Instant::now();
    let task_id = match http_post(hub.addr(), "/api/tasks", token, &body) {
        Ok(answer) => answer
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
            .and_then(|v| v["task_id"].as_str().map(str::to_string)),
        Err(e) => {
            eprintln!(
                "{}: demo could not submit its task: {e}",
                env!("CARGO_PKG_NAME")
            );
            return;
        }
    };
    let mut first = true;
    // Reports already told, by (moment, task): the hub's history is read from its start.
    let mut told = std::collections::HashSet::new();
    loop {
        // Each report the hub takes; the demo's own task first.
        let ended = hub.wait_for(Duration::from_secs(24 * 3600), |e| match &e.kind {
            HubEventKind::TaskCompleted { task_id: id, .. }
            | HubEventKind::TaskFailed { task_id: id, .. } => {
                !told.contains(&(e.mono_ns, id.clone()))
                    && (!first || task_id.as_deref().is_none_or(|t| t == id))
            }
            _ => false,
        });
        let Some(ended) = ended else { return };
        let (id, outcome) = match &ended.kind {
            HubEventKind::TaskCompleted { task_id, .. } => {
                (task_id.clone(), "completed".to_string())
            }
            HubEventKind::TaskFailed {
                task_id, outcome, ..
            } => (task_id.clone(), format!("failed (the hub: {outcome})")),
            _ => continue,
        };
        told.insert((ended.mono_ns, id.clone()));
        let took = first.then(|| submitted.elapsed());
        // The story ends with the sidecar's `task_ack`: the summary comes after it.
        wait_for_ack(&dir.join("sidecar.log"), &id, Duration::from_secs(3));
        say(&summary(hub, token, dir, &id, &outcome, took, first));
        if first {
            submit_routed(hub, token);
        }
        first = false;
    }
}

/// A standard task: the hub routes it to `ollama`, and the bundled Ollama agent does it
/// against the stand-in model server.
fn submit_routed(hub: &DevHub, token: &str) {
    let body = serde_json::json!({
        "description": "Explain how to make a small, safe change to a code base",
        "metadata": {"source": "demo"},
        "complexity_tier": "standard",
    })
    .to_string();
    say("demo: submitting a standard task: the hub routes it to `ollama`, and the bundled Ollama agent does it against a stand-in model server (its text streams to the hub's live view)");
    if let Err(e) = http_post(hub.addr(), "/api/tasks", token, &body) {
        eprintln!(
            "{}: demo could not submit its routed task: {e}",
            env!("CARGO_PKG_NAME")
        );
    }
}

/// The end of a task's story, as the hub saw it.
fn summary(
    hub: &DevHub,
    token: &str,
    dir: &Path,
    task_id: &str,
    outcome: &str,
    took: Option<Duration>,
    first: bool,
) -> String {
    let task = hub.task(task_id).unwrap_or_default();
    let result = &task["result"];
    let output = match result.get("output") {
        Some(output) => output,
        None => result,
    };
    let output = match output {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => "none".to_string(),
        other => other.to_string(),
    };
    let took = took
        .map(|d| format!(" in {:.1} s", d.as_secs_f64()))
        .unwrap_or_default();
    let mut text =
        format!("\ndemo: task {task_id} {outcome}{took}\n  the agent's output: {output}\n");
    if let Some(model) = result["model_used"].as_str() {
        let live = hub.progress_text(task_id);
        text.push_str(&format!(
            "  done by the bundled agent with model {model}: {} tokens in, {} out, {} ms; the hub's live view got {} characters of its text as it streamed\n",
            result["tokens_in"], result["tokens_out"], result["execution_ms"], live.chars().count()
        ));
    }
    if let Some(error) = task["last_error"].as_str() {
        text.push_str(&format!("  error: {error}\n"));
    }
    if first {
        let body = serde_json::json!({
            "description": "Count the words of this sentence",
            "metadata": {},
        });
        text.push_str(&format!(
            "  files: {dir}/ (config.json, sidecar.log: every event as JSON, results/, queue.json)\n  its story: grep {task_id} {dir}/sidecar.log\n  push another task (another terminal):\n    curl -X POST {url}/api/tasks -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{body}'\n  Ctrl-C stops the demo.\n",
            dir = dir.display(),
            url = hub.http_url(),
        ));
    }
    text
}

/// Waits, at most `limit`, until the sidecar's log holds the `task_ack` of a report of
/// `task_id` (at `info`, only the acknowledgement of a report is logged).
fn wait_for_ack(log: &Path, task_id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let id = format!("\"task_id\":\"{task_id}\"");
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("\"event\":\"task_ack\"") && l.contains(&id))
        {
            // Its readable line goes to stdout right after the log file: let it land first.
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One block of text on stdout, at once.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
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
    #[cfg_attr(not(unix), allow(unused_mut))]
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
