//! Unit tests of the task machine, one or more per transition. Each drives a [`Machine`]
//! by hand with events and checks the effects: frames, writes, wakes, timers, log lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::effects::*;
use super::machine::{DiskFacts, Machine, Settings, WakeTargets};
use super::model::{Agent, QueueState, ReportKind, Role};
use crate::protocol::Outgoing;

pub(super) fn settings() -> Settings {
    Settings {
        wake_retry_delays: vec![Duration::from_millis(50), Duration::from_millis(50)],
        confirmation_timeout: Duration::from_millis(1000),
        task_timeout: Some(Duration::from_secs(3600)),
        progress_interval: Duration::from_secs(60),
        agent_progress_gap: Duration::from_millis(1000),
        write_retry: Duration::from_millis(100),
        give_back_after: 3,
        results_dir: PathBuf::from("/r"),
        tasks_dir: PathBuf::from("/t"),
        wake: WakeTargets {
            default: true,
            types: BTreeSet::new(),
            none: BTreeSet::new(),
            self_start: false,
        },
        keep_released: 8,
        keep_released_bytes: 64 * 1024,
        keep_refused: 4,
        restart_wait: Duration::from_secs(300),
    }
}

/// A machine under test: every write completes at once unless `hold_writes` is set.
pub(super) struct H {
    pub m: Machine,
    pub now: u64,
    pub hold_writes: bool,
    pub held: Vec<u64>,
    /// Every effect so far.
    pub log: Vec<Effect>,
}

impl H {
    pub fn new() -> H {
        H::with(QueueState::default(), BTreeMap::new(), true)
    }

    pub fn with(state: QueueState, disk: BTreeMap<String, DiskFacts>, process_start: bool) -> H {
        H::with_settings(settings(), state, disk, process_start)
    }

    pub fn with_settings(
        cfg: Settings,
        state: QueueState,
        disk: BTreeMap<String, DiskFacts>,
        process_start: bool,
    ) -> H {
        let (m, effects) = Machine::start(cfg, state, disk, BTreeSet::new(), process_start, 1_000);
        let mut h = H {
            m,
            now: 1_000,
            hold_writes: false,
            held: Vec::new(),
            log: Vec::new(),
        };
        h.absorb(effects);
        h
    }

    /// Feeds an event; returns its effects (and those of the writes it completed).
    pub fn ev(&mut self, e: Event) -> Vec<Effect> {
        self.now += 10;
        let effects = self.m.handle(self.now, e);
        self.absorb(effects)
    }

    fn absorb(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        let mut all = effects.clone();
        self.log.extend(effects.iter().cloned());
        for e in effects {
            if let Effect::Persist(p) = e {
                if self.hold_writes {
                    self.held.push(p.seq);
                } else {
                    let more = self.m.handle(self.now, Event::Persisted { seq: p.seq });
                    all.extend(self.absorb(more));
                }
            }
        }
        all
    }

    pub fn up(&mut self, session: u64) -> Vec<Effect> {
        self.ev(Event::SessionUp { session })
    }

    pub fn assign(&mut self, id: &str, generation: u64) -> Vec<Effect> {
        self.ev(Event::Assign(assign(id, generation)))
    }

    pub fn state(&self) -> &QueueState {
        self.m.state()
    }

    pub fn agent(&self, id: &str) -> Agent {
        self.state().task(id).expect("task known").agent.clone()
    }
}

pub(super) fn assign(id: &str, generation: u64) -> Assign {
    Assign {
        task_id: id.into(),
        generation,
        raw: json!({"type": "task_assign", "task_id": id, "description": "d", "generation": generation, "assigned_at": 77}).to_string(),
        target_type: None,
        model: None,
    }
}

pub(super) fn frames(effects: &[Effect]) -> Vec<Outgoing> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn kinds(effects: &[Effect]) -> Vec<&'static str> {
    frames(effects).iter().map(Outgoing::kind).collect()
}

pub(super) fn wakes(effects: &[Effect]) -> Vec<WakeOrder> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Wake(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn timers(effects: &[Effect]) -> Vec<Timer> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Arm { timer, .. } => Some(timer.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn notes(effects: &[Effect]) -> Vec<&'static str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Log(n) => Some(n.event),
            _ => None,
        })
        .collect()
}

pub(super) fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

pub(super) fn exited(id: &str, wake_id: u64, attempt: u32, outcome: WakeOutcome) -> Event {
    Event::WakeExited {
        task_id: id.into(),
        wake_id,
        attempt,
        outcome,
    }
}

pub(super) fn acked(id: &str, kind: ReportKind, generation: u64, status: &str) -> Event {
    Event::ReportAnswered {
        task_id: id.into(),
        kind,
        generation,
        answer: Answer::Acked {
            status: status.into(),
        },
    }
}

pub(super) fn success() -> Event {
    Event::ResultSeen {
        task_id: "t".into(),
        result: Ok(obj(json!({"status": "success", "output": 1}))),
    }
}

/// A task accepted on session 1, woken (attempt 1 spawned) and confirmed.
pub(super) fn working() -> H {
    let mut h = H::new();
    h.up(1);
    h.assign("t", 1);
    h.ev(Event::StartedSeen {
        task_id: "t".into(),
    });
    assert_eq!(h.agent("t"), Agent::Confirmed);
    h
}

#[test]
fn a_task_is_on_disk_before_it_is_accepted_and_woken() {
    let mut h = H::new();
    h.hold_writes = true;
    h.up(1);
    let e = h.assign("t", 3);
    assert!(kinds(&e).is_empty(), "nothing sent before the write lands");
    assert!(wakes(&e).is_empty());
    let Some(Effect::Persist(p)) = e.iter().find(|e| matches!(e, Effect::Persist(_))) else {
        panic!("a write: {e:?}")
    };
    assert!(p
        .before
        .iter()
        .any(|op| matches!(op, FileOp::Write { path, .. } if path == &PathBuf::from("/t/t.json"))));
    assert_eq!(p.state.task("t").unwrap().role, Role::Held);
    assert!(
        matches!(
            p.state.task("t").unwrap().agent,
            Agent::Waking { attempt: 1, .. }
        ),
        "the wake attempt is in the same write"
    );
    let seq = p.seq;
    h.hold_writes = false;
    let e = h.ev(Event::Persisted { seq });
    assert_eq!(kinds(&e), ["task_accepted"]);
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskAccepted { generation: 3, .. }
    ));
    let w = wakes(&e);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].attempt, 1);
    let accept_at = e
        .iter()
        .position(|x| matches!(x, Effect::Send { .. }))
        .unwrap();
    let wake_at = e.iter().position(|x| matches!(x, Effect::Wake(_))).unwrap();
    assert!(accept_at < wake_at, "the hub hears first");
}

fn success_of(id: &str) -> Event {
    Event::ResultSeen {
        task_id: id.into(),
        result: Ok(obj(json!({"status": "success", "output": 1}))),
    }
}

fn parked_answer(id: &str, generation: u64, action: &str) -> Event {
    Event::StateReportAnswered {
        task_id: id.into(),
        generation,
        action: action.into(),
    }
}

#[test]
fn a_different_task_while_busy_is_parked_unanswered_and_nothing_is_kept() {
    let mut h = working();
    let e = h.assign("other", 5);
    assert!(
        kinds(&e).is_empty(),
        "no answer: a refusal costs the hub a retry"
    );
    assert!(notes(&e).contains(&"task_parked"));
    assert!(h.state().task("other").is_none());
    assert!(!e.iter().any(|x| matches!(x, Effect::Persist(_))));
    // A third is refused: only one waits.
    let e = h.assign("third", 1);
    assert_eq!(kinds(&e), ["task_failed"]);
    assert!(
        matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, generation: 1, .. } if reason == "busy")
    );
    // The parked one pushed again: its newer lease replaces it.
    let e = h.assign("other", 6);
    assert!(kinds(&e).is_empty());
    assert_eq!(h.m.parked.as_ref().unwrap().assign.generation, 6);
}

#[test]
fn a_parked_task_is_checked_with_the_hub_once_the_slot_frees_and_then_runs() {
    let mut h = working();
    h.assign("other", 5);
    // The held task ends: its report goes first, then the check of the parked one.
    let e = h.ev(success_of("t"));
    assert_eq!(kinds(&e), ["task_complete", "state_report"]);
    assert!(matches!(
        &frames(&e)[1],
        Outgoing::StateReport {
            generation: 5,
            status: "assigned",
            ..
        }
    ));
    assert!(
        wakes(&e).is_empty(),
        "not before the hub says it is still ours"
    );
    let e = h.ev(parked_answer("other", 5, "continue"));
    assert!(notes(&e).contains(&"task_unparked"));
    assert_eq!(kinds(&e), ["task_accepted"]);
    assert_eq!(wakes(&e).len(), 1);
    assert!(
        e.iter().any(|x| matches!(x, Effect::Reidentify { .. })),
        "the hub's FSM starts over assigned to it"
    );
    assert!(h.m.parked.is_none());
}

#[test]
fn a_parked_task_the_hub_no_longer_has_here_is_dropped_and_one_that_lost_the_slot_waits() {
    let mut h = working();
    h.assign("other", 5);
    h.ev(success_of("t"));
    let e = h.ev(parked_answer("other", 5, "abort"));
    assert!(notes(&e).contains(&"task_parked_dropped"));
    assert!(kinds(&e).is_empty() && wakes(&e).is_empty());
    assert!(h.m.parked.is_none());

    // Another push took the slot before the answer: the parked task waits for the next.
    let mut h = working();
    h.assign("other", 5);
    h.ev(success_of("t"));
    h.assign("pushed", 1);
    let e = h.ev(parked_answer("other", 5, "continue"));
    assert!(kinds(&e).is_empty() && wakes(&e).is_empty());
    assert!(h.m.parked.is_some());
    // Cancelled by the hub: dropped, nothing sent.
    let e = h.ev(Event::Cancelled {
        task_id: "other".into(),
    });
    assert!(notes(&e).contains(&"task_parked_dropped"));
    assert!(h.m.parked.is_none());
}

#[test]
fn a_parked_task_is_refused_when_the_shutdown_begins() {
    let mut h = working();
    h.assign("other", 5);
    let e = h.ev(Event::ShutdownBegun);
    assert_eq!(kinds(&e), ["task_failed"], "the hub requeues it now");
    assert!(h.m.parked.is_none());
}

#[test]
fn an_unsafe_task_id_is_refused_and_nothing_runs() {
    let mut h = H::new();
    h.up(1);
    let e = h.assign("../../etc/passwd", 2);
    assert_eq!(kinds(&e), ["task_failed"]);
    assert!(
        matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, .. } if reason == "invalid_task_id")
    );
    assert!(wakes(&e).is_empty());
    assert!(h.state().tasks.is_empty());
}

#[test]
fn the_same_task_again_adopts_the_generation_without_a_second_agent() {
    let mut h = working();
    let e = h.assign("t", 4);
    assert_eq!(kinds(&e), ["task_accepted"]);
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskAccepted { generation: 4, .. }
    ));
    assert!(wakes(&e).is_empty());
    // An older generation never lowers it.
    let e = h.assign("t", 2);
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskAccepted { generation: 4, .. }
    ));
    assert!(notes(&e).contains(&"task_generation_stale"));
    let e = h.ev(success());
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskComplete { generation: 4, .. }
    ));
    assert_eq!(wakes(&h.log).len(), 1);
}

#[test]
fn a_report_waiting_for_its_answer_goes_again_with_a_new_generation() {
    let mut h = working();
    h.ev(success());
    let e = h.assign("t", 6);
    assert_eq!(kinds(&e), ["task_accepted", "task_complete"]);
    assert!(matches!(
        &frames(&e)[1],
        Outgoing::TaskComplete { generation: 6, .. }
    ));
    // The answer to the old one changes nothing; the new one's ack ends the task.
    let e = h.ev(Event::ReportAnswered {
        task_id: "t".into(),
        kind: ReportKind::Complete,
        generation: 1,
        answer: Answer::Refused {
            error: "task_complete_failed: stale_generation".into(),
            details: None,
        },
    });
    assert!(notes(&e).contains(&"report_answer_ignored"));
    assert_eq!(h.state().outbox.len(), 1);
    h.ev(acked("t", ReportKind::Complete, 6, "complete"));
    assert!(h.state().tasks.is_empty() && h.state().outbox.is_empty());
}

#[test]
fn a_refused_report_ends_kept_for_the_operator_and_is_not_sent_again() {
    let mut h = working();
    h.ev(Event::ResultSeen {
        task_id: "t".into(),
        result: Ok(obj(json!({"status": "failed", "error": "x".repeat(3000)}))),
    });
    let sent = frames(&h.log);
    let Some(Outgoing::TaskFailed { error, .. }) = sent.iter().find(|f| f.kind() == "task_failed")
    else {
        panic!()
    };
    assert_eq!(error.chars().count(), 2000, "cut to the hub's limit");
    let e = h.ev(Event::ReportAnswered {
        task_id: "t".into(),
        kind: ReportKind::Failed,
        generation: 1,
        answer: Answer::Refused {
            error: "validation_failed".into(),
            details: Some(json!([{"field": "error"}])),
        },
    });
    let note = e.iter().find_map(|x| match x {
        Effect::Log(n) if n.event == "report_refused" => Some(n.clone()),
        _ => None,
    });
    assert_eq!(
        note.unwrap().field("errors"),
        Some(&json!([{"field": "error"}]))
    );
    assert!(h.state().outbox.is_empty());
    assert_eq!(h.state().refused.len(), 1);
    let Some(super::model::Outcome::Failed { error, .. }) =
        &h.state().refused[0].outcome.clone().into()
    else {
        panic!()
    };
    assert_eq!(error.len(), 3000, "the whole text is kept");
    h.ev(Event::SessionDown { session: 1 });
    assert!(kinds(&h.up(2)).is_empty(), "never sent again");
    // Pushed again: reported again, with the new generation.
    let e = h.assign("t", 9);
    assert_eq!(kinds(&e), ["task_accepted", "task_failed"]);
    assert!(matches!(
        &frames(&e)[1],
        Outgoing::TaskFailed { generation: 9, .. }
    ));
    assert_eq!(wakes(&h.log).len(), 1);
}

#[test]
fn after_a_reidentify_the_held_task_is_accepted_again_with_a_state_report() {
    let mut h = working();
    h.ev(Event::SessionDown { session: 1 });
    let e = h.up(2);
    assert_eq!(kinds(&e), ["task_accepted", "state_report"]);
    assert!(matches!(
        &frames(&e)[1],
        Outgoing::StateReport {
            generation: 1,
            status: "working",
            assigned_at: Some(77),
            ..
        }
    ));
    // The same session announced again changes nothing.
    assert!(kinds(&h.up(2)).is_empty());
}

#[test]
fn state_report_abort_drops_the_task_and_keeps_its_late_result_aside() {
    let mut h = working();
    h.ev(Event::SessionDown { session: 1 });
    h.up(2);
    let e = h.ev(Event::StateReportAnswered {
        task_id: "t".into(),
        generation: 1,
        action: "abort".into(),
    });
    assert!(notes(&e).contains(&"task_aborted"));
    assert_eq!(h.state().task("t").unwrap().role, Role::Released);
    let e = h.ev(success());
    assert!(kinds(&e).is_empty(), "not reported");
    assert!(notes(&e).contains(&"result_kept"));
    let renamed = h.log.iter().any(|x| matches!(x, Effect::Persist(p) if p.after.iter().any(|op| matches!(op, FileOp::Rename { to, .. } if to == &PathBuf::from("/r/t.json.unreported")))));
    assert!(renamed);
    // The slot is free.
    assert!(kinds(&h.assign("u", 1)).contains(&"task_accepted"));
}

#[test]
fn a_task_pushed_while_the_busy_one_waits_for_its_state_report_answer_is_decided_by_it() {
    let mut h = working();
    h.ev(Event::SessionDown { session: 1 });
    h.up(2);
    let e = h.assign("u", 1);
    assert!(kinds(&e).is_empty());
    assert!(notes(&e).contains(&"task_deferred"));
    let e = h.ev(Event::StateReportAnswered {
        task_id: "t".into(),
        generation: 1,
        action: "abort".into(),
    });
    assert_eq!(kinds(&e), ["task_accepted"], "the slot is free: accepted");
    assert_eq!(h.state().task("u").unwrap().role, Role::Held);

    let mut h = working();
    h.ev(Event::SessionDown { session: 1 });
    h.up(2);
    h.assign("u", 1);
    let e = h.ev(Event::StateReportAnswered {
        task_id: "t".into(),
        generation: 1,
        action: "continue".into(),
    });
    assert!(kinds(&e).is_empty(), "still busy: it waits for the slot");
    assert!(notes(&e).contains(&"task_parked"));
}

#[test]
fn a_cancelled_task_is_never_reported_and_its_wake_command_is_stopped() {
    let mut h = H::new();
    h.up(1);
    let id = wakes(&h.assign("t", 1))[0].wake_id;
    let e = h.ev(Event::Cancelled {
        task_id: "t".into(),
    });
    assert!(e.contains(&Effect::KillWake { wake_id: id }));
    let e = h.ev(success());
    assert!(kinds(&e).is_empty());
    assert!(!kinds(&h.log).contains(&"task_complete"));
}

#[test]
fn a_task_cancelled_and_assigned_again_while_a_retry_waits_gets_one_new_attempt() {
    let mut h = H::new();
    h.up(1);
    let first = wakes(&h.assign("t", 1))[0].wake_id;
    let e = h.ev(exited(
        "t",
        first,
        1,
        WakeOutcome::Failed("exit code 1".into()),
    ));
    let retry = timers(&e)[0].clone();
    h.ev(Event::Cancelled {
        task_id: "t".into(),
    });
    let e = h.assign("t", 3);
    let new = wakes(&e);
    assert_eq!(new.len(), 1, "one new agent");
    // The retry armed for the cancelled lease fires: nothing.
    assert!(wakes(&h.ev(Event::Timer(retry))).is_empty());
    assert_eq!(wakes(&h.log).len(), 2);
}

#[test]
fn an_acceptance_that_cannot_be_saved_is_given_back() {
    let mut h = H::new();
    h.hold_writes = true;
    h.up(1);
    h.assign("t", 2);
    let mut seq = h.held.pop().unwrap();
    for n in 1..=3 {
        let e = h.ev(Event::PersistFailed {
            seq,
            error: "disk full".into(),
        });
        if n < 3 {
            let t = timers(&e);
            let e = h.ev(Event::Timer(t[0].clone()));
            assert!(kinds(&e).is_empty());
            seq = h.held.pop().unwrap();
        } else {
            assert_eq!(kinds(&e), ["task_failed"]);
            assert!(
                matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, .. } if reason == "storage_unavailable")
            );
        }
    }
    assert!(h.state().tasks.is_empty());
    assert!(wakes(&h.log).is_empty());
}

#[test]
fn no_new_task_is_taken_after_shutdown_began() {
    let mut h = H::new();
    h.up(1);
    h.ev(Event::ShutdownBegun);
    let e = h.assign("t", 1);
    assert!(kinds(&e).is_empty());
    assert!(h.state().tasks.is_empty());
}

#[test]
fn a_task_whose_acceptance_lands_after_shutdown_began_is_neither_announced_nor_woken() {
    let mut h = H::new();
    h.hold_writes = true;
    h.up(1);
    let e = h.assign("t", 1);
    let Some(Effect::Persist(p)) = e.iter().find(|e| matches!(e, Effect::Persist(_))) else {
        panic!("a write: {e:?}")
    };
    let seq = p.seq;
    h.ev(Event::ShutdownBegun);
    h.hold_writes = false;
    let e = h.ev(Event::Persisted { seq });
    assert!(kinds(&e).is_empty(), "no task_accepted: {e:?}");
    assert!(wakes(&e).is_empty(), "no agent started: {e:?}");
    assert!(notes(&e).contains(&"wake_not_started"));
    // The attempt that never ran is not on disk as one that may run: the next start wakes
    // the agent when the hub continues the task.
    assert_eq!(h.agent("t"), Agent::NotWoken);
    assert!(h.m.settled());
    // A retry due after the shutdown began is not started either.
    let e = h.ev(Event::Timer(Timer::WakeRetry {
        task_id: "t".into(),
        wake_id: 1,
    }));
    assert!(wakes(&e).is_empty());
}

#[test]
fn a_restart_the_hub_asks_for_waits_for_the_report_to_be_answered() {
    let mut h = working();
    let e = h.ev(Event::RestartRequested {
        reason: "upgrade".into(),
    });
    assert!(!e.iter().any(|x| matches!(x, Effect::Restart { .. })));
    assert!(kinds(&h.assign("u", 1)).is_empty(), "no new task meanwhile");
    h.ev(success());
    let e = h.ev(acked("t", ReportKind::Complete, 1, "complete"));
    assert!(e.iter().any(|x| matches!(x, Effect::Restart { .. })));

    let mut h = H::new();
    let e = h.ev(Event::RestartRequested {
        reason: "now".into(),
    });
    assert!(
        e.iter().any(|x| matches!(x, Effect::Restart { .. })),
        "idle: at once"
    );
}

#[test]
fn a_waker_restart_leaves_a_running_attempt_its_window_and_wakes_no_second_agent() {
    let mut h = H::new();
    h.up(1);
    let e = h.assign("t", 1);
    assert_eq!(wakes(&e).len(), 1);
    // The waker died with the attempt's command perhaps still running.
    let e = h.ev(Event::WakerRestarted);
    assert!(notes(&e).contains(&"wake_outcome_lost"), "{e:?}");
    assert!(wakes(&e).is_empty(), "no second agent at once");
    // The agent it started confirms: the task works on, still without a second start.
    let e = h.ev(Event::StartedSeen {
        task_id: "t".into(),
    });
    assert!(wakes(&e).is_empty());
    assert_eq!(h.agent("t"), Agent::Confirmed);
    assert_eq!(wakes(&h.log).len(), 1);
}

#[test]
fn an_ack_that_does_not_fit_the_report_changes_nothing() {
    let mut h = working();
    h.ev(success());
    assert_eq!(h.state().outbox.len(), 1);
    let e = h.ev(acked("t", ReportKind::Complete, 1, "failed"));
    assert!(notes(&e).contains(&"task_ack_unexpected"), "{e:?}");
    assert_eq!(h.state().outbox.len(), 1, "the report still waits");
    let e = h.ev(acked("t", ReportKind::Complete, 1, "complete"));
    assert!(notes(&e).contains(&"task_ack"), "{e:?}");
    assert!(h.state().outbox.is_empty());
}

#[test]
fn released_tasks_past_keep_released_are_forgotten_oldest_first() {
    let mut h = H::new();
    h.up(1);
    // Cancelled while their wake commands run: released, but remembered (an agent may run).
    for i in 0..10 {
        let id = format!("t{i}");
        h.assign(&id, 1);
        h.ev(Event::Cancelled { task_id: id });
    }
    let released: Vec<&str> = h
        .state()
        .tasks
        .iter()
        .filter(|t| t.role == Role::Released)
        .map(|t| t.task_id.as_str())
        .collect();
    assert_eq!(released, ["t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"]);
    let forgotten = h
        .log
        .iter()
        .filter(|e| matches!(e, Effect::Log(n) if n.event == "task_forgotten"))
        .count();
    assert_eq!(forgotten, 2);
}

#[test]
fn released_results_past_keep_released_bytes_are_forgotten_oldest_first() {
    let mut h = H::new();
    h.up(1);
    // Cancelled, then their agents' results arrive: kept aside, each about 25 KB.
    for i in 0..4 {
        let id = format!("t{i}");
        h.assign(&id, 1);
        h.ev(Event::Cancelled {
            task_id: id.clone(),
        });
        h.ev(Event::ResultSeen {
            task_id: id,
            result: Ok(obj(
                json!({"status": "success", "output": "x".repeat(25_000)}),
            )),
        });
    }
    let kept: Vec<&str> = h
        .state()
        .tasks
        .iter()
        .filter(|t| t.role == Role::Released)
        .map(|t| t.task_id.as_str())
        .collect();
    // 64 KiB in the test settings: the two newest fit.
    assert_eq!(kept, ["t2", "t3"]);
    let reasons: Vec<String> = h
        .log
        .iter()
        .filter_map(|e| match e {
            Effect::Log(n) if n.event == "task_forgotten" => Some(format!("{:?}", n.fields)),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.contains("keep_released_bytes")),
        "{reasons:?}"
    );
}

#[test]
fn the_byte_budget_never_forgets_a_released_task_whose_agent_may_still_run() {
    let mut h = H::new();
    h.up(1);
    // Oldest: cancelled while its wake command runs, no result yet (its agent may run).
    h.assign("running", 1);
    h.ev(Event::Cancelled {
        task_id: "running".into(),
    });
    for i in 0..3 {
        let id = format!("t{i}");
        h.assign(&id, 1);
        h.ev(Event::Cancelled {
            task_id: id.clone(),
        });
        h.ev(Event::ResultSeen {
            task_id: id,
            result: Ok(obj(
                json!({"status": "success", "output": "x".repeat(25_000)}),
            )),
        });
    }
    let kept: Vec<&str> = h
        .state()
        .tasks
        .iter()
        .filter(|t| t.role == Role::Released)
        .map(|t| t.task_id.as_str())
        .collect();
    assert_eq!(
        kept,
        ["running", "t1", "t2"],
        "only results are cut by bytes"
    );
}
