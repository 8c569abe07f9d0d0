//! The dev hub: a small but real AgentCom hub, for the `dev-hub` subcommand, the demo, the
//! integration tests and the benchmark. It speaks the hub's protocol on `/ws` (identify, pings,
//! task reports), serves the hub's HTTP side (`/health`, `/api/agents`,
//! `/api/admin/push-task`), over TLS when given a certificate, and runs on its own thread with
//! its own actix System. Tests drive it through [`DevHub`]: every connection event is recorded
//! and can be waited for, any frame can be sent to a connection, and [`Behaviour`] switches make
//! it misbehave on purpose. Other processes read the same events over HTTP with
//! `GET /api/events` (no auth: a dev hub, on loopback by default), each stamped with the
//! machine's monotonic clock.

mod http;
mod state;
mod tls;
mod tokens;
// The frame schemas are used by the WebSocket side next.
#[allow(dead_code)]
mod validation;
mod ws;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

use state::{Command, Hub};

/// How to run a [`DevHub`].
#[derive(Clone, Debug)]
pub struct DevHubOptions {
    pub listen: SocketAddr,
    /// agent_id -> token. `None` accepts any non-empty token for any agent id.
    pub tokens: Option<HashMap<String, String>>,
    /// PEM certificate chain file and PEM private key file: serve wss/https instead of ws/http.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Print one human line per presence event (connected, identified, left, task pushed).
    pub print_presence: bool,
    /// The `default_repo` that `POST /api/onboard/register` hands out (the hub's config
    /// value; `null` when unset).
    pub default_repo: Option<String>,
}

impl Default for DevHubOptions {
    fn default() -> Self {
        DevHubOptions {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tokens: None,
            tls: None,
            print_presence: false,
            default_repo: None,
        }
    }
}

/// Runtime switches; they apply to current and future connections.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Reply `{"type":"pong","timestamp":ms}` to an application-level ping.
    pub answer_pings: bool,
    /// Reply `task_ack` to `task_accepted`, `task_complete` and `task_failed`.
    pub auto_ack: bool,
    /// `false`: swallow identify frames and send nothing back.
    pub answer_identify: bool,
    /// Answer a client's Close frame with a Close frame of the same code, then end; `false`:
    /// ignore it and keep the connection open until the client drops it.
    pub echo_close: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            answer_pings: true,
            auto_ack: true,
            answer_identify: true,
            echo_close: true,
        }
    }
}

/// A frame the hub sends as is.
#[derive(Clone, Debug)]
pub enum RawFrame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    /// A Close frame with code and reason; the hub then ends the connection once the client
    /// echoes it, or after 1 s. Frames queued after it are dropped.
    Close(u16, String),
    /// A text message split into continuation frames of at most this many bytes.
    FragmentedText(String, usize),
}

/// Something that happened on one connection (`conn`).
#[derive(Clone, Debug)]
pub struct HubEvent {
    pub at: Instant,
    /// The same moment as `at`, as CLOCK_MONOTONIC nanoseconds: comparable with the monotonic
    /// clock of any other process on the machine (on Linux, Python's `time.monotonic_ns()`).
    /// Where there is no CLOCK_MONOTONIC it counts from the hub's first event instead.
    pub mono_ns: u64,
    pub conn: u64,
    pub kind: HubEventKind,
}

#[derive(Clone, Debug)]
pub enum HubEventKind {
    Connected,
    /// A text frame from the client, raw, and parsed (`Value::Null` if it is not JSON).
    Frame {
        text: String,
        json: serde_json::Value,
    },
    BinaryFrame(usize),
    /// A WebSocket Pong frame from the client, with its payload.
    WsPong(Vec<u8>),
    /// A Close frame from the client.
    CloseReceived {
        code: Option<u16>,
        reason: String,
    },
    Identified {
        agent_id: String,
    },
    /// Identify refused: `invalid_token` or `token_agent_mismatch`.
    IdentifyRefused {
        agent_id: String,
        error: String,
    },
    Disconnected,
    /// `POST /api/admin/push-task` pushed a task: recorded when the connection's task hands
    /// the `task_assign` frame to the WebSocket session.
    TaskPushed {
        agent_id: String,
        task_id: String,
    },
    /// `POST /api/onboard/register` made a token for a new agent (connection 0: the hub).
    AgentRegistered {
        agent_id: String,
    },
}

impl HubEvent {
    /// The `type` of a text frame's JSON.
    pub fn frame_type(&self) -> Option<&str> {
        match &self.kind {
            HubEventKind::Frame { json, .. } => json.get("type")?.as_str(),
            _ => None,
        }
    }
}

/// A running hub. Dropping it stops the server and its thread.
pub struct DevHub {
    hub: Arc<Hub>,
    addr: SocketAddr,
    tls: bool,
    server: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl DevHub {
    /// Binds, starts the server on a thread of its own, and returns once the socket is bound.
    pub fn start(opts: DevHubOptions) -> io::Result<DevHub> {
        let tls = match &opts.tls {
            Some((cert, key)) => Some(tls::server_config(cert, key)?),
            None => None,
        };
        let secure = tls.is_some();
        let hub = Arc::new(Hub::new(
            opts.tokens,
            opts.print_presence,
            opts.default_repo,
        ));
        let (bound_tx, bound) = mpsc::channel();
        let shared = Arc::clone(&hub);
        let listen = opts.listen;
        let thread = std::thread::Builder::new()
            .name("dev-hub".into())
            .spawn(move || serve(shared, listen, tls, bound_tx))?;
        match bound.recv() {
            Ok(Ok((addr, server))) => Ok(DevHub {
                hub,
                addr,
                tls: secure,
                server,
                thread: Some(thread),
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the dev hub thread ended before binding"))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/ws`, or `wss://localhost:PORT/ws` with TLS.
    pub fn ws_url(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}/ws", self.addr.port())
        } else {
            format!("ws://{}/ws", self.reachable_addr())
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn http_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.reachable_addr())
        }
    }

    /// The bound address, with a wildcard IP replaced by loopback.
    fn reachable_addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        addr
    }

    /// The first event since the hub started that matches `pred`, waiting for new ones until
    /// `timeout`; `None` if none came.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&HubEvent) -> bool,
    ) -> Option<HubEvent> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let fresh = self.hub.events_after(seen, deadline)?;
            seen += fresh.len();
            if let Some(event) = fresh.into_iter().find(|event| pred(event)) {
                return Some(event);
            }
        }
    }

    /// Every event recorded so far.
    pub fn events(&self) -> Vec<HubEvent> {
        self.hub.events()
    }

    /// Queues `frame` for every connection identified as `agent_id`; how many there were.
    pub fn send(&self, agent_id: &str, frame: RawFrame) -> usize {
        self.hub
            .command_agent(agent_id, || Command::Send(frame.clone()))
            .len()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.hub.set_behaviour(behaviour);
    }

    pub fn behaviour(&self) -> Behaviour {
        self.hub.behaviour()
    }

    /// Drops the connections of `agent_id` without a Close frame; how many there were.
    pub fn kill_connections(&self, agent_id: &str) -> usize {
        self.hub.command_agent(agent_id, || Command::Kill).len()
    }

    /// Stops the server and waits for its thread; the port is free afterwards.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The stop command is sent at once; the thread ends when the server has stopped.
            drop(self.server.stop(false));
            let _ = thread.join();
        }
    }
}

impl Drop for DevHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type Bound = io::Result<(SocketAddr, ServerHandle)>;

/// The hub thread: binds, reports the address (or the error), and serves until stopped.
fn serve(
    hub: Arc<Hub>,
    listen: SocketAddr,
    tls: Option<rustls::ServerConfig>,
    bound: mpsc::Sender<Bound>,
) {
    actix_rt::System::new().block_on(async move {
        let data = web::Data::from(hub);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/ws", web::get().to(ws::upgrade))
                .route("/health", web::get().to(http::health))
                .route("/api/agents", web::get().to(http::agents))
                .route("/api/admin/push-task", web::post().to(http::push_task))
                .route("/api/onboard/register", web::post().to(http::register))
                .route("/api/events", web::get().to(http::events))
        })
        .workers(1)
        // Frames go out when written, as from a hub served by Cowboy (Ranch enables
        // TCP_NODELAY by default). With Nagle's algorithm, a frame sent while the previous
        // one still waits for the client's delayed ACK is held back, for up to 40 ms.
        .tcp_nodelay(true)
        .disable_signals();
        let server = match tls {
            Some(config) => server.bind_rustls_0_23(listen, config),
            None => server.bind(listen),
        };
        let server = match server {
            Ok(server) => server,
            Err(error) => {
                let _ = bound.send(Err(error));
                return;
            }
        };
        let Some(&addr) = server.addrs().first() else {
            let _ = bound.send(Err(io::Error::other("no address bound")));
            return;
        };
        let server = server.run();
        if bound.send(Ok((addr, server.handle()))).is_ok() {
            let _ = server.await;
        }
    });
}

/// The `dev-hub` subcommand: serves with presence lines on stdout until SIGINT or SIGTERM.
pub fn run_until_signal(mut opts: DevHubOptions) -> io::Result<()> {
    opts.print_presence = true;
    let hub = DevHub::start(opts)?;
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "hub: listening on {} ({})",
        hub.ws_url(),
        hub.http_url()
    );
    let _ = out.flush();
    drop(out);
    let signalled = actix_rt::System::new().block_on(wait_for_signal());
    hub.stop();
    signalled
}

#[cfg(unix)]
async fn wait_for_signal() -> io::Result<()> {
    use actix_rt::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        interrupted = actix_rt::signal::ctrl_c() => interrupted,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> io::Result<()> {
    actix_rt::signal::ctrl_c().await
}

/// Reads a tokens file: a JSON object `{"agent_id": "token", …}`.
pub fn load_tokens(path: &Path) -> Result<HashMap<String, String>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let tokens: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
        format!("{shown}: expected a JSON object of agent id -> token strings: {e}")
    })?;
    if tokens.is_empty() {
        return Err(format!("{shown}: no agent in it"));
    }
    if let Some(agent) = tokens
        .iter()
        .find(|(_, token)| token.is_empty())
        .map(|(a, _)| a)
    {
        return Err(format!("{shown}: agent {agent:?} has an empty token"));
    }
    Ok(tokens)
}
