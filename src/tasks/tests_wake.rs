//! A task without a wake command: it fails at once (`no_wake_command`), unless the config
//! says its agent starts by itself; then the agent has the confirmation timeout to write
//! `.started`, or the task fails (`confirmation_timeout`).

use std::collections::{BTreeMap, BTreeSet};

use super::effects::{Effect, Event, Timer};
use super::machine::{WakeRule, WakeTargets};
use super::model::{Agent, QueueState};
use super::tests::*;
use crate::protocol::Outgoing;

fn targets(default: bool, self_start: bool) -> WakeTargets {
    WakeTargets {
        default,
        types: ["ollama".to_string(), "claude".into(), "sidecar".into()].into(),
        none: ["quiet".to_string()].into(),
        self_start,
    }
}

fn machine(wake: WakeTargets) -> H {
    let mut cfg = settings();
    cfg.wake = wake;
    H::with_settings(cfg, QueueState::default(), BTreeMap::new(), true)
}

fn routed(id: &str, target: Option<&str>) -> Event {
    let mut a = assign(id, 1);
    a.target_type = target.map(str::to_string);
    Event::Assign(a)
}

fn failed(effects: &[Effect]) -> Vec<(String, String)> {
    frames(effects)
        .into_iter()
        .filter_map(|f| match f {
            Outgoing::TaskFailed { reason, error, .. } => Some((reason, error)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_rule_by_target() {
    let t = targets(false, false);
    assert_eq!(t.rule(Some("claude")), WakeRule::Wake);
    assert_eq!(t.rule(Some("quiet")), WakeRule::SelfStart);
    assert_eq!(t.rule(Some("wake")), WakeRule::Missing);
    assert_eq!(t.rule(None), WakeRule::Missing);
    let t = targets(false, true);
    assert_eq!(t.rule(Some("wake")), WakeRule::SelfStart);
    assert_eq!(t.rule(None), WakeRule::SelfStart);
    assert_eq!(t.rule(Some("ollama")), WakeRule::Wake);
    let t = targets(true, false);
    assert_eq!(t.rule(None), WakeRule::Wake);
    assert_eq!(t.rule(Some("quiet")), WakeRule::SelfStart);
    assert!(!t.wakes(Some("quiet")));
}

#[test]
fn a_task_without_a_wake_command_fails_at_once_after_its_acceptance() {
    let mut h = machine(targets(false, false));
    h.up(1);
    let e = h.ev(routed("t", Some("wake")));
    assert!(wakes(&e).is_empty());
    let k = kinds(&e);
    let accepted = k.iter().position(|k| *k == "task_accepted");
    let failed_at = k.iter().position(|k| *k == "task_failed");
    assert!(
        accepted.is_some() && failed_at.is_some() && accepted < failed_at,
        "{k:?}"
    );
    let f = failed(&e);
    assert_eq!(f[0].0, "no_wake_command");
    assert!(
        f[0].1.contains("wake_command") && f[0].1.contains("agent_starts_itself"),
        "{}",
        f[0].1
    );
    assert!(notes(&e).contains(&"no_wake_command"));
    assert_eq!(h.agent("t"), Agent::GaveUp);
    // No timer waits for it.
    assert!(!timers(&e)
        .iter()
        .any(|t| matches!(t, Timer::SelfStart { .. } | Timer::Confirmation { .. })));
}

#[test]
fn a_routed_task_with_a_command_is_woken_and_an_unrouted_one_fails() {
    let mut h = machine(targets(false, false));
    h.up(1);
    let e = h.ev(routed("a", Some("claude")));
    assert_eq!(wakes(&e).len(), 1);
    assert!(failed(&e).is_empty());
    h.ev(Event::StartedSeen {
        task_id: "a".into(),
    });
    h.ev(Event::ResultSeen {
        task_id: "a".into(),
        result: Ok(obj(serde_json::json!({"status": "success", "output": 1}))),
    });
    let e = h.ev(routed("b", None));
    assert_eq!(failed(&e)[0].0, "no_wake_command");
}

#[test]
fn a_self_starting_agent_is_waited_for_and_its_confirmation_counts() {
    let mut h = machine(targets(false, true));
    h.up(1);
    let e = h.ev(routed("t", None));
    assert!(wakes(&e).is_empty() && failed(&e).is_empty());
    assert!(
        notes(&e).contains(&"agent_self_start_wait"),
        "{:?}",
        notes(&e)
    );
    let wait = e
        .iter()
        .find_map(|e| match e {
            Effect::Log(n) if n.event == "agent_self_start_wait" => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    let fields: BTreeSet<&str> = wait.fields.iter().map(|(k, _)| *k).collect();
    assert!(
        fields.contains("task_id") && fields.contains("deadline"),
        "{fields:?}"
    );
    let t = timers(&e);
    assert!(
        matches!(&t[..], [.., Timer::SelfStart { task_id, .. }] if task_id == "t"),
        "{t:?}"
    );
    let timer = t.last().unwrap().clone();
    h.ev(Event::StartedSeen {
        task_id: "t".into(),
    });
    assert_eq!(h.agent("t"), Agent::Confirmed);
    // Confirmed: the timer changes nothing.
    let e = h.ev(Event::Timer(timer));
    assert!(failed(&e).is_empty());
    let e = h.ev(Event::ResultSeen {
        task_id: "t".into(),
        result: Ok(obj(serde_json::json!({"status": "success", "output": 1}))),
    });
    assert_eq!(kinds(&e), ["task_complete"]);
}

#[test]
fn a_self_starting_agent_that_never_confirms_fails_the_task_with_confirmation_timeout() {
    for (wake, target) in [
        (targets(false, true), None),
        (targets(true, false), Some("quiet")),
    ] {
        let mut h = machine(wake);
        h.up(1);
        let e = h.ev(routed("t", target));
        let timer = timers(&e)
            .into_iter()
            .find(|t| matches!(t, Timer::SelfStart { .. }))
            .expect("the confirmation window is armed");
        let e = h.ev(Event::Timer(timer.clone()));
        let f = failed(&e);
        assert_eq!(f.len(), 1, "{e:?}");
        assert_eq!(f[0].0, "confirmation_timeout");
        assert!(f[0].1.contains("t.started"), "{}", f[0].1);
        assert_eq!(h.agent("t"), Agent::GaveUp);
        // Once more: nothing.
        assert!(failed(&h.ev(Event::Timer(timer))).is_empty());
    }
}
