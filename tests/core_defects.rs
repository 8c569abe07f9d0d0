//! Defects a review of the first task core found, each as the real binary meets it: agents
//! started twice, a task hanging busy, task data readable by others, agent files that could
//! hang or exhaust the sidecar.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A sidecar with this wake script and extra config; waits for identify.
fn with_script(hub: &DevHub, script: &str, extra: serde_json::Value) -> Sidecar {
    let timings = json!({
        "wake_retry_delays_ms": [200],
        "confirmation_timeout_ms": 5000,
        "result_settle_ms": 200,
    });
    sidecar_with_script(hub, script, with(timings, extra))
}

#[test]
fn an_agent_running_inside_its_wake_command_is_not_killed_at_wake_timeout_once_confirmed() {
    let hub = hub();
    // The wake command is the agent: it confirms, works past wake_timeout_ms, then reports.
    let script = r#"
touch "$RESULTS_DIR/$TASK_ID.started"
n=0; while [ ! -e "$(dirname "$RESULTS_DIR")/go" ] && [ $n -lt 1500 ]; do sleep 0.02; n=$((n+1)); done
printf '{"status":"success","output":"long"}' > "$RESULTS_DIR/.$TASK_ID.tmp"
mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json"
"#;
    let sidecar = with_script(&hub, script, json!({"wake_timeout_ms": 300}));
    let task_id = submit(&hub, json!({"description": "long"}));
    sidecar.wait_event("confirmation_received");
    // Well past the wake timeout, it still runs.
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        sidecar.events("wake_error").is_empty(),
        "{}",
        sidecar.dump()
    );
    std::fs::write(sidecar.dir.path().join("go"), "").unwrap();
    wait_status(&hub, &task_id, "completed");
    assert_eq!(sidecar.events("wake_attempt").len(), 1);
}

#[test]
fn a_held_task_without_a_result_fails_at_task_timeout_and_the_sidecar_is_free_again() {
    let hub = hub();
    let sidecar = with_script(
        &hub,
        r#"touch "$RESULTS_DIR/$TASK_ID.started""#,
        json!({"task_timeout_ms": 800}),
    );
    let task_id = submit(&hub, json!({"description": "never ends", "max_retries": 0}));
    let line = sidecar.wait_event("task_timeout");
    assert_eq!(line["task_id"], task_id.as_str());
    let failed = wait_task_frame(&hub, "task_failed", &task_id, 1);
    assert_eq!(failed["reason"], "task_timeout");
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("task_timeout_ms (800 ms)"));
    wait_status(&hub, &task_id, "dead_letter");
    let next = submit(&hub, json!({"description": "next"}));
    wait_task_frame(&hub, "task_accepted", &next, 1);
}

#[test]
fn a_task_cancelled_and_assigned_again_while_a_wake_retry_waits_starts_one_new_agent() {
    let hub = hub();
    // The first attempt fails; the retry waits 200 ms. The hub cancels and pushes the task
    // again in that gap: the stale retry must not start a second agent beside the new one.
    let script = r#"
echo "$TASK_ID $WAKE_ATTEMPT" >> "$(dirname "$RESULTS_DIR")/starts"
[ "$(wc -l < "$(dirname "$RESULTS_DIR")/starts")" -gt 1 ] || exit 3
touch "$RESULTS_DIR/$TASK_ID.started"
"#;
    let sidecar = with_script(&hub, script, json!({"wake_retry_delays_ms": [400, 400]}));
    assign(&hub, json!({"task_id": "t-again", "generation": 1}));
    sidecar.wait_event("wake_error");
    hub.send(
        AGENT,
        RawFrame::Text(json!({"type": "task_cancelled", "task_id": "t-again"}).to_string()),
    );
    sidecar.wait_event("task_cancelled");
    assign(&hub, json!({"task_id": "t-again", "generation": 2}));
    sidecar.wait_event("confirmation_received");
    // Past the old retry's moment: still two starts in all (the failed one, the new one).
    std::thread::sleep(Duration::from_millis(800));
    let starts = std::fs::read_to_string(sidecar.dir.path().join("starts")).unwrap();
    assert_eq!(starts.lines().count(), 2, "{starts}\n{}", sidecar.dump());
}

#[test]
fn continue_after_a_restart_never_wakes_an_agent_whose_started_file_and_result_are_there() {
    let hub = hub();
    let mut sidecar = with_script(
        &hub,
        r#"echo x >> "$(dirname "$RESULTS_DIR")/starts"; touch "$RESULTS_DIR/$TASK_ID.started""#,
        json!({}),
    );
    let task_id = submit(&hub, json!({"description": "d"}));
    sidecar.wait_event("confirmation_received");
    sidecar.kill();
    sidecar.write_result(&task_id, r#"{"status":"success","output":"while down"}"#);
    sidecar.restart();
    wait_status(&hub, &task_id, "completed");
    let starts = std::fs::read_to_string(sidecar.dir.path().join("starts")).unwrap();
    assert_eq!(starts.lines().count(), 1);
}

#[test]
fn a_deeply_nested_result_is_invalid_and_the_queue_file_loads_again_after_a_restart() {
    let hub = hub();
    let mut sidecar = with_script(&hub, r#"touch "$RESULTS_DIR/$TASK_ID.started""#, json!({}));
    assign(&hub, json!({"task_id": "t-deep", "generation": 1}));
    sidecar.wait_event("confirmation_received");
    // Taken back: its late result is kept in the queue file, not reported.
    hub.send(
        AGENT,
        RawFrame::Text(json!({"type": "task_cancelled", "task_id": "t-deep"}).to_string()),
    );
    sidecar.wait_event("task_cancelled");
    // 126 levels: serde_json reads it, but the queue file would hold it 130 levels deep.
    let deep = format!(
        "{{\"status\":\"success\",\"d\":{}{{}}{}}}",
        "{\"d\":".repeat(124),
        "}".repeat(124)
    );
    sidecar.write_result("t-deep", &deep);
    let kept = sidecar.wait_event("result_kept");
    let before = identified(&hub).len();
    sidecar.kill_and_restart();
    wait_identified(&hub, before + 1);
    // The task is still known: pushed again, it is adopted (no second agent) and its
    // outcome reported.
    assign(&hub, json!({"task_id": "t-deep", "generation": 2}));
    let accepted = sidecar.wait_count("task_accepted", 2);
    assert!(
        sidecar.events("queue_corrupt").is_empty(),
        "{}",
        sidecar.dump()
    );
    assert_eq!(accepted[1]["again"], true, "{}", sidecar.dump());
    assert_eq!(kept["reason"], "invalid_result", "{}", sidecar.dump());
    let failed = wait_task_frame(&hub, "task_failed", "t-deep", 1);
    assert_eq!(failed["reason"], "invalid_result");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("nests 126 levels deep"),
        "{failed}"
    );
    assert_eq!(starts_of_wake(&sidecar), 1);
}

/// How many wake attempts the log shows in all.
fn starts_of_wake(sidecar: &Sidecar) -> usize {
    sidecar.events("wake_attempt").len()
}

#[test]
fn nothing_is_accepted_or_woken_after_the_shutdown_began() {
    // A task pushed within milliseconds of SIGTERM: whichever comes first, once
    // `shutdown phase=begin` is logged no acceptance is decided or sent and no agent starts.
    let hub = hub();
    for (round, delay_us) in [0u64, 200, 500, 1000, 2000, 3000, 5000, 8000]
        .into_iter()
        .enumerate()
    {
        let mut sidecar = with_script(&hub, r#"touch "$RESULTS_DIR/$TASK_ID.started""#, json!({}));
        assign(
            &hub,
            json!({"task_id": format!("t-stop-{round}"), "generation": 1}),
        );
        std::thread::sleep(Duration::from_micros(delay_us));
        sidecar.signal(SIGTERM);
        assert!(sidecar.wait_exit(WAIT).is_some(), "{}", sidecar.dump());
        let lines = sidecar.lines();
        let begin = lines
            .iter()
            .position(|l| l["event"] == "shutdown" && l["phase"] == "begin")
            .unwrap_or_else(|| panic!("no shutdown begin\n{}", sidecar.dump()));
        // A `task_accepted` decided (and on disk) before the shutdown began may still be
        // on its way to the hub; one decided after may not.
        let decided_before = lines[..begin].iter().any(|l| l["event"] == "task_accepted");
        let late: Vec<&serde_json::Value> = lines[begin..]
            .iter()
            .filter(|l| {
                l["event"] == "task_accepted"
                    || l["event"] == "wake_attempt"
                    || (l["event"] == "frame_sent"
                        && l["frame"] == "task_accepted"
                        && !decided_before)
            })
            .collect();
        assert!(
            late.is_empty(),
            "round {round} ({delay_us} µs): after the shutdown began: {late:?}\n{}",
            sidecar.dump()
        );
    }
}
