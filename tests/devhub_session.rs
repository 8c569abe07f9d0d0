//! The dev hub's session rules against real WebSocket clients: validation and the violation
//! lockout with its cooldowns, rate limits, the half-open session defect and its recovery,
//! the idle timeout, presence broadcasts and the reaper.
#![cfg(unix)]

mod devhub_support;

use std::time::Duration;

use agentcom_sidecar::devhub::{
    Behaviour, HubEvent, HubEventKind, HubLimits, HubTimings, RateTier,
};
use devhub_support::*;
use serde_json::json;

const MS: Duration = Duration::from_millis(1);

fn lockout_limits() -> HubLimits {
    HubLimits {
        violation_threshold: 3,
        cooldowns: [1000 * MS, 2000 * MS, 3000 * MS],
        ..HubLimits::default()
    }
}

#[test]
fn violations_lock_the_agent_out_with_growing_cooldowns() {
    let hub = hub_with(quiet_timings(), lockout_limits());
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let reply = a1
            .ask(json!({"type": "task_complete", "task_id": "t", "result": "done"}))
            .await;
        assert_eq!(
            reply,
            json!({"type": "error", "error": "validation_failed", "message_type": "task_complete",
            "errors": [
                {"field": "generation", "error": "required", "detail": "field is required"},
                {"field": "result", "error": "wrong_type", "detail": "expected object, got string",
                    "value": "done"},
            ]})
        );
        let reply = a1
            .ask(json!({"type": "task_rejected", "task_id": "t", "reason": "busy"}))
            .await;
        assert_eq!(reply["message_type"], "task_rejected");
        assert_eq!(
            reply["errors"][0]["detail"],
            "unknown message type 'task_rejected'"
        );
        a1.send(json!({"type": "ping", "extra": "allowed"})).await;
        assert_eq!(a1.recv().await["type"], "pong", "unknown fields pass");
        a1.send(json!({"type": "wake_result", "task_id": "t", "status": 1}))
            .await;
        assert_eq!(
            a1.closed().await,
            (1008, "too many validation errors".to_string())
        );
        assert_eq!(hub.violations("a1"), 3);

        // Identify during the cooldown: closed at once.
        let mut again = Agent::open(&hub, "a1").await;
        let identify = again.identify_frame();
        again.send(identify).await;
        assert_eq!(
            again.closed().await,
            (1008, "cooldown active: retry in 1s".to_string())
        );
        // After it, welcome back; the next lockout lasts longer.
        let deadline = std::time::Instant::now() + WAIT;
        let mut a1 = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "still refused {WAIT:?} after a 1 s cooldown"
            );
            let mut attempt = Agent::open(&hub, "a1").await;
            let identify = attempt.identify_frame();
            attempt.send(identify).await;
            match attempt.next_frame().await {
                Some(awc::ws::Frame::Text(_)) => break attempt,
                _ => actix_rt::time::sleep(100 * MS).await,
            }
        };
        for _ in 0..3 {
            a1.send(json!({"type": "task_rejected"})).await;
        }
        a1.recv().await;
        a1.recv().await;
        assert_eq!(a1.closed().await.0, 1008);
        let mut again = Agent::open(&hub, "a1").await;
        let identify = again.identify_frame();
        again.send(identify).await;
        assert_eq!(
            again.closed().await,
            (1008, "cooldown active: retry in 2s".to_string())
        );
        assert_eq!(hub.violations("a1"), 6, "counted across sessions");
    });
    let cooldowns: Vec<Option<u64>> = hub
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            HubEventKind::ViolationDisconnect { cooldown_ms, .. } => Some(cooldown_ms),
            _ => None,
        })
        .collect();
    assert_eq!(cooldowns, [Some(1000), Some(2000)]);
}

#[test]
fn violations_before_identify_close_without_a_cooldown() {
    let hub = hub_with(quiet_timings(), lockout_limits());
    run(async {
        let mut anonymous = Agent::open(&hub, "a2").await;
        for _ in 0..2 {
            let reply = anonymous
                .ask(json!({"type": "identify", "agent_id": "a2"}))
                .await;
            assert_eq!(reply["errors"][0]["field"], "token");
        }
        anonymous.send(json!({"type": "identify"})).await;
        assert_eq!(anonymous.closed().await.0, 1008);
        Agent::connect(&hub, "a2").await;
    });
    let failures = hub.validation_failures();
    assert_eq!(failures.len(), 3);
    assert!(failures.iter().all(|f| f.agent_id.is_none()));
}

#[test]
fn rate_limits_warn_then_drop_frames_and_the_scheduler_passes_over() {
    let limits = HubLimits {
        normal: RateTier {
            capacity: 5,
            refill: Duration::from_secs(60),
        },
        ..HubLimits::default()
    };
    let hub = hub_with(quiet_timings(), limits);
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let accepted = json!({"type": "task_accepted", "task_id": "x"});
        for _ in 0..4 {
            assert_eq!(a1.ask(accepted.clone()).await["type"], "task_ack");
        }
        let warning = a1.ask(accepted.clone()).await;
        assert_eq!(
            warning,
            json!({"type": "rate_limit_warning", "tier": "normal", "remaining": 0, "capacity": 5})
        );
        assert_eq!(
            a1.recv().await["type"],
            "task_ack",
            "the frame still answered"
        );
        let limited = a1.ask(accepted.clone()).await;
        assert_eq!(
            limited,
            json!({"type": "rate_limited", "retry_after_ms": 12000, "tier": "normal"})
        );
        // Dropped: nothing else came for it; pings have a bucket of their own.
        assert_eq!(a1.ask(json!({"type": "ping"})).await["type"], "pong");
        // A rate-limited agent is passed over by the scheduler.
        let mut a2 = Agent::connect(&hub, "a2").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        assert_eq!(a2.recv().await["task_id"], task_id.as_str());
    });
    let limited = hub.rate_limited();
    assert_eq!(limited.len(), 1);
    assert_eq!(
        (limited[0].frame_type.as_str(), limited[0].tier.as_str()),
        ("task_accepted", "normal")
    );
}

/// A connection that dies half-open keeps the agent's push registration until the hub's side
/// times out; the agent's new session is not registered, pushes go into the void, and the
/// stale session's clean-up removes the agent from presence. A re-identify repairs it.
#[test]
fn a_half_open_session_steals_pushes_until_a_re_identify() {
    let hub = hub_with(
        HubTimings {
            idle_timeout: 600 * MS,
            ..quiet_timings()
        },
        HubLimits::default(),
    );
    run(async {
        let stale = Agent::connect(&hub, "a1").await;
        let stale_conn = hub.registered_conn("a1").expect("registered");
        assert_eq!(hub.cut_connections("a1"), 1);
        let mut live = Agent::connect(&hub, "a1").await;
        assert_eq!(
            hub.registered_conn("a1"),
            Some(stale_conn),
            "the new session is not registered"
        );
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        let pushed = wait_event(&hub, "the push", |e| {
            matches!(e.kind, HubEventKind::AssignmentPushed { .. })
        });
        assert_eq!(pushed.conn, stale_conn);
        assert!(!hub.assignments()[0].delivered, "into the void");
        assert_eq!(
            hub.fsm_state("a1").as_deref(),
            Some("assigned"),
            "the stale session told the FSM"
        );
        assert!(
            live.silent_for(200 * MS).await,
            "the live session got nothing"
        );

        // The stale session times out; its clean-up takes the live agent out of presence.
        let timed_out = |e: &HubEvent| {
            e.conn == stale_conn && matches!(e.kind, HubEventKind::SessionTimedOut { .. })
        };
        live.ping_until(&hub, "the stale session's timeout", timed_out)
            .await;
        // The clean-up runs right after the timeout is recorded.
        eventually("the stale session's clean-up", || {
            hub.agents().is_empty() && hub.registered_conn("a1").is_none()
        });
        assert!(!hub.restart_agent("a1", "x"), "pushes go nowhere now");
        live.ask(json!({"type": "ping"})).await;
        assert!(live
            .broadcasts
            .contains(&json!({"type": "agent_left", "agent_id": "a1"})));

        // A re-identify on the live socket registers it again; the task is still its own.
        assert_eq!(live.identify().await["type"], "identified");
        assert_ne!(hub.registered_conn("a1"), None);
        assert_eq!(hub.agents()[0]["agent_id"], "a1");
        let accepted = json!({"type": "task_accepted", "task_id": task_id, "generation": 1});
        assert_eq!(live.ask(accepted).await["status"], "accepted");
        assert_eq!(
            live.ask(complete(&json!(task_id), &json!(1))).await["status"],
            "complete"
        );
        assert!(hub.restart_agent("a1", "x"));
        assert_eq!(live.recv().await["type"], "restart_sidecar");
        drop(stale);
    });
}

#[test]
fn a_silent_session_times_out_and_presence_is_broadcast() {
    let hub = hub_with(
        HubTimings {
            idle_timeout: 400 * MS,
            ..quiet_timings()
        },
        HubLimits::default(),
    );
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let mut a2 = Agent::connect(&hub, "a2").await;
        let a2_conn = hub.registered_conn("a2").expect("registered");
        let timed_out = |e: &HubEvent| {
            e.conn == a2_conn && matches!(e.kind, HubEventKind::SessionTimedOut { .. })
        };
        a1.ping_until(&hub, "a2's timeout", timed_out).await;
        assert_eq!(
            a2.closed().await,
            (1002, String::new()),
            "silent: closed 1002"
        );
        a1.ask(json!({"type": "ping"})).await;
        let joined = &a1.broadcasts[0];
        assert_eq!(joined["type"], "agent_joined");
        assert_eq!(joined["agent"]["agent_id"], "a2");
        assert_eq!(joined["agent"]["status"], "idle");
        assert_eq!(
            a1.broadcasts[1],
            json!({"type": "agent_left", "agent_id": "a2"})
        );
        assert!(a2.broadcasts.is_empty(), "its own join is not echoed");
        let agents = hub.agents();
        assert_eq!((agents.len(), &agents[0]["agent_id"]), (1, &json!("a1")));
    });
}

/// The reaper's eviction of a stale agent: its registered socket traps the exit signal, so
/// nothing happens; with `evict_kills`, the socket dies without its clean-up.
#[test]
fn the_reaper_evicts_without_effect_unless_told_to_kill() {
    let hub = hub_with(
        HubTimings {
            presence_ttl: 200 * MS,
            reaper_interval: 50 * MS,
            ..quiet_timings()
        },
        HubLimits::default(),
    );
    let evicted = |outcome: &'static str| move |e: &HubEvent| matches!(&e.kind, HubEventKind::Evicted { outcome: o, .. } if o == outcome);
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        a1.accept_next().await;
        wait_event(&hub, "an eviction", evicted("exit_trapped"));
        assert_eq!(a1.ask(json!({"type": "ping"})).await["type"], "pong");
        assert_eq!(hub.agents().len(), 1, "still listed");

        hub.set_behaviour(Behaviour {
            evict_kills: true,
            ..Behaviour::default()
        });
        assert!(
            a1.next_frame().await.is_none(),
            "dropped without a Close frame"
        );
        wait_event(&hub, "the take-back", taken_back(&task_id));
        wait_event(&hub, "the presence clean-up", evicted("presence_removed"));
        assert!(hub.agents().is_empty());
    });
}
