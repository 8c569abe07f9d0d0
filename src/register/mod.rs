//! `agentcom-sidecar register`: onboarding an agent in one command.
//!
//! It asks the hub for a new agent (`POST /api/onboard/register`, no authentication), and
//! writes a complete config for it (every key, at its default unless an option set it; mode
//! 600), with the token inline or, when asked, in a `token_file` of its own (mode 600). Then
//! it prints the next steps. It refuses to overwrite an existing config or token file
//! without `--force`, and checks that it can write both *before* it asks the hub: a hub
//! registration cannot be undone from here, and the token it answers with is shown to
//! nobody, so it must not be lost to a full disk or a wrong path. Every failure (id taken,
//! hub unreachable, TLS, an answer it cannot use) is one message on stderr and exit code 1.
//!
//! This module owns the command's run ([`run`]: check, ask, write, tell) and its errors
//! ([`Failure`]); [`hub`] owns the conversation with the hub (its address, the request, what
//! an answer means), [`config_file`] the config it writes. It does not validate that config:
//! [`crate::config`] does, and a unit test proves the two agree.

pub mod config_file;
pub mod hub;
pub mod ops;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use config_file::{config_text, token_file_value, TokenPlace};
pub use hub::{HubAddress, REQUEST_TIMEOUT};

/// What `register` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The hub's address as given (`http(s)://host:port`, or its `ws(s)://…/ws` URL).
    pub hub: String,
    pub agent_id: String,
    /// The config file to write.
    pub config: PathBuf,
    /// Overwrite an existing config (and token file).
    pub force: bool,
    /// Put the token in this file instead of the config.
    pub token_file: Option<PathBuf>,
    /// Absolute state paths (log, queue, results, status) under this directory instead of
    /// paths relative to the config.
    pub state_dir: Option<PathBuf>,
    /// Extra CA certificates for an `https://` hub; also written as `ca_file`.
    pub ca_file: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    /// After writing the config, send a test task to the new agent and wait this long for it
    /// to be completed (the operator starts the sidecar meanwhile).
    pub test_task: Option<std::time::Duration>,
}

/// Why `register` did not finish. Each message says what to do; none shows the token.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("--hub {given}: {why}")]
    BadHub { given: String, why: String },
    #[error("--agent-id must be 1 to 128 characters without control characters")]
    BadAgentId,
    #[error("{option}: {why}")]
    BadOption { option: &'static str, why: String },
    #[error("{path} already exists; nothing was registered. Pass --force to overwrite it, or choose another path")]
    Exists { path: String },
    #[error("cannot write {path}: {reason}; nothing was registered")]
    NotWritable { path: String, reason: String },
    #[error("--ca-file {path}: {reason}")]
    BadCaFile { path: String, reason: String },
    #[error("agent id \"{agent_id}\" is already registered on the hub at {hub} (409). Choose another --agent-id, or have the hub's administrator reset the existing agent's token")]
    Taken { agent_id: String, hub: String },
    #[error("the hub at {hub} refused the agent id \"{agent_id}\" ({status}): {detail}")]
    Refused {
        agent_id: String,
        hub: String,
        status: u16,
        detail: String,
    },
    #[error("the hub at {hub} is rate limiting registrations (429); try again in a minute")]
    RateLimited { hub: String },
    #[error("{url} was not found (404): is {hub} the hub's HTTP address (http://host:port, as for its /api)?")]
    NoEndpoint { url: String, hub: String },
    #[error("the hub at {hub} answered {status}: {detail}")]
    Unexpected {
        hub: String,
        status: u16,
        detail: String,
    },
    #[error("the hub at {hub} answered {status}, a redirect to {location}; redirects are not followed (the token would go with it): pass the address it points to as --hub if you trust it")]
    Redirected {
        hub: String,
        status: u16,
        location: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("the hub at {hub} refused the token (401: {detail}): is it this hub's token for this agent, and not revoked?")]
    Unauthorized { hub: String, detail: String },
    #[error("the hub at {hub} does not allow this agent to do that (403: {detail}); ask the hub's administrator")]
    Forbidden { hub: String, detail: String },
    #[error("{url} was not found (404: {detail})")]
    NotFound { url: String, detail: String },
    #[error("the hub at {hub} refused: conflict (409: {detail})")]
    Conflict { hub: String, detail: String },
    #[error("cannot reach the hub at {hub}: {reason}")]
    Unreachable { hub: String, reason: String },
    #[error("TLS with the hub at {hub} failed: {reason}. A hub behind a private CA needs --ca-file PATH (its PEM certificates)")]
    Tls { hub: String, reason: String },
    #[error("the hub registered agent \"{agent_id}\" but writing {path} failed: {reason}. The token is lost: have the hub's administrator reset the agent's token, or register another id")]
    WriteAfterRegister {
        agent_id: String,
        path: String,
        reason: String,
    },
}

/// Runs the command; the exit code (0: registered and written, 1: anything else).
pub fn run(options: Options) -> i32 {
    match register(&options) {
        Ok(report) => {
            let _ = std::io::stdout().lock().write_all(report.as_bytes());
            match options.test_task {
                Some(wait) => test_task(&options, wait),
                None => 0,
            }
        }
        Err(failure) => {
            eprintln!("{}: register: {failure}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}

/// `--test-task`: a trivial task for the new agent through the hub's API, followed until it
/// is completed (or `wait` passed), each step told. 0 completed, 1 refused or failed, 3 not
/// completed in time.
fn test_task(options: &Options, wait: std::time::Duration) -> i32 {
    let config = absolute(&options.config);
    println!(
        "\nTest task: 1/3 reading the token from {}",
        config.display()
    );
    let run = || -> Result<ops::End, Failure> {
        let access = ops::access(
            Some(&options.hub),
            None,
            &config,
            options.ca_file.as_deref(),
        )?;
        let id = ops::create_task(&access, ops::test_task_body(&options.agent_id))?;
        println!(
            "Test task: 2/3 submitted {id} (trivial, assign_to \"{}\"): waiting up to {} s for it to be completed; start the sidecar now if it is not running (step 2 above)",
            options.agent_id,
            wait.as_secs()
        );
        ops::follow(&access, &id, wait, &mut |line| println!("  {line}"))
    };
    match run() {
        Ok(end) if end.completed() => {
            println!("Test task: 3/3 {}", end.summary());
            println!(
                "agent \"{}\" works: hub -> sidecar -> agent -> hub",
                options.agent_id
            );
            0
        }
        Ok(end) => {
            println!("Test task: 3/3 {}", end.summary());
            eprintln!(
                "{}: register: the test task did not complete; the agent is registered and its config written. Look at the sidecar's log (task_received, task_failed) and `agentcom-sidecar status --config {}`",
                env!("CARGO_PKG_NAME"),
                config.display()
            );
            end.exit_code()
        }
        Err(failure) => {
            eprintln!(
                "{}: register: test task: {failure} (the agent is registered and its config written)",
                env!("CARGO_PKG_NAME")
            );
            1
        }
    }
}

/// Everything `run` does but printing; returns the text for stdout.
pub fn register(options: &Options) -> Result<String, Failure> {
    let hub = HubAddress::parse(&options.hub).map_err(|why| Failure::BadHub {
        given: options.hub.clone(),
        why,
    })?;
    if let Some(w) = hub.cleartext_warning() {
        eprintln!("{}: register: warning: {w}", env!("CARGO_PKG_NAME"));
    }
    let id = &options.agent_id;
    if id.trim().is_empty()
        || id.chars().count() > crate::config::AGENT_ID_MAX
        || id.chars().any(char::is_control)
    {
        return Err(Failure::BadAgentId);
    }
    if options
        .metrics_listen
        .is_some_and(|a| !a.ip().is_loopback())
    {
        return Err(Failure::BadOption {
            option: "--metrics-listen",
            why: "must be a loopback address such as 127.0.0.1:9465 (to serve on other interfaces, set metrics_listen and metrics_public in the config by hand)".into(),
        });
    }
    let config_path = absolute(&options.config);
    let token_path = options.token_file.as_deref().map(absolute);
    if token_path.as_ref() == Some(&config_path) {
        return Err(Failure::BadOption {
            option: "--token-file",
            why: "must not be the config file itself".into(),
        });
    }
    for path in std::iter::once(&config_path).chain(token_path.as_ref()) {
        prepare(path, options.force)?;
    }
    let tls = crate::tls::client_config(options.ca_file.as_deref()).map_err(|reason| {
        Failure::BadCaFile {
            path: options
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason,
        }
    })?;

    let token = hub::request(&hub, id, tls)?;

    let written_failure = |path: &Path, e: std::io::Error| Failure::WriteAfterRegister {
        agent_id: id.clone(),
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let place_value;
    let place = match &token_path {
        Some(path) => {
            let mut text = token.expose().to_string();
            text.push('\n');
            crate::fsx::write_atomic(path, text.as_bytes())
                .map_err(|e| written_failure(path, e))?;
            place_value = token_file_value(&config_path, path);
            TokenPlace::File(&place_value)
        }
        None => TokenPlace::Inline(&token),
    };
    let text = config_text(options, &hub, place);
    crate::fsx::write_atomic(&config_path, text.as_bytes())
        .map_err(|e| written_failure(&config_path, e))?;
    Ok(next_steps(
        options,
        &hub,
        &config_path,
        token_path.as_deref(),
    ))
}

/// Refuses an existing file without `--force`, and proves the directory writable.
fn prepare(path: &Path, force: bool) -> Result<(), Failure> {
    let shown = path.display().to_string();
    if path.is_dir() {
        return Err(Failure::NotWritable {
            path: shown,
            reason: "it is a directory".into(),
        });
    }
    if path.exists() && !force {
        return Err(Failure::Exists { path: shown });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::check::writable_dir(dir).map_err(|e| Failure::NotWritable {
        path: shown,
        reason: e.to_string(),
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What to do next, with the paths just written.
fn next_steps(options: &Options, hub: &HubAddress, config: &Path, token: Option<&Path>) -> String {
    let c = config.display();
    let id = &options.agent_id;
    let mut out = format!(
        "registered agent \"{id}\" on the hub at {} (hub_url {})\nwrote {c} (mode 600): a complete config, every key at its default\n",
        hub.api, hub.ws
    );
    if let Some(t) = token {
        out.push_str(&format!(
            "wrote {} (mode 600): the token, named by \"token_file\" in the config\n",
            t.display()
        ));
    }
    out.push_str(&format!(
        "\nNext:\n\
         1. Set \"wake_command\" in {c} (the command that starts your agent for a task;\n   \
            without it such a task fails with reason no_wake_command, unless you set\n   \
            \"agent_starts_itself\": true), then check it:\n     \
              agentcom-sidecar check-config --config {c}\n\
         2. Start the sidecar, with one of:\n     \
              systemd (template unit, config as /etc/agentcom-sidecar/{id}.json):\n       \
                systemctl enable --now agentcom-sidecar@{id}\n     \
              pm2:\n       \
                pm2 start agentcom-sidecar --name agentcom-{id} --no-treekill --kill-timeout 10000 -- --config {c}\n     \
              by hand:\n       \
                agentcom-sidecar --config {c}\n   \
            (docs/usage/running-as-a-service.md, docs/usage/running-a-fleet.md)\n\
         3. Send it a test task and wait for the result (a trivial task assigned to \"{id}\":\n   \
            its sidecar's bundled shell agent answers it without running anything):\n     \
              agentcom-sidecar submit --config {c} --to {id} --complexity trivial \\\n       \
                --metadata '{{\"onboarding_test\": true}}' --wait \"Onboarding test\"\n   \
            and one that runs your wake_command (pushed to this agent, not routed):\n     \
              agentcom-sidecar submit --config {c} --to {id} --push \"Say hello\"\n",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn options(state_dir: Option<&str>) -> Options {
        Options {
            hub: "http://hub:4000".into(),
            agent_id: "a1".into(),
            config: "/etc/agentcom-sidecar/a1.json".into(),
            force: false,
            token_file: None,
            state_dir: state_dir.map(PathBuf::from),
            ca_file: None,
            metrics_listen: None,
            test_task: None,
        }
    }

    #[test]
    fn options_that_would_make_a_broken_config_are_refused_before_the_hub_is_asked() {
        // The hub address is unreachable on purpose: these fail before any request.
        let mut o = options(None);
        o.hub = "http://127.0.0.1:9".into();
        o.metrics_listen = Some("0.0.0.0:9464".parse().unwrap());
        let e = register(&o).unwrap_err().to_string();
        assert!(e.starts_with("--metrics-listen: must be a loopback"), "{e}");
        let mut o = options(None);
        o.token_file = Some(o.config.clone());
        let e = register(&o).unwrap_err().to_string();
        assert!(e.starts_with("--token-file"), "{e}");
    }
}
