//! StatusActor: tells the outside world what the sidecar is doing.
//!
//! It builds one [`Status`] from the events the other actors publish (session state, the
//! hub's refusals, heartbeat round trips, restarts, tasks) and reports it three ways:
//!
//! - the state file (`status_file`) read by `agentcom-sidecar status`: written atomically,
//!   off the event loop, at most about once a second (a new refusal by the hub at once), and
//!   once more with `stopped_at` on an orderly stop;
//! - systemd's notify protocol, when `$NOTIFY_SOCKET` is set: `READY=1` once every child
//!   has started (config and queue loaded), `STATUS=` lines as the state changes,
//!   `STOPPING=1` when shutdown begins, and `WATCHDOG=1` at half of `$WATCHDOG_USEC` — sent
//!   only after a round trip through the Supervisor and every child's mailbox
//!   ([`CheckAlive`]) succeeded, so a wedged event loop gets the process restarted;
//! - with `metrics_listen`, an HTTP endpoint (actix-web, one worker): `/healthz`, `/readyz`
//!   (identified) and `/metrics` (Prometheus text).
//!
//! It holds nothing that matters across a restart: a fresh one rebuilds the picture from the
//! next events (and asks the hub to announce its session).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;

use super::heartbeat::HeartbeatAnswered;
use super::hub::{AnnounceSession, HubRefused, HubState, HubStateChanged, SessionIdentified};
use super::queue::{AnnounceTasks, TaskEnded, TasksChanged};
use super::supervisor::{ActorRestarted, CheckAlive, ChildrenStarted, ShutdownBegun};
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::status::{ActiveTask, HubRefusal, LogCounters, Restarts, Status};

/// At most one state-file write per this interval.
const WRITE_EVERY: Duration = Duration::from_secs(1);

pub struct StatusActor {
    env: Env,
    /// Shared with the metrics endpoint's worker thread.
    status: Arc<RwLock<Status>>,
    last_write: Option<Instant>,
    write_scheduled: bool,
    writing: bool,
    /// After [`Stop`]: only the final write happens.
    stopping: bool,
    systemd_status: String,
    server: Option<actix_web::dev::ServerHandle>,
    /// The previous state file is being read (see `restore`): nothing is written until then.
    restoring: bool,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl StatusActor {
    pub fn new(env: &Env) -> Self {
        let config = &env.config;
        let status = Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            agent_id: config.agent_id.clone(),
            hub_url: crate::config::redact_url_secrets(config.hub_url.as_str()),
            started_at: now(),
            session: crate::status::Session {
                state: "starting".into(),
                ..Default::default()
            },
            ..Status::default()
        };
        StatusActor {
            env: env.clone(),
            status: Arc::new(RwLock::new(status)),
            last_write: None,
            write_scheduled: false,
            writing: false,
            stopping: false,
            systemd_status: String::new(),
            server: None,
            restoring: true,
        }
    }

    /// A restart of this actor alone keeps the process's counters: they are in the state file
    /// it wrote itself, read off the event loop (as an untrusted file: see
    /// [`crate::status::read`]). No state file is written until that read is done.
    fn restore(&mut self, ctx: &mut Context<Self>) {
        let path = self.env.config.status_file.clone();
        let read = actix_rt::task::spawn_blocking(move || crate::status::read(&path));
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(read).map(|previous, act, ctx| {
                act.restoring = false;
                if let Ok(Ok(previous)) = previous {
                    if let Ok(mut status) = act.status.write() {
                        if previous.pid == status.pid && previous.stopped_at.is_none() {
                            status.started_at = previous.started_at;
                            status.reconnects += previous.reconnects;
                            for (actor, restarts) in previous.restarts {
                                status.restarts.entry(actor).or_insert(restarts);
                            }
                            for (outcome, n) in previous.tasks.ended {
                                *status.tasks.ended.entry(outcome).or_default() += n;
                            }
                            for (reason, n) in previous.hub_refusals {
                                *status.hub_refusals.entry(reason).or_default() += n;
                            }
                        }
                    }
                }
                act.schedule_write(ctx);
            }),
        );
    }

    /// Applies a change, then reports it (state file soon, systemd status now).
    fn update(&mut self, ctx: &mut Context<Self>, change: impl FnOnce(&mut Status)) {
        if let Ok(mut status) = self.status.write() {
            change(&mut status);
            status.log = LogCounters::current();
        }
        self.notify_status();
        self.schedule_write(ctx);
    }

    fn snapshot(&self) -> Status {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The systemd status line, rendered under the read lock (no copy of the status).
    fn one_line(&self) -> String {
        self.status.read().map(|s| s.one_line()).unwrap_or_default()
    }

    fn notify_status(&mut self) {
        let line = self.one_line();
        if line != self.systemd_status {
            notify(Notify::Status(&line));
            self.systemd_status = line;
        }
    }

    fn schedule_write(&mut self, ctx: &mut Context<Self>) {
        if self.write_scheduled {
            return;
        }
        self.write_scheduled = true;
        let wait = self
            .last_write
            .map(|at| WRITE_EVERY.saturating_sub(at.elapsed()))
            .unwrap_or_default();
        ctx.run_later(wait, |act, ctx| {
            act.write_scheduled = false;
            act.write(ctx);
        });
    }

    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.restoring {
            // While restoring, the write follows the read.
            return;
        }
        if self.writing {
            // One write at a time; the next one picks up this change.
            return self.schedule_write(ctx);
        }
        self.writing = true;
        self.last_write = Some(Instant::now());
        let mut status = self.snapshot();
        status.updated_at = now();
        let path = self.env.config.status_file.clone();
        let job = actix_rt::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?;
            crate::fsx::write_atomic(&path, &bytes)
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(job).map(|result, act, _| {
                act.writing = false;
                let error = match result {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                log_event!(
                    act.env.log,
                    Warn,
                    "status_write_failed",
                    status_file = act.env.config.status_file,
                    error = error
                );
            }),
        );
    }

    /// Pings systemd's watchdog at half its interval, after proving the actors alive.
    fn start_watchdog(&mut self, ctx: &mut Context<Self>) {
        let Some(timeout) = watchdog_timeout() else {
            return;
        };
        let interval = timeout / 2;
        log_event!(
            self.env.log,
            Info,
            "watchdog_enabled",
            interval_ms = interval.as_millis() as u64
        );
        ctx.run_interval(interval, move |act, ctx| {
            let Some(check) = act.env.bus.ask(CheckAlive {
                within: interval / 2,
            }) else {
                return;
            };
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(check).map(|alive, act, _| {
                    if alive.unwrap_or(false) {
                        notify(Notify::Watchdog);
                    } else {
                        log_event!(
                            act.env.log,
                            Warn,
                            "watchdog_skipped",
                            reason = "an actor did not answer in time"
                        );
                    }
                }),
            );
        });
    }

    fn start_metrics(&mut self) {
        let Some(addr) = self.env.config.metrics_listen else {
            return;
        };
        match crate::metrics::serve(addr, self.status.clone()) {
            Ok(handle) => {
                log_event!(
                    self.env.log,
                    Info,
                    "metrics_listening",
                    address = addr.to_string()
                );
                self.server = Some(handle);
            }
            Err(e) => {
                // The sidecar's job goes on without its metrics.
                log_event!(
                    self.env.log,
                    Error,
                    "metrics_bind_failed",
                    address = addr.to_string(),
                    error = e.to_string()
                );
            }
        }
    }
}

/// What the service manager is told (systemd only: elsewhere nothing listens).
#[cfg_attr(not(unix), allow(dead_code))]
enum Notify<'a> {
    Ready,
    Status(&'a str),
    Stopping,
    Watchdog,
}

/// `$WATCHDOG_USEC`, as libsystemd reads it: set, non-zero, and `$WATCHDOG_PID` either
/// unset or this process.
fn watchdog_timeout() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = match std::env::var("WATCHDOG_PID") {
        Ok(pid) => pid.parse::<u32>().ok() == Some(std::process::id()),
        Err(_) => true,
    };
    (usec > 0 && for_us).then(|| Duration::from_micros(usec))
}

/// Sends to systemd if it is listening; a no-op without `$NOTIFY_SOCKET`.
fn notify(state: Notify) {
    #[cfg(unix)]
    {
        use sd_notify::NotifyState;
        let state = match state {
            Notify::Ready => NotifyState::Ready,
            Notify::Status(line) => NotifyState::Status(line),
            Notify::Stopping => NotifyState::Stopping,
            Notify::Watchdog => NotifyState::Watchdog,
        };
        let _ = sd_notify::notify(false, &[state]);
    }
    #[cfg(not(unix))]
    let _ = state;
}

impl Actor for StatusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_metrics();
        self.start_watchdog(ctx);
        // After a restart of this actor alone: learn the present from the others.
        let _ = self.env.bus.send(AnnounceSession);
        let _ = self.env.bus.send(AnnounceTasks);
        self.restore(ctx);
    }
}

crate::answers_probe!(StatusActor);

impl Child for StatusActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<ChildrenStarted>());
        bus.register(addr.clone().recipient::<ShutdownBegun>());
        bus.register(addr.clone().recipient::<ActorRestarted>());
        bus.register(addr.clone().recipient::<HubStateChanged>());
        bus.register(addr.clone().recipient::<HubRefused>());
        bus.register(addr.clone().recipient::<SessionIdentified>());
        bus.register(addr.clone().recipient::<HeartbeatAnswered>());
        bus.register(addr.clone().recipient::<TasksChanged>());
        bus.register(addr.clone().recipient::<TaskEnded>());
    }
}

impl Handler<Stop> for StatusActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stopping = true;
        if self.writing {
            // Let the write in flight land first, or it would overwrite the last word.
            ctx.run_later(Duration::from_millis(2), |act, ctx| act.handle(Stop, ctx));
            return;
        }
        if let Some(server) = self.server.take() {
            actix_rt::spawn(server.stop(false));
        }
        // The last word, written synchronously: the process is about to end.
        let mut status = self.snapshot();
        status.session.state = "stopping".into();
        status.log = LogCounters::current();
        status.updated_at = now();
        status.stopped_at = Some(now());
        if let Ok(bytes) = serde_json::to_vec_pretty(&status) {
            if let Err(e) = crate::fsx::write_atomic(&self.env.config.status_file, &bytes) {
                log_event!(
                    self.env.log,
                    Warn,
                    "status_write_failed",
                    error = e.to_string()
                );
            }
        }
        ctx.stop();
    }
}

impl Handler<ChildrenStarted> for StatusActor {
    type Result = ();
    fn handle(&mut self, _: ChildrenStarted, ctx: &mut Context<Self>) {
        // Every child answers a probe only after its `started()` ran (the queue is loaded):
        // then the service is ready.
        let Some(check) = self.env.bus.ask(CheckAlive {
            within: Duration::from_secs(10),
        }) else {
            return;
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(check).map(|alive, act, _| {
                if alive.unwrap_or(false) {
                    notify(Notify::Ready);
                    let line = act.one_line();
                    notify(Notify::Status(&line));
                    log_event!(act.env.log, Debug, "service_ready");
                }
            }),
        );
    }
}

impl Handler<ShutdownBegun> for StatusActor {
    type Result = ();
    fn handle(&mut self, _: ShutdownBegun, ctx: &mut Context<Self>) {
        notify(Notify::Stopping);
        self.update(ctx, |s| s.session.state = "stopping".into());
    }
}

impl Handler<ActorRestarted> for StatusActor {
    type Result = ();
    fn handle(&mut self, msg: ActorRestarted, ctx: &mut Context<Self>) {
        self.update(ctx, |s| {
            let entry = s
                .restarts
                .entry(msg.actor.to_string())
                .or_insert_with(Restarts::default);
            entry.count += 1;
            entry.last_reason = msg.reason;
            entry.last_at = now();
        });
    }
}

impl Handler<HubStateChanged> for StatusActor {
    type Result = ();
    fn handle(&mut self, msg: HubStateChanged, ctx: &mut Context<Self>) {
        self.update(ctx, |s| {
            let session = &mut s.session;
            session.attempt = msg.attempt;
            session.retry_in_ms = msg.retry_in.map(|d| d.as_millis() as u64);
            match msg.state {
                HubState::Connecting => session.state = "connecting".into(),
                HubState::Identified => {
                    session.state = "identified".into();
                    session.identified_since = Some(now());
                    session.last_error = None;
                }
                HubState::Waiting => {
                    session.state = "waiting".into();
                    session.identified_since = None;
                    s.reconnects += 1;
                }
            }
        });
    }
}

impl Handler<SessionIdentified> for StatusActor {
    type Result = ();
    fn handle(&mut self, _: SessionIdentified, ctx: &mut Context<Self>) {
        // After a restart of this actor: the session was already up.
        self.update(ctx, |s| {
            if s.session.state != "identified" {
                s.session.state = "identified".into();
                s.session.identified_since.get_or_insert_with(now);
            }
            s.session.last_error = None;
        });
    }
}

impl Handler<HubRefused> for StatusActor {
    type Result = ();
    fn handle(&mut self, msg: HubRefused, ctx: &mut Context<Self>) {
        let mut first = false;
        if let Ok(mut s) = self.status.write() {
            *s.hub_refusals.entry(msg.error.to_string()).or_insert(0) += 1;
            let cooldown_until = msg
                .cooldown
                .map(|wait| humantime::format_rfc3339_millis(SystemTime::now() + wait).to_string());
            let last = &mut s.session.last_error;
            match last {
                // The same refusal again: it stands since the first one.
                Some(e) if e.error == msg.error && e.detail == msg.detail => {
                    if cooldown_until.is_some() {
                        e.cooldown_until = cooldown_until;
                    }
                }
                _ => {
                    first = true;
                    *last = Some(HubRefusal {
                        error: msg.error.to_string(),
                        detail: msg.detail,
                        since: now(),
                        cooldown_until,
                    });
                }
            }
        }
        if first {
            // An operator must act on it: on disk at once (or right after a write in flight),
            // not at the next write slot.
            self.write(ctx);
        }
        self.update(ctx, |_| {});
    }
}

impl Handler<HeartbeatAnswered> for StatusActor {
    type Result = ();
    fn handle(&mut self, msg: HeartbeatAnswered, ctx: &mut Context<Self>) {
        self.update(ctx, |s| {
            s.session.last_pong = Some(now());
            s.session.heartbeat_rtt_ms = Some(msg.rtt.as_secs_f64() * 1000.0);
        });
    }
}

impl Handler<TasksChanged> for StatusActor {
    type Result = ();
    fn handle(&mut self, msg: TasksChanged, ctx: &mut Context<Self>) {
        self.update(ctx, |s| {
            s.tasks.active = msg.active.map(|(task_id, status)| ActiveTask {
                task_id,
                status: status.to_string(),
            });
            s.tasks.recovering = msg.recovering;
            s.tasks.outbox = msg.outbox;
            s.tasks.released = msg.released;
            s.tasks.refused = msg.refused;
        });
    }
}

impl Handler<TaskEnded> for StatusActor {
    type Result = ();
    fn handle(&mut self, msg: TaskEnded, ctx: &mut Context<Self>) {
        self.update(ctx, |s| {
            *s.tasks.ended.entry(msg.outcome.to_string()).or_insert(0) += 1
        });
    }
}
