//! ShutdownActor: turns process signals into messages.
//!
//! On Unix it listens with tokio's signal streams, which tell signals apart and need no
//! extra thread: SIGINT and SIGTERM ask the Supervisor for an orderly stop
//! ([`ShutdownRequested`]); a second one exits at once (exit code 128 + signal number),
//! unless it is the same signal within 100 ms (one delivery to both the process and its
//! group, as `timeout` does);
//! SIGHUP asks the logger to reopen its file ([`ReopenLog`]). On Windows, tokio's console
//! control streams do the same for Ctrl-C, Ctrl-Break, the console window closing and the
//! system shutting down (Windows allows a closing console about 5 s); a user logging off is
//! received and ignored, so a sidecar run by a service wrapper does not stop then (without a
//! handler for it, Windows' default one would end the process). The actor stops on [`Stop`];
//! it fails (and is restarted) if a signal stream cannot be installed.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::logger::ReopenLog;
use super::supervisor::ShutdownRequested;
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;

/// A signal arrived.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct SignalReceived {
    pub signal: Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT; Ctrl-C on Windows.
    Interrupt,
    Terminate,
    Hangup,
    /// Windows: Ctrl-Break.
    Break,
    /// Windows: the console window is closing.
    Close,
    /// Windows: the system is shutting down.
    Shutdown,
    /// Windows: a user is logging off (ignored).
    Logoff,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt if cfg!(windows) => "CTRL_C",
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
            Signal::Break => "CTRL_BREAK",
            Signal::Close => "CTRL_CLOSE",
            Signal::Shutdown => "CTRL_SHUTDOWN",
            Signal::Logoff => "CTRL_LOGOFF",
        }
    }

    /// The exit code of a process killed by this signal (128 + its number; on Windows the
    /// C runtime's numbers: SIGBREAK is 21).
    fn forced_exit_code(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate | Signal::Close | Signal::Shutdown => 143,
            Signal::Hangup | Signal::Logoff => 129,
            Signal::Break => 149,
        }
    }
}

pub struct ShutdownActor {
    env: Env,
    /// The signal that asked for the shutdown, and when.
    requested: Option<(Signal, Instant)>,
}

impl ShutdownActor {
    pub fn new(env: &Env) -> Self {
        ShutdownActor {
            env: env.clone(),
            requested: None,
        }
    }
}

/// A repeat of the first signal within this is one delivery seen twice, not a second signal.
const DUPLICATE_WITHIN: Duration = Duration::from_millis(100);

impl ShutdownActor {
    fn is_duplicate(&self, signal: Signal) -> bool {
        self.requested
            .is_some_and(|(first, at)| first == signal && at.elapsed() < DUPLICATE_WITHIN)
    }
}

impl Actor for ShutdownActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = listen(ctx) {
            self.env
                .fail(ctx, format!("cannot install signal handlers: {e}"));
        }
    }
}

#[cfg(unix)]
fn listen(ctx: &mut Context<ShutdownActor>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, sig) in [
        (SignalKind::interrupt(), Signal::Interrupt),
        (SignalKind::terminate(), Signal::Terminate),
        (SignalKind::hangup(), Signal::Hangup),
    ] {
        let stream = signal(kind)?;
        let stream = futures_util::stream::unfold(stream, move |mut s| async move {
            s.recv().await.map(|()| (SignalReceived { signal: sig }, s))
        });
        ctx.add_stream(stream);
    }
    Ok(())
}

/// Windows: tokio's console control streams. For a closing console, a logoff and a shutdown,
/// tokio's handler does not return (Windows ends the process when it does), so the orderly
/// stop has until Windows' own limit.
#[cfg(windows)]
fn listen(ctx: &mut Context<ShutdownActor>) -> std::io::Result<()> {
    use tokio::signal::windows;
    macro_rules! forward {
        ($listener:expr, $signal:expr) => {{
            let listener = $listener?;
            ctx.add_stream(futures_util::stream::unfold(listener, |mut l| async move {
                l.recv()
                    .await
                    .map(|()| (SignalReceived { signal: $signal }, l))
            }));
        }};
    }
    forward!(windows::ctrl_c(), Signal::Interrupt);
    forward!(windows::ctrl_break(), Signal::Break);
    forward!(windows::ctrl_close(), Signal::Close);
    forward!(windows::ctrl_shutdown(), Signal::Shutdown);
    forward!(windows::ctrl_logoff(), Signal::Logoff);
    Ok(())
}

crate::answers_probe!(ShutdownActor);

impl Child for ShutdownActor {
    fn routes(_: &Bus, _: &Addr<Self>) {}
}

impl Handler<Stop> for ShutdownActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl StreamHandler<SignalReceived> for ShutdownActor {
    fn handle(&mut self, msg: SignalReceived, ctx: &mut Context<Self>) {
        <Self as Handler<SignalReceived>>::handle(self, msg, ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // A signal stream never ends while the process lives; nothing to do if it does.
    }
}

impl Handler<SignalReceived> for ShutdownActor {
    type Result = ();
    fn handle(&mut self, msg: SignalReceived, _: &mut Context<Self>) {
        let signal = msg.signal;
        match signal {
            Signal::Hangup => {
                // Reopen first: this line then lands in the new file, not the one moved away.
                let _ = self.env.bus.send(ReopenLog);
                log_event!(
                    self.env.log,
                    Info,
                    "signal_received",
                    signal = signal.name(),
                    action = "reopen_log"
                );
            }
            Signal::Logoff => {
                log_event!(
                    self.env.log,
                    Debug,
                    "signal_received",
                    signal = signal.name(),
                    action = "ignored"
                );
            }
            _ if self.is_duplicate(signal) => {
                // The same signal delivered twice at once (e.g. `timeout` signals the process
                // and its group): one request, not an operator insisting.
                log_event!(
                    self.env.log,
                    Debug,
                    "signal_received",
                    signal = signal.name(),
                    action = "ignored_duplicate"
                );
            }
            _ if self.requested.is_some() => {
                // The operator insists: no more waiting. Written directly: the logger may be
                // the thing that is slow.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: second {} during shutdown: exiting at once",
                    env!("CARGO_PKG_NAME"),
                    signal.name()
                );
                std::process::exit(signal.forced_exit_code());
            }
            _ => {
                self.requested = Some((signal, Instant::now()));
                if self
                    .env
                    .bus
                    .send(ShutdownRequested {
                        signal: signal.name(),
                    })
                    .is_err()
                {
                    std::process::exit(signal.forced_exit_code());
                }
            }
        }
    }
}
