//! Supervisor: the root actor. Starts the children, restarts the ones that fail, and stops
//! them all in good order.
//!
//! Each child runs in a task whose handle the Supervisor keeps (see [`ChildSpec`]), so it
//! sees every way a child can end: stopped on its own (with or without a reason given through
//! [`Env::fail`]) or panicked. A child that ends while the sidecar is running is failed: it
//! is replaced by a fresh actor (clean state) after a delay that doubles with each recent
//! restart of that child, and `actor_restarted` is logged. Restart intensity as in OTP:
//! more than `restart_max` restarts within `restart_window` and the Supervisor gives up,
//! logs `supervisor_gave_up`, stops everything and exits with [`ExitCode::GaveUp`] (70) so the
//! service manager restarts the process.
//!
//! Shutdown ([`ShutdownRequested`], [`RestartRequested`], giving up): children are stopped
//! one by one in reverse start order, all within `shutdown_timeout`: a child still running
//! when its share is used up is aborted; the last line before the logger stops is `shutdown` complete. Then
//! the actix System stops with the exit code.

use std::collections::VecDeque;
use std::time::Instant;

use actix::prelude::*;

use super::{ChildSpec, Env, ExitNote, Probe, Running, Stop};
use crate::bus::MessagesDropped;
use crate::log::LogRecord;
use crate::log_event;

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Orderly shutdown on a signal.
    Clean = 0,
    /// Restart intensity exceeded (EX_SOFTWARE; 2 is what the command-line parser uses for
    /// a usage error).
    GaveUp = 70,
    /// The hub asked for a restart (`restart_sidecar`): exit non-zero so the service
    /// manager starts the process again.
    RestartRequested = 75,
}

/// SIGINT/SIGTERM (or Ctrl-C): stop in good order.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ShutdownRequested {
    pub signal: &'static str,
}

/// The hub asked the sidecar to restart (`restart_sidecar`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RestartRequested {
    pub reason: String,
}

/// Whether every running child answers a [`Probe`] within the given time (the systemd
/// watchdog's proof that the event loop and every mailbox turn).
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct CheckAlive {
    pub within: std::time::Duration,
}

/// Published once every child has been started.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ChildrenStarted;

/// Published when the orderly shutdown begins.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ShutdownBegun;

/// Set (in `Env::kept`, shared by every actor) the moment the orderly shutdown begins,
/// before `shutdown phase=begin` is logged. [`ShutdownBegun`] travels through mailboxes, so
/// a task or a wake order already queued ahead of it would be handled after the shutdown
/// began; the QueueActor and the WakerActor read this flag before they accept a task or
/// start a wake command. Everything runs on one thread: whatever runs after the flag is set
/// sees it.
#[derive(Debug, Default)]
pub struct ShutdownFlag(std::cell::Cell<bool>);

impl ShutdownFlag {
    pub fn began(&self) -> bool {
        self.0.get()
    }

    fn set(&self) {
        self.0.set(true);
    }
}

/// Published for every restart of a child.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ActorRestarted {
    pub actor: &'static str,
    pub reason: String,
    pub restart_count: u32,
}

pub struct Supervisor {
    env: Env,
    children: Vec<Slot>,
    /// When recent restarts happened, for the intensity limit.
    restarts: VecDeque<Instant>,
    phase: Phase,
}

struct Slot {
    spec: ChildSpec,
    running: Option<Live>,
    /// Bumped at every start, so the end of an old incarnation is not taken for the new one.
    incarnation: u64,
    restart_count: u32,
    recent_restarts: VecDeque<Instant>,
}

/// A running incarnation as the Supervisor holds it.
struct Live {
    stop: Recipient<Stop>,
    probe: Recipient<Probe>,
    abort: tokio::task::AbortHandle,
    exit: ExitNote,
}

enum Phase {
    Running,
    Stopping {
        code: ExitCode,
        started: Instant,
        /// Index of the child being stopped now (stopping goes from the last to the first).
        next: usize,
    },
}

/// How a child's task ended.
enum Ended {
    Stopped,
    Failed(String),
    Panicked(String),
    Aborted,
}

impl Ended {
    fn reason(&self) -> &'static str {
        match self {
            Ended::Stopped => "stopped",
            Ended::Failed(_) => "error",
            Ended::Panicked(_) => "panic",
            Ended::Aborted => "aborted",
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Ended::Failed(d) | Ended::Panicked(d) => Some(d),
            _ => None,
        }
    }
}

impl Supervisor {
    pub fn new(env: Env, children: Vec<ChildSpec>) -> Self {
        Supervisor {
            env,
            children: children
                .into_iter()
                .map(|spec| Slot {
                    spec,
                    running: None,
                    incarnation: 0,
                    restart_count: 0,
                    recent_restarts: VecDeque::new(),
                })
                .collect(),
            restarts: VecDeque::new(),
            phase: Phase::Running,
        }
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        let slot = &mut self.children[index];
        let Running {
            stop,
            probe,
            task,
            exit,
        } = slot.spec.start(&self.env);
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        slot.running = Some(Live {
            stop,
            probe,
            abort: task.abort_handle(),
            exit,
        });
        let watch = actix::fut::wrap_future::<_, Self>(task_result(task));
        log_event!(
            self.env.log,
            Info,
            "actor_started",
            actor = slot.spec.name,
            restart_count = slot.restart_count
        );
        ctx.spawn(
            watch.map(move |ended, act, ctx| act.child_ended(index, incarnation, ended, ctx)),
        );
    }

    fn child_ended(
        &mut self,
        index: usize,
        incarnation: u64,
        ended: Ended,
        ctx: &mut Context<Self>,
    ) {
        let slot = &mut self.children[index];
        if slot.incarnation != incarnation {
            return;
        }
        let Some(live) = slot.running.take() else {
            return;
        };
        // A child that stopped on its own may have said why (Env::fail).
        let ended = match (ended, live.exit.take()) {
            (Ended::Stopped, Some(reason)) => Ended::Failed(reason),
            (ended, _) => ended,
        };
        let name = slot.spec.name;
        match self.phase {
            Phase::Stopping { next, .. } => {
                if next == index {
                    // After the logger itself has stopped there is nowhere left to log to.
                    if self.env.bus.routes::<LogRecord>() {
                        log_event!(
                            self.env.log,
                            Info,
                            "actor_stopped",
                            actor = name,
                            reason = ended.reason(),
                            detail = ended.detail()
                        );
                    }
                    self.stop_next(ctx);
                }
            }
            Phase::Running => self.restart(index, ended, ctx),
        }
    }

    fn restart(&mut self, index: usize, ended: Ended, ctx: &mut Context<Self>) {
        let config = self.env.config.clone();
        let now = Instant::now();
        let window = config.restart_window;
        let recent = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                q.pop_front();
            }
        };
        recent(&mut self.restarts);
        let slot = &mut self.children[index];
        recent(&mut slot.recent_restarts);
        let name = slot.spec.name;
        if self.restarts.len() as u32 >= config.restart_max {
            log_event!(
                self.env.log,
                Error,
                "supervisor_gave_up",
                actor = name,
                reason = ended.reason(),
                detail = ended.detail(),
                restarts = self.restarts.len(),
                window_ms = window.as_millis() as u64,
            );
            self.begin_shutdown(ExitCode::GaveUp, ctx);
            return;
        }
        self.restarts.push_back(now);
        slot.recent_restarts.push_back(now);
        slot.restart_count += 1;
        let doublings = (slot.recent_restarts.len() as u32)
            .saturating_sub(1)
            .min(16);
        let delay = config
            .restart_delay
            .saturating_mul(1 << doublings)
            .min(window);
        log_event!(
            self.env.log,
            Warn,
            "actor_restarted",
            actor = name,
            reason = ended.reason(),
            detail = ended.detail(),
            restart_count = slot.restart_count,
            delay_ms = delay.as_millis() as u64,
        );
        let _ = self.env.bus.send(ActorRestarted {
            actor: name,
            reason: match ended.detail() {
                Some(detail) => format!("{}: {detail}", ended.reason()),
                None => ended.reason().to_string(),
            },
            restart_count: slot.restart_count,
        });
        ctx.run_later(delay, move |act, ctx| {
            if matches!(act.phase, Phase::Running) {
                act.start_child(index, ctx);
            }
        });
    }

    fn begin_shutdown(&mut self, code: ExitCode, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        self.phase = Phase::Stopping {
            code,
            started: Instant::now(),
            next: self.children.len(),
        };
        let _ = self.env.bus.send(ShutdownBegun);
        // Children that stop from now on do not come back: nothing is held for them.
        self.env.bus.stop_holding();
        self.stop_next(ctx);
    }

    /// Stops the next child in reverse start order, or finishes when none is left.
    fn stop_next(&mut self, ctx: &mut Context<Self>) {
        let Phase::Stopping {
            code,
            started,
            next,
        } = &mut self.phase
        else {
            return;
        };
        let (code, started) = (*code, *started);
        // One deadline for the whole stop; a child that has not stopped by then is aborted
        // (each still gets a few milliseconds to finish what it was doing).
        let deadline = started + self.env.config.shutdown_timeout;
        let grace = deadline
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_millis(10));
        while *next > 0 {
            *next -= 1;
            let index = *next;
            if index == 0 {
                // The logger is first in the list and stops last: its final line comes now.
                // Lines lost so far (none, normally: then the fields are left out).
                let count = |c: &std::sync::atomic::AtomicU64| {
                    Some(c.load(std::sync::atomic::Ordering::Relaxed)).filter(|n| *n > 0)
                };
                log_event!(
                    self.env.log,
                    Info,
                    "shutdown",
                    phase = "complete",
                    exit_code = code as i32,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    log_lines_lost = count(&crate::log::LINES_LOST),
                    stdout_lines_dropped = count(&crate::log::STDOUT_LINES_DROPPED),
                );
            }
            let slot = &mut self.children[index];
            let Some(running) = &slot.running else {
                continue;
            };
            running.stop.do_send(Stop);
            let incarnation = slot.incarnation;
            ctx.run_later(grace, move |act, _| {
                let slot = &act.children[index];
                if slot.incarnation == incarnation {
                    if let Some(live) = &slot.running {
                        // Logged by child_ended when the abort lands.
                        live.abort.abort();
                    }
                }
            });
            return;
        }
        System::current().stop_with_code(code as i32);
    }
}

/// Waits for a child's task and tells its end apart: stopped, panicked or aborted.
async fn task_result(task: tokio::task::JoinHandle<()>) -> Ended {
    match task.await {
        Ok(()) => Ended::Stopped,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".to_string());
            Ended::Panicked(message)
        }
        Err(_) => Ended::Aborted,
    }
}

impl Supervisor {
    fn log_startup(&self) {
        let config = &self.env.config;
        log_event!(
            self.env.log,
            Info,
            "startup",
            version = env!("CARGO_PKG_VERSION"),
            pid = std::process::id(),
            config_file = config.path,
            hub_url = crate::config::redact_url_secrets(config.hub_url.as_str()),
            log_file = config.log_file,
            config = config.effective(),
        );
        if let Some((before, now)) = crate::process::fd_limit_raised() {
            log_event!(
                self.env.log,
                Debug,
                "fd_limit_raised",
                from = before,
                to = now
            );
        }
        for warning in &config.warnings {
            log_event!(self.env.log, Warn, "config_warning", message = warning);
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let bus = self.env.bus.clone();
        bus.register(ctx.address().recipient::<ShutdownRequested>());
        bus.register(ctx.address().recipient::<RestartRequested>());
        bus.register(ctx.address().recipient::<CheckAlive>());
        bus.register_unheld(ctx.address().recipient::<MessagesDropped>());
        let mut startup_logged = false;
        for index in 0..self.children.len() {
            self.start_child(index, ctx);
            // The first line goes out as soon as a logger is there to take it.
            if !startup_logged && bus.routes::<LogRecord>() {
                startup_logged = true;
                self.log_startup();
            }
        }
        log_event!(
            self.env.log,
            Info,
            "ready",
            children = self
                .children
                .iter()
                .map(|s| s.spec.name)
                .collect::<Vec<_>>()
        );
        let _ = self.env.bus.send(ChildrenStarted);
    }
}

impl Handler<CheckAlive> for Supervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: CheckAlive, _: &mut Context<Self>) -> Self::Result {
        let probes: Vec<_> = self
            .children
            .iter()
            .filter_map(|slot| slot.running.as_ref().map(|live| live.probe.send(Probe)))
            .collect();
        // A child being restarted is the Supervisor doing its job, not a wedged loop: only the
        // running ones are asked.
        let all_running = matches!(self.phase, Phase::Running);
        Box::pin(async move {
            let answers =
                tokio::time::timeout(msg.within, futures_util::future::join_all(probes)).await;
            all_running && answers.is_ok_and(|a| a.iter().all(Result::is_ok))
        })
    }
}

impl Handler<MessagesDropped> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: MessagesDropped, _: &mut Context<Self>) {
        log_event!(
            self.env.log,
            Warn,
            "bus_messages_dropped",
            message = msg.message,
            count = msg.count,
            reason = msg.reason
        );
    }
}

impl Handler<ShutdownRequested> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ShutdownRequested, ctx: &mut Context<Self>) {
        self.env.kept.get::<ShutdownFlag>().set();
        log_event!(
            self.env.log,
            Info,
            "shutdown",
            signal = msg.signal,
            phase = "begin"
        );
        self.begin_shutdown(ExitCode::Clean, ctx);
    }
}

impl Handler<RestartRequested> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: RestartRequested, ctx: &mut Context<Self>) {
        self.env.kept.get::<ShutdownFlag>().set();
        log_event!(
            self.env.log,
            Warn,
            "shutdown",
            signal = "restart_sidecar",
            reason = msg.reason,
            phase = "begin"
        );
        self.begin_shutdown(ExitCode::RestartRequested, ctx);
    }
}
