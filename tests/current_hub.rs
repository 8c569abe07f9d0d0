//! The sidecar against the hub as it is deployed today (the dev hub models it): the faults a
//! fleet sees every day, each ending with the task done once — counted by a recording agent
//! that logs every start — and no violation at the hub.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The hub's timings, with its sweeps fast enough for tests, and an acceptance timeout
/// short enough to fire within a test when a `task_accepted` (also the one said again after
/// every identify) is late or missing.
fn timings() -> HubTimings {
    HubTimings {
        stuck_sweep_interval: ms(100),
        overdue_sweep_interval: ms(100),
        acceptance_timeout: ms(2000),
        ..HubTimings::default()
    }
}

fn success() -> Value {
    json!({"status": "success", "output": "done"})
}

/// The task is done once, by one agent start, with no violation at the hub, and the hub
/// never had to take it back for want of a `task_accepted`.
fn done_once(hub: &DevHub, sidecar: &Sidecar, task_id: &str) {
    wait_status(hub, task_id, "completed");
    assert_eq!(
        starts_of(sidecar, task_id),
        1,
        "agent starts for {task_id}\n{}",
        sidecar.dump()
    );
    assert_eq!(hub.violations(AGENT), 0, "{:?}", hub.validation_failures());
    let unaccepted: Vec<_> = hub
        .take_backs()
        .into_iter()
        .filter(|t| t.task_id == task_id && t.reason == TakeBackReason::AcceptanceTimeout)
        .collect();
    assert!(unaccepted.is_empty(), "{unaccepted:?}\n{}", sidecar.dump());
}

/// A task accepted and confirmed by the recording agent.
fn working(hub: &DevHub, sidecar: &Sidecar, body: Value) -> String {
    let task_id = submit(hub, body);
    eventually("the agent's start", || starts_of(sidecar, &task_id) == 1);
    sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "confirmation_received" && l["task_id"] == task_id.as_str()
        })
        .expect("confirmed");
    task_id
}

#[test]
fn sigkill_mid_task_and_a_restart_while_the_hub_pushes_the_task_again_before_answering_recovery() {
    // The identify's scheduling waits for the sidecar's task_recovering (however slow the
    // machine), so the re-push surely comes before the answer.
    let hub = hub_with(
        HubTimings {
            join_schedule_delay: ms(10_000),
            ..timings()
        },
        HubLimits::default(),
    );
    let mut sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(&hub, &sidecar, json!({"description": "long job"}));
    sidecar.kill();
    eventually("the hub takes the task back", || {
        hub.take_backs().iter().any(|t| t.task_id == task_id)
    });
    sidecar.restart();
    // The hub pushes the task again (a higher generation) before it answers the sidecar's
    // task_recovering with task_reassign: the sidecar adopts it and ignores the late answer.
    let accepted = eventually_frame(&hub, "task_accepted", &task_id, |f| {
        f["generation"].as_u64() > Some(1)
    });
    // The hub answers task_recovering with task_reassign after the re-push: the answer no
    // longer applies to the adopted task.
    sidecar
        .wait_for(WAIT, |l| l["event"] == "task_reassign_ignored")
        .unwrap_or_else(|| panic!("the late reassign ignored\n{}", sidecar.dump()));
    release(&sidecar, &task_id, &success());
    done_once(&hub, &sidecar, &task_id);
    let complete = agent_frames(&hub, "task_complete", &task_id);
    assert_eq!(
        complete.last().unwrap()["generation"],
        accepted["generation"]
    );
}

/// Waits for a frame of the agent about `task_id` that satisfies `pred`; returns it.
fn eventually_frame(
    hub: &DevHub,
    frame_type: &str,
    task_id: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    eventually(&format!("a {frame_type} for {task_id}"), || {
        agent_frames(hub, frame_type, task_id).iter().any(&pred)
    });
    agent_frames(hub, frame_type, task_id)
        .into_iter()
        .find(|f| pred(f))
        .unwrap()
}

#[test]
fn a_hub_restart_mid_task_bumps_the_generation_and_the_task_completes_once() {
    let mut hub = hub_with(timings(), HubLimits::default());
    let sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(&hub, &sidecar, json!({"description": "long job"}));
    let before = task_field(&hub, &task_id, "generation").as_u64().unwrap();
    hub.restart().expect("the hub restarts");
    eventually_frame(&hub, "task_accepted", &task_id, |f| {
        f["generation"].as_u64() > Some(before)
    });
    release(&sidecar, &task_id, &success());
    done_once(&hub, &sidecar, &task_id);
    assert!(task_field(&hub, &task_id, "generation").as_u64() > Some(before));
}

#[test]
fn a_connection_reset_mid_task_the_hub_takes_it_back_and_pushes_it_again() {
    let hub = hub_with(timings(), HubLimits::default());
    let sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(&hub, &sidecar, json!({"description": "job"}));
    assert_eq!(hub.kill_connections(AGENT), 1);
    eventually_frame(&hub, "task_accepted", &task_id, |f| {
        f["generation"].as_u64() > Some(1)
    });
    release(&sidecar, &task_id, &success());
    done_once(&hub, &sidecar, &task_id);
}

#[test]
fn a_network_cut_mid_task_and_the_half_open_session_it_leaves_at_the_hub() {
    let hub = hub_with(
        HubTimings {
            idle_timeout: ms(1500),
            ..timings()
        },
        HubLimits::default(),
    );
    let sidecar = recording_sidecar(&hub, json!({"stale_session_reidentify_ms": 2500}));
    let task_id = working(&hub, &sidecar, json!({"description": "job"}));
    hub.cut_connections(AGENT);
    // The sidecar's heartbeat notices, it connects again; the hub keeps the old session until
    // its idle timeout and meanwhile does not register the new one for pushes.
    sidecar.wait_event("heartbeat_timeout");
    sidecar.wait_event("reidentify_scheduled");
    sidecar.wait_event("reidentify");
    eventually("the agent back in the hub's presence", || {
        hub.agents().iter().any(|a| a["agent_id"] == AGENT)
    });
    release(&sidecar, &task_id, &success());
    done_once(&hub, &sidecar, &task_id);
    // Pushes reach the session again.
    let next = submit(&hub, json!({"description": "next"}));
    eventually("the next task's start", || starts_of(&sidecar, &next) == 1);
    release(&sidecar, &next, &success());
    done_once(&hub, &sidecar, &next);
}

#[test]
fn a_task_outliving_the_stuck_threshold_completes_because_the_hub_hears_progress() {
    let hub = hub_with(
        HubTimings {
            stuck_threshold: ms(600),
            ..timings()
        },
        HubLimits::default(),
    );
    let sidecar = recording_sidecar(&hub, json!({"progress_interval_ms": 150}));
    let task_id = working(&hub, &sidecar, json!({"description": "long job"}));
    // Run well past the threshold (doubled while working): 12 progress frames ≈ 1.8 s.
    eventually("progress frames past the stuck threshold", || {
        agent_frames(&hub, "task_progress", &task_id).len() >= 12
    });
    assert!(hub.take_backs().is_empty(), "{:?}", hub.take_backs());
    release(&sidecar, &task_id, &success());
    done_once(&hub, &sidecar, &task_id);
}

#[test]
fn a_failure_reason_of_3000_characters_ends_the_task_without_a_violation() {
    let hub = hub_with(timings(), HubLimits::default());
    let sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(
        &hub,
        &sidecar,
        json!({"description": "job", "max_retries": 0}),
    );
    let long = "é".repeat(3000);
    release(
        &sidecar,
        &task_id,
        &json!({"status": "failed", "error": long}),
    );
    wait_status(&hub, &task_id, "dead_letter");
    assert_eq!(hub.violations(AGENT), 0, "{:?}", hub.validation_failures());
    let failed = agent_frames(&hub, "task_failed", &task_id);
    let error = failed[0]["error"].as_str().unwrap();
    assert_eq!(error.chars().count(), 2000);
    assert!(error.contains("3000 characters"), "{error}");
    let logged = sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "task_failed" && l["task_id"] == task_id.as_str()
        })
        .unwrap();
    assert_eq!(
        logged["error"].as_str().unwrap().chars().count(),
        3000,
        "the whole text is in the log"
    );
    assert_eq!(starts_of(&sidecar, &task_id), 1);
}

/// A second sidecar that takes tasks and never finishes them (no wake command).
fn other_agent(hub: &DevHub) -> Sidecar {
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"agent_id": OTHER, "token": OTHER_TOKEN, "progress_interval_ms": 100,
            "wake_commands": {"ollama": "", "claude": "", "sidecar": ""}}),
    );
    let sidecar = Sidecar::start(config);
    eventually("the other agent identified", || {
        hub.agents().iter().any(|a| a["agent_id"] == OTHER)
    });
    sidecar
}

#[test]
fn a_report_refused_as_stale_is_kept_and_never_sent_again() {
    let hub = hub_with(
        HubTimings {
            stuck_threshold: ms(300),
            ..timings()
        },
        HubLimits::default(),
    );
    // Progress too rare for the hub's stuck threshold: it takes the task back and gives it to
    // the other agent, while ours works on.
    let sidecar = recording_sidecar(&hub, json!({"progress_interval_ms": 60000}));
    let task_id = working(&hub, &sidecar, json!({"description": "job"}));
    let _other = other_agent(&hub);
    eventually("the task with the other agent", || {
        task_field(&hub, &task_id, "assigned_to") == OTHER
    });
    release(&sidecar, &task_id, &success());
    let refused = sidecar.wait_event("report_refused");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("stale_generation"),
        "{refused}"
    );
    sidecar.wait_event("reidentify");
    // A new session: the refused report is not sent again.
    hub.kill_connections(AGENT);
    let third = wait_identified(&hub, 3);
    // Past the moment a re-sent outbox would go (right after identify): two heartbeats on
    // the new connection.
    eventually("two pings on the new connection", || {
        hub.events()
            .iter()
            .filter(|e| e.conn == third.conn && e.frame_type() == Some("ping"))
            .count()
            >= 2
    });
    assert_eq!(agent_frames(&hub, "task_complete", &task_id).len(), 1);
    assert_eq!(sidecar.queue()["refused"][0]["task_id"], task_id.as_str());
    assert_eq!(starts_of(&sidecar, &task_id), 1);
    assert_eq!(hub.violations(AGENT), 0);
}

#[test]
fn state_report_abort_drops_the_task_and_its_late_result_is_kept_aside() {
    let hub = hub_with(timings(), HubLimits::default());
    let sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(&hub, &sidecar, json!({"description": "job"}));
    let _other = other_agent(&hub);
    // The connection drops; the hub takes the task back and gives it to the other agent.
    hub.kill_connections(AGENT);
    eventually("the task with the other agent", || {
        task_field(&hub, &task_id, "assigned_to") == OTHER
    });
    let aborted = sidecar.wait_event("task_aborted");
    assert_eq!(aborted["task_id"], task_id.as_str());
    release(&sidecar, &task_id, &success());
    sidecar.wait_event("result_kept");
    eventually("the result kept aside", || {
        sidecar
            .results_dir()
            .join(format!("{task_id}.json.unreported"))
            .exists()
    });
    assert!(agent_frames(&hub, "task_complete", &task_id).is_empty());
    assert_eq!(starts_of(&sidecar, &task_id), 1);
    assert_eq!(hub.violations(AGENT), 0);
}

#[test]
fn a_frame_the_hub_rate_limits_is_sent_again_after_its_wait() {
    let hub = hub_with(
        timings(),
        HubLimits {
            normal: RateTier {
                capacity: 2,
                refill: Duration::from_secs(1),
            },
            ..HubLimits::default()
        },
    );
    let sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(&hub, &sidecar, json!({"description": "job"}));
    release(&sidecar, &task_id, &success());
    done_once(&hub, &sidecar, &task_id);
    assert!(
        hub.rate_limited().iter().any(|r| r.agent_id == AGENT),
        "the hub dropped nothing: the test proves nothing"
    );
    sidecar.wait_event("frame_rate_limited");
    // Every frame the hub dropped went again: a frame of its type reached the hub after it.
    let events = hub.events();
    for (i, dropped) in events.iter().enumerate() {
        let HubEventKind::RateLimited { frame_type, .. } = &dropped.kind else {
            continue;
        };
        eventually(
            &format!("{frame_type} sent again after it was dropped"),
            || {
                hub.events()[i + 1..]
                    .iter()
                    .any(|e| e.frame_type() == Some(frame_type.as_str()))
            },
        );
    }
}

#[test]
fn restart_sidecar_while_a_task_is_held_waits_for_its_report() {
    let hub = hub_with(timings(), HubLimits::default());
    let mut sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(&hub, &sidecar, json!({"description": "job"}));
    assert!(hub.restart_agent(AGENT, "upgrade"));
    sidecar.wait_event("restart_pending");
    assert!(sidecar.is_running());
    release(&sidecar, &task_id, &success());
    let status = sidecar
        .wait_exit(WAIT)
        .expect("exits once the report is acknowledged");
    assert_eq!(status.code(), Some(75));
    done_once(&hub, &sidecar, &task_id);
}

#[test]
fn routing_reaches_the_agent_and_picks_the_wake_command_by_target_type() {
    let hub = hub_with(timings(), HubLimits::default());
    // For `claude` tasks an argument list (no shell of ours: the program is `sh` itself,
    // which notes the start and runs the recording agent), for the rest the recording agent.
    let claude = r#"echo "$TASK_ID $TASK_MODEL" >> "$(dirname "$RESULTS_DIR")/claude-starts"; exec sh "$(dirname "$RESULTS_DIR")/agent.sh""#;
    let extra = json!({
        "wake_commands": {"claude": ["sh", "-c", claude]},
        "ollama_url": "http://127.0.0.1:11434",
    });
    let sidecar = recording_sidecar(&hub, extra);
    let mark = sidecar.dir.path().join("claude-starts");
    assert_eq!(
        hub.ollama_url(AGENT).as_deref(),
        Some("http://127.0.0.1:11434")
    );

    let complex = working(
        &hub,
        &sidecar,
        json!({"description": "design it", "complexity_tier": "complex"}),
    );
    let start = starts(&sidecar)
        .into_iter()
        .find(|s| s[0] == complex)
        .unwrap();
    assert_eq!((start[2].as_str(), start[3].as_str()), ("claude", "claude"));
    assert!(std::fs::read_to_string(&mark).unwrap().contains(&complex));
    release(&sidecar, &complex, &success());
    done_once(&hub, &sidecar, &complex);

    let trivial = working(
        &hub,
        &sidecar,
        json!({"description": "say hi", "complexity_tier": "trivial"}),
    );
    let start = starts(&sidecar)
        .into_iter()
        .find(|s| s[0] == trivial)
        .unwrap();
    assert_eq!((start[2].as_str(), start[3].as_str()), ("sidecar", "-"));
    assert!(!std::fs::read_to_string(&mark).unwrap().contains(&trivial));
    release(&sidecar, &trivial, &success());
    done_once(&hub, &sidecar, &trivial);
}

#[test]
fn the_hub_hears_wake_results_and_the_agents_own_progress() {
    let hub = hub_with(timings(), HubLimits::default());
    let sidecar = recording_sidecar(&hub, json!({}));
    let task_id = working(&hub, &sidecar, json!({"description": "job"}));
    let wake = eventually_frame(&hub, "wake_result", &task_id, |_| true);
    assert_eq!(
        (wake["status"].as_str(), wake["attempt"].as_u64()),
        (Some("success"), Some(1))
    );
    let progress = sidecar.results_dir().join(format!("{task_id}.progress"));
    std::fs::write(
        &progress,
        "{\"progress\": 30, \"step\": \"tests\"}\nnot json\n{\"progress\": 60",
    )
    .unwrap();
    let first = eventually_frame(&hub, "task_progress", &task_id, |f| {
        f.get("execution_event").is_some()
    });
    assert_eq!(first["progress"], 30);
    assert_eq!(first["execution_event"]["step"], "tests");
    sidecar.wait_event("progress_line_invalid");
    // The last line completes later.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&progress)
        .unwrap();
    std::io::Write::write_all(&mut f, b", \"step\": \"lint\"}\n").unwrap();
    eventually_frame(&hub, "task_progress", &task_id, |f| f["progress"] == 60);
    release(&sidecar, &task_id, &success());
    done_once(&hub, &sidecar, &task_id);
}

#[test]
fn a_task_assigned_twice_at_once_waits_for_the_slot_and_runs_next_without_a_retry() {
    let hub = hub_with(timings(), HubLimits::default());
    let sidecar = recording_sidecar(&hub, json!({}));
    // The hub's socket process is slow to handle pushes: the scheduler gives the agent a
    // second task before its FSM has heard of the first.
    hub.hold_deliveries(AGENT, true);
    let first = submit(&hub, json!({"description": "first"}));
    let second = submit(&hub, json!({"description": "second"}));
    eventually("both tasks assigned to the agent", || {
        [&first, &second]
            .iter()
            .all(|t| task_field(&hub, t, "assigned_to") == AGENT)
    });
    hub.hold_deliveries(AGENT, false);
    sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "task_parked" && l["task_id"] == second.as_str()
        })
        .expect("the second waits for the slot, unanswered");
    eventually("the first task's start", || {
        starts_of(&sidecar, &first) == 1
    });
    assert_eq!(starts_of(&sidecar, &second), 0, "not while the first runs");
    release(&sidecar, &first, &success());
    done_once(&hub, &sidecar, &first);
    // The slot is free: checked with the hub (state_report), accepted, run once.
    eventually("the second task's start", || {
        starts_of(&sidecar, &second) == 1
    });
    release(&sidecar, &second, &success());
    done_once(&hub, &sidecar, &second);
    assert!(frames_of(&hub, "task_failed").is_empty(), "nothing refused");
    assert_eq!(task_field(&hub, &second, "retry_count"), 0);
    assert_eq!(hub.violations(AGENT), 0, "{:?}", hub.validation_failures());
}

#[test]
fn a_task_pushed_while_the_hub_sees_the_agent_working_waits_unanswered_and_no_queued_task_loses_a_retry(
) {
    let hub = hub_with(timings(), HubLimits::default());
    let sidecar = recording_sidecar(&hub, json!({}));
    hub.hold_deliveries(AGENT, true);
    let first = submit(&hub, json!({"description": "long"}));
    let second = submit(&hub, json!({"description": "second", "max_retries": 3}));
    eventually("both tasks assigned to the agent", || {
        [&first, &second]
            .iter()
            .all(|t| task_field(&hub, t, "assigned_to") == AGENT)
    });
    // The socket process handles the first push, and the second only after the sidecar's
    // task_accepted for the first: the hub's FSM is working when the second comes. A
    // `task_failed` now would make the FSM take the agent for idle, and the hub would push
    // every queued task in turn, each refused and retried, to the dead letters.
    hub.release_one_delivery(AGENT);
    wait_task_frame(&hub, "task_accepted", &first, 1);
    eventually("the hub sees the agent working", || {
        hub.fsm_state(AGENT).as_deref() == Some("working")
    });
    hub.hold_deliveries(AGENT, false);
    sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "task_parked" && l["task_id"] == second.as_str()
        })
        .expect("the second waits for the slot");
    eventually("the first task's start", || {
        starts_of(&sidecar, &first) == 1
    });
    let queued: Vec<String> = (0..3)
        .map(|i| {
            submit(
                &hub,
                json!({"description": format!("queued {i}"), "max_retries": 3}),
            )
        })
        .collect();
    // Scheduler rounds pass while the long task runs: nothing is pushed, refused, retried.
    eventually("progress frames while the long task runs", || {
        agent_frames(&hub, "task_progress", &first).len() >= 3
    });
    assert_eq!(hub.fsm_state(AGENT).as_deref(), Some("working"));
    for t in &queued {
        assert_eq!(task_field(&hub, t, "status"), "queued", "{t}");
    }
    assert!(agent_frames(&hub, "task_failed", &second).is_empty());
    release(&sidecar, &first, &success());
    done_once(&hub, &sidecar, &first);
    // Every task runs once, in whatever order the hub gives them, none refused or retried.
    let mut left: Vec<String> = queued.iter().chain([&second]).cloned().collect();
    let deadline = std::time::Instant::now() + 4 * WAIT;
    while !left.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "not run: {left:?}\n{}",
            sidecar.dump()
        );
        if let Some(i) = left.iter().position(|t| starts_of(&sidecar, t) == 1) {
            let t = left.remove(i);
            release(&sidecar, &t, &success());
            wait_status(&hub, &t, "completed");
        } else {
            std::thread::sleep(ms(10));
        }
    }
    for t in queued.iter().chain([&second, &first]) {
        assert_eq!(starts_of(&sidecar, t), 1, "{t}");
        assert_eq!(task_field(&hub, t, "retry_count"), 0, "{t}");
    }
    assert!(frames_of(&hub, "task_failed").is_empty());
    assert_eq!(hub.violations(AGENT), 0, "{:?}", hub.validation_failures());
}

#[test]
fn a_lockout_is_waited_out_once_and_then_work_goes_on() {
    let cooldown = ms(3000);
    let hub = hub_with(
        timings(),
        HubLimits {
            violation_threshold: 3,
            cooldowns: [cooldown, cooldown * 2, cooldown * 4],
            ..HubLimits::default()
        },
    );
    lock_out(&hub, 3);
    assert_eq!(hub.violations(AGENT), 3);
    let locked_at = std::time::Instant::now();
    // Reconnecting every 50 ms would meet the cooldown again and again (each one more
    // refused identify); the sidecar waits out what the hub's close said.
    let sidecar = recording_sidecar(&hub, json!({}));
    let lockouts = sidecar.events("hub_lockout");
    assert_eq!(lockouts.len(), 1, "{}", sidecar.dump());
    assert!(
        lockouts[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("cooldown active: retry in")),
        "{}",
        lockouts[0]
    );
    assert!(
        locked_at.elapsed() >= cooldown - ms(1000),
        "identified {:?} after a {cooldown:?} lockout",
        locked_at.elapsed()
    );
    let task_id = working(&hub, &sidecar, json!({"description": "after the lockout"}));
    release(&sidecar, &task_id, &success());
    wait_status(&hub, &task_id, "completed");
    assert_eq!(starts_of(&sidecar, &task_id), 1, "{}", sidecar.dump());
    assert_eq!(hub.violations(AGENT), 3, "none from the sidecar");
}
