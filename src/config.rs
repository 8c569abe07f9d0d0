//! Configuration: where the file is, how it is read, and what a valid one means.
//!
//! The file's flat keys are those of the Node sidecar, so an operator's existing
//! `config.json` keeps working. Loading happens once, before any actor starts: the JSON is
//! read into a raw key → value map, every key is checked for its type and range, and the
//! result is a [`Config`] of typed values (`Duration`, resolved `PathBuf`s, a parsed URL).
//! Actors never see raw milliseconds. Every failure is a [`ConfigError`] whose message names
//! the file, the key and the fix; unknown keys are warnings, not errors (configs of later
//! Node versions carry extra keys), with the closest known key suggested.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

mod node;
pub use node::NODE_KEYS;

/// Name of the environment variable that names the config file.
pub const CONFIG_ENV: &str = "SIDECAR_CONFIG";
/// The config file used when neither `--config` nor [`CONFIG_ENV`] names one.
pub const DEFAULT_CONFIG: &str = "config.json";

/// The agent's hub token. Its `Debug` and `Display` never show it; only the identify frame
/// reads it, through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Log verbosity: events below it are not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// A `ws://` or `wss://` URL, checked once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubUrl {
    url: String,
    tls: bool,
}

impl HubUrl {
    pub fn parse(s: &str) -> Result<HubUrl, String> {
        let uri: awc::http::Uri = s.parse().map_err(|e| format!("not a URL ({e})"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            Some(other) => return Err(format!("scheme must be ws:// or wss://, not {other}://")),
            None => return Err("must start with ws:// or wss://".into()),
        };
        match uri.host() {
            Some(h) if !h.is_empty() => {}
            _ => return Err("has no host".into()),
        }
        Ok(HubUrl {
            url: s.to_string(),
            tls,
        })
    }
    pub fn as_str(&self) -> &str {
        &self.url
    }
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The hub's HTTP API base for this socket URL: `ws://h:p/ws` → `http://h:p`,
    /// `wss://h/prefix/ws` → `https://h/prefix` (no trailing slash, no query).
    pub fn api_base(&self) -> String {
        let (scheme, rest) = match self.url.split_once("://") {
            Some((s, rest)) => (
                if s.eq_ignore_ascii_case("wss") {
                    "https"
                } else {
                    "http"
                },
                rest,
            ),
            None => ("http", self.url.as_str()),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or(rest);
        let rest = rest.trim_end_matches('/');
        let rest = rest.strip_suffix("/ws").unwrap_or(rest);
        format!("{scheme}://{rest}")
    }

    /// A warning when the token would cross a network in clear text: `ws://` to a host that
    /// is not loopback.
    pub fn cleartext_warning(&self) -> Option<String> {
        cleartext_warning(&self.url, self.tls)
    }
}

/// Whether a URL's host is this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The warning for a hub reached without TLS over a network, if `url` is one.
pub fn cleartext_warning(url: &str, tls: bool) -> Option<String> {
    let uri: awc::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    (!tls && !is_loopback_host(host)).then(|| {
        format!(
            "{} is not encrypted and {host} is not this machine: the hub token and every task cross the network in clear text; use wss:// (https://) unless the network itself is trusted",
            redact_url_secrets(url)
        )
    })
}

/// `text` with credentials in URLs replaced by `***`: the user information of any
/// `scheme://user:password@host`, and the values of query parameters whose name says they
/// are secret (`token`, `key`, `password`, `secret`, `auth`, `signature`, and names ending
/// so, such as `api_key` or `access_token`).
pub fn redact_url_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The URL runs to the next white space or quote.
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        out.push_str(&redact_one(url));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// One URL after its `scheme://`.
fn redact_one(url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(authority_end);
    let mut out = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let Some(q) = path.find('?') else {
        out.push_str(path);
        return out;
    };
    out.push_str(&path[..=q]);
    let query = &path[q + 1..];
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_name(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect();
    out.push_str(&pairs.join("&"));
    out.push_str(fragment);
    out
}

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "key",
        "password",
        "passwd",
        "secret",
        "auth",
        "signature",
        "sig",
        "credential",
        "credentials",
    ]
    .iter()
    .any(|s| name == *s || name.ends_with(&format!("_{s}")) || name.ends_with(&format!("-{s}")))
        || name.ends_with("token")
        || name.ends_with("apikey")
}

impl fmt::Display for HubUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// How a wake command is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WakeCommand {
    /// A string run by `sh -c` (Unix): the shell expands `$TASK_ID` and friends itself. On
    /// Windows it runs under `cmd.exe /d /e:on /v:off /s /c`, within the rules of
    /// [`crate::wincmd`].
    Shell(String),
    /// A program and its arguments, run directly: no shell at all; the task reaches the
    /// agent only through environment variables.
    Argv(Vec<String>),
}

impl WakeCommand {
    /// The bundled agent `agent`, run as `[<own_program>, "agent", agent]`: the program is
    /// the sidecar's own file, never looked up on `PATH`.
    pub fn bundled(own_program: &Path, agent: &str) -> WakeCommand {
        WakeCommand::Argv(vec![
            own_program.to_string_lossy().into_owned(),
            "agent".into(),
            agent.into(),
        ])
    }

    /// The program that runs (for `check-config`).
    pub fn program(&self) -> Option<&str> {
        match self {
            WakeCommand::Shell(text) => Some(text.as_str()),
            WakeCommand::Argv(argv) => argv.first().map(String::as_str),
        }
    }

    /// As shown in `check-config`, the startup line and `wake_attempt`: credentials in URLs
    /// redacted.
    pub fn to_json(&self) -> Value {
        match self {
            WakeCommand::Shell(text) => Value::from(redact_url_secrets(text)),
            WakeCommand::Argv(argv) => Value::from(
                argv.iter()
                    .map(|a| redact_url_secrets(a))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

/// The agents bundled with the sidecar, by the routing target they serve when
/// `wake_commands` names no command for it: target type → the `agent` subcommand's argument.
/// A `sidecar` task runs hub-sent shell code, which the shell agent refuses unless
/// `allow_hub_commands` is true.
pub const BUNDLED_AGENTS: &[(&str, &str)] = &[
    ("ollama", "ollama"),
    ("claude", "claude"),
    ("sidecar", "shell"),
];

/// The bundled agent for a routing target type, if there is one.
pub fn bundled_agent(target_type: &str) -> Option<&'static str> {
    BUNDLED_AGENTS
        .iter()
        .find(|(t, _)| *t == target_type)
        .map(|(_, agent)| *agent)
}

/// What runs for a task, by its routing target (see [`Config::route`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// A command of the config: `key` is `wake_commands` or `wake_command`.
    Command {
        command: &'a WakeCommand,
        key: &'static str,
    },
    /// The bundled agent: `[<this program>, "agent", agent]`.
    Bundled { agent: &'static str },
    /// Nothing is run: the agent starts by itself (an empty `wake_commands` entry, or
    /// `agent_starts_itself`), and must confirm within the confirmation timeout.
    Unwoken,
    /// No wake command, and the config does not say the agent starts by itself: the task
    /// fails at once (`no_wake_command`).
    Missing,
}

impl Route<'_> {
    /// The command to run, with the sidecar's own program for a bundled agent; `None` when
    /// nothing is run.
    pub fn command(&self, own_program: &Path) -> Option<WakeCommand> {
        match self {
            Route::Command { command, .. } => Some((*command).clone()),
            Route::Bundled { agent } => Some(WakeCommand::bundled(own_program, agent)),
            Route::Unwoken | Route::Missing => None,
        }
    }
}

/// Frames per minute the hub allows one agent, per tier (the hub's defaults: 120, 60, 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub light: u32,
    pub normal: u32,
    pub heavy: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            light: 120,
            normal: 60,
            heavy: 10,
        }
    }
}

/// The hub's limits on identify fields, in characters (the hub counts graphemes, which are
/// never more than characters).
pub const AGENT_ID_MAX: usize = 128;
pub const NAME_MAX: usize = 256;
pub const TOKEN_MAX: usize = 256;
pub const OLLAMA_URL_MAX: usize = 512;

/// The validated configuration every actor reads (behind an `Rc`).
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (absolute).
    pub path: PathBuf,
    pub agent_id: String,
    pub token: Secret,
    /// Where the token was read from, when the config names a `token_file` instead of a
    /// `token` (see [`crate::token_file`]).
    pub token_file: Option<PathBuf>,
    pub hub_url: HubUrl,
    pub name: String,
    pub capabilities: Vec<String>,
    /// The wake command for tasks whose target type has none in `wake_commands`.
    pub wake_command: Option<WakeCommand>,
    /// Wake commands by `routing_decision.target_type` (`ollama`, `claude`, `wake`, …).
    pub wake_commands: std::collections::BTreeMap<String, WakeCommand>,
    /// Target types whose `wake_commands` entry is empty: not woken at all (the agent starts
    /// by itself), not even by the bundled agent or `wake_command`.
    pub unwoken_targets: std::collections::BTreeSet<String>,
    /// A task without a wake command waits for its agent's `.started` (the agent starts by
    /// itself) instead of failing at once with `no_wake_command`.
    pub agent_starts_itself: bool,
    /// The opt-in for commands the hub sends (`sidecar` tasks' `metadata.shell_command`,
    /// `test_passes` and `command_succeeds` verification steps), passed to every wake
    /// command as `AGENTCOM_ALLOW_HUB_COMMANDS=1`.
    pub allow_hub_commands: bool,
    /// The Claude command-line program the bundled `claude` agent runs
    /// (`AGENTCOM_CLAUDE_COMMAND`).
    pub claude_command: String,
    /// Sent in `identify` (the hub registers the agent's local model endpoint).
    pub ollama_url: Option<String>,
    pub confirmation_timeout: Duration,
    /// How often the hub hears that a held task is alive (`task_progress`).
    pub progress_interval: Duration,
    /// The agent's own progress events are forwarded at most this often per task.
    pub agent_progress_min: Duration,
    /// A held task without a result after this long fails (`task_timeout`); `None`: never.
    pub task_timeout: Option<Duration>,
    /// After a session that ended without a clean close, identify again on the new session
    /// once this long has passed since the old one was last heard (the hub's half-open
    /// clean-up); `None`: never.
    pub stale_session_reidentify: Option<Duration>,
    /// How often, while no task is held, the hub's HTTP API is asked which tasks it has
    /// assigned to this agent (a push lost in a dead connection); also after every session
    /// that followed one ended without a close. `None`: never.
    pub reconcile_interval: Option<Duration>,
    /// The longest a restart the hub asked for (`restart_sidecar`) waits for the task in
    /// progress to be reported.
    pub restart_wait: Duration,
    /// Frames per minute the hub allows this agent, per rate-limit tier (light, normal,
    /// heavy); the sidecar stays below them.
    pub hub_rate_limits: RateLimits,
    pub results_dir: PathBuf,
    pub log_file: PathBuf,
    pub log_level: LogLevel,
    /// Rotate the log file before it grows past this many bytes (0: never).
    pub log_max_bytes: u64,
    /// Rotated files kept (`sidecar.log.1` … `.N`).
    pub log_keep: u32,
    /// The running sidecar's state, for `agentcom-sidecar status`.
    pub status_file: PathBuf,
    /// Serve `/healthz`, `/readyz` and `/metrics` here.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `metrics_listen` may be a non-loopback address.
    pub metrics_public: bool,
    pub queue_file: PathBuf,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    pub wake_retry_delays: Vec<Duration>,
    pub wake_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_result_bytes: u64,
    /// How long a result file that does not parse must stay unchanged before it is invalid.
    pub result_settle: Duration,
    pub ca_file: Option<PathBuf>,
    /// Restart intensity: more than `restart_max` restarts within `restart_window` and the
    /// supervisor gives up.
    pub restart_max: u32,
    pub restart_window: Duration,
    /// Delay before a child's first restart; doubles with each restart inside the window.
    pub restart_delay: Duration,
    /// Whole orderly shutdown, hub close handshake included.
    pub shutdown_timeout: Duration,
    /// How often to send a `resource_report` while identified; `None`: never.
    pub resource_report_interval: Option<Duration>,
    /// The command a room chat message (`room_message`) wakes the agent with; `None`: room
    /// messages are only logged.
    pub room_wake_command: Option<WakeCommand>,
    /// Room wakes: one more allowed per this interval, after a burst of `room_wake_burst`.
    pub room_wake_min_interval: Duration,
    pub room_wake_burst: u32,
    /// A room wake command still running after this has its process tree killed.
    pub room_wake_timeout: Duration,
    /// Only room messages of these types wake the agent; `None`: any type.
    pub room_message_types: Option<Vec<String>>,
    /// Only room messages that mention the agent's id or name wake it.
    pub room_mention_only: bool,
    /// Warnings found while loading (unknown keys, permissions); logged at start-up.
    pub warnings: Vec<String>,
}

/// Every way a config can be refused. Each message names the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} not found. For a new agent, `agentcom-sidecar register --hub http://HUB:4000 --agent-id ID --config {path}` writes one; or write it with agent_id, token and hub_url (or name another file with --config PATH or {CONFIG_ENV}=PATH)")]
    NotFound { path: String },
    #[error("config file {path} cannot be read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("config file {path} is not valid JSON: {reason} at line {line}, column {column}")]
    InvalidJson {
        path: String,
        reason: String,
        line: usize,
        column: usize,
    },
    #[error("config file {path} must hold a JSON object ({{\"agent_id\": …, \"token\": …, \"hub_url\": …}}), not {found}")]
    NotAnObject { path: String, found: &'static str },
    #[error("config file {path}: required key \"{key}\" is missing: {hint}")]
    Missing {
        path: String,
        key: &'static str,
        hint: &'static str,
    },
    #[error("config file {path}: key \"{key}\" must be {expected}, got {found}")]
    Invalid {
        path: String,
        key: &'static str,
        expected: String,
        found: String,
    },
}

/// Keys this version knows, with their meaning (for suggestions and `check-config`).
pub const KNOWN_KEYS: &[&str] = &[
    "agent_id",
    "token",
    "token_file",
    "hub_url",
    "name",
    "capabilities",
    "wake_command",
    "wake_commands",
    "ollama_url",
    "allow_hub_commands",
    "agent_starts_itself",
    "claude_command",
    "confirmation_timeout_ms",
    "progress_interval_ms",
    "agent_progress_min_ms",
    "task_timeout_ms",
    "stale_session_reidentify_ms",
    "reconcile_interval_ms",
    "restart_wait_ms",
    "hub_rate_limits",
    "results_dir",
    "log_file",
    "log_level",
    "log_max_bytes",
    "log_keep",
    "status_file",
    "metrics_listen",
    "metrics_public",
    "queue_file",
    "heartbeat_interval_ms",
    "heartbeat_timeout_ms",
    "reconnect_initial_ms",
    "reconnect_max_ms",
    "wake_retry_delays_ms",
    "wake_timeout_ms",
    "connect_timeout_ms",
    "max_frame_bytes",
    "max_result_bytes",
    "result_settle_ms",
    "ca_file",
    "restart_max",
    "restart_window_ms",
    "restart_delay_ms",
    "shutdown_timeout_ms",
    "resource_report_interval_ms",
    "room_wake_command",
    "room_wake_min_interval_ms",
    "room_wake_burst",
    "room_wake_timeout_ms",
    "room_message_types",
    "room_mention_only",
];

/// Which file to read: `--config` wins over [`CONFIG_ENV`], which wins over `./config.json`.
pub fn locate(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG),
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, abs) = read_file(path)?;
        let mut config = Config::from_json(&text, &abs)?;
        if let Some(w) = permission_warning(path, config.token_file.is_some()) {
            config.warnings.push(w);
        }
        Ok(config)
    }

    /// Only the `status_file` of the config file at `path`: what `status` needs, read
    /// without the token (a `token_file` may be readable by the service's user alone).
    pub fn status_file_of(path: &Path) -> Result<PathBuf, ConfigError> {
        let (text, abs) = read_file(path)?;
        with_raw(&text, &abs, |raw| raw.status_file())
    }

    /// Validates config text as if it came from the file `path` (relative paths in it are
    /// resolved against that file's directory).
    pub fn from_json(text: &str, path: &Path) -> Result<Config, ConfigError> {
        with_raw(text, path, |raw| raw.validate(path))
    }

    /// Where the sidecar keeps a task's own files: beside the queue file, in `tasks/`.
    pub fn tasks_dir(&self) -> PathBuf {
        self.queue_file
            .parent()
            .map(|d| d.join("tasks"))
            .unwrap_or_else(|| PathBuf::from("tasks"))
    }

    /// What runs for a task of this routing target (`routing_decision.target_type`; `None`
    /// when the hub sent no routing decision): its `wake_commands` entry; none if that entry
    /// is empty; else the bundled agent of `ollama`, `claude` and `sidecar`; else
    /// `wake_command`; else nothing.
    pub fn route(&self, target_type: Option<&str>) -> Route<'_> {
        if let Some(t) = target_type {
            if let Some(command) = self.wake_commands.get(t) {
                return Route::Command {
                    command,
                    key: "wake_commands",
                };
            }
            if self.unwoken_targets.contains(t) {
                return Route::Unwoken;
            }
            if let Some(agent) = bundled_agent(t) {
                return Route::Bundled { agent };
            }
        }
        match &self.wake_command {
            Some(command) => Route::Command {
                command,
                key: "wake_command",
            },
            None if self.agent_starts_itself => Route::Unwoken,
            None => Route::Missing,
        }
    }

    /// The routing table as `check-config` prints it: one row per target type the config
    /// or the bundled agents name, then `wake`, then every other (or no) target.
    pub fn routing_table(&self, own_program: &Path) -> Vec<(String, Option<WakeCommand>, String)> {
        let mut targets: Vec<String> = BUNDLED_AGENTS.iter().map(|(t, _)| t.to_string()).collect();
        for t in self.wake_commands.keys().chain(&self.unwoken_targets) {
            if !targets.contains(t) {
                targets.push(t.clone());
            }
        }
        if !targets.iter().any(|t| t == "wake") {
            targets.push("wake".into());
        }
        let row = |label: String, route: Route<'_>| {
            let how = match &route {
                Route::Command { key, .. } => format!("({key})"),
                Route::Bundled { agent: "shell" } if !self.allow_hub_commands => {
                    "(bundled; it refuses hub-sent commands: allow_hub_commands is false)".into()
                }
                Route::Bundled { .. } => "(bundled)".into(),
                Route::Unwoken => format!(
                    "(not woken: the agent starts by itself, and the task fails with confirmation_timeout unless it writes .started within confirmation_timeout_ms, {} ms)",
                    self.confirmation_timeout.as_millis()
                ),
                Route::Missing => "(NO WAKE COMMAND: such a task fails at once with reason no_wake_command; set wake_command, or wake_commands for this target, or agent_starts_itself: true)".into(),
            };
            (label, route.command(own_program), how)
        };
        let mut rows: Vec<_> = targets
            .into_iter()
            .map(|t| {
                let route = self.route(Some(&t));
                row(t, route)
            })
            .collect();
        rows.push(row("any other, or none".into(), self.route(None)));
        rows
    }

    /// Where room chat wakes keep their state, log and message files: beside the queue
    /// file, in `room/`.
    pub fn room_dir(&self) -> PathBuf {
        self.queue_file
            .parent()
            .map(|d| d.join("room"))
            .unwrap_or_else(|| PathBuf::from("room"))
    }

    /// Every key and its effective value, token redacted: for `check-config` and the
    /// `startup` log line.
    pub fn effective(&self) -> Value {
        let ms = |d: Duration| Value::from(d.as_millis() as u64);
        let mut effective = serde_json::json!({
            "agent_id": self.agent_id,
            "token": self.token.to_string(),
            "token_file": self.token_file,
            "hub_url": redact_url_secrets(self.hub_url.as_str()),
            "name": self.name,
            "capabilities": self.capabilities,
            "wake_command": self.wake_command.as_ref().map(WakeCommand::to_json),
            "wake_commands": self.wake_commands.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<Map<String, Value>>(),
            "ollama_url": self.ollama_url.as_deref().map(redact_url_secrets),
            "confirmation_timeout_ms": ms(self.confirmation_timeout),
            "progress_interval_ms": ms(self.progress_interval),
            "agent_progress_min_ms": ms(self.agent_progress_min),
            "task_timeout_ms": self.task_timeout.map_or(0, |d| d.as_millis() as u64),
            "stale_session_reidentify_ms": self.stale_session_reidentify.map_or(0, |d| d.as_millis() as u64),
            "reconcile_interval_ms": self.reconcile_interval.map_or(0, |d| d.as_millis() as u64),
            "restart_wait_ms": ms(self.restart_wait),
            "hub_rate_limits": {"light": self.hub_rate_limits.light, "normal": self.hub_rate_limits.normal, "heavy": self.hub_rate_limits.heavy},
            "results_dir": self.results_dir.to_string_lossy(),
            "log_file": self.log_file.to_string_lossy(),
            "log_level": self.log_level.as_str(),
            "queue_file": self.queue_file.to_string_lossy(),
            "heartbeat_interval_ms": ms(self.heartbeat_interval),
            "heartbeat_timeout_ms": ms(self.heartbeat_timeout),
            "reconnect_initial_ms": ms(self.reconnect_initial),
            "reconnect_max_ms": ms(self.reconnect_max),
            "wake_retry_delays_ms": self.wake_retry_delays.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "wake_timeout_ms": ms(self.wake_timeout),
            "connect_timeout_ms": ms(self.connect_timeout),
            "max_frame_bytes": self.max_frame_bytes,
            "max_result_bytes": self.max_result_bytes,
            "result_settle_ms": ms(self.result_settle),
            "ca_file": self.ca_file.as_deref().map(Path::to_string_lossy),
            "restart_max": self.restart_max,
            "restart_window_ms": ms(self.restart_window),
            "restart_delay_ms": ms(self.restart_delay),
            "shutdown_timeout_ms": ms(self.shutdown_timeout),
            "log_max_bytes": self.log_max_bytes,
            "log_keep": self.log_keep,
            "status_file": self.status_file.to_string_lossy(),
            "metrics_listen": self.metrics_listen.map(|a| a.to_string()),
            "metrics_public": self.metrics_public,
            "resource_report_interval_ms": ms(self.resource_report_interval.unwrap_or_default()),
        });
        // (Past what one `json!` can expand.)
        effective["allow_hub_commands"] = self.allow_hub_commands.into();
        effective["agent_starts_itself"] = self.agent_starts_itself.into();
        effective["claude_command"] = redact_url_secrets(&self.claude_command).into();
        effective["room_wake_command"] = self
            .room_wake_command
            .as_ref()
            .map(WakeCommand::to_json)
            .into();
        effective["room_wake_min_interval_ms"] = ms(self.room_wake_min_interval);
        effective["room_wake_burst"] = self.room_wake_burst.into();
        effective["room_wake_timeout_ms"] = ms(self.room_wake_timeout);
        effective["room_message_types"] = serde_json::json!(self.room_message_types);
        effective["room_mention_only"] = self.room_mention_only.into();
        effective
    }
}

/// The text of the config file at `path`, and the file's absolute path.
fn read_file(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NotFound {
            path: shown.clone(),
        },
        _ => ConfigError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        },
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Ok((text, abs))
}

/// Parses config text that came from the file `path` into its key map and reads it with `f`.
fn with_raw<T>(
    text: &str,
    path: &Path,
    f: impl FnOnce(&Raw) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let shown = path.display().to_string();
    let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::InvalidJson {
        path: shown.clone(),
        reason: json_reason(&e),
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(map) = value else {
        return Err(ConfigError::NotAnObject {
            path: shown,
            found: kind_of(&value),
        });
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    f(&Raw {
        map: &map,
        path: &shown,
        base: &base,
    })
}

/// The raw key → value map of one file, read key by key with precise errors.
struct Raw<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
    base: &'a Path,
}

impl Raw<'_> {
    fn validate(&self, path: &Path) -> Result<Config, ConfigError> {
        let mut warnings = self.unknown_keys();
        let agent_id = self.required_str("agent_id", "the agent's id as registered on the hub")?;
        self.max_chars("agent_id", &agent_id, AGENT_ID_MAX)?;
        let (token, token_file) = self.token(&mut warnings)?;
        // (The message names the length, never the token.)
        let key = if token_file.is_some() {
            "token_file"
        } else {
            "token"
        };
        self.max_chars(key, token.expose(), TOKEN_MAX)?;
        let written = self.required_str(
            "hub_url",
            "the hub's WebSocket URL, e.g. ws://hub-host:4000/ws",
        )?;
        // The Node sidecar's forms: an http(s):// address, an empty port.
        let url = match node::hub_url(&written) {
            Some(ws) => {
                warnings.push(format!(
                    "{}: hub_url \"{}\" is an HTTP address; the socket {} is used (as the Node sidecar's WebSocket library did); write that in hub_url",
                    self.path,
                    redact_url_secrets(&written),
                    redact_url_secrets(&node::drop_empty_port(&ws)),
                ));
                ws
            }
            None => written,
        };
        let url = node::drop_empty_port(&url).into_owned();
        let hub_url = HubUrl::parse(&url).map_err(|why| {
            self.invalid(
                "hub_url",
                "a ws:// or wss:// URL such as ws://hub-host:4000/ws",
                &format!("\"{url}\" ({why})"),
            )
        })?;
        let name = self
            .opt_str("name")?
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| agent_id.clone());
        self.max_chars("name", &name, NAME_MAX)?;
        let capabilities = self.str_list("capabilities")?;
        let wake_command = match self.get("wake_command") {
            None => None,
            Some(v) => self.wake_command("wake_command", v)?,
        };
        let (wake_commands, unwoken_targets) = self.wake_commands()?;
        let allow_hub_commands = match self.get("allow_hub_commands") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(self.wrong_type("allow_hub_commands", "true or false", v)),
        };
        let agent_starts_itself = match self.get("agent_starts_itself") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(self.wrong_type("agent_starts_itself", "true or false", v)),
        };
        let claude_command = match self.opt_str("claude_command")? {
            None => "claude".to_string(),
            Some(c) if c.trim().is_empty() || c.contains('\0') => {
                return Err(self.invalid(
                    "claude_command",
                    "the Claude command-line program, a non-empty name or path such as \"claude\" or \"/usr/local/bin/claude\"",
                    &format!("{:?}", c),
                ))
            }
            Some(c) => {
                self.max_chars("claude_command", &c, 4096)?;
                c
            }
        };
        let room_wake_command = match self.get("room_wake_command") {
            None => None,
            Some(v) => self.wake_command("room_wake_command", v)?,
        };
        let room_message_types = match self.get("room_message_types") {
            None => None,
            Some(_) => {
                let types = self.str_list("room_message_types")?;
                if types.is_empty() {
                    return Err(self.invalid(
                        "room_message_types",
                        "a non-empty list of message types such as [\"chat\"] (leave the key out for every type)",
                        "an empty list",
                    ));
                }
                Some(types)
            }
        };
        let ollama_url = self.opt_str("ollama_url")?.filter(|u| !u.is_empty());
        if let Some(url) = &ollama_url {
            self.max_chars("ollama_url", url, OLLAMA_URL_MAX)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(self.invalid(
                    "ollama_url",
                    "an http:// or https:// URL such as http://127.0.0.1:11434",
                    &format!("\"{url}\""),
                ));
            }
        }

        let reconnect_initial = self.ms("reconnect_initial_ms", 1_000, 1)?;
        let reconnect_max = self.ms("reconnect_max_ms", 60_000, 1)?;
        if reconnect_max < reconnect_initial {
            return Err(self.invalid(
                "reconnect_max_ms",
                "at least reconnect_initial_ms",
                &format!(
                    "{} (reconnect_initial_ms is {})",
                    reconnect_max.as_millis(),
                    reconnect_initial.as_millis()
                ),
            ));
        }
        let ca_file = self.opt_path("ca_file")?;
        if let Some(ca) = &ca_file {
            if let Err(e) = crate::tls::read_ca_file(ca) {
                return Err(self.invalid(
                    "ca_file",
                    "a readable PEM file of CA certificates",
                    &format!("{} ({e})", ca.display()),
                ));
            }
        }
        // The Node sidecar's level names too (`warning`, `notice`; anything else: info).
        let log_level = match self.opt_str("log_level")? {
            None => LogLevel::Info,
            Some(text) => {
                let (level, warning) = node::log_level(&text);
                warnings.extend(warning.map(|w| format!("{}: {w}", self.path)));
                level
            }
        };
        let confirmation_timeout = match self
            .get("confirmation_timeout_ms")
            .and_then(|v| node::confirmation_timeout(v, 30_000))
        {
            Some((ms, warning)) => {
                warnings.extend(warning.map(|w| format!("{}: {w}", self.path)));
                Duration::from_millis(ms.min(86_400_000))
            }
            None => self.ms("confirmation_timeout_ms", 30_000, 1)?,
        };
        let (metrics_listen, metrics_public) = self.metrics_listen()?;
        warnings.extend(
            hub_url
                .cleartext_warning()
                .map(|w| format!("{}: hub_url {w}", self.path)),
        );
        if ca_file.is_some() && !hub_url.is_tls() {
            warnings.push(format!(
                "{}: ca_file is set but hub_url {} is not wss://; ca_file is unused",
                self.path, hub_url
            ));
        }

        Ok(Config {
            path: path.to_path_buf(),
            agent_id,
            token,
            token_file,
            hub_url,
            name,
            capabilities,
            wake_command,
            wake_commands,
            unwoken_targets,
            allow_hub_commands,
            agent_starts_itself,
            claude_command,
            ollama_url,
            confirmation_timeout,
            progress_interval: self.ms("progress_interval_ms", 60_000, 1)?,
            agent_progress_min: self.ms("agent_progress_min_ms", 1_000, 0)?,
            task_timeout: self.optional_ms("task_timeout_ms", 86_400_000)?,
            stale_session_reidentify: self.optional_ms("stale_session_reidentify_ms", 65_000)?,
            reconcile_interval: self.optional_ms("reconcile_interval_ms", 30_000)?,
            restart_wait: self.ms("restart_wait_ms", 300_000, 0)?,
            hub_rate_limits: self.rate_limits()?,
            results_dir: self.path_or("results_dir", "./results")?,
            log_file: self.path_or("log_file", "./sidecar.log")?,
            log_level,
            log_max_bytes: self.int("log_max_bytes", 10 * 1024 * 1024, 0, 1 << 40)?,
            log_keep: self.int("log_keep", 5, 0, 1000)? as u32,
            status_file: self.status_file()?,
            metrics_listen,
            metrics_public,
            queue_file: self.path_or("queue_file", "./queue.json")?,
            heartbeat_interval: self.ms("heartbeat_interval_ms", 30_000, 1)?,
            heartbeat_timeout: self.ms("heartbeat_timeout_ms", 10_000, 1)?,
            reconnect_initial,
            reconnect_max,
            wake_retry_delays: self.ms_list("wake_retry_delays_ms", &[5_000, 15_000, 30_000])?,
            wake_timeout: self.ms("wake_timeout_ms", 60_000, 1)?,
            connect_timeout: self.ms("connect_timeout_ms", 20_000, 1)?,
            max_frame_bytes: self.int("max_frame_bytes", 16 * 1024 * 1024, 1024, 1 << 30)? as usize,
            max_result_bytes: self.int("max_result_bytes", 16 * 1024 * 1024, 1, 1 << 30)?,
            result_settle: self.ms("result_settle_ms", 1_000, 1)?,
            ca_file,
            restart_max: self.int("restart_max", 5, 0, 1_000)? as u32,
            restart_window: self.ms("restart_window_ms", 30_000, 1)?,
            restart_delay: self.ms("restart_delay_ms", 100, 0)?,
            shutdown_timeout: self.ms("shutdown_timeout_ms", 5_000, 10)?,
            resource_report_interval: Some(self.ms("resource_report_interval_ms", 30_000, 0)?)
                .filter(|d| !d.is_zero()),
            room_wake_command,
            room_wake_min_interval: self.ms("room_wake_min_interval_ms", 1_000, 1)?,
            room_wake_burst: self.int("room_wake_burst", 3, 1, 1_000)? as u32,
            room_wake_timeout: self.ms("room_wake_timeout_ms", 60_000, 1)?,
            room_message_types,
            room_mention_only: self.bool("room_mention_only", false)?,
            warnings,
        })
    }

    /// A limit the hub puts on a text field.
    /// `status_file`, also read alone by `status` ([`Config::status_file_of`]).
    fn status_file(&self) -> Result<PathBuf, ConfigError> {
        self.path_or("status_file", "./status.json")
    }

    fn max_chars(&self, key: &'static str, value: &str, max: usize) -> Result<(), ConfigError> {
        let n = value.chars().count();
        if n > max {
            return Err(self.invalid(
                key,
                &format!("at most {max} characters (the hub refuses a longer one)"),
                &format!("{n} characters"),
            ));
        }
        Ok(())
    }

    /// A duration where 0 means "never".
    fn optional_ms(
        &self,
        key: &'static str,
        default: u64,
    ) -> Result<Option<Duration>, ConfigError> {
        // Up to a week: a long agent task may outlast a day.
        let d = Duration::from_millis(self.int(key, default, 0, 7 * 86_400_000)?);
        Ok((!d.is_zero()).then_some(d))
    }

    /// A wake command: a string (run by `sh -c`, or cmd.exe on Windows) or a list of strings
    /// (program and arguments, no shell); empty means none. On Windows, a command that would
    /// let cmd.exe parse task data is refused.
    fn wake_command(
        &self,
        key: &'static str,
        v: &Value,
    ) -> Result<Option<WakeCommand>, ConfigError> {
        let expected = "a command string (run by sh -c; cmd.exe on Windows) or a list of strings [program, arg, …] (run without a shell)";
        let command = match v {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) if s.contains('\0') => {
                return Err(self.invalid(key, expected, "a string holding a NUL character"))
            }
            Value::String(s) => Some(WakeCommand::Shell(s.clone())),
            Value::Array(items) => {
                let argv = items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) if !s.contains('\0') => Ok(s.clone()),
                        other => Err(self.wrong_type(key, expected, other)),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                match argv.first() {
                    None => None,
                    Some(p) if p.trim().is_empty() => {
                        return Err(self.invalid(
                            key,
                            "a list whose first item names the program",
                            "an empty program",
                        ))
                    }
                    Some(_) => Some(WakeCommand::Argv(argv)),
                }
            }
            other => return Err(self.wrong_type(key, expected, other)),
        };
        if cfg!(windows) {
            if let Some(why) = command.as_ref().and_then(|c| self.refused_on_windows(c)) {
                return Err(self.invalid(key, crate::wincmd::EXPECTED, &why));
            }
        }
        Ok(command)
    }

    /// Why cmd.exe would parse task data as commands in `command`, if it would (the rules
    /// are in [`crate::wincmd`]).
    fn refused_on_windows(&self, command: &WakeCommand) -> Option<String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        crate::wincmd::refuse(command, self.base, &dirs)
    }

    /// `wake_commands`: an object of target type → wake command; an empty entry (`""`,
    /// `[]`, `null`) says that tasks of that target type are not woken at all.
    #[allow(clippy::type_complexity)]
    fn wake_commands(
        &self,
    ) -> Result<
        (
            std::collections::BTreeMap<String, WakeCommand>,
            std::collections::BTreeSet<String>,
        ),
        ConfigError,
    > {
        let mut out = std::collections::BTreeMap::new();
        let mut unwoken = std::collections::BTreeSet::new();
        let Some(v) = self.get("wake_commands") else {
            return Ok((out, unwoken));
        };
        let Value::Object(map) = v else {
            return Err(self.wrong_type(
                "wake_commands",
                "an object of routing target type -> wake command, e.g. {\"ollama\": \"…\", \"claude\": [\"…\"]}",
                v,
            ));
        };
        for (target, command) in map {
            if target.is_empty() {
                return Err(self.invalid(
                    "wake_commands",
                    "non-empty target type names",
                    "an empty name",
                ));
            }
            let c = match command {
                Value::Null => None,
                other => self.wake_command("wake_commands", other)?,
            };
            match c {
                Some(c) => {
                    out.insert(target.clone(), c);
                }
                None => {
                    unwoken.insert(target.clone());
                }
            }
        }
        Ok((out, unwoken))
    }

    /// The token: from `token`, or from the file `token_file` names (exactly one of them).
    fn token(&self, warnings: &mut Vec<String>) -> Result<(Secret, Option<PathBuf>), ConfigError> {
        let Some(name) = self.opt_str("token_file")? else {
            let hint = "the agent's hub token (or \"token_file\": a file holding only the token)";
            return Ok((Secret::new(self.required_str("token", hint)?), None));
        };
        if self.get("token").is_some() {
            return Err(self.invalid(
                "token_file",
                "absent when \"token\" is set (use one of token and token_file)",
                "both token and token_file",
            ));
        }
        if name.trim().is_empty() {
            return Err(self.invalid("token_file", "a non-empty path", "an empty string"));
        }
        let credentials = std::env::var_os(crate::token_file::CREDENTIALS_ENV).map(PathBuf::from);
        let path =
            crate::token_file::locate(&name, self.base, credentials.as_deref(), Path::exists);
        let token = crate::token_file::read(&path).map_err(|why| {
            self.invalid(
                "token_file",
                "a readable file holding only the token",
                &format!("{} ({why})", path.display()),
            )
        })?;
        warnings.extend(crate::token_file::permission_warning(&path));
        Ok((token, Some(path)))
    }

    fn unknown_keys(&self) -> Vec<String> {
        self.map
            .iter()
            .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| {
                // A key of the Node sidecar: what stands in for it.
                if let Some(w) = node::node_key_warning(k, v) {
                    return format!("{}: {w}", self.path);
                }
                let closest = KNOWN_KEYS
                    .iter()
                    .map(|known| (strsim::damerau_levenshtein(k, known), *known))
                    .min()
                    .filter(|(d, _)| *d <= 3);
                match closest {
                    Some((_, known)) => format!(
                        "{}: unknown key \"{k}\" is ignored; did you mean \"{known}\"?",
                        self.path
                    ),
                    None => format!("{}: unknown key \"{k}\" is ignored", self.path),
                }
            })
            .collect()
    }

    fn invalid(&self, key: &'static str, expected: &str, found: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_string(),
            key,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    fn wrong_type(&self, key: &'static str, expected: &str, v: &Value) -> ConfigError {
        // The token is never echoed back, whatever its type.
        let found = if key == "token" {
            kind_of(v).to_string()
        } else {
            // At most 80 characters of the value's text, cut on a character boundary.
            let text = v.to_string();
            let s = match text.char_indices().nth(80) {
                Some(_) => {
                    let cut = text.char_indices().nth(77).map_or(text.len(), |(i, _)| i);
                    format!("{}...", &text[..cut])
                }
                None => text,
            };
            format!("{} {s}", kind_of(v))
        };
        self.invalid(key, expected, &found)
    }

    /// A key that is absent or `null` counts as unset.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required_str(&self, key: &'static str, hint: &'static str) -> Result<String, ConfigError> {
        match self.opt_str(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.invalid(key, "a non-empty string", "an empty string")),
            None => Err(ConfigError::Missing {
                path: self.path.to_string(),
                key,
                hint,
            }),
        }
    }

    fn opt_str(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    fn str_list(&self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong_type(key, "a list of strings", other)),
                })
                .collect(),
            Some(v) => Err(self.wrong_type(key, "a list of strings", v)),
        }
    }

    fn int(&self, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        let expected = format!("a whole number from {min} to {max}");
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(self.invalid(key, &expected, &n.to_string())),
            None => Err(self.wrong_type(key, &expected, v)),
        }
    }

    fn ms(&self, key: &'static str, default: u64, min: u64) -> Result<Duration, ConfigError> {
        // A day is far beyond any sensible timing and keeps arithmetic on it safe.
        self.int(key, default, min, 86_400_000)
            .map(Duration::from_millis)
    }

    fn ms_list(&self, key: &'static str, default: &[u64]) -> Result<Vec<Duration>, ConfigError> {
        let expected = "a list of whole numbers of milliseconds, e.g. [5000, 15000, 30000]";
        let Some(v) = self.get(key) else {
            return Ok(default
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect());
        };
        let Value::Array(items) = v else {
            return Err(self.wrong_type(key, expected, v));
        };
        if items.len() > 100 {
            return Err(self.invalid(
                key,
                "at most 100 delays",
                &format!("{} delays", items.len()),
            ));
        }
        items
            .iter()
            .map(|i| match i.as_u64() {
                Some(n) if n <= 86_400_000 => Ok(Duration::from_millis(n)),
                _ => Err(self.wrong_type(key, expected, i)),
            })
            .collect()
    }

    /// `metrics_listen`: an IP address and port; loopback unless `metrics_public` is true, so
    /// the endpoint is never exposed by accident.
    /// `hub_rate_limits`: `{"light": N, "normal": N, "heavy": N}` frames per minute, each
    /// optional (the hub's default), each from 1 to 1 000 000.
    fn rate_limits(&self) -> Result<RateLimits, ConfigError> {
        let mut limits = RateLimits::default();
        let Some(v) = self.get("hub_rate_limits") else {
            return Ok(limits);
        };
        let expected = "an object of frames per minute by tier, e.g. {\"light\": 120, \"normal\": 60, \"heavy\": 10}";
        let Value::Object(map) = v else {
            return Err(self.wrong_type("hub_rate_limits", expected, v));
        };
        for (tier, n) in map {
            let slot = match tier.as_str() {
                "light" => &mut limits.light,
                "normal" => &mut limits.normal,
                "heavy" => &mut limits.heavy,
                other => {
                    return Err(self.invalid(
                        "hub_rate_limits",
                        "only the tiers light, normal and heavy",
                        &format!("\"{other}\""),
                    ))
                }
            };
            *slot = match n.as_u64() {
                Some(n @ 1..=1_000_000) => n as u32,
                _ => {
                    return Err(self.wrong_type(
                        "hub_rate_limits",
                        "whole numbers from 1 to 1000000",
                        n,
                    ))
                }
            };
        }
        Ok(limits)
    }

    fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong_type(key, "true or false", v)),
        }
    }

    fn metrics_listen(&self) -> Result<(Option<std::net::SocketAddr>, bool), ConfigError> {
        let public = match self.get("metrics_public") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(self.wrong_type("metrics_public", "true or false", v)),
        };
        let Some(text) = self.opt_str("metrics_listen")?.filter(|s| !s.is_empty()) else {
            return Ok((None, public));
        };
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            self.invalid(
                "metrics_listen",
                "an IP address and port such as \"127.0.0.1:9464\"",
                &format!("\"{text}\""),
            )
        })?;
        if !addr.ip().is_loopback() && !public {
            return Err(self.invalid(
                "metrics_listen",
                "a loopback address (set \"metrics_public\": true to serve on other interfaces)",
                &format!("\"{text}\""),
            ));
        }
        Ok((Some(addr), public))
    }

    fn opt_path(&self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self
            .opt_str(key)?
            .filter(|s| !s.is_empty())
            .map(|s| self.resolve(&s)))
    }

    /// A path with a default; `""` is the default too, as the Node sidecar read it.
    fn path_or(&self, key: &'static str, default: &str) -> Result<PathBuf, ConfigError> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(self.resolve(&s)),
            _ => Ok(self.resolve(default)),
        }
    }

    /// Relative paths are relative to the config file's directory, not the working directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        // Drop `.` components so logged paths read cleanly.
        joined
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    }
}

/// How a JSON value is named in messages ("a string", "a list", …).
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message without its trailing " at line L column C" (we print our own).
fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// ssh-style warning: the file holds the token (or, with `token_file`, tells where the agent
/// and its hub are and what the wake command runs), so nobody but its owner should read it.
fn permission_warning(path: &Path, token_file: bool) -> Option<String> {
    let why = if token_file {
        " and names the hub, the agent and the wake command (the token is in token_file)"
    } else {
        " and holds the token"
    };
    private_file_warning(path, "config file", why)
}

/// ssh-style warning for a file that holds the token (`what` names it; `why` follows the
/// mode) when others than its owner can reach it.
#[cfg(unix)]
pub(crate) fn private_file_warning(path: &Path, what: &str, why: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} {} is accessible by other users (mode {:03o}){why}; run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
pub(crate) fn private_file_warning(_: &Path, _: &str, _: &str) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_json(text, Path::new("/etc/sidecar/config.json"))
    }

    const MIN: &str = r#"{"agent_id":"a1","token":"s3cret","hub_url":"ws://hub:4000/ws"}"#;

    #[test]
    fn minimal_config_gets_node_defaults_and_resolves_paths_against_its_directory() {
        let c = load(MIN).unwrap();
        assert_eq!(c.name, "a1");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(
            c.wake_retry_delays,
            vec![
                Duration::from_secs(5),
                Duration::from_secs(15),
                Duration::from_secs(30)
            ]
        );
        assert_eq!(c.results_dir, PathBuf::from("/etc/sidecar/results"));
        assert_eq!(c.queue_file, PathBuf::from("/etc/sidecar/queue.json"));
        assert_eq!(c.max_frame_bytes, 16 * 1024 * 1024);
        // ws:// to another machine: the one warning.
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("clear text"), "{:?}", c.warnings);
    }

    fn with_keys(extra: &str) -> Result<Config, ConfigError> {
        load(&format!("{},{extra}}}", MIN.trim_end_matches('}')))
    }

    #[test]
    fn routed_tasks_go_to_the_bundled_agents_unless_wake_commands_says_otherwise() {
        let own = Path::new("/opt/agentcom-sidecar");
        let bundled = |agent: &str| {
            Some(WakeCommand::Argv(vec![
                "/opt/agentcom-sidecar".into(),
                "agent".into(),
                agent.into(),
            ]))
        };
        let c = load(MIN).unwrap();
        assert!(!c.allow_hub_commands);
        assert_eq!(c.claude_command, "claude");
        assert_eq!(c.route(Some("claude")).command(own), bundled("claude"));
        assert_eq!(c.route(Some("ollama")).command(own), bundled("ollama"));
        assert_eq!(c.route(Some("sidecar")).command(own), bundled("shell"));
        // No wake command and nothing said: such tasks fail (no_wake_command)…
        assert_eq!(c.route(Some("wake")), Route::Missing);
        assert_eq!(c.route(None), Route::Missing);
        assert!(!c.agent_starts_itself);
        // …unless the agent starts by itself.
        let c = with_keys(r#""agent_starts_itself":true"#).unwrap();
        assert_eq!(c.route(Some("wake")), Route::Unwoken);
        assert_eq!(c.route(None), Route::Unwoken);
        assert_eq!(c.route(Some("claude")).command(own), bundled("claude"));
        assert!(with_keys(r#""agent_starts_itself":"yes""#).is_err());

        let c = with_keys(
            r#""wake_command":"my-agent","wake_commands":{"claude":["my-claude"],"ollama":""},"allow_hub_commands":true,"claude_command":"/usr/local/bin/claude""#,
        )
        .unwrap();
        assert!(c.allow_hub_commands);
        assert_eq!(c.claude_command, "/usr/local/bin/claude");
        assert_eq!(
            c.route(Some("claude")).command(own),
            Some(WakeCommand::Argv(vec!["my-claude".into()]))
        );
        // An empty entry: not woken at all, not even by wake_command.
        assert_eq!(c.route(Some("ollama")), Route::Unwoken);
        assert_eq!(c.route(Some("sidecar")).command(own), bundled("shell"));
        let my = Some(WakeCommand::Shell("my-agent".into()));
        assert_eq!(c.route(Some("wake")).command(own), my);
        assert_eq!(c.route(Some("other")).command(own), my);
        assert_eq!(c.route(None).command(own), my);
        let table = c.routing_table(own);
        let labels: Vec<&str> = table.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(
            labels,
            ["ollama", "claude", "sidecar", "wake", "any other, or none"]
        );
        assert_eq!(table[1].2, "(wake_commands)");
        assert_eq!(table[2].2, "(bundled)");
        assert_eq!(c.effective()["allow_hub_commands"], true);
        assert_eq!(c.effective()["claude_command"], "/usr/local/bin/claude");

        for bad in [
            r#""allow_hub_commands":"yes""#,
            r#""allow_hub_commands":1"#,
            r#""claude_command":"""#,
            r#""claude_command":["claude"]"#,
        ] {
            let e = with_keys(bad).unwrap_err().to_string();
            let key = if bad.contains("allow") {
                "allow_hub_commands"
            } else {
                "claude_command"
            };
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn token_never_shows_in_debug_or_effective_config() {
        let c = load(MIN).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.effective().to_string().contains("s3cret"));
    }

    #[test]
    fn unknown_key_warns_with_closest_known_key() {
        let c = load(r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","heartbeat_intervall_ms":5,"future_key":1}"#).unwrap();
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("\"heartbeat_intervall_ms\"")
                && w.contains("did you mean \"heartbeat_interval_ms\"")));
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("\"future_key\" is ignored") && !w.contains("did you mean")));
    }

    #[test]
    fn the_hubs_limits_on_identify_fields_are_checked_at_load() {
        let long_id = "a".repeat(129);
        let e = load(&format!(
            r#"{{"agent_id":"{long_id}","token":"t","hub_url":"ws://h/ws"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"agent_id\"") && e.contains("at most 128"),
            "{e}"
        );
        let long_name = "é".repeat(257);
        let e = load(&format!(
            r#"{{"agent_id":"a","token":"t","hub_url":"ws://h/ws","name":"{long_name}"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"name\"") && e.contains("at most 256"), "{e}");
        let long_token = "t".repeat(257);
        let e = load(&format!(
            r#"{{"agent_id":"a","token":"{long_token}","hub_url":"ws://h/ws"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"token\"") && !e.contains(&long_token), "{e}");
        // At the limits: fine.
        let id = "a".repeat(128);
        let name = "é".repeat(256);
        load(&format!(
            r#"{{"agent_id":"{id}","token":"t","hub_url":"ws://h/ws","name":"{name}"}}"#
        ))
        .unwrap();
    }

    #[test]
    fn room_chat_keys_are_opt_in_validated_and_redacted() {
        let minimal = r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws"}"#;
        let c = load(minimal).unwrap();
        assert_eq!(c.room_wake_command, None);
        assert_eq!(c.room_wake_min_interval, Duration::from_millis(1000));
        assert_eq!((c.room_wake_burst, c.room_mention_only), (3, false));
        assert_eq!(c.room_wake_timeout, Duration::from_millis(60_000));
        assert_eq!(c.room_message_types, None);
        let c = load(
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws",
                "room_wake_command":["agent","--hub","https://u:pw@h/x?token=abc"],
                "room_wake_burst":1,"room_wake_min_interval_ms":5,
                "room_message_types":["chat"],"room_mention_only":true}"#,
        )
        .unwrap();
        assert!(matches!(&c.room_wake_command, Some(WakeCommand::Argv(a)) if a[0] == "agent"));
        assert_eq!(c.room_message_types, Some(vec!["chat".to_string()]));
        assert!(c.room_mention_only);
        let shown = c.effective()["room_wake_command"].to_string();
        assert!(!shown.contains("pw") && !shown.contains("abc"), "{shown}");
        for bad in [
            r#""room_wake_command":5"#,
            r#""room_wake_command":["a\u0000"]"#,
            r#""room_wake_burst":0"#,
            r#""room_wake_min_interval_ms":0"#,
            r#""room_wake_timeout_ms":0"#,
            r#""room_message_types":[]"#,
            r#""room_message_types":"chat""#,
            r#""room_mention_only":"yes""#,
        ] {
            let text = format!(r#"{{"agent_id":"a","token":"t","hub_url":"ws://h/ws",{bad}}}"#);
            assert!(load(&text).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wake_commands_rate_limits_and_optional_timings() {
        let c = load(
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws",
                "wake_command":["agent","--task-file"],
                "wake_commands":{"ollama":"run-ollama","claude":["claude","-p"]},
                "task_timeout_ms":0,"hub_rate_limits":{"normal":600},
                "ollama_url":"http://127.0.0.1:11434"}"#,
        )
        .unwrap();
        assert_eq!(
            c.wake_command,
            Some(WakeCommand::Argv(vec![
                "agent".into(),
                "--task-file".into()
            ]))
        );
        assert_eq!(
            c.wake_commands["ollama"],
            WakeCommand::Shell("run-ollama".into())
        );
        assert_eq!(c.task_timeout, None);
        assert_eq!(c.hub_rate_limits.normal, 600);
        assert_eq!(c.hub_rate_limits.light, 120);
        for bad in [
            r#""wake_commands":["x"]"#,
            r#""wake_command":[1]"#,
            r#""wake_command":[""]"#,
            r#""hub_rate_limits":{"fast":1}"#,
            r#""hub_rate_limits":{"normal":0}"#,
            r#""ollama_url":"ftp://x""#,
        ] {
            let text = format!(r#"{{"agent_id":"a","token":"t","hub_url":"ws://h/ws",{bad}}}"#);
            assert!(load(&text).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn errors_name_the_key_and_never_echo_the_token() {
        let e = load(r#"{"agent_id":"a","hub_url":"ws://h/ws"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"token\" is missing"), "{e}");
        let e = load(r#"{"agent_id":"a","token":12345,"hub_url":"ws://h/ws"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"token\"") && !e.contains("12345"), "{e}");
        let e = load(r#"{"agent_id":"a","token":"t","hub_url":"ftp://h/ws"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"hub_url\"") && e.contains("ws://"), "{e}");
        let e = load(
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","heartbeat_interval_ms":"30s"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"heartbeat_interval_ms\"") && e.contains("\"30s\""),
            "{e}"
        );
        let e = load(r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","reconnect_initial_ms":5000,"reconnect_max_ms":10}"#).unwrap_err().to_string();
        assert!(e.contains("reconnect_max_ms"), "{e}");
        let e = load("{\n  \"agent_id\": \"a\",\n  oops\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3, column 3"), "{e}");
        let e = load("[1]").unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
    }

    #[test]
    fn credentials_in_urls_are_redacted_wherever_they_stand() {
        assert_eq!(
            redact_url_secrets("curl https://bob:pw@models.example/v1?model=x&api_key=abc&n=2#f"),
            "curl https://***@models.example/v1?model=x&api_key=***&n=2#f"
        );
        assert_eq!(
            redact_url_secrets("agent --hub 'wss://h/ws?token=s3cret' --key=v"),
            "agent --hub 'wss://h/ws?token=***' --key=v"
        );
        assert_eq!(
            redact_url_secrets("http://localhost:11434"),
            "http://localhost:11434"
        );
        assert_eq!(redact_url_secrets("no url here"), "no url here");
        assert_eq!(
            redact_url_secrets("x://a@b?AccessToken=1&sig=2&keyboard=3"),
            "x://***@b?AccessToken=***&sig=***&keyboard=3"
        );
    }

    #[test]
    fn a_cleartext_hub_off_this_machine_is_warned_about() {
        for url in ["ws://hub.example:4000/ws", "ws://10.0.0.5/ws"] {
            assert!(
                HubUrl::parse(url).unwrap().cleartext_warning().is_some(),
                "{url}"
            );
        }
        for url in [
            "wss://hub.example/ws",
            "ws://127.0.0.1:4000/ws",
            "ws://localhost/ws",
            "ws://[::1]:4000/ws",
        ] {
            assert!(
                HubUrl::parse(url).unwrap().cleartext_warning().is_none(),
                "{url}"
            );
        }
    }

    #[test]
    fn the_api_base_is_derived_from_the_socket_url() {
        for (ws, api) in [
            ("ws://127.0.0.1:4000/ws", "http://127.0.0.1:4000"),
            (
                "wss://hub.example/agentcom/ws",
                "https://hub.example/agentcom",
            ),
            ("ws://hub:4000/ws?x=1", "http://hub:4000"),
            ("wss://hub:443/", "https://hub:443"),
        ] {
            assert_eq!(HubUrl::parse(ws).unwrap().api_base(), api, "{ws}");
        }
    }
}

/// The Node sidecar's configs and values, each mapped to its meaning here (see `node.rs`).
#[cfg(test)]
mod node_tests {
    use super::*;
    use proptest::prelude::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_json(text, Path::new("/srv/sidecar/config.json"))
    }

    fn with(extra: &str) -> Result<Config, ConfigError> {
        load(&format!(
            r#"{{"agent_id":"a1","token":"s3cret","hub_url":"ws://127.0.0.1:4000/ws",{extra}}}"#
        ))
    }

    fn warned(c: &Config, what: &str) -> bool {
        c.warnings.iter().any(|w| w.contains(what))
    }

    #[test]
    fn node_log_levels_map_to_ours() {
        for (text, level, warns) in [
            ("debug", LogLevel::Debug, false),
            ("info", LogLevel::Info, false),
            ("warn", LogLevel::Warn, false),
            ("warning", LogLevel::Warn, false),
            ("notice", LogLevel::Warn, true),
            ("error", LogLevel::Error, false),
            ("loud", LogLevel::Info, true),
            ("WARNING", LogLevel::Info, true),
            ("", LogLevel::Info, true),
        ] {
            let c = with(&format!(r#""log_level":"{text}""#)).unwrap();
            assert_eq!(c.log_level, level, "{text}");
            assert_eq!(warned(&c, "log_level"), warns, "{text}: {:?}", c.warnings);
        }
        // Not a string at all: refused, as before.
        assert!(with(r#""log_level":5"#).is_err());
    }

    #[test]
    fn a_confirmation_timeout_of_0_or_a_numeric_string_is_read_as_node_read_it() {
        let c = with(r#""confirmation_timeout_ms":0"#).unwrap();
        assert_eq!(c.confirmation_timeout, Duration::from_millis(30_000));
        assert!(warned(&c, "confirmation_timeout_ms 0"), "{:?}", c.warnings);
        let c = with(r#""confirmation_timeout_ms":"45000""#).unwrap();
        assert_eq!(c.confirmation_timeout, Duration::from_millis(45_000));
        assert!(warned(&c, "string \"45000\""), "{:?}", c.warnings);
        let c = with(r#""confirmation_timeout_ms":"0""#).unwrap();
        assert_eq!(c.confirmation_timeout, Duration::from_millis(30_000));
        let c = with(r#""confirmation_timeout_ms":30000"#).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        for bad in [r#""30s""#, "-1", "1.5", r#""""#, r#""99999999999999""#] {
            let e = with(&format!(r#""confirmation_timeout_ms":{bad}"#)).unwrap_err();
            assert!(
                e.to_string().contains("confirmation_timeout_ms"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn empty_paths_are_the_defaults() {
        let c = with(r#""results_dir":"","log_file":"","queue_file":"","status_file":"""#).unwrap();
        assert_eq!(c.results_dir, PathBuf::from("/srv/sidecar/results"));
        assert_eq!(c.log_file, PathBuf::from("/srv/sidecar/sidecar.log"));
        assert_eq!(c.queue_file, PathBuf::from("/srv/sidecar/queue.json"));
        assert_eq!(c.status_file, PathBuf::from("/srv/sidecar/status.json"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn an_http_hub_url_is_its_socket() {
        let url = |text: &str| {
            let c = load(&format!(
                r#"{{"agent_id":"a1","token":"s3cret","hub_url":"{text}"}}"#
            ))
            .unwrap();
            (
                c.hub_url.as_str().to_string(),
                warned(&c, "is an HTTP address"),
            )
        };
        assert_eq!(
            url("http://127.0.0.1:4000"),
            ("ws://127.0.0.1:4000/ws".into(), true)
        );
        assert_eq!(
            url("http://127.0.0.1:4000/"),
            ("ws://127.0.0.1:4000/ws".into(), true)
        );
        assert_eq!(
            url("https://hub.example"),
            ("wss://hub.example/ws".into(), true)
        );
        assert_eq!(
            url("https://hub.example/agentcom/ws"),
            ("wss://hub.example/agentcom/ws".into(), true)
        );
        assert_eq!(
            url("HTTP://127.0.0.1:4000"),
            ("ws://127.0.0.1:4000/ws".into(), true)
        );
        // What the Node onboarding script wrote for a hub address without a port.
        assert_eq!(
            url("wss://hub.example:/ws"),
            ("wss://hub.example/ws".into(), false)
        );
        assert_eq!(
            url("ws://127.0.0.1:4000/ws"),
            ("ws://127.0.0.1:4000/ws".into(), false)
        );
        // The HTTP API follows the socket.
        let c =
            load(r#"{"agent_id":"a1","token":"t","hub_url":"https://hub.example:8443"}"#).unwrap();
        assert_eq!(c.hub_url.api_base(), "https://hub.example:8443");
    }

    #[test]
    fn node_only_keys_each_get_their_own_warning_not_the_unknown_key_one() {
        let c = with(
            r#""hub_api_url":"http://hub:4000","repo_dir":"/home/a/repo","reviewer":"","workspace":"/w","pm2_name":"x""#,
        )
        .unwrap();
        for (key, _) in NODE_KEYS {
            let w: Vec<_> = c
                .warnings
                .iter()
                .filter(|w| w.contains(&format!("\"{key}\"")))
                .collect();
            assert_eq!(w.len(), 1, "{key}: {:?}", c.warnings);
            assert!(
                w[0].contains("of the Node sidecar is ignored"),
                "{key}: {w:?}"
            );
            assert!(!w[0].contains("unknown key"), "{key}: {w:?}");
        }
        assert!(warned(&c, "unknown key \"pm2_name\""), "{:?}", c.warnings);
    }

    proptest! {
        /// Any string is a log level: one of ours, or info with a warning.
        #[test]
        fn every_log_level_string_loads(text in "\\PC{0,12}") {
            let c = with(&format!(r#""log_level":{}"#, Value::from(text.clone()))).unwrap();
            let ours = ["debug", "info", "warn", "warning", "error"].contains(&text.as_str());
            prop_assert_eq!(warned(&c, "log_level"), !ours);
        }

        /// Every whole number in a string is that number (0: the default).
        #[test]
        fn numeric_strings_are_their_numbers(n in 0u64..=86_400_000) {
            let c = with(&format!(r#""confirmation_timeout_ms":"{n}""#)).unwrap();
            let expect = if n == 0 { 30_000 } else { n };
            prop_assert_eq!(c.confirmation_timeout, Duration::from_millis(expect));
        }

        /// An http(s):// address with any host, port and path is the same place's socket.
        #[test]
        fn http_addresses_become_sockets(
            tls in any::<bool>(),
            host in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5})?",
            port in proptest::option::of(1u16..),
            path in proptest::option::of("(/[a-z0-9]{1,6}){1,3}"),
        ) {
            let scheme = if tls { "https" } else { "http" };
            let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
            let path_text = path.clone().unwrap_or_default();
            let c = load(&format!(
                r#"{{"agent_id":"a1","token":"t","hub_url":"{scheme}://{host}{port_text}{path_text}"}}"#
            )).unwrap();
            let ws = if tls { "wss" } else { "ws" };
            let expect = format!("{ws}://{host}{port_text}{}", path.unwrap_or_else(|| "/ws".into()));
            prop_assert_eq!(c.hub_url.as_str(), expect.as_str());
            prop_assert_eq!(c.hub_url.is_tls(), tls);
        }
    }
}
