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
        },
        keep_released: 8,
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
        let (m, effects) = Machine::start(
            settings(),
            state,
            disk,
            BTreeSet::new(),
            process_start,
            1_000,
        );
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

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn exited(id: &str, wake_id: u64, attempt: u32, outcome: WakeOutcome) -> Event {
    Event::WakeExited {
        task_id: id.into(),
        wake_id,
        attempt,
        outcome,
    }
}

fn acked(id: &str, kind: ReportKind, generation: u64, status: &str) -> Event {
    Event::ReportAnswered {
        task_id: id.into(),
        kind,
        generation,
        answer: Answer::Acked {
            status: status.into(),
        },
    }
}

fn success() -> Event {
    Event::ResultSeen {
        task_id: "t".into(),
        result: Ok(obj(json!({"status": "success", "output": 1}))),
    }
}

/// A task accepted on session 1, woken (attempt 1 spawned) and confirmed.
fn working() -> H {
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

#[test]
fn a_different_task_while_busy_is_refused_with_task_failed_and_nothing_is_kept() {
    let mut h = working();
    let e = h.assign("other", 5);
    let f = frames(&e);
    assert_eq!(kinds(&e), ["task_failed"]);
    assert!(
        matches!(&f[0], Outgoing::TaskFailed { reason, generation: 5, .. } if reason == "busy")
    );
    assert!(h.state().task("other").is_none());
    assert!(!e.iter().any(|x| matches!(x, Effect::Persist(_))));
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
fn a_failed_attempt_is_retried_by_its_own_timer_and_stale_outcomes_are_ignored() {
    let mut h = H::new();
    h.up(1);
    let e = h.assign("t", 1);
    let first = wakes(&e)[0].wake_id;
    let e = h.ev(exited(
        "t",
        first,
        1,
        WakeOutcome::Failed("exit code 3".into()),
    ));
    assert_eq!(kinds(&e), ["wake_result"]);
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::WakeResult {
            status: "failed",
            attempt: 1,
            ..
        }
    ));
    let t = timers(&e);
    assert_eq!(
        t,
        [Timer::WakeRetry {
            task_id: "t".into(),
            wake_id: first
        }]
    );
    let e = h.ev(Event::Timer(t[0].clone()));
    let second = wakes(&e);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].wake_id, first);
    // The old attempt's timer again, and its outcome again: nothing.
    assert!(wakes(&h.ev(Event::Timer(t[0].clone()))).is_empty());
    let e = h.ev(exited("t", first, 1, WakeOutcome::Success));
    assert!(timers(&e).is_empty());
    assert!(matches!(h.agent("t"), Agent::Waking { attempt: 2, .. }));
}

#[test]
fn every_attempt_failing_fails_the_task_as_wake_failed() {
    let mut h = H::new();
    h.up(1);
    let mut id = wakes(&h.assign("t", 1))[0].wake_id;
    for attempt in 1..=3 {
        let e = h.ev(exited(
            "t",
            id,
            attempt,
            WakeOutcome::Failed("exit code 1".into()),
        ));
        if attempt < 3 {
            let t = timers(&e);
            id = wakes(&h.ev(Event::Timer(t[0].clone())))[0].wake_id;
        } else {
            assert_eq!(kinds(&e), ["wake_result", "task_failed"]);
            assert!(
                matches!(&frames(&e)[1], Outgoing::TaskFailed { reason, .. } if reason == "wake_failed")
            );
        }
    }
    assert_eq!(wakes(&h.log).len(), 3);
}

#[test]
fn no_confirmation_in_time_fails_the_task() {
    let mut h = H::new();
    h.up(1);
    let id = wakes(&h.assign("t", 1))[0].wake_id;
    let e = h.ev(exited("t", id, 1, WakeOutcome::Success));
    assert_eq!(kinds(&e), ["wake_result"]);
    let t = timers(&e);
    assert_eq!(
        t,
        [Timer::Confirmation {
            task_id: "t".into(),
            wake_id: id
        }]
    );
    let e = h.ev(Event::Timer(t[0].clone()));
    assert!(
        matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, .. } if reason == "confirmation_timeout")
    );
}

#[test]
fn a_confirmed_agent_is_never_failed_by_its_wake_command() {
    let mut h = H::new();
    h.up(1);
    let id = wakes(&h.assign("t", 1))[0].wake_id;
    let e = h.ev(Event::StartedSeen {
        task_id: "t".into(),
    });
    assert!(
        e.contains(&Effect::WakeConfirmed { wake_id: id }),
        "the waker must not kill it at its timeout"
    );
    let e = h.ev(exited(
        "t",
        id,
        1,
        WakeOutcome::TimedOut("still running".into()),
    ));
    assert_eq!(kinds(&e), ["wake_result"], "reported, and nothing else");
    assert!(timers(&e).is_empty());
    assert_eq!(h.agent("t"), Agent::Confirmed);
}

#[test]
fn a_result_is_reported_after_it_is_durable_and_the_ack_forgets_the_task() {
    let mut h = working();
    h.hold_writes = true;
    let e = h.ev(success());
    assert!(kinds(&e).is_empty());
    let seq = h.held.pop().unwrap();
    h.hold_writes = false;
    let e = h.ev(Event::Persisted { seq });
    assert_eq!(kinds(&e), ["task_complete"]);
    let e = h.ev(acked("t", ReportKind::Complete, 1, "complete"));
    assert!(notes(&e).contains(&"task_ack"));
    let Some(Effect::Persist(p)) = e.iter().find(|x| matches!(x, Effect::Persist(_))) else {
        panic!()
    };
    assert!(p.state.tasks.is_empty());
    assert!(p
        .after
        .iter()
        .any(|op| matches!(op, FileOp::Remove(path) if path == &PathBuf::from("/t/t.json"))));
}

#[test]
fn an_invalid_result_fails_the_task_and_is_renamed_aside() {
    let mut h = working();
    let e = h.ev(Event::ResultSeen {
        task_id: "t".into(),
        result: Err("result file is not valid JSON".into()),
    });
    assert!(
        matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, .. } if reason == "invalid_result")
    );
    let renamed = h.log.iter().any(|x| matches!(x, Effect::Persist(p) if p.after.iter().any(|op| matches!(op, FileOp::Rename { to, .. } if to == &PathBuf::from("/r/t.json.invalid")))));
    assert!(renamed);
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
    assert_eq!(kinds(&e), ["task_failed"], "still busy: refused");
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

/// A state as the disk holds it: task `t` held at generation 2 with this agent state.
fn on_disk(agent: Agent) -> QueueState {
    let mut h = H::new();
    h.up(1);
    h.assign("t", 2);
    let mut state = h.state().clone();
    state.tasks[0].agent = agent;
    state
}

#[test]
fn a_restart_recovers_the_task_and_continue_never_wakes_an_agent_whose_files_are_there() {
    let disk = BTreeMap::from([(
        "t".to_string(),
        DiskFacts {
            started: true,
            result: Some(Ok(obj(json!({"status": "success"})))),
        },
    )]);
    let mut h = H::with(
        on_disk(Agent::Woken {
            wake_id: 1,
            attempt: 1,
        }),
        disk,
        true,
    );
    assert_eq!(h.state().task("t").unwrap().role, Role::Recovering);
    let e = h.up(5);
    assert_eq!(kinds(&e), ["task_recovering"]);
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskRecovering {
            generation: 2,
            last_status: "finished",
            ..
        }
    ));
    let e = h.ev(Event::Continue {
        task_id: "t".into(),
        generation: 4,
    });
    assert_eq!(kinds(&e), ["task_accepted", "task_complete"]);
    assert!(matches!(
        &frames(&e)[1],
        Outgoing::TaskComplete { generation: 4, .. }
    ));
    assert!(wakes(&h.log).is_empty());
}

#[test]
fn an_attempt_interrupted_by_a_restart_gets_its_confirmation_window_before_another() {
    let mut h = H::with(
        on_disk(Agent::Waking {
            wake_id: 7,
            attempt: 1,
        }),
        BTreeMap::new(),
        true,
    );
    let window = Timer::Confirmation {
        task_id: "t".into(),
        wake_id: 7,
    };
    assert!(timers(&h.log).contains(&window));
    h.up(1);
    let e = h.ev(Event::Continue {
        task_id: "t".into(),
        generation: 2,
    });
    assert!(
        wakes(&e).is_empty(),
        "no new attempt while the old one may run"
    );
    // The window passes without `.started`: now a retry may come.
    let e = h.ev(Event::Timer(window));
    assert!(notes(&e).contains(&"wake_error"));
    let retry = timers(&e);
    let e = h.ev(Event::Timer(retry[0].clone()));
    assert_eq!(wakes(&e)[0].attempt, 2);

    // With `.started` seen in the window instead: never another attempt.
    let mut h = H::with(
        on_disk(Agent::Waking {
            wake_id: 7,
            attempt: 1,
        }),
        BTreeMap::new(),
        true,
    );
    h.up(1);
    h.ev(Event::StartedSeen {
        task_id: "t".into(),
    });
    h.ev(Event::Continue {
        task_id: "t".into(),
        generation: 2,
    });
    let e = h.ev(Event::Timer(Timer::Confirmation {
        task_id: "t".into(),
        wake_id: 7,
    }));
    assert!(e
        .iter()
        .all(|x| !matches!(x, Effect::Wake(_) | Effect::Arm { .. })));
}

#[test]
fn a_re_push_before_the_recovery_answer_adopts_and_the_late_reassign_changes_nothing() {
    let mut h = H::with(on_disk(Agent::Confirmed), BTreeMap::new(), true);
    h.up(1);
    let e = h.assign("t", 4);
    assert_eq!(kinds(&e), ["task_accepted"]);
    let e = h.ev(Event::Reassign {
        task_id: "t".into(),
    });
    assert!(notes(&e).contains(&"task_reassign_ignored"));
    assert_eq!(h.state().task("t").unwrap().role, Role::Held);
    let e = h.ev(success());
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskComplete { generation: 4, .. }
    ));
    assert!(wakes(&h.log).is_empty());
}

#[test]
fn reassign_then_re_push_still_starts_no_second_agent() {
    let mut h = H::with(on_disk(Agent::Confirmed), BTreeMap::new(), true);
    h.up(1);
    h.ev(Event::Reassign {
        task_id: "t".into(),
    });
    assert_eq!(h.state().task("t").unwrap().role, Role::Released);
    let e = h.assign("t", 4);
    assert_eq!(kinds(&e), ["task_accepted"]);
    assert!(wakes(&h.log).is_empty());
}

#[test]
fn held_tasks_are_said_alive_at_the_progress_interval_and_the_agents_progress_is_forwarded() {
    let mut h = working();
    let tick = Timer::Progress { session: 1 };
    assert!(timers(&h.log).contains(&tick));
    let e = h.ev(Event::AgentProgress {
        task_id: "t".into(),
        progress: Some(40),
        event: obj(json!({"step": "tests"})),
    });
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskProgress {
            progress: Some(40),
            execution_event: Some(_),
            ..
        }
    ));
    // A second one within the gap waits, the latest wins.
    let e = h.ev(Event::AgentProgress {
        task_id: "t".into(),
        progress: Some(50),
        event: obj(json!({"step": "lint"})),
    });
    assert!(kinds(&e).is_empty());
    let e = h.ev(Event::Timer(Timer::AgentProgress {
        task_id: "t".into(),
    }));
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskProgress {
            progress: Some(50),
            ..
        }
    ));
    let e = h.ev(Event::Timer(tick.clone()));
    assert!(matches!(
        &frames(&e)[0],
        Outgoing::TaskProgress {
            progress: Some(50),
            execution_event: None,
            ..
        }
    ));
    assert!(timers(&e).contains(&tick), "and again");
}

#[test]
fn a_task_without_a_result_in_task_timeout_fails() {
    let mut h = working();
    let t = timers(&h.log)
        .into_iter()
        .find(|t| matches!(t, Timer::TaskTimeout { .. }))
        .unwrap();
    let e = h.ev(Event::Timer(t));
    assert!(
        matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, .. } if reason == "task_timeout")
    );
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
