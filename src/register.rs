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
//! This module owns the command's rules ([`HubAddress::parse`], [`config_text`],
//! [`token_file_value`], [`Failure`]) and its run ([`run`]). It does not validate the config
//! it writes: [`crate::config`] does, and a unit test proves the two agree.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Secret;

/// How long one request to the hub may take, connection and answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read from the hub.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

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
}

/// The hub's HTTP base and the WebSocket URL derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAddress {
    /// `http(s)://host:port[/prefix]`, no trailing slash.
    pub api: String,
    /// `ws(s)://host:port[/prefix]/ws`: the config's `hub_url`.
    pub ws: String,
}

impl HubAddress {
    /// Accepts the hub's HTTP address (`http://hub:4000`, `https://hub.example/agentcom`)
    /// or its WebSocket URL (`ws://hub:4000/ws`). The WebSocket URL is derived from the
    /// address the operator reached the hub at: the hub's own `hub_ws_url` is built from its
    /// listening port and always says `ws://`, which is wrong behind a TLS proxy.
    pub fn parse(s: &str) -> Result<HubAddress, String> {
        let uri: awc::http::Uri = s.trim().parse().map_err(|e| format!("not a URL ({e})"))?;
        let (http, ws) = match uri.scheme_str() {
            Some("http" | "ws") => ("http", "ws"),
            Some("https" | "wss") => ("https", "wss"),
            Some(other) => {
                return Err(format!(
                    "scheme must be http:// or https://, not {other}://"
                ))
            }
            None => return Err("must start with http:// or https://".into()),
        };
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() => a.as_str(),
            _ => return Err("has no host".into()),
        };
        if authority.contains('@') {
            return Err("must not carry a user name or password".into());
        }
        if uri.query().is_some() {
            return Err("must not have a query (?…)".into());
        }
        let mut prefix = uri.path().trim_end_matches('/');
        if matches!(uri.scheme_str(), Some("ws" | "wss")) {
            prefix = prefix.strip_suffix("/ws").unwrap_or(prefix);
        }
        Ok(HubAddress {
            api: format!("{http}://{authority}{prefix}"),
            ws: format!("{ws}://{authority}{prefix}/ws"),
        })
    }

    pub fn register_url(&self) -> String {
        format!("{}/api/onboard/register", self.api)
    }

    fn is_tls(&self) -> bool {
        self.api.starts_with("https://")
    }
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

/// Where the token goes in the written config.
pub enum TokenPlace<'a> {
    Inline(&'a Secret),
    /// The `token_file` value (see [`token_file_value`]).
    File(&'a str),
}

/// The `token_file` value for a token written at `token_path`, for a config at
/// `config_path`: the bare file name when both share a directory (so that the value is also
/// the name of a systemd credential, see `crate::token_file::locate`), else the absolute
/// path.
pub fn token_file_value(config_path: &Path, token_path: &Path) -> String {
    let same_dir = config_path.parent() == token_path.parent();
    match token_path.file_name() {
        Some(name) if same_dir => name.to_string_lossy().into_owned(),
        _ => token_path.display().to_string(),
    }
}

/// The complete config: every key the sidecar knows, grouped as in
/// `config/config.json.example`, at its default unless `options` set it.
pub fn config_text(options: &Options, hub: &HubAddress, token: TokenPlace<'_>) -> String {
    let state = |name: &str| match &options.state_dir {
        Some(dir) => Value::from(dir.join(name).display().to_string()),
        None => Value::from(format!("./{name}")),
    };
    let token = match token {
        TokenPlace::Inline(secret) => ("token", Value::from(secret.expose())),
        TokenPlace::File(name) => ("token_file", Value::from(name)),
    };
    let groups: Vec<Vec<(&str, Value)>> = vec![
        vec![
            ("agent_id", json!(options.agent_id)),
            token,
            ("hub_url", json!(hub.ws)),
            ("name", json!(options.agent_id)),
            ("capabilities", json!([])),
        ],
        vec![
            ("wake_command", Value::Null),
            ("confirmation_timeout_ms", json!(30000)),
            ("wake_retry_delays_ms", json!([5000, 15000, 30000])),
            ("wake_timeout_ms", json!(60000)),
            ("results_dir", state("results")),
            ("queue_file", state("queue.json")),
            ("max_result_bytes", json!(16777216)),
            ("result_settle_ms", json!(1000)),
        ],
        vec![
            ("log_file", state("sidecar.log")),
            ("log_level", json!("info")),
            ("log_max_bytes", json!(10485760)),
            ("log_keep", json!(5)),
            ("status_file", state("status.json")),
            (
                "metrics_listen",
                json!(options.metrics_listen.map(|a| a.to_string())),
            ),
            ("metrics_public", json!(false)),
            ("resource_report_interval_ms", json!(30000)),
        ],
        vec![
            ("heartbeat_interval_ms", json!(30000)),
            ("heartbeat_timeout_ms", json!(10000)),
            ("reconnect_initial_ms", json!(1000)),
            ("reconnect_max_ms", json!(60000)),
            ("connect_timeout_ms", json!(20000)),
            ("max_frame_bytes", json!(16777216)),
            (
                "ca_file",
                json!(options.ca_file.as_ref().map(|p| p.display().to_string())),
            ),
        ],
        vec![
            ("restart_max", json!(5)),
            ("restart_window_ms", json!(30000)),
            ("restart_delay_ms", json!(100)),
            ("shutdown_timeout_ms", json!(5000)),
        ],
    ];
    let blocks: Vec<String> = groups
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|(k, v)| format!("  {}: {v}", Value::from(*k)))
                .collect::<Vec<_>>()
                .join(",\n")
        })
        .collect();
    format!("{{\n{}\n}}\n", blocks.join(",\n\n"))
}

/// Runs the command; the exit code (0: registered and written, 1: anything else).
pub fn run(options: Options) -> i32 {
    match register(&options) {
        Ok(report) => {
            let _ = std::io::stdout().lock().write_all(report.as_bytes());
            0
        }
        Err(failure) => {
            eprintln!("{}: register: {failure}", env!("CARGO_PKG_NAME"));
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
    let id = &options.agent_id;
    if id.trim().is_empty() || id.chars().count() > 128 || id.chars().any(char::is_control) {
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

    let token = request(&hub, id, tls)?;

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
            write_private(path, text.as_bytes()).map_err(|e| written_failure(path, e))?;
            place_value = token_file_value(&config_path, path);
            TokenPlace::File(&place_value)
        }
        None => TokenPlace::Inline(&token),
    };
    let text = config_text(options, &hub, place);
    write_private(&config_path, text.as_bytes()).map_err(|e| written_failure(&config_path, e))?;
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
    let probe = dir.join(format!(".agentcom-sidecar-register-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| Failure::NotWritable {
            path: shown,
            reason: e.to_string(),
        })
}

/// `POST /api/onboard/register`; the token of a 201.
fn request(
    hub: &HubAddress,
    agent_id: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Secret, Failure> {
    let url = hub.register_url();
    let connector = awc::Connector::new()
        .rustls_0_23(tls)
        .timeout(REQUEST_TIMEOUT)
        .handshake_timeout(REQUEST_TIMEOUT);
    let answer =
        actix_rt::System::new().block_on(async {
            let client = awc::Client::builder()
                .connector(connector)
                .timeout(REQUEST_TIMEOUT)
                .finish();
            let mut response = client
                .post(&url)
                .insert_header((
                    "User-Agent",
                    concat!("agentcom-sidecar/", env!("CARGO_PKG_VERSION")),
                ))
                .send_json(&json!({ "agent_id": agent_id }))
                .await
                .map_err(|e| unreachable(hub, &e))?;
            let status = response.status().as_u16();
            let body = response.body().limit(MAX_ANSWER_BYTES).await.map_err(|e| {
                Failure::Unreachable {
                    hub: hub.api.clone(),
                    reason: format!("reading the answer: {e}"),
                }
            })?;
            Ok::<_, Failure>((status, body))
        })?;
    interpret(hub, agent_id, answer.0, &answer.1)
}

/// What the hub's answer means.
fn interpret(
    hub: &HubAddress,
    agent_id: &str,
    status: u16,
    body: &[u8],
) -> Result<Secret, Failure> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let detail = || match &json {
        Some(v) => v
            .get("errors")
            .or_else(|| v.get("error"))
            .map(Value::to_string)
            .unwrap_or_else(|| short(&v.to_string())),
        None => short(&String::from_utf8_lossy(body)),
    };
    let hub_name = hub.api.clone();
    match status {
        201 | 200 => {
            let token = json
                .as_ref()
                .and_then(|v| v.get("token"))
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty() && !t.chars().any(char::is_control));
            match token {
                Some(t) => Ok(Secret::new(t)),
                None => Err(Failure::Unexpected {
                    hub: hub_name,
                    status,
                    detail: "the answer holds no usable \"token\"".into(),
                }),
            }
        }
        409 => Err(Failure::Taken {
            agent_id: agent_id.into(),
            hub: hub_name,
        }),
        400 | 422 => Err(Failure::Refused {
            agent_id: agent_id.into(),
            hub: hub_name,
            status,
            detail: detail(),
        }),
        429 => Err(Failure::RateLimited { hub: hub_name }),
        404 => Err(Failure::NoEndpoint {
            url: hub.register_url(),
            hub: hub_name,
        }),
        _ => Err(Failure::Unexpected {
            hub: hub_name,
            status,
            detail: detail(),
        }),
    }
}

/// A connection failure in words: TLS apart, since its fix differs.
fn unreachable(hub: &HubAddress, e: &awc::error::SendRequestError) -> Failure {
    use awc::error::{ConnectError, SendRequestError};
    let hub_name = hub.api.clone();
    let reason = match e {
        SendRequestError::Connect(ConnectError::Io(io)) => {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Failure::Tls {
                    hub: hub_name,
                    reason: tls.to_string(),
                };
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the hub running, and is this its port?)".to_string()
                }
                _ => io.to_string(),
            }
        }
        SendRequestError::Connect(ConnectError::Resolver(r)) => {
            format!("cannot resolve the host name ({r})")
        }
        SendRequestError::Connect(ConnectError::NoRecords) => {
            "the host name has no address".to_string()
        }
        SendRequestError::Connect(ConnectError::Timeout) | SendRequestError::Timeout => {
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
        }
        other if hub.is_tls() && other.to_string().to_lowercase().contains("tls") => {
            return Failure::Tls {
                hub: hub_name,
                reason: other.to_string(),
            }
        }
        other => other.to_string(),
    };
    Failure::Unreachable {
        hub: hub_name,
        reason,
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None if s.is_empty() => "(no body)".into(),
        None => s.to_string(),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Writes a file only its owner can read, atomically (temporary file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut options = atomic_write_file::OpenOptions::new();
    #[cfg(unix)]
    {
        use atomic_write_file::unix::OpenOptionsExt as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
        options.preserve_mode(false);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// What to do next, with the paths just written.
fn next_steps(options: &Options, hub: &HubAddress, config: &Path, token: Option<&Path>) -> String {
    let c = config.display();
    let id = &options.agent_id;
    let mut out = format!(
        "registered agent \"{id}\" on the hub at {} (hub_url {})\nwrote {c} (mode 600): a complete config, every key at its default\n",
        hub.api, hub.ws
    );
    let bearer = match token {
        Some(t) => {
            out.push_str(&format!(
                "wrote {} (mode 600): the token, named by \"token_file\" in the config\n",
                t.display()
            ));
            format!("$(cat {})", t.display())
        }
        None => format!("$(jq -r .token {c})"),
    };
    out.push_str(&format!(
        "\nNext:\n\
         1. Set \"wake_command\" in {c} (the command that starts your agent for a task;\n   \
            without it the sidecar expects the agent to start by itself), then check it:\n     \
              agentcom-sidecar check-config --config {c}\n\
         2. Start the sidecar:\n     \
              agentcom-sidecar --config {c}\n   \
            or as a service: docs/usage/running-as-a-service.md (one agent),\n   \
            docs/usage/running-a-fleet.md (several on one machine).\n\
         3. Push it a test task through the hub, and watch the sidecar's log:\n     \
              curl -X POST {}/api/tasks -H \"Authorization: Bearer {bearer}\" \\\n       \
                -H 'Content-Type: application/json' \\\n       \
                -d '{{\"description\": \"Say hello\", \"assign_to\": \"{id}\"}}'\n",
        hub.api
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn options(state_dir: Option<&str>) -> Options {
        Options {
            hub: "http://hub:4000".into(),
            agent_id: "a1".into(),
            config: "/etc/agentcom-sidecar/a1.json".into(),
            force: false,
            token_file: None,
            state_dir: state_dir.map(PathBuf::from),
            ca_file: None,
            metrics_listen: None,
        }
    }

    #[test]
    fn the_hub_address_gives_the_api_base_and_the_websocket_url() {
        let p = |s| HubAddress::parse(s).unwrap();
        assert_eq!(
            p("http://hub:4000"),
            HubAddress {
                api: "http://hub:4000".into(),
                ws: "ws://hub:4000/ws".into()
            }
        );
        assert_eq!(p("http://hub:4000/").ws, "ws://hub:4000/ws");
        assert_eq!(
            p("https://hub.example/agentcom/"),
            HubAddress {
                api: "https://hub.example/agentcom".into(),
                ws: "wss://hub.example/agentcom/ws".into()
            }
        );
        assert_eq!(
            p("wss://hub.example:8443/ws"),
            HubAddress {
                api: "https://hub.example:8443".into(),
                ws: "wss://hub.example:8443/ws".into()
            }
        );
        assert_eq!(
            p("http://hub:4000").register_url(),
            "http://hub:4000/api/onboard/register"
        );
        for bad in [
            "hub:4000",
            "ftp://hub",
            "http://",
            "http://u:p@hub",
            "http://hub/?x=1",
            "",
        ] {
            assert!(HubAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_written_config_loads_with_the_defaults_of_a_minimal_one() {
        let hub = HubAddress::parse("http://hub:4000").unwrap();
        let secret = Secret::new("s3cret");
        let path = Path::new("/etc/agentcom-sidecar/a1.json");
        let text = config_text(&options(None), &hub, TokenPlace::Inline(&secret));
        let written = Config::from_json(&text, path).unwrap();
        assert!(written.warnings.is_empty(), "{:?}", written.warnings);
        let minimal = Config::from_json(
            r#"{"agent_id":"a1","token":"s3cret","hub_url":"ws://hub:4000/ws"}"#,
            path,
        )
        .unwrap();
        assert_eq!(written.effective(), minimal.effective());
        assert_eq!(written.token.expose(), "s3cret");
        // Every key the sidecar knows is there.
        let keys: Value = serde_json::from_str(&text).unwrap();
        for key in crate::config::KNOWN_KEYS {
            if *key != "token_file" {
                assert!(keys.get(*key).is_some(), "{key} missing from\n{text}");
            }
        }
    }

    #[test]
    fn state_dir_metrics_and_token_file_are_written_as_asked() {
        let hub = HubAddress::parse("https://hub:4000").unwrap();
        let mut o = options(Some("/var/lib/agentcom-sidecar/a1"));
        o.metrics_listen = Some("127.0.0.1:9465".parse().unwrap());
        let text = config_text(&o, &hub, TokenPlace::File("a1.token"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["token_file"], "a1.token");
        assert!(v.get("token").is_none());
        assert_eq!(v["hub_url"], "wss://hub:4000/ws");
        assert_eq!(v["queue_file"], "/var/lib/agentcom-sidecar/a1/queue.json");
        assert_eq!(v["log_file"], "/var/lib/agentcom-sidecar/a1/sidecar.log");
        assert_eq!(v["metrics_listen"], "127.0.0.1:9465");
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

    #[test]
    fn the_token_file_value_is_a_bare_name_beside_the_config() {
        let config = Path::new("/etc/agentcom-sidecar/a1.json");
        assert_eq!(
            token_file_value(config, Path::new("/etc/agentcom-sidecar/a1.token")),
            "a1.token"
        );
        assert_eq!(
            token_file_value(config, Path::new("/root/secrets/a1.token")),
            "/root/secrets/a1.token"
        );
    }

    #[test]
    fn answers_are_read_without_showing_a_token() {
        let hub = HubAddress::parse("http://hub:4000").unwrap();
        let ok = interpret(&hub, "a1", 201, br#"{"agent_id":"a1","token":"t0k"}"#).unwrap();
        assert_eq!(ok.expose(), "t0k");
        let e = interpret(
            &hub,
            "a1",
            409,
            br#"{"error":"agent_id already registered"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already registered") && e.contains("409"), "{e}");
        let e = interpret(
            &hub,
            "a1",
            422,
            br#"{"error":"validation_failed","errors":[{"field":"agent_id"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("agent_id") && e.contains("422"), "{e}");
        assert!(matches!(
            interpret(&hub, "a1", 201, b"{}"),
            Err(Failure::Unexpected { .. })
        ));
        assert!(matches!(
            interpret(&hub, "a1", 201, br#"{"token":""}"#),
            Err(Failure::Unexpected { .. })
        ));
        assert!(matches!(
            interpret(&hub, "a1", 404, b"not found"),
            Err(Failure::NoEndpoint { .. })
        ));
        assert!(matches!(
            interpret(&hub, "a1", 429, b""),
            Err(Failure::RateLimited { .. })
        ));
        let e = interpret(&hub, "a1", 500, &[b'x'; 1000])
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{e}");
    }
}
