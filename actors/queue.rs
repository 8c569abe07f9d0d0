//! QueueActor: runs the task machine ([`crate::tasks`]). It owns `queue_file`, feeds the
//! machine what happens (hub frames and answers, agent files, wake outcomes, timers, write
//! completions) and carries out what it decides: writes on the blocking pool (fenced, so a
//! replaced incarnation can never write again), frames to the HubActor, wakes to the
//! WakerActor, timers on its own context, log lines. The rules are all in the machine.
//!
//! At start it loads the queue file and what the results directory says about known tasks
//! (off the event loop), asks the waker which attempts still run, and starts the machine:
//! at the process's first load an interrupted task is recovered; after a restart of this
//! actor alone the tasks carry on. Events that arrive while it loads wait for it. It fails
//! (and is restarted) only if the queue file cannot be read at all; a file that does not
//! parse is moved aside and the sidecar starts empty.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;

use super::hub::{
    AnnounceSession, HubRestartRequested, Reidentify, SendFrame, SessionIdentified, SessionLost,
    TaskEventFromHub,
};
use super::results::{
    AgentProgressRead, AgentProgressSeen, ProgressFlow, RescanResults, ResultFileRead,
    StartedFileSeen,
};
use super::supervisor::{RestartRequested, ShutdownBegun, ShutdownFlag};
use super::waker::{
    CancelWake, GetRunningWakes, WakeConfirmed, WakeExited, WakeTask, WakerStarted,
};
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::tasks::machine::Settings;
use crate::tasks::model::{Role, TaskRecord};
use crate::tasks::store::{self, Fence, Loaded, StepError};
use crate::tasks::{Effect, Event, Machine, Persist, WakeOrder, WakeOutcome, WakeTargets};

/// Published after every change of the tasks: what is held, recovering, released, waiting
/// for an answer, and refused (for status reports and metrics).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TasksChanged {
    /// The task in progress and its status (`accepted`, `waking`, `woken`, `working`).
    pub active: Option<(String, &'static str)>,
    pub recovering: Option<String>,
    pub released: usize,
    pub outbox: usize,
    pub refused: Vec<crate::status::RefusedReport>,
}

/// Publish [`TasksChanged`] now (for an observer that started later).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AnnounceTasks;

/// Published when a task leaves the sidecar's hands: `complete`, `failed`, `rejected`,
/// `cancelled`, `aborted`, `reassigned`, `refused`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TaskEnded {
    pub task_id: String,
    pub outcome: &'static str,
}

/// Kept across restarts of this actor: whether the process has loaded the queue before,
/// the write fence, and a restart the hub asked for that has not happened yet.
#[derive(Default)]
struct Kept {
    loaded: Cell<bool>,
    fence: Fence,
    restart: std::cell::RefCell<Option<String>>,
}

/// How long a failed write waits before it is tried again.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// Failed writes in a row after which a task whose acceptance is not on disk is given back.
const GIVE_BACK_AFTER: u32 = 3;
/// Released tasks remembered, and refused reports kept.
const KEEP_RELEASED: usize = 64;
/// Results of released tasks kept in the queue file, at most this many bytes together.
const KEEP_RELEASED_BYTES: usize = 16 * 1024 * 1024;
const KEEP_REFUSED: usize = 100;

pub struct QueueActor {
    env: Env,
    kept: Rc<Kept>,
    epoch: u64,
    machine: Option<Machine>,
    /// Events that came while the queue was loading.
    early: Vec<Event>,
    shutdown: Rc<ShutdownFlag>,
    /// Whether the machine has been told that the shutdown began.
    shutdown_told: bool,
    /// The clean-up of the last durable write is under way; the next write waits for it.
    cleaning: bool,
    waiting_write: Option<Persist>,
}

impl QueueActor {
    pub fn new(env: &Env) -> Self {
        QueueActor {
            env: env.clone(),
            kept: env.kept.get::<Kept>(),
            epoch: 0,
            machine: None,
            early: Vec::new(),
            shutdown: env.kept.get::<ShutdownFlag>(),
            shutdown_told: false,
            cleaning: false,
            waiting_write: None,
        }
    }

    fn settings(&self) -> Settings {
        let c = &self.env.config;
        Settings {
            wake_retry_delays: c.wake_retry_delays.clone(),
            confirmation_timeout: c.confirmation_timeout,
            task_timeout: c.task_timeout,
            progress_interval: c.progress_interval,
            agent_progress_gap: crate::outbound::agent_progress_gap(
                c.agent_progress_min,
                crate::outbound::Pacing::below(c.hub_rate_limits),
            ),
            write_retry: WRITE_RETRY,
            give_back_after: GIVE_BACK_AFTER,
            results_dir: c.results_dir.clone(),
            tasks_dir: c.tasks_dir(),
            wake: WakeTargets {
                default: c.wake_command.is_some(),
                types: c
                    .wake_commands
                    .keys()
                    .cloned()
                    .chain(
                        crate::config::BUNDLED_AGENTS
                            .iter()
                            .map(|(t, _)| t.to_string()),
                    )
                    .collect(),
                none: c.unwoken_targets.clone(),
                self_start: c.agent_starts_itself,
            },
            keep_released: KEEP_RELEASED,
            keep_released_bytes: KEEP_RELEASED_BYTES,
            keep_refused: KEEP_REFUSED,
            restart_wait: c.restart_wait,
        }
    }

    /// Loads (off the event loop) and starts the machine.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let queue_file = self.env.config.queue_file.clone();
        let results_dir = self.env.config.results_dir.clone();
        let max_result_bytes = self.env.config.max_result_bytes;
        let fence = self.kept.fence.clone();
        let job = actix_rt::task::spawn_blocking(move || {
            let epoch = fence.enter();
            let loaded = store::load(&queue_file);
            let facts = match &loaded {
                Ok(Loaded::Found(state)) => {
                    store::disk_facts(state, &results_dir, max_result_bytes)
                }
                _ => Default::default(),
            };
            (epoch, loaded, facts)
        });
        let running = self.env.bus.ask(GetRunningWakes);
        let both = async move {
            let running: Vec<u64> = match running {
                Some(request) => request.await.unwrap_or_default(),
                None => Vec::new(),
            };
            (job.await, running)
        };
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(both).map(|(job, running), act, ctx| {
                let Ok((epoch, loaded, facts)) = job else {
                    return act.env.fail(ctx, "the queue loader task died");
                };
                let state = match loaded {
                    Err(e) => {
                        let path = act.env.config.queue_file.display().to_string();
                        return act
                            .env
                            .fail(ctx, format!("cannot read queue_file {path}: {e}"));
                    }
                    Ok(Loaded::Missing) => Default::default(),
                    Ok(Loaded::Corrupt { moved_to, error }) => {
                        log_event!(
                            act.env.log,
                            Error,
                            "queue_corrupt",
                            queue_file = act.env.config.queue_file,
                            moved_to = moved_to,
                            error = error,
                            action = "starting with an empty queue"
                        );
                        Default::default()
                    }
                    Ok(Loaded::Found(state)) => state,
                };
                act.epoch = epoch;
                let process_start = !act.kept.loaded.replace(true);
                let running: BTreeSet<u64> = running.into_iter().collect();
                let (machine, effects) = Machine::start(
                    act.settings(),
                    state,
                    facts,
                    running,
                    process_start,
                    now_ms(),
                );
                act.machine = Some(machine);
                act.run(effects, ctx);
                let pending = act.kept.restart.borrow().clone();
                if let Some(reason) = pending {
                    act.handle_event(Event::RestartRequested { reason }, ctx);
                }
                for event in std::mem::take(&mut act.early) {
                    act.handle_event(event, ctx);
                }
                // Learn about a session that is already up (after a restart of this actor).
                let _ = act.env.bus.send(AnnounceSession);
            }),
        );
    }

    fn handle_event(&mut self, event: Event, ctx: &mut Context<Self>) {
        // The shutdown began while this event (a task, say) waited in the mailbox ahead of
        // the notice: the machine hears of the shutdown first.
        if matches!(event, Event::ShutdownBegun) {
            self.shutdown_told = true;
        } else if self.shutdown.began() && !self.shutdown_told {
            self.handle_event(Event::ShutdownBegun, ctx);
        }
        let Some(machine) = &mut self.machine else {
            self.early.push(event);
            return;
        };
        let effects = machine.handle(now_ms(), event);
        self.run(effects, ctx);
    }

    fn run(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        // One step may change the task list several times: it is published once, at the end.
        let mut changed = false;
        for effect in effects {
            match effect {
                Effect::Persist(p) => self.persist(p, ctx),
                Effect::Send { session, frame } => {
                    let _ = self.env.bus.send(SendFrame {
                        session: Some(session),
                        frame,
                    });
                }
                Effect::Wake(order) => self.wake(order, ctx),
                Effect::KillWake { wake_id } => {
                    let _ = self.env.bus.send(CancelWake { wake_id });
                }
                Effect::WakeConfirmed { wake_id } => {
                    let _ = self.env.bus.send(WakeConfirmed { wake_id });
                }
                Effect::Arm { timer, after } => {
                    ctx.run_later(after, move |act, ctx| {
                        act.handle_event(Event::Timer(timer), ctx)
                    });
                }
                Effect::ProgressFlow { task_id, open } => {
                    let _ = self.env.bus.send(ProgressFlow { task_id, open });
                }
                Effect::Rescan { task_id } => {
                    let _ = self.env.bus.send(RescanResults { task_id });
                }
                Effect::Log(note) => self.env.log.emit(note.level, note.event, note.fields),
                Effect::Changed => changed = true,
                Effect::Ended { task_id, outcome } => {
                    let _ = self.env.bus.send(TaskEnded { task_id, outcome });
                }
                Effect::Restart { reason } => {
                    self.kept.restart.borrow_mut().take();
                    let _ = self.env.bus.send(RestartRequested { reason });
                }
                Effect::Reidentify { session, reason } => {
                    let _ = self.env.bus.send(Reidentify { session, reason });
                }
            }
        }
        if changed {
            self.publish_tasks();
        }
    }

    /// A durable write (on the blocking pool: a task may be megabytes). What depends on it
    /// (a report, an acceptance, a wake) goes as soon as the queue file is written; the
    /// clean-up of files the state no longer needs follows, and the next write waits for it.
    fn persist(&mut self, p: Persist, ctx: &mut Context<Self>) {
        if self.cleaning {
            self.waiting_write = Some(p);
            return;
        }
        let fence = self.kept.fence.clone();
        let epoch = self.epoch;
        let path = self.env.config.queue_file.clone();
        let seq = p.seq;
        let job = actix_rt::task::spawn_blocking(move || {
            store::write_state(&fence, epoch, &path, &p).map(|()| p.after)
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(job).map(move |result, act, ctx| {
                let event = match result {
                    Ok(Ok(after)) => {
                        act.clean_up(after, ctx);
                        Event::Persisted { seq }
                    }
                    Ok(Err(StepError::NotSaved(error))) => Event::PersistFailed { seq, error },
                    Ok(Err(StepError::Fenced | StepError::CleanupFailed(_))) => return,
                    Err(e) => Event::PersistFailed {
                        seq,
                        error: format!("writer task failed: {e}"),
                    },
                };
                act.handle_event(event, ctx);
            }),
        );
    }

    /// The clean-up after a durable write; then the write that waited for it, if any.
    fn clean_up(&mut self, after: Vec<crate::tasks::FileOp>, ctx: &mut Context<Self>) {
        if after.is_empty() {
            return;
        }
        self.cleaning = true;
        let fence = self.kept.fence.clone();
        let epoch = self.epoch;
        let job = actix_rt::task::spawn_blocking(move || store::clean_up(&fence, epoch, &after));
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(job).map(move |result, act, ctx| {
                act.cleaning = false;
                if let Ok(Err(StepError::CleanupFailed(error))) = result {
                    log_event!(act.env.log, Warn, "queue_cleanup_failed", error = error);
                }
                if let Some(p) = act.waiting_write.take() {
                    act.persist(p, ctx);
                }
            }),
        );
    }

    fn wake(&mut self, order: WakeOrder, ctx: &mut Context<Self>) {
        let task = WakeTask {
            wake_id: order.wake_id,
            attempt: order.attempt,
            task_file: order.task_file,
            output_file: order.output_file,
            task_id: order.task_id,
            raw: order.raw,
            description: order.description,
            target_type: order.target_type,
            model: order.model,
        };
        if let Err(task) = self.env.bus.send(task) {
            log_event!(
                self.env.log,
                Warn,
                "wake_error",
                task_id = task.task_id,
                attempt = task.attempt,
                error = "the waker is not running: the attempt counts as failed"
            );
            let event = Event::WakeExited {
                task_id: task.task_id,
                wake_id: task.wake_id,
                attempt: task.attempt,
                outcome: WakeOutcome::Failed("the waker is not running".into()),
            };
            self.handle_event(event, ctx);
        }
    }

    fn publish_tasks(&self) {
        let Some(m) = &self.machine else { return };
        let state = m.state();
        let first = |role: Role| state.tasks.iter().find(|t| t.role == role);
        let _ = self.env.bus.send(TasksChanged {
            active: state
                .busy_with()
                .map(|t: &TaskRecord| (t.task_id.clone(), t.status())),
            recovering: first(Role::Recovering).map(|t| t.task_id.clone()),
            released: state
                .tasks
                .iter()
                .filter(|t| t.role == Role::Released)
                .count(),
            outbox: state.outbox.len(),
            refused: state
                .refused
                .iter()
                .map(|r| crate::status::RefusedReport {
                    task_id: r.task_id.clone(),
                    frame: r.kind.wire_type().to_string(),
                    generation: r.generation,
                    error: r.error.clone(),
                    at: humantime::format_rfc3339_millis(
                        UNIX_EPOCH + Duration::from_millis(r.at_ms),
                    )
                    .to_string(),
                })
                .collect(),
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load(ctx);
    }
}

crate::answers_probe!(QueueActor);

impl Child for QueueActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<TaskEventFromHub>());
        bus.register(addr.clone().recipient::<SessionIdentified>());
        bus.register(addr.clone().recipient::<SessionLost>());
        bus.register(addr.clone().recipient::<WakeExited>());
        bus.register(addr.clone().recipient::<AnnounceTasks>());
        bus.register(addr.clone().recipient::<StartedFileSeen>());
        bus.register(addr.clone().recipient::<ResultFileRead>());
        bus.register(addr.clone().recipient::<AgentProgressSeen>());
        bus.register(addr.clone().recipient::<AgentProgressRead>());
        bus.register(addr.clone().recipient::<HubRestartRequested>());
        bus.register(addr.clone().recipient::<ShutdownBegun>());
        bus.register(addr.clone().recipient::<WakerStarted>());
    }
}

impl Handler<Stop> for QueueActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // Let a write in flight, and its clean-up, land (the Supervisor's deadline bounds the
        // wait).
        if self.cleaning || self.machine.as_ref().is_some_and(|m| !m.settled()) {
            ctx.run_later(Duration::from_millis(5), |act, ctx| act.handle(Stop, ctx));
        } else {
            ctx.stop();
        }
    }
}

impl Handler<TaskEventFromHub> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: TaskEventFromHub, ctx: &mut Context<Self>) {
        // Frames of a session that has since ended are still facts (the hub sent them).
        self.handle_event(msg.event, ctx);
    }
}

impl Handler<SessionIdentified> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: SessionIdentified, ctx: &mut Context<Self>) {
        self.handle_event(
            Event::SessionUp {
                session: msg.session,
            },
            ctx,
        );
    }
}

impl Handler<SessionLost> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: SessionLost, ctx: &mut Context<Self>) {
        self.handle_event(
            Event::SessionDown {
                session: msg.session,
            },
            ctx,
        );
    }
}

impl Handler<WakeExited> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: WakeExited, ctx: &mut Context<Self>) {
        let event = Event::WakeExited {
            task_id: msg.task_id,
            wake_id: msg.wake_id,
            attempt: msg.attempt,
            outcome: msg.outcome,
        };
        self.handle_event(event, ctx);
    }
}

impl Handler<AnnounceTasks> for QueueActor {
    type Result = ();
    fn handle(&mut self, _: AnnounceTasks, _: &mut Context<Self>) {
        self.publish_tasks();
    }
}

impl Handler<StartedFileSeen> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: StartedFileSeen, ctx: &mut Context<Self>) {
        self.handle_event(
            Event::StartedSeen {
                task_id: msg.task_id,
            },
            ctx,
        );
    }
}

impl Handler<ResultFileRead> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: ResultFileRead, ctx: &mut Context<Self>) {
        let event = Event::ResultSeen {
            task_id: msg.task_id,
            result: msg.outcome,
        };
        self.handle_event(event, ctx);
    }
}

impl Handler<AgentProgressSeen> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: AgentProgressSeen, ctx: &mut Context<Self>) {
        let event = Event::AgentProgress {
            task_id: msg.task_id,
            progress: msg.progress,
            event: msg.event,
        };
        self.handle_event(event, ctx);
    }
}

impl Handler<AgentProgressRead> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: AgentProgressRead, ctx: &mut Context<Self>) {
        self.handle_event(
            Event::AgentProgressRead {
                task_id: msg.task_id,
            },
            ctx,
        );
    }
}

impl Handler<HubRestartRequested> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: HubRestartRequested, ctx: &mut Context<Self>) {
        self.kept
            .restart
            .borrow_mut()
            .get_or_insert_with(|| msg.reason.clone());
        // While the queue loads, the kept request is replayed once it has (not also as an
        // early event).
        if self.machine.is_some() {
            self.handle_event(Event::RestartRequested { reason: msg.reason }, ctx);
        }
    }
}

impl Handler<WakerStarted> for QueueActor {
    type Result = ();
    fn handle(&mut self, _: WakerStarted, ctx: &mut Context<Self>) {
        // At the process's start the machine is not running yet: nothing was spawned.
        if self.machine.is_some() {
            self.handle_event(Event::WakerRestarted, ctx);
        }
    }
}

impl Handler<ShutdownBegun> for QueueActor {
    type Result = ();
    fn handle(&mut self, _: ShutdownBegun, ctx: &mut Context<Self>) {
        self.handle_event(Event::ShutdownBegun, ctx);
    }
}
