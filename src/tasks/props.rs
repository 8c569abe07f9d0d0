//! Property tests of the task machine: random interleavings of everything that can happen —
//! pushes (also again, with higher, equal or lower generations), cancels, recovery answers,
//! acks and refusals (also late ones, for older generations), `state_report` answers, agents
//! confirming and writing results (valid or not), wake attempts succeeding or failing,
//! timers firing, writes failing, sessions dropping, and crashes at every step (the process,
//! or only the actor; the machine restarted from what was durable, the world going on).
//!
//! A small world model plays the hub, the agents, the files and the waker, and checks after
//! every step that:
//! 1. an agent is started at most once per task id while an earlier start may have one
//!    running (every earlier attempt failed, or was cut off by a crash and had its whole
//!    confirmation window without `.started`) — until the hub acknowledged the task's end;
//! 2. a result the agent wrote is never lost: it is in the machine's state, or still on disk
//!    (as the result file or kept aside), or the hub acknowledged the report;
//! 3. reports go out in the outbox's order;
//! 4. a task in progress always has its `task_timeout` armed (never busy forever);
//! 5. nothing is reported for a task the hub cancelled (unless it pushed it again);
//! 6. every frame fits the hub's schema limits.
//!
//! `cargo test` runs a few thousand cases; set `PROPTEST_CASES` for more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::json;

use super::effects::*;
use super::machine::{DiskFacts, Machine};
use super::model::{QueueState, ReportKind, Role};
use super::tests::{assign, settings};
use crate::protocol::{Outgoing, TEXT_MAX};

const TASKS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Step {
    Up,
    Down,
    Push { t: usize, bump: i8 },
    Cancel { t: usize },
    Reassign { t: usize },
    Continue { t: usize },
    Answer { pick: usize, how: u8 },
    StateAck { pick: usize, abort: bool },
    WakeExit { pick: usize, how: u8 },
    Started { t: usize },
    Result { t: usize, how: u8 },
    Fire { pick: usize },
    Persist { ok: bool },
    Crash { process: bool, landed: bool },
}

fn step() -> impl Strategy<Value = Step> {
    let t = 0..TASKS.len();
    prop_oneof![
        2 => Just(Step::Up),
        1 => Just(Step::Down),
        4 => (t.clone(), -1i8..3).prop_map(|(t, bump)| Step::Push { t, bump }),
        1 => t.clone().prop_map(|t| Step::Cancel { t }),
        1 => t.clone().prop_map(|t| Step::Reassign { t }),
        1 => t.clone().prop_map(|t| Step::Continue { t }),
        3 => (any::<usize>(), 0u8..4).prop_map(|(pick, how)| Step::Answer { pick, how }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, abort)| Step::StateAck { pick, abort }),
        3 => (any::<usize>(), 0u8..3).prop_map(|(pick, how)| Step::WakeExit { pick, how }),
        3 => t.clone().prop_map(|t| Step::Started { t }),
        3 => (t.clone(), 0u8..4).prop_map(|(t, how)| Step::Result { t, how }),
        4 => any::<usize>().prop_map(|pick| Step::Fire { pick }),
        6 => prop_oneof![4 => Just(true), 1 => Just(false)].prop_map(|ok| Step::Persist { ok }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(process, landed)| Step::Crash { process, landed }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Running,
    /// Killed by a cancel: its exit (failed) is still to come.
    Killed,
    Succeeded,
    Failed,
    /// Running when the process died: its outcome will never be known.
    Orphaned,
    /// Orphaned, and its confirmation window passed.
    Expired,
}

struct World {
    m: Machine,
    now: u64,
    session: Option<u64>,
    next_session: u64,
    durable: QueueState,
    inflight: Option<Persist>,
    timers: Vec<Timer>,
    hub_gen: [u64; 3],
    /// Per task: the attempts of this lifetime (ended by an acknowledged report).
    attempts: BTreeMap<String, Vec<(u64, Attempt)>>,
    /// Per wake id: its task.
    wake_task: BTreeMap<u64, String>,
    started: BTreeSet<String>,
    /// Result files in `results_dir` (`t.json`): valid or not.
    result_files: BTreeMap<String, bool>,
    /// Results set aside (`.invalid`, `.unreported`).
    aside: BTreeSet<String>,
    /// Tasks whose agent wrote a valid result this lifetime.
    results: BTreeSet<String>,
    /// Sent and not answered: reports and state reports, on the current session.
    reports: Vec<(String, ReportKind, u64)>,
    state_reports: Vec<(String, u64)>,
    /// Tasks the hub cancelled (it answers anything about them as gone).
    cancelled: BTreeSet<String>,
    /// Those whose cancel the machine has made durable (a crash cannot undo it).
    cancel_durable: BTreeSet<String>,
}

impl World {
    fn new() -> World {
        let (m, effects) = Machine::start(
            settings(),
            QueueState::default(),
            BTreeMap::new(),
            BTreeSet::new(),
            true,
            1_000,
        );
        let mut w = World {
            m,
            now: 1_000,
            session: None,
            next_session: 1,
            durable: QueueState::default(),
            inflight: None,
            timers: Vec::new(),
            hub_gen: [1; 3],
            attempts: BTreeMap::new(),
            wake_task: BTreeMap::new(),
            started: BTreeSet::new(),
            result_files: BTreeMap::new(),
            aside: BTreeSet::new(),
            results: BTreeSet::new(),
            reports: Vec::new(),
            state_reports: Vec::new(),
            cancelled: BTreeSet::new(),
            cancel_durable: BTreeSet::new(),
        };
        w.absorb(effects);
        w
    }

    fn ev(&mut self, e: Event) {
        self.now += 7;
        let effects = self.m.handle(self.now, e);
        self.absorb(effects);
    }

    fn absorb(&mut self, effects: Vec<Effect>) {
        let outbox: Vec<String> = self
            .m
            .state()
            .outbox
            .iter()
            .map(|e| e.task_id.clone())
            .collect();
        let mut sent_reports = Vec::new();
        let mut rescan = false;
        for e in effects {
            match e {
                Effect::Persist(p) => {
                    assert!(self.inflight.is_none(), "one write at a time");
                    self.inflight = Some(p);
                }
                Effect::Send { session, frame } => {
                    if Some(session) != self.session {
                        continue;
                    }
                    self.check_frame(&frame);
                    match &frame {
                        Outgoing::TaskComplete {
                            task_id,
                            generation,
                            ..
                        } => {
                            sent_reports.push(task_id.clone());
                            self.reports
                                .push((task_id.clone(), ReportKind::Complete, *generation));
                        }
                        Outgoing::TaskFailed {
                            task_id,
                            generation,
                            ..
                        } if self.m.state().task(task_id).is_some() => {
                            sent_reports.push(task_id.clone());
                            self.reports
                                .push((task_id.clone(), ReportKind::Failed, *generation));
                        }
                        Outgoing::StateReport {
                            task_id,
                            generation,
                            ..
                        } => {
                            self.state_reports.push((task_id.clone(), *generation));
                        }
                        _ => {}
                    }
                }
                Effect::Wake(order) => self.on_wake(order),
                Effect::KillWake { wake_id } => {
                    if let Some(a) = self.attempt_mut(wake_id) {
                        if *a == Attempt::Running {
                            *a = Attempt::Killed;
                        }
                    }
                }
                Effect::Arm { timer, .. } => self.timers.push(timer),
                // (The world re-reports every file either way.)
                Effect::Rescan { .. } => rescan = true,
                _ => {}
            }
        }
        // Invariant 3: reports in the outbox's order.
        let positions: Vec<usize> = sent_reports
            .iter()
            .filter_map(|t| outbox.iter().position(|o| o == t))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] <= w[1]),
            "reports out of order: {sent_reports:?} vs outbox {outbox:?}"
        );
        if rescan {
            self.rescan();
        }
    }

    fn attempt_mut(&mut self, wake_id: u64) -> Option<&mut Attempt> {
        let task = self.wake_task.get(&wake_id)?;
        self.attempts
            .get_mut(task)?
            .iter_mut()
            .find(|(w, _)| *w == wake_id)
            .map(|(_, a)| a)
    }

    /// Invariant 1.
    fn on_wake(&mut self, order: WakeOrder) {
        let task = order.task_id.clone();
        let earlier = self.attempts.entry(task.clone()).or_default();
        let may_run: Vec<_> = earlier
            .iter()
            .filter(|(_, a)| !matches!(a, Attempt::Failed | Attempt::Expired))
            .collect();
        assert!(
            may_run.is_empty() && !self.started.contains(&task),
            "second agent for {task}: earlier attempts {earlier:?}, started {}",
            self.started.contains(&task)
        );
        earlier.push((order.wake_id, Attempt::Running));
        self.wake_task.insert(order.wake_id, task);
    }

    /// Invariant 6.
    fn check_frame(&self, frame: &Outgoing) {
        if let Outgoing::TaskFailed { reason, error, .. } = frame {
            assert!(reason.chars().count() <= TEXT_MAX && error.chars().count() <= TEXT_MAX);
        }
        if let Outgoing::TaskComplete { task_id, .. } | Outgoing::TaskFailed { task_id, .. } = frame
        {
            // Invariant 5 (a refusal of a pushed task is not a report of it).
            let known = self.m.state().task(task_id).is_some();
            assert!(
                !(known && self.cancel_durable.contains(task_id)),
                "report for cancelled {task_id}"
            );
        }
    }

    /// What the results watcher reports when asked to look again.
    fn rescan(&mut self) {
        let started: Vec<String> = self.started.iter().cloned().collect();
        for t in started {
            self.ev(Event::StartedSeen { task_id: t });
        }
        let files: Vec<(String, bool)> = self
            .result_files
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (t, valid) in files {
            self.ev(result_event(&t, valid));
        }
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Up => {
                if self.session.is_none() {
                    let s = self.next_session;
                    self.next_session += 1;
                    self.session = Some(s);
                    self.ev(Event::SessionUp { session: s });
                }
            }
            Step::Down => {
                if let Some(s) = self.session.take() {
                    self.reports.clear();
                    self.state_reports.clear();
                    self.ev(Event::SessionDown { session: s });
                }
            }
            Step::Push { t, bump } => {
                let g = &mut self.hub_gen[t];
                *g = (*g as i64 + i64::from(bump)).max(1) as u64;
                let gen = *g;
                self.cancelled.remove(TASKS[t]);
                self.cancel_durable.remove(TASKS[t]);
                self.ev(Event::Assign(assign(TASKS[t], gen)));
            }
            Step::Cancel { t } => {
                self.cancelled.insert(TASKS[t].to_string());
                self.ev(Event::Cancelled {
                    task_id: TASKS[t].into(),
                });
            }
            Step::Reassign { t } => self.ev(Event::Reassign {
                task_id: TASKS[t].into(),
            }),
            Step::Continue { t } => {
                if self.cancelled.contains(TASKS[t]) {
                    // The hub no longer has it: it would say reassign.
                    return self.ev(Event::Reassign {
                        task_id: TASKS[t].into(),
                    });
                }
                let generation = self.hub_gen[t];
                self.ev(Event::Continue {
                    task_id: TASKS[t].into(),
                    generation,
                });
            }
            Step::Answer { pick, how } => {
                if self.reports.is_empty() {
                    return;
                }
                let (task, kind, generation) = self.reports.remove(pick % self.reports.len());
                let how = if self.cancelled.contains(&task) {
                    2
                } else {
                    how
                };
                let answer = match how {
                    0 | 1 => Answer::Acked {
                        status: match kind {
                            ReportKind::Complete => "complete",
                            ReportKind::Failed => ["failed", "retried", "dead_letter"][pick % 3],
                        }
                        .into(),
                    },
                    2 => Answer::Refused {
                        error: "task_complete_failed: stale_generation".into(),
                        details: None,
                    },
                    _ => Answer::Refused {
                        error: "validation_failed".into(),
                        details: Some(json!([])),
                    },
                };
                let acked = matches!(answer, Answer::Acked { .. });
                let known_before = self
                    .m
                    .state()
                    .outbox
                    .iter()
                    .any(|e| e.task_id == task && e.kind == kind && e.generation == generation);
                self.ev(Event::ReportAnswered {
                    task_id: task.clone(),
                    kind,
                    generation,
                    answer,
                });
                if acked && known_before && self.m.state().task(&task).is_none() {
                    // The hub has the task's end: a new lifetime.
                    self.attempts.remove(&task);
                    self.results.remove(&task);
                    self.started.remove(&task);
                }
            }
            Step::StateAck { pick, abort } => {
                if self.state_reports.is_empty() {
                    return;
                }
                let (task_id, generation) =
                    self.state_reports.remove(pick % self.state_reports.len());
                let abort = abort || self.cancelled.contains(&task_id);
                let action = if abort { "abort" } else { "continue" }.into();
                self.ev(Event::StateReportAnswered {
                    task_id,
                    generation,
                    action,
                });
            }
            Step::WakeExit { pick, how } => {
                let pending: Vec<u64> = self
                    .attempts
                    .values()
                    .flatten()
                    .filter(|(_, a)| matches!(a, Attempt::Running | Attempt::Killed))
                    .map(|(w, _)| *w)
                    .collect();
                if pending.is_empty() {
                    return;
                }
                let wake_id = pending[pick % pending.len()];
                let killed = self.attempt_mut(wake_id) == Some(&mut Attempt::Killed);
                let (outcome, state) = match (how, killed) {
                    (0, false) => (WakeOutcome::Success, Attempt::Succeeded),
                    (1, _) | (0, true) => {
                        (WakeOutcome::Failed("exit code 1".into()), Attempt::Failed)
                    }
                    _ => (WakeOutcome::TimedOut("killed".into()), Attempt::Failed),
                };
                if let Some(a) = self.attempt_mut(wake_id) {
                    *a = state;
                }
                let task_id = self.wake_task[&wake_id].clone();
                let attempt = self.attempts[&task_id]
                    .iter()
                    .position(|(w, _)| *w == wake_id)
                    .unwrap_or(0) as u32
                    + 1;
                self.ev(Event::WakeExited {
                    task_id,
                    wake_id,
                    attempt,
                    outcome,
                });
            }
            Step::Started { t } => {
                let task = TASKS[t].to_string();
                // Only an agent a wake command may have started writes `.started`.
                let live = self.attempts.get(&task).is_some_and(|v| {
                    v.iter().any(|(_, a)| {
                        matches!(a, Attempt::Running | Attempt::Succeeded | Attempt::Orphaned)
                    })
                });
                if live && self.started.insert(task.clone()) {
                    self.ev(Event::StartedSeen { task_id: task });
                }
            }
            Step::Result { t, how } => {
                let task = TASKS[t].to_string();
                if !self.started.contains(&task) || self.result_files.contains_key(&task) {
                    return;
                }
                let valid = how != 3;
                if valid {
                    self.results.insert(task.clone());
                }
                self.result_files.insert(task.clone(), valid);
                self.ev(result_event(&task, valid));
            }
            Step::Fire { pick } => {
                if self.timers.is_empty() {
                    return;
                }
                let timer = self.timers.remove(pick % self.timers.len());
                if let Timer::Confirmation { wake_id, task_id } = &timer {
                    // Its whole confirmation window passed without `.started`: the start
                    // provably never confirmed (the spec's line for waking again).
                    let (w, unconfirmed) = (*wake_id, !self.started.contains(task_id));
                    if let Some(a) = self.attempt_mut(w) {
                        if unconfirmed && matches!(*a, Attempt::Orphaned | Attempt::Succeeded) {
                            *a = Attempt::Expired;
                        }
                    }
                }
                self.ev(Event::Timer(timer));
            }
            Step::Persist { ok } => {
                let Some(p) = self.inflight.take() else {
                    return;
                };
                if ok {
                    self.land(&p);
                    self.ev(Event::Persisted { seq: p.seq });
                } else {
                    self.ev(Event::PersistFailed {
                        seq: p.seq,
                        error: "EIO".into(),
                    });
                }
            }
            Step::Crash { process, landed } => self.crash(process, landed),
        }
    }

    /// A write lands: the durable state, and its file work on the world's files.
    fn land(&mut self, p: &Persist) {
        self.durable = p.state.clone();
        for t in &self.cancelled {
            if p.state.task(t).is_none_or(|r| r.role == Role::Released) {
                self.cancel_durable.insert(t.clone());
            }
        }
        for op in &p.after {
            match op {
                FileOp::Remove(path) => {
                    if let Some(t) = task_of(path, ".json") {
                        self.result_files.remove(&t);
                    }
                    if let Some(t) = task_of(path, ".started") {
                        self.started.remove(&t);
                    }
                }
                FileOp::Rename { from, .. } => {
                    if let Some(t) = task_of(from, ".json") {
                        if self.result_files.remove(&t).is_some() {
                            self.aside.insert(t);
                        }
                    }
                }
                FileOp::Write { .. } => {}
            }
        }
    }

    fn crash(&mut self, process: bool, landed: bool) {
        if let Some(p) = self.inflight.take() {
            if landed {
                self.land(&p);
            }
        }
        let mut running = BTreeSet::new();
        for (w, a) in self.attempts.values_mut().flatten() {
            match a {
                Attempt::Running | Attempt::Killed if process => *a = Attempt::Orphaned,
                Attempt::Running | Attempt::Killed => {
                    running.insert(*w);
                }
                _ => {}
            }
        }
        let disk: BTreeMap<String, DiskFacts> = self
            .durable
            .tasks
            .iter()
            .map(|t| {
                let id = t.task_id.clone();
                let facts = DiskFacts {
                    started: self.started.contains(&id),
                    result: self.result_files.get(&id).map(|valid| result_of(*valid)),
                };
                (id, facts)
            })
            .collect();
        // What the next start reads is the file: whatever it holds must load again.
        let file = serde_json::to_vec(&self.durable).expect("the state serialises");
        let loaded = QueueState::from_json(&file).expect("the queue file loads again");
        assert_eq!(loaded, self.durable);
        let (m, effects) = Machine::start(settings(), loaded, disk, running, process, self.now);
        self.m = m;
        self.timers.clear();
        self.reports.clear();
        self.state_reports.clear();
        if process {
            self.session = None;
        }
        self.absorb(effects);
        if let Some(s) = self.session {
            // Only the actor restarted: it learns the session that is still up.
            self.ev(Event::SessionUp { session: s });
        }
    }

    /// Invariants 2 and 4, after every step.
    fn check(&self) {
        let state = self.m.state();
        for task in &self.results {
            let in_state = state.task(task).is_some_and(|t| t.outcome.is_some())
                || state.refused.iter().any(|r| &r.task_id == task);
            let on_disk = self.result_files.contains_key(task) || self.aside.contains(task);
            assert!(in_state || on_disk, "the result of {task} is lost");
        }
        for t in state.tasks.iter().filter(|t| t.in_progress()) {
            let armed = self.timers.iter().any(|timer| {
                matches!(timer, Timer::TaskTimeout { task_id, lease_at_ms } if *task_id == t.task_id && *lease_at_ms == t.lease_start())
            });
            assert!(
                armed,
                "{} is in progress with no task_timeout armed",
                t.task_id
            );
        }
        for t in &state.tasks {
            assert!(
                t.role != Role::Held
                    || !self.cancel_durable.contains(&t.task_id)
                    || t.outcome.is_some(),
                "{} is held after a cancel",
                t.task_id
            );
        }
    }
}

fn task_of(path: &std::path::Path, suffix: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if path.parent() != Some(&PathBuf::from("/r")) {
        return None;
    }
    name.strip_suffix(suffix).map(str::to_string)
}

/// A result as the results watcher hands it over, from a file's bytes: a valid one nests as
/// deep as a result may ([`crate::result_file::MAX_DEPTH`]); an invalid one is deeper than
/// that (still within what serde_json reads), so the queue file must hold the deepest
/// result there is and the refusal of a deeper one.
fn result_of(valid: bool) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let levels = if valid {
        crate::result_file::MAX_DEPTH
    } else {
        126
    };
    let text = format!(
        "{{\"status\":\"success\",\"output\":{}\"x\"{}}}",
        "[".repeat(levels - 1),
        "]".repeat(levels - 1)
    );
    let parsed = crate::result_file::parse(text.as_bytes());
    assert_eq!(parsed.is_ok(), valid, "{parsed:?}");
    parsed
}

fn result_event(task: &str, valid: bool) -> Event {
    Event::ResultSeen {
        task_id: task.into(),
        result: result_of(valid),
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn the_task_rules_hold_under_any_interleaving(steps in proptest::collection::vec(step(), 1..80)) {
        let mut world = World::new();
        world.apply(Step::Up);
        for step in steps {
            world.apply(step);
            world.check();
        }
    }
}
