//! [`DevHub`]: the hub's server on a thread of its own (its actix System, one HTTP worker,
//! the timers' ticker), started, stopped and restarted by its owner, and the test controls
//! that act on connections (raw frames, kills, network cuts). [`run_until_signal`] is the
//! `dev-hub` subcommand.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

use super::core::{Command, Now};
use super::state::Hub;
use super::{http, tls, ws, Behaviour, DevHubOptions, HubEvent, RawFrame};

/// How long a restart waits for the sessions to close before it stops the server anyway.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// A running hub. Dropping it stops the server and its thread.
pub struct DevHub {
    pub(super) hub: Arc<Hub>,
    addr: SocketAddr,
    tls: Option<rustls::ServerConfig>,
    server: Option<ServerHandle>,
    thread: Option<JoinHandle<()>>,
}

impl DevHub {
    /// Binds, starts the server on a thread of its own, and returns once the socket is bound.
    pub fn start(opts: DevHubOptions) -> io::Result<DevHub> {
        let tls = match &opts.tls {
            Some((cert, key)) => Some(tls::server_config(cert, key)?),
            None => None,
        };
        let hub = Arc::new(Hub::new(&opts));
        let mut dev = DevHub {
            hub,
            addr: opts.listen,
            tls,
            server: None,
            thread: None,
        };
        dev.launch()?;
        Ok(dev)
    }

    /// Starts the server thread on `self.addr`; sets the bound address.
    fn launch(&mut self) -> io::Result<()> {
        let (bound_tx, bound) = mpsc::channel();
        let shared = Arc::clone(&self.hub);
        let (listen, tls) = (self.addr, self.tls.clone());
        let thread = std::thread::Builder::new()
            .name("dev-hub".into())
            .spawn(move || serve(shared, listen, tls, bound_tx))?;
        match bound.recv() {
            Ok(Ok((addr, server))) => {
                self.addr = addr;
                self.server = Some(server);
                self.thread = Some(thread);
                Ok(())
            }
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
        if self.tls.is_some() {
            format!("wss://localhost:{}/ws", self.addr.port())
        } else {
            format!("ws://{}/ws", self.reachable_addr())
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn http_url(&self) -> String {
        if self.tls.is_some() {
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
            let fresh = self.hub.events.after(seen, deadline)?;
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

    /// Queues `frame`, as is, for every session identified as `agent_id` (not cut); how many
    /// there were. The hub's model knows nothing of it: a `task_assign` sent this way is a
    /// task the queue does not have (reports about it are refused `not_found`), and no FSM
    /// hears of it.
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

    /// Drops the sessions of `agent_id` without a Close frame, as a reset connection: the hub
    /// notices and cleans up (take-back included); how many there were.
    pub fn kill_connections(&self, agent_id: &str) -> usize {
        self.hub.command_agent(agent_id, || Command::Kill).len()
    }

    /// Cuts the sessions of `agent_id` as a network cut would: the hub neither reads nor
    /// writes them any more and notices nothing (not the client's FIN either); each lingers,
    /// still holding its push registration, until its idle timeout. How many there were.
    pub fn cut_connections(&self, agent_id: &str) -> usize {
        self.hub.command_agent(agent_id, || Command::Cut).len()
    }

    /// Holds (`true`) or releases the hub's messages to the agent's sessions: pushes,
    /// cancels and broadcasts wait, in order, as for a socket process busy with something
    /// else, and the agent's FSM hears of a pushed task only when it is handled — so the
    /// scheduler can give the agent a second task before its FSM knows of the first, as the
    /// hub's scheduler can. How many sessions there were.
    pub fn hold_deliveries(&self, agent_id: &str, hold: bool) -> usize {
        self.hub
            .command_agent(agent_id, || Command::Hold(hold))
            .len()
    }

    /// While deliveries are held: the oldest is handled now (its push sent, the FSM told),
    /// the rest stay held. How many sessions there were.
    pub fn release_one_delivery(&self, agent_id: &str) -> usize {
        self.hub
            .command_agent(agent_id, || Command::ReleaseOne)
            .len()
    }

    /// Restarts the hub as an orderly restart of the real one: every session is closed
    /// (1000) and cleaned up, so the tasks its agents held are taken back (next generation);
    /// the server stops and starts again on the same address. The task queue and the tokens
    /// (registered ones included) are kept, as the hub keeps them on disk; presence, push
    /// registrations, FSMs, cooldowns and rate-limit buckets are not.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.hub.shut_sessions() > 0 {
            let deadline = Instant::now() + SHUTDOWN_WAIT;
            while self.hub.session_count() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.shutdown();
        self.hub.with_core(|core| core.restarted(Now::get()));
        self.launch()
    }

    /// Stops the server and waits for its thread; the port is free afterwards. Connections
    /// are dropped without a Close frame.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Some(server) = self.server.take() {
                // The stop command is sent at once; the thread ends when the server stopped.
                drop(server.stop(false));
            }
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
        let timers = actix_rt::spawn(Arc::clone(&hub).run_timers());
        let data = web::Data::from(hub);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // Request bodies up to Plug.Parsers' default, 8 000 000 bytes.
                .app_data(web::PayloadConfig::new(8_000_000))
                .route("/ws", web::get().to(ws::upgrade))
                .configure(http::routes)
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
        timers.abort();
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
