//! The ways the dev hub takes a task back, as the hub does, against real WebSocket clients:
//! the socket going down, no accept within the acceptance timeout (also of the assignment an
//! identify re-creates), silence past the stuck threshold (doubled while working; progress,
//! state reports keep a task), `complete_by`; the re-push that overtakes the answer to
//! `task_recovering`; a hub restart; the TTL of queued tasks.
#![cfg(unix)]

mod devhub_support;

use std::time::Duration;

use agentcom_sidecar::devhub::{
    Behaviour, DevHub, HubEvent, HubEventKind, HubLimits, HubTimings, TakeBackReason,
};
use devhub_support::*;
use serde_json::{json, Value};

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_disconnect_takes_the_task_back_and_another_agent_gets_it() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let mut a2 = Agent::connect(&hub, "a2").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        assert_eq!(a1.accept_next().await["generation"], 1);
        drop(a1);
        let assign = a2.accept_next().await;
        assert_eq!(
            (&assign["task_id"], &assign["generation"]),
            (&json!(task_id), &json!(3))
        );
        let task = hub.task(&task_id).unwrap();
        assert_eq!(
            (&task["assigned_to"], &task["generation"]),
            (&json!("a2"), &json!(3))
        );
        assert_eq!(task["history"][1]["event"], "reclaimed");
        assert_eq!(task["history"][1]["details"], "agent_disconnect");
    });
    // (Then a2's session ended too, with the test, and took it back again.)
    let take_backs = hub.take_backs();
    assert_eq!(take_backs[0].reason, TakeBackReason::Disconnect);
    assert_eq!(
        (take_backs[0].agent_id.as_str(), take_backs[0].generation),
        ("a1", 2)
    );
}

#[test]
fn no_accept_within_the_acceptance_timeout() {
    let hub = hub_with(
        HubTimings {
            acceptance_timeout: 150 * MS,
            ..quiet_timings()
        },
        HubLimits::default(),
    );
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        assert_eq!(a1.recv().await["generation"], 1);
        // Unanswered: taken back and pushed again, to the same agent.
        let again = a1.accept_next().await;
        assert_eq!(
            (&again["task_id"], &again["generation"]),
            (&json!(task_id), &json!(3))
        );
        assert_eq!(
            hub.take_backs()[0].reason,
            TakeBackReason::AcceptanceTimeout
        );
        assert_eq!(
            hub.fsm_state("a1").as_deref(),
            Some("working"),
            "no timer runs any more"
        );

        // An identify while holding it re-creates the assignment, with its own timer: a new
        // session that does not say it holds the task loses it (the first session, still
        // registered, gets it back).
        let mut second = Agent::connect(&hub, "a1").await;
        let assign = a1.recv().await;
        assert_eq!(
            (&assign["task_id"], &assign["generation"]),
            (&json!(task_id), &json!(5))
        );
        assert_eq!(hub.take_backs().len(), 2);
        // Said at once, the accept keeps it.
        let accepted = json!({"type": "task_accepted", "task_id": task_id, "generation": 5});
        assert_eq!(second.ask(accepted.clone()).await["status"], "accepted");
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("working"));
        let mut third = Agent::connect(&hub, "a1").await;
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("assigned"));
        assert_eq!(third.ask(accepted).await["status"], "accepted");
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("working"));
    });
}

fn event_time(hub: &DevHub, pred: impl Fn(&HubEvent) -> bool) -> std::time::Instant {
    hub.events()
        .into_iter()
        .find(|e| pred(e))
        .map(|e| e.at)
        .expect("event recorded")
}

#[test]
fn silence_past_the_stuck_threshold_loses_a_task_unless_reported() {
    let threshold = 1000 * MS;
    let hub = hub_with(
        HubTimings {
            stuck_threshold: threshold,
            stuck_sweep_interval: 20 * MS,
            ..quiet_timings()
        },
        HubLimits::default(),
    );
    run(async {
        let mut agents = Vec::new();
        for id in ["a1", "a2", "a3", "a4", "a5"] {
            agents.push(Agent::connect(&hub, id).await);
        }
        let mut tasks = Vec::new();
        for (i, agent) in agents.iter_mut().enumerate() {
            let task_id = hub
                .submit_task(json!({"description": format!("task {i}")}))
                .unwrap();
            let assign = agent.recv().await;
            assert_eq!(assign["task_id"], task_id.as_str());
            // Only a1 accepts (and works): the others' threshold is not doubled.
            if i == 0 {
                let accepted =
                    json!({"type": "task_accepted", "task_id": task_id, "generation": 1});
                assert_eq!(agent.ask(accepted).await["status"], "accepted");
            }
            tasks.push(task_id);
        }
        // a1 works silently; a3 is silent; a2 reports progress, a4 state reports, a5 wake
        // results.
        let silent_working = tasks[0].clone();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the silent task not taken back within {WAIT:?}"
            );
            if hub
                .wait_for(Duration::ZERO, taken_back(&silent_working))
                .is_some()
            {
                break;
            }
            agents[1]
                .send(json!({"type": "task_progress", "task_id": tasks[1], "progress": 10}))
                .await;
            let report = json!({"type": "state_report", "task_id": tasks[3], "status": "working", "generation": 1});
            assert_eq!(agents[3].ask(report).await["action"], "continue");
            agents[4]
                .send(json!({"type": "wake_result", "task_id": tasks[4], "status": "success", "attempt": 1}))
                .await;
            actix_rt::time::sleep(50 * MS).await;
        }
    });
    // (The sessions then ended with the test, each taking its task back.)
    let take_backs: Vec<_> = hub
        .take_backs()
        .into_iter()
        .filter(|t| t.reason == TakeBackReason::Stuck)
        .collect();
    let lost: Vec<&str> = take_backs.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(
        lost,
        [tasks_of(&hub)[2].as_str(), tasks_of(&hub)[0].as_str()],
        "a3's first, then a1's"
    );
    // a1 was working: its silence had to last twice the threshold.
    let accepted = event_time(&hub, |e| e.frame_type() == Some("task_accepted"));
    let lost_at = event_time(&hub, taken_back(&take_backs[1].task_id));
    assert!(lost_at - accepted > threshold * 2);
}

/// The submitted tasks in order.
fn tasks_of(hub: &DevHub) -> Vec<String> {
    hub.events()
        .into_iter()
        .filter_map(|e| match e.kind {
            HubEventKind::TaskSubmitted { task_id } => Some(task_id),
            _ => None,
        })
        .collect()
}

#[test]
fn past_complete_by_and_past_the_queue_ttl() {
    let hub = hub_with(
        HubTimings {
            overdue_sweep_interval: 20 * MS,
            task_ttl: 300 * MS,
            ttl_sweep_interval: 20 * MS,
            ..quiet_timings()
        },
        HubLimits::default(),
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub
            .submit_task(json!({"description": "d", "complete_by": now_ms + 100}))
            .unwrap();
        a1.accept_next().await;
        wait_event(&hub, "the overdue take-back", taken_back(&task_id));
        let task = hub.task(&task_id).unwrap();
        assert_eq!(
            (&task["status"], &task["generation"]),
            (&json!("queued"), &json!(2))
        );
        assert_eq!(task["history"][0]["details"], "overdue");
    });
    assert_eq!(hub.take_backs()[0].reason, TakeBackReason::Overdue);
    // Queued past the TTL: dead-lettered, unless trivial.
    let standard = hub.submit_task(json!({"description": "do it"})).unwrap();
    let trivial = hub.submit_task(json!({"description": "fix typo"})).unwrap();
    wait_event(
        &hub,
        "the expiry",
        |e| matches!(&e.kind, HubEventKind::TaskExpired { task_id } if *task_id == standard),
    );
    let expired = hub.task(&standard).unwrap();
    assert_eq!(
        (&expired["status"], &expired["last_error"]),
        (&json!("dead_letter"), &json!("ttl_expired"))
    );
    assert_eq!(hub.task(&trivial).unwrap()["status"], "queued");
}

/// After a reconnect, the hub may push a task it just took back (next generation) before it
/// answers the `task_recovering` it evaluated while the task was queued.
#[test]
fn the_re_push_comes_before_the_answer_to_task_recovering() {
    let hub = hub_with(
        HubTimings {
            join_schedule_delay: Duration::from_secs(10),
            ..quiet_timings()
        },
        HubLimits::default(),
    );
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        a1.accept_next().await;
        drop(a1);
        wait_event(&hub, "the take-back", taken_back(&task_id));

        let mut a1 = Agent::open(&hub, "a1").await;
        let identify = a1.identify_frame();
        a1.send(identify).await;
        a1.send(
            json!({"type": "task_recovering", "task_id": task_id, "generation": 1,
            "last_status": "woken"}),
        )
        .await;
        assert_eq!(a1.recv().await["type"], "identified");
        let assign = a1.recv().await;
        assert_eq!(
            (&assign["type"], &assign["task_id"], &assign["generation"]),
            (&json!("task_assign"), &json!(task_id), &json!(3))
        );
        assert_eq!(
            a1.recv().await,
            json!({"type": "task_reassign", "task_id": task_id})
        );
        assert_eq!(
            hub.task(&task_id).unwrap()["status"],
            "assigned",
            "handed straight back"
        );
    });
}

#[test]
fn without_the_switch_the_identify_schedules_at_once() {
    let hub = hub();
    hub.set_behaviour(Behaviour {
        repush_before_reassign: false,
        ..Behaviour::default()
    });
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        a1.accept_next().await;
        drop(a1);
        wait_event(&hub, "the take-back", taken_back(&task_id));

        let mut a1 = Agent::open(&hub, "a1").await;
        let identify = a1.identify_frame();
        a1.send(identify).await;
        a1.send(json!({"type": "task_recovering", "task_id": task_id}))
            .await;
        assert_eq!(a1.recv().await["type"], "identified");
        let mut next: Vec<Value> = vec![a1.recv().await, a1.recv().await];
        next.sort_by_key(|f| f["type"].as_str().map(str::to_string));
        assert_eq!(
            (&next[0]["type"], &next[0]["generation"]),
            (&json!("task_assign"), &json!(3))
        );
        assert_eq!(
            next[1],
            json!({"type": "task_continue", "task_id": task_id, "generation": 3})
        );
    });
}

#[test]
fn a_hub_restart_keeps_the_queue_and_bumps_the_generation() {
    let mut hub = hub();
    let token = hub.register_agent("a9").expect("registered");
    let addr = hub.addr();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        a1.accept_next().await;
        hub.restart().expect("restarts");
        assert_eq!(hub.addr(), addr);
        assert_eq!(a1.closed().await.0, 1000, "an orderly close");
        let take_back = hub.take_backs().pop().expect("taken back");
        assert_eq!(
            (take_back.reason, take_back.generation),
            (TakeBackReason::Disconnect, 2)
        );
        assert!(hub.agents().is_empty());

        let mut a1 = Agent::connect(&hub, "a1").await;
        let assign = a1.accept_next().await;
        assert_eq!(
            (&assign["task_id"], &assign["generation"]),
            (&json!(task_id), &json!(3))
        );
        let mut a9 = Agent::open(&hub, "a9").await;
        let identify = json!({"type": "identify", "agent_id": "a9", "token": token});
        assert_eq!(
            a9.ask(identify).await["type"],
            "identified",
            "registered tokens are kept"
        );
    });
    assert!(hub
        .wait_for(WAIT, |e| matches!(e.kind, HubEventKind::HubRestarted))
        .is_some());
}
