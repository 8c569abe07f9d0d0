//! Unit tests of the task machine, the agent's side: wake attempts and their retries,
//! confirmation windows (also after a restart), results, progress, recovery, timeouts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use super::effects::*;
use super::machine::DiskFacts;
use super::model::{Agent, QueueState, ReportKind, Role};
use super::tests::*;
use crate::protocol::Outgoing;

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
fn verification_fields_and_tokens_go_at_the_top_level_of_task_complete_and_stay_in_result() {
    let mut h = working();
    let result = serde_json::json!({"status": "success", "output": "ok", "tokens_used": 42,
        "verification_report": {"status": "pass", "checks": []},
        "verification_history": [{"status": "fail"}, {"status": "pass"}]});
    let e = h.ev(Event::ResultSeen {
        task_id: "t".into(),
        result: Ok(result.as_object().unwrap().clone()),
    });
    let frame = frames(&e)[0].clone();
    let wire: serde_json::Value = serde_json::from_str(&frame.encode().unwrap()).unwrap();
    assert_eq!(wire["type"], "task_complete");
    assert_eq!(wire["tokens_used"], 42);
    assert_eq!(wire["verification_report"]["status"], "pass");
    assert_eq!(wire["verification_history"][1]["status"], "pass");
    assert_eq!(wire["result"], result);
}

#[test]
fn a_success_whose_verification_fields_the_hub_would_refuse_is_an_invalid_result() {
    for bad in [
        serde_json::json!({"status": "success", "verification_report": "pass"}),
        serde_json::json!({"status": "success", "verification_history": [1]}),
        serde_json::json!({"status": "success", "tokens_used": 2.5}),
    ] {
        let mut h = working();
        let e = h.ev(Event::ResultSeen {
            task_id: "t".into(),
            result: Ok(bad.as_object().unwrap().clone()),
        });
        assert!(
            matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, error, .. }
                if reason == "invalid_result" && error.contains("result field")),
            "{bad}: {:?}",
            frames(&e)
        );
    }
    // A failure's fields are not looked at: the agent's own reason goes.
    let mut h = working();
    let e = h.ev(Event::ResultSeen {
        task_id: "t".into(),
        result: Ok(
            serde_json::json!({"status": "failure", "reason": "r", "tokens_used": "x"})
                .as_object()
                .unwrap()
                .clone(),
        ),
    });
    assert!(matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, .. } if reason == "r"));
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
fn task_timeout_counts_from_the_latest_lease_so_a_late_re_push_does_not_fail_at_once() {
    let mut h = working();
    let first = timers(&h.log)
        .into_iter()
        .find(|t| matches!(t, Timer::TaskTimeout { .. }))
        .unwrap();
    // The hub takes the task back and pushes it again much later: a new lease.
    h.now += 3_000_000;
    let e = h.assign("t", 2);
    let second = timers(&e)
        .into_iter()
        .find(|t| matches!(t, Timer::TaskTimeout { .. }))
        .expect("the timeout is armed again for the new lease");
    assert!(
        matches!(&second, Timer::TaskTimeout { lease_at_ms, .. } if *lease_at_ms == h.now),
        "{second:?}"
    );
    let delay = e.iter().find_map(|x| match x {
        Effect::Arm { timer, after } if *timer == second => Some(*after),
        _ => None,
    });
    assert_eq!(
        delay,
        Some(std::time::Duration::from_secs(3600)),
        "the whole task_timeout_ms from the re-push"
    );
    // The first lease's timer fires: it no longer fits the task.
    let e = h.ev(Event::Timer(first));
    assert!(frames(&e).is_empty(), "{e:?}");
    assert!(h.state().task("t").unwrap().in_progress());
    // The new lease's timer fails it.
    let e = h.ev(Event::Timer(second));
    assert!(
        matches!(&frames(&e)[0], Outgoing::TaskFailed { reason, .. } if reason == "task_timeout")
    );
}

/// The text of every agent event in `effects`' `task_progress` frames, in order.
fn progress_text(effects: &[Effect]) -> String {
    frames(effects)
        .iter()
        .filter_map(|f| match f {
            Outgoing::TaskProgress {
                execution_event: Some(e),
                ..
            } => e.get("text").and_then(|t| t.as_str()).map(str::to_string),
            _ => None,
        })
        .collect()
}

fn line(task_id: &str, text: &str) -> Event {
    Event::AgentProgress {
        task_id: task_id.into(),
        progress: None,
        event: obj(json!({"event_type": "stdout", "text": text})),
    }
}

#[test]
fn the_agents_text_is_joined_while_paced_and_none_of_it_is_lost() {
    let mut h = working();
    let mut sent = String::new();
    let mut written = String::new();
    sent += &progress_text(&h.ev(line("t", "first ")));
    written += "first ";
    // Within the gap: everything waits, joined into one event.
    for n in 0..500 {
        let text = format!("{n} ");
        written += &text;
        let e = h.ev(line("t", &text));
        assert!(frames(&e).is_empty());
    }
    let tick = Timer::AgentProgress {
        task_id: "t".into(),
    };
    let e = h.ev(Event::Timer(tick.clone()));
    assert_eq!(frames(&e).len(), 1, "one frame for 500 lines");
    sent += &progress_text(&e);
    assert_eq!(sent, written);
}

#[test]
fn reading_pauses_while_too_much_waits_and_resumes_once_it_went_out() {
    let mut h = working();
    let big = "x".repeat(32 * 1024);
    let flow = |e: &[Effect]| {
        e.iter()
            .filter_map(|x| match x {
                Effect::ProgressFlow { open, .. } => Some(*open),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // One read's worth: still room.
    h.ev(line("t", &big));
    h.ev(line("t", &big));
    let e = h.ev(Event::AgentProgressRead {
        task_id: "t".into(),
    });
    assert_eq!(flow(&e), [true]);
    // Past the bound: the next read waits.
    for _ in 0..10 {
        h.ev(line("t", &big));
    }
    let e = h.ev(Event::AgentProgressRead {
        task_id: "t".into(),
    });
    assert_eq!(flow(&e), [false]);
    let tick = Event::Timer(Timer::AgentProgress {
        task_id: "t".into(),
    });
    let mut opened = Vec::new();
    let mut text = String::new();
    for _ in 0..12 {
        let e = h.ev(tick.clone());
        text += &progress_text(&e);
        opened.extend(flow(&e));
    }
    assert_eq!(opened, [true], "resumed once, when half had gone out");
    assert_eq!(
        text.len(),
        11 * big.len(),
        "every byte after the first frame"
    );
}

#[test]
fn what_waits_goes_out_before_the_report() {
    let mut h = working();
    h.ev(line("t", "a"));
    h.ev(line("t", "b"));
    h.ev(Event::AgentProgress {
        task_id: "t".into(),
        progress: Some(90),
        event: obj(json!({"event_type": "status", "text": "done"})),
    });
    let e = h.ev(Event::ResultSeen {
        task_id: "t".into(),
        result: Ok(obj(json!({"status": "success"}))),
    });
    let sent = frames(&e);
    let kinds: Vec<&str> = sent.iter().map(|f| f.kind()).collect();
    assert_eq!(kinds, ["task_progress", "task_progress", "task_complete"]);
    assert_eq!(progress_text(&e), "bdone");
}

mod progress_props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A line of this event type (0–2) with this text, if reading is not held back.
        Text(u8, String),
        /// A line without text, if reading is not held back.
        Bare(u8),
        /// The lines read so far are all in.
        Read,
        /// The pacing timer fires.
        Tick,
        /// The hub session drops, or a new one comes up.
        Down,
        Up,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (0u8..3, "[a-z\n]{0,40}", 1usize..600)
                .prop_map(|(t, s, n)| Op::Text(t, s.repeat(n))),
            1 => (0u8..100).prop_map(Op::Bare),
            3 => Just(Op::Read),
            2 => Just(Op::Tick),
            1 => Just(Op::Down),
            1 => Just(Op::Up),
        ]
    }

    const TYPES: [&str; 3] = ["token", "stdout", "stderr"];

    proptest! {
        /// Whatever the agent writes, when the file is read, the timer fires and the session
        /// comes and goes: the text of each event type reaches the hub whole and in order
        /// by the report (sent on a session), reading is answered after every read and never
        /// left held back once the task ends, and what waits stays bounded.
        #[test]
        fn text_reaches_the_hub_whole_and_reading_is_never_left_held(
            ops in prop::collection::vec(op(), 1..300)
        ) {
            let mut h = working();
            let mut session = 1;
            let mut up = true;
            let mut held = false;
            // What one read hands over is at most 64 KiB of the file.
            let mut since_read = 0usize;
            let mut written = [String::new(), String::new(), String::new()];
            let mut sent = [String::new(), String::new(), String::new()];
            let mut take = |effects: &[Effect], held: &mut bool| {
                for e in effects {
                    match e {
                        Effect::Send { frame: Outgoing::TaskProgress { execution_event: Some(ev), .. }, .. } => {
                            if let (Some(t), Some(text)) = (ev.get("event_type").and_then(|v| v.as_str()), ev.get("text").and_then(|v| v.as_str())) {
                                let i = TYPES.iter().position(|x| *x == t).unwrap();
                                sent[i].push_str(text);
                            }
                        }
                        Effect::ProgressFlow { open, .. } => *held = !open,
                        _ => {}
                    }
                }
            };
            for op in ops {
                let effects = match op {
                    Op::Text(t, s) if !held && since_read + s.len() <= 64 * 1024 => {
                        since_read += s.len() + 40;
                        written[t as usize].push_str(&s);
                        h.ev(Event::AgentProgress {
                            task_id: "t".into(),
                            progress: None,
                            event: obj(json!({"event_type": TYPES[t as usize], "text": s})),
                        })
                    }
                    Op::Bare(n) if !held => h.ev(Event::AgentProgress {
                        task_id: "t".into(),
                        progress: Some(i64::from(n)),
                        event: obj(json!({"progress": n})),
                    }),
                    Op::Read if !held => {
                        since_read = 0;
                        let e = h.ev(Event::AgentProgressRead { task_id: "t".into() });
                        let answers = e.iter().filter(|x| matches!(x, Effect::ProgressFlow { .. })).count();
                        prop_assert_eq!(answers, 1, "every read is answered");
                        e
                    }
                    Op::Tick => h.ev(Event::Timer(Timer::AgentProgress { task_id: "t".into() })),
                    Op::Down if up => {
                        up = false;
                        h.ev(Event::SessionDown { session })
                    }
                    Op::Up if !up => {
                        up = true;
                        session += 1;
                        h.up(session)
                    }
                    _ => Vec::new(),
                };
                take(&effects, &mut held);
                let waiting = h.m.marks.get("t").map_or(0, |m| m.pending.weight());
                // At most one read's worth (64 KiB of lines, and their overhead) past the bound.
                prop_assert!(
                    waiting <= crate::tasks::progress::PENDING_MAX + 64 * 1024 + 300 * 128,
                    "{}",
                    waiting
                );
            }
            if !up {
                session += 1;
                let e = h.up(session);
                take(&e, &mut held);
            }
            let e = h.ev(success());
            take(&e, &mut held);
            prop_assert!(!held, "reading left held back after the task ended");
            prop_assert_eq!(sent, written);
        }
    }
}
