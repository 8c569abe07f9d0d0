//! Tasks end to end against the dev hub, with real wake commands (`sh -c`), real result
//! files and real process kills: accept, persist, wake, watch, report — and lose nothing.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A sidecar whose wake command runs `script`, with this file's timings and `extra`; waits
/// for identify.
fn start(hub: &DevHub, script: &str, extra: Value) -> Sidecar {
    let timings = json!({
        "wake_retry_delays_ms": [50, 50],
        "wake_timeout_ms": 5000,
        "confirmation_timeout_ms": 5000,
        "result_settle_ms": 300,
    });
    sidecar_with_script(hub, script, with(timings, extra))
}

/// An agent that records its environment, confirms, and writes a result by rename.
const AGENT_SCRIPT: &str = r#"
dir=$(dirname "$RESULTS_DIR")/seen
mkdir -p "$dir"
printf '%s' "$TASK_ID" > "$dir/TASK_ID"
printf '%s' "$TASK_JSON" > "$dir/TASK_JSON"
printf '%s' "$TASK_DESCRIPTION" > "$dir/TASK_DESCRIPTION"
printf '%s' "$TASK_FILE" > "$dir/TASK_FILE"
cp "$TASK_FILE" "$dir/task_file_copy"
(
  touch "$RESULTS_DIR/$TASK_ID.started"
  printf '{"status":"success","output":"done by %s"}' "$TASK_ID" > "$RESULTS_DIR/.$TASK_ID.tmp"
  mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json"
) &
"#;

/// An agent that only confirms its start; the test writes the result.
const CONFIRM_ONLY: &str = r#"touch "$RESULTS_DIR/$TASK_ID.started""#;

#[test]
fn happy_path_wakes_the_agent_with_the_task_in_env_and_reports_the_result() {
    let hub = hub();
    let sidecar = start(&hub, AGENT_SCRIPT, json!({}));
    let raw = json!({"type": "task_assign", "task_id": "task-1", "description": "write tests", "metadata": {"p": 1}, "repo": "r", "generation": 4}).to_string();
    hub.send(AGENT, RawFrame::Text(raw.clone()));

    wait_task_frame(&hub, "task_accepted", "task-1", 1);
    let complete = wait_task_frame(&hub, "task_complete", "task-1", 1);
    assert_eq!(
        complete["result"],
        json!({"status": "success", "output": "done by task-1"})
    );
    assert_eq!(complete["generation"], 4);

    let seen = sidecar.dir.path().join("seen");
    let read = |name: &str| std::fs::read_to_string(seen.join(name)).unwrap();
    assert_eq!(read("TASK_ID"), "task-1");
    assert_eq!(
        read("TASK_JSON"),
        raw,
        "TASK_JSON is the frame exactly as sent"
    );
    assert_eq!(read("TASK_DESCRIPTION"), "write tests");
    assert_eq!(
        read("task_file_copy"),
        raw,
        "TASK_FILE holds the frame exactly as sent"
    );

    for event in [
        "task_received",
        "wake_attempt",
        "wake_success",
        "confirmation_received",
        "task_complete",
    ] {
        sidecar.wait_event(event);
    }
    // Acknowledged: queue cleared, files cleaned up.
    eventually("an empty queue file", || {
        let q = sidecar.queue();
        q["active"].is_null() && q["outbox"].as_array().is_some_and(|o| o.is_empty())
    });
    eventually("result files removed", || {
        let results = sidecar.results_dir();
        !results.join("task-1.json").exists() && !results.join("task-1.started").exists()
    });
    assert!(
        !Path::new(&read("TASK_FILE")).exists(),
        "TASK_FILE removed when the task ended"
    );
}

#[test]
fn the_queue_file_holds_the_task_when_task_accepted_is_sent() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    // No wake command: the task stays active, waiting for a result.
    let config = fast_config(&hub.ws_url());
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    let sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
    assign(
        &hub,
        json!({"task_id": "t-persist", "extra_field": {"kept": true}}),
    );
    wait_task_frame(&hub, "task_accepted", "t-persist", 1);
    let queue = sidecar.queue();
    assert_eq!(queue["tasks"][0]["task_id"], "t-persist");
    assert_eq!(queue["tasks"][0]["role"], "held");
    let stored: Value = serde_json::from_str(queue["tasks"][0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored["extra_field"],
        json!({"kept": true}),
        "unknown fields are kept"
    );
    assert!(sidecar.dir.path().join("tasks/t-persist.json").exists());
}

#[test]
fn a_second_task_while_busy_waits_a_third_is_refused_and_the_same_task_again_is_accepted_idempotently(
) {
    let hub = hub();
    let sidecar = start(&hub, CONFIRM_ONLY, json!({}));
    assign(&hub, json!({"task_id": "first", "generation": 1}));
    wait_task_frame(&hub, "task_accepted", "first", 1);
    sidecar.wait_event("confirmation_received");

    // The second waits for the slot, unanswered; a third is refused in a frame the current
    // hub accepts (it has no schema for task_rejected).
    assign(&hub, json!({"task_id": "second", "generation": 1}));
    let parked = sidecar.wait_event("task_parked");
    assert_eq!(parked["task_id"], "second");
    assign(&hub, json!({"task_id": "third", "generation": 1}));
    let refused = wait_task_frame(&hub, "task_failed", "third", 1);
    assert_eq!(refused["reason"], "busy");
    assert_eq!(refused["generation"], 1);
    assert!(task_frames(&hub, "task_failed", "second").is_empty());
    assert!(frames_of(&hub, "task_rejected").is_empty());

    // The hub never saw the accept and pushes the same task with a higher generation.
    assign(&hub, json!({"task_id": "first", "generation": 2}));
    let again = wait_task_frame(&hub, "task_accepted", "first", 2);
    assert_eq!(again["generation"], 2);
    sidecar.write_result("first", r#"{"status":"success","output":1}"#);
    let complete = wait_task_frame(&hub, "task_complete", "first", 1);
    assert_eq!(complete["generation"], 2, "the new generation is echoed");
    assert_eq!(
        sidecar.events("wake_attempt").len(),
        1,
        "no second agent for the same task"
    );
}

#[test]
fn a_failing_wake_command_is_retried_then_reported_as_wake_failed() {
    let hub = hub();
    let sidecar = start(&hub, "echo \"attempt $TASK_ID\" >> \"$(dirname \"$RESULTS_DIR\")/attempts\"; echo oops >&2; exit 3", json!({}));
    assign(&hub, json!({"task_id": "t-fail"}));
    let failed = wait_task_frame(&hub, "task_failed", "t-fail", 1);
    assert_eq!(failed["reason"], "wake_failed");
    assert_eq!(failed["error"], "exit code 3");
    let attempts = std::fs::read_to_string(sidecar.dir.path().join("attempts")).unwrap();
    assert_eq!(attempts.lines().count(), 3, "1 attempt + 2 retries");
    let errors = sidecar.events("wake_error");
    assert_eq!(errors.len(), 3);
    assert!(
        errors[0]["output"].as_str().unwrap().contains("oops"),
        "command output logged"
    );
    sidecar.wait_event("wake_failed");
    // The slot is free again.
    assign(&hub, json!({"task_id": "t-next"}));
    wait_task_frame(&hub, "task_accepted", "t-next", 1);
}

#[test]
fn no_started_file_within_the_confirmation_timeout_fails_the_task() {
    let hub = hub();
    let sidecar = start(&hub, "true", json!({"confirmation_timeout_ms": 300}));
    assign(&hub, json!({"task_id": "t-silent"}));
    let failed = wait_task_frame(&hub, "task_failed", "t-silent", 1);
    assert_eq!(failed["reason"], "confirmation_timeout");
    sidecar.wait_event("confirmation_timeout");
}

#[test]
fn a_wake_command_past_its_timeout_has_its_whole_process_group_killed() {
    let hub = hub();
    let script = "sleep 30 & echo $! > \"$(dirname \"$RESULTS_DIR\")/grandchild.pid\"; sleep 30";
    let sidecar = start(
        &hub,
        script,
        json!({"wake_timeout_ms": 300, "wake_retry_delays_ms": []}),
    );
    assign(&hub, json!({"task_id": "t-slow"}));
    let failed = wait_task_frame(&hub, "task_failed", "t-slow", 1);
    assert_eq!(failed["reason"], "wake_failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("process group killed"),
        "{failed}"
    );
    let pid: i32 = std::fs::read_to_string(sidecar.dir.path().join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually(
        "the background child of the wake command to be gone",
        || {
            // Gone, or a zombie waiting for its new parent to reap it: either way not running.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        },
    );
}

#[test]
fn shell_injection_in_task_data_runs_nothing() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let marker = |n: u32| dir.path().join(format!("pwned{n}"));
    let description = format!(
        "$(touch {}) `touch {}` \"; touch {}; echo \" '; touch {} #' ; touch {} #",
        marker(1).display(),
        marker(2).display(),
        marker(3).display(),
        marker(4).display(),
        marker(5).display()
    );
    let metadata = json!({"note": format!("$(touch {})", marker(6).display()), "q": "`touch x`"});
    // A Node-era command that pastes the variables into its arguments, quoted and unquoted.
    let out = dir.path().join("echo.out");
    let command = format!(
        "echo \"Task: ${{TASK_JSON}}\" > {out}; echo ${{TASK_DESCRIPTION}} >> {out}; echo \"$TASK_DESCRIPTION\" >> {out}",
        out = out.display()
    );
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"wake_command": command, "confirmation_timeout_ms": 60000}),
    );
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    let markers: Vec<_> = (1..=6).map(marker).collect();
    let sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
    assign(
        &hub,
        json!({"task_id": "t-inject", "description": description, "metadata": metadata}),
    );
    sidecar.wait_event("wake_success");
    for m in &markers {
        assert!(
            !m.exists(),
            "{} was created: task data ran as shell code",
            m.display()
        );
    }
    let echoed = std::fs::read_to_string(out).unwrap();
    assert!(
        echoed.contains("$(touch"),
        "the description reached the command as text: {echoed}"
    );
}

#[test]
fn task_ids_that_are_not_safe_file_names_are_refused_and_nothing_runs() {
    let hub = hub();
    let long = "a".repeat(1000);
    let sidecar = start(
        &hub,
        "touch \"$(dirname \"$RESULTS_DIR\")/woken\"",
        json!({}),
    );
    for bad in ["../x", "a/b", ".", "..", "", long.as_str()] {
        assign(&hub, json!({"task_id": bad}));
        let refused = wait_task_frame(&hub, "task_failed", bad, 1);
        assert_eq!(refused["reason"], "invalid_task_id", "{bad}");
    }
    // A task id that is not a string cannot be answered in a frame the hub accepts: logged.
    assign(&hub, json!({"task_id": 42}));
    let line = sidecar.wait_for(WAIT, |l| {
        l["event"] == "task_rejected" && l["task_id"] == "42"
    });
    assert!(line.is_some(), "{}", sidecar.dump());
    assert!(frames_of(&hub, "task_accepted").is_empty());
    assert!(frames_of(&hub, "task_rejected").is_empty());
    assert!(sidecar.events("wake_attempt").is_empty());
    assert!(!sidecar.dir.path().join("woken").exists());
    assert!(!sidecar.dir.path().join("x").exists() && !sidecar.dir.path().join("tasks/a").exists());
}

#[test]
fn a_result_written_in_pieces_is_read_once_complete_and_a_rename_at_once() {
    let hub = hub();
    let sidecar = start(&hub, CONFIRM_ONLY, json!({"result_settle_ms": 2000}));
    // Tasks from the hub's queue: their reports are acknowledged (a raw push's would be
    // refused, and the re-identify that follows makes the hub abort the next raw push).
    let pieces = submit(&hub, json!({"description": "written in pieces"}));
    sidecar.wait_event("confirmation_received");
    let result = sidecar.results_dir().join(format!("{pieces}.json"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&result).unwrap();
        f.write_all(br#"{"status":"succ"#).unwrap();
        f.sync_all().unwrap();
        // The agent pauses mid-write (well inside result_settle_ms).
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(br#"ess","output":{"lines":[1,2,3]}}"#).unwrap();
    }
    let complete = wait_task_frame(&hub, "task_complete", &pieces, 1);
    assert_eq!(complete["result"]["output"], json!({"lines": [1, 2, 3]}));
    wait_status(&hub, &pieces, "completed");

    // It fails: no retry (the hub would push it again as a new lifetime, a new agent).
    let rename = submit(
        &hub,
        json!({"description": "renamed into place", "max_retries": 0}),
    );
    wait_task_frame(&hub, "task_accepted", &rename, 1);
    let tmp = sidecar.results_dir().join("writing.tmp");
    std::fs::write(
        &tmp,
        r#"{"status":"failure","reason":"tests_failed","error":"3 tests failed"}"#,
    )
    .unwrap();
    std::fs::rename(&tmp, sidecar.results_dir().join(format!("{rename}.json"))).unwrap();
    let failed = wait_task_frame(&hub, "task_failed", &rename, 1);
    assert_eq!(
        (failed["reason"].as_str(), failed["error"].as_str()),
        (Some("tests_failed"), Some("3 tests failed"))
    );
    assert_eq!(task_frames(&hub, "task_complete", &pieces).len(), 1);
    assert!(
        task_frames(&hub, "task_failed", &pieces).is_empty(),
        "the half-written file was never taken for an invalid result"
    );
    // One start for the first; at most one for the second, whose result may be there
    // before its agent was woken (then none is needed).
    assert_eq!(wake_attempts(&sidecar, &pieces), 1, "{}", sidecar.dump());
    assert!(wake_attempts(&sidecar, &rename) <= 1, "{}", sidecar.dump());
}

#[test]
fn an_invalid_result_fails_the_task_and_is_kept_aside() {
    let hub = hub();
    let sidecar = start(
        &hub,
        CONFIRM_ONLY,
        json!({"result_settle_ms": 100, "max_result_bytes": 1000}),
    );
    assign(&hub, json!({"task_id": "t-bad"}));
    sidecar.wait_event("confirmation_received");
    sidecar.write_result("t-bad", "this is not json");
    let failed = wait_task_frame(&hub, "task_failed", "t-bad", 1);
    assert_eq!(failed["reason"], "invalid_result");
    assert!(failed["error"].as_str().unwrap().contains("not valid JSON"));
    eventually("the invalid file kept as .invalid", || {
        sidecar.results_dir().join("t-bad.json.invalid").exists()
    });
    // An invalid file for a task nobody runs sits there: the watcher must not spin on its
    // own reads (a loop burns a whole core; idle is near zero).
    sidecar.write_result("orphan", "{ not json");
    let orphan = sidecar.wait_for(WAIT, |l| {
        l["event"] == "result_ignored" && l["task_id"] == "orphan"
    });
    assert!(orphan.is_some(), "{}", sidecar.dump());
    let before = sidecar.cpu_time();
    std::thread::sleep(Duration::from_millis(500));
    let used = sidecar.cpu_time() - before;
    assert!(
        used < Duration::from_millis(250),
        "{used:?} of CPU in 500 ms while idle"
    );

    assign(&hub, json!({"task_id": "t-huge"}));
    sidecar.wait_count("confirmation_received", 2);
    let tmp = sidecar.results_dir().join("big.tmp");
    std::fs::write(
        &tmp,
        json!({"status": "success", "output": "x".repeat(5000)}).to_string(),
    )
    .unwrap();
    std::fs::rename(&tmp, sidecar.results_dir().join("t-huge.json")).unwrap();
    let failed = wait_task_frame(&hub, "task_failed", "t-huge", 1);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("max_result_bytes"),
        "{failed}"
    );

    // A symlink is refused: it could make the sidecar read and send any file.
    assign(&hub, json!({"task_id": "t-link"}));
    sidecar.wait_count("confirmation_received", 3);
    let secret = sidecar.dir.path().join("secret.json");
    std::fs::write(&secret, r#"{"status":"success","output":"private"}"#).unwrap();
    std::os::unix::fs::symlink(&secret, sidecar.results_dir().join("t-link.json")).unwrap();
    let failed = wait_task_frame(&hub, "task_failed", "t-link", 1);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("symlinks are refused"),
        "{failed}"
    );
    assert!(!failed.to_string().contains("private"));

    // A result for a task nobody assigned is logged and left alone.
    sidecar.write_result("stranger", "{}");
    let ignored = sidecar.wait_for(WAIT, |l| {
        l["event"] == "result_ignored" && l["task_id"] == "stranger"
    });
    assert!(ignored.is_some());
    assert!(sidecar.results_dir().join("stranger.json").exists());
}

#[test]
fn a_result_that_lands_while_the_hub_is_down_is_delivered_after_reconnect() {
    let hub = hub();
    let addr = hub.addr();
    let sidecar = start(&hub, CONFIRM_ONLY, json!({}));
    assign(&hub, json!({"task_id": "t-offline", "generation": 9}));
    sidecar.wait_event("confirmation_received");
    hub.stop();
    sidecar.wait_event("reconnect_scheduled");
    sidecar.write_result("t-offline", r#"{"status":"success","output":"x"}"#);
    sidecar.wait_event("task_complete");

    let hub = DevHub::start(DevHubOptions {
        listen: addr,
        tokens: Some([(AGENT.to_string(), TOKEN.to_string())].into()),
        ..DevHubOptions::default()
    })
    .unwrap();
    let complete = wait_task_frame(&hub, "task_complete", "t-offline", 1);
    assert_eq!(complete["generation"], 9);
    eventually("the outbox emptied by the ack", || {
        sidecar.queue()["outbox"]
            .as_array()
            .is_some_and(|o| o.is_empty())
    });
    assert_eq!(
        wake_attempts(&sidecar, "t-offline"),
        1,
        "{}",
        sidecar.dump()
    );
}

#[test]
fn unacknowledged_reports_are_sent_again_in_order_after_every_identify() {
    let hub = hub();
    hub.set_behaviour(Behaviour {
        auto_ack: false,
        ..hub.behaviour()
    });
    let sidecar = start(&hub, CONFIRM_ONLY, json!({}));
    assign(&hub, json!({"task_id": "t-ack"}));
    sidecar.wait_event("confirmation_received");
    sidecar.write_result("t-ack", r#"{"status":"success"}"#);
    wait_task_frame(&hub, "task_complete", "t-ack", 1);

    hub.kill_connections(AGENT);
    let second = wait_identified(&hub, 2);
    wait_task_frame(&hub, "task_complete", "t-ack", 2);
    let resent: Vec<String> = hub
        .events()
        .into_iter()
        .filter(|e| e.conn == second.conn)
        .filter_map(|e| e.frame_type().map(str::to_string))
        .filter(|t| t.starts_with("task_"))
        .collect();
    assert_eq!(
        resent,
        ["task_accepted", "task_complete"],
        "the task is said held again, then its report, in order"
    );

    // The answer to the report ends it.
    for status in ["accepted", "complete"] {
        hub.send(
            AGENT,
            RawFrame::Text(
                json!({"type": "task_ack", "task_id": "t-ack", "status": status}).to_string(),
            ),
        );
    }
    eventually("the outbox empty and the task forgotten", || {
        let q = sidecar.queue();
        q["outbox"].as_array().is_some_and(|o| o.is_empty())
            && q["tasks"].as_array().is_some_and(|t| t.is_empty())
    });
    assert_eq!(wake_attempts(&sidecar, "t-ack"), 1, "{}", sidecar.dump());
}

#[test]
fn sigkill_after_the_wake_and_a_result_written_while_down_is_reported_without_a_new_wake() {
    let hub = hub();
    let mut sidecar = start(&hub, "true", json!({"confirmation_timeout_ms": 60000}));
    let task_id = submit(&hub, json!({"description": "survive"}));
    sidecar.wait_event("wake_success");
    eventually("woken on disk", || {
        sidecar.queue()["tasks"][0]["agent"]["state"] == "woken"
    });
    sidecar.kill();
    // The agent finishes while the sidecar is down: the start-up scan finds it.
    sidecar.write_result(&task_id, r#"{"status":"success","output":"after crash"}"#);
    sidecar.restart();
    let recovering = wait_task_frame(&hub, "task_recovering", &task_id, 1);
    assert_eq!(recovering["last_status"], "finished");
    assert_eq!(recovering["generation"], 1);
    sidecar.wait_event("recovery_found");
    // The hub took the task back when the session dropped and gives it back (a higher
    // generation): the known result is reported under it.
    wait_status(&hub, &task_id, "completed");
    let complete = task_frames(&hub, "task_complete", &task_id);
    assert_eq!(
        complete.last().unwrap()["generation"],
        task_field(&hub, &task_id, "generation")
    );
    assert_eq!(complete.last().unwrap()["result"]["output"], "after crash");
    let lines = sidecar.lines();
    let restart = lines.iter().rposition(|l| l["event"] == "startup").unwrap();
    let woken_again = lines[restart..]
        .iter()
        .filter(|l| l["event"] == "wake_attempt")
        .count();
    assert_eq!(woken_again, 0, "woken before the crash: not woken again");
}

#[test]
fn sigkill_while_the_wake_command_runs_then_reassign_releases_the_task_after_its_window() {
    let hub = hub();
    // The wake command hangs (and outlives the sidecar): its attempt is on disk, so after
    // the restart it gets its confirmation window before the task is let go.
    let mut sidecar = start(&hub, "sleep 30", json!({"confirmation_timeout_ms": 500}));
    assign(&hub, json!({"task_id": "t-gone"}));
    sidecar.wait_event("wake_attempt");
    sidecar.kill_and_restart();
    let recovering = wait_task_frame(&hub, "task_recovering", "t-gone", 1);
    assert_eq!(recovering["last_status"], "waking");
    // The hub never had this task (a raw push): it answers task_reassign.
    sidecar.wait_event("recovery_reassigned");
    // Removed one after the other: wait for the last of them.
    eventually("its files removed once its window passed", || {
        !sidecar.dir.path().join("tasks/t-gone.json").exists()
            && !sidecar.dir.path().join("tasks/t-gone.wake.log").exists()
    });
    eventually("the queue cleared", || {
        sidecar.queue()["tasks"]
            .as_array()
            .is_some_and(|t| t.is_empty())
    });
    // Its one attempt was given its window, not made again.
    assert_eq!(wake_attempts(&sidecar, "t-gone"), 1, "{}", sidecar.dump());
    // Free for new work.
    assign(&hub, json!({"task_id": "t-new"}));
    wait_task_frame(&hub, "task_accepted", "t-new", 1);
}

#[test]
fn a_corrupt_queue_file_is_kept_aside_and_the_sidecar_starts_empty() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("queue.json"),
        "{\"active\": {\"task_id\": tru",
    )
    .unwrap();
    let path = dir.path().join("config.json");
    write_config(&path, &fast_config(&hub.ws_url()));
    let sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    let line = sidecar.wait_event("queue_corrupt");
    let moved = line["moved_to"].as_str().unwrap();
    assert!(moved.contains("queue.json.corrupt-"), "{moved}");
    assert_eq!(
        std::fs::read_to_string(moved).unwrap(),
        "{\"active\": {\"task_id\": tru"
    );
    wait_identified(&hub, 1);
    assign(&hub, json!({"task_id": "t-after"}));
    wait_task_frame(&hub, "task_accepted", "t-after", 1);
}

#[test]
fn task_cancelled_drops_the_task_and_stops_its_wake_command() {
    let hub = hub();
    let script = "echo $$ > \"$(dirname \"$RESULTS_DIR\")/wake.pid\"; sleep 30";
    let sidecar = start(&hub, script, json!({"wake_timeout_ms": 60000}));
    assign(&hub, json!({"task_id": "t-cancel"}));
    sidecar.wait_event("wake_attempt");
    let pid_file = sidecar.dir.path().join("wake.pid");
    // The shell creates the file before it writes the pid: wait for the whole number.
    eventually("the wake command running", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    });
    hub.send(
        AGENT,
        RawFrame::Text(
            json!({"type": "task_cancelled", "task_id": "t-cancel", "timestamp": 1}).to_string(),
        ),
    );
    sidecar.wait_event("task_cancelled");
    sidecar.wait_event("wake_cancelled");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the wake command gone", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    assign(&hub, json!({"task_id": "t-after-cancel"}));
    wait_task_frame(&hub, "task_accepted", "t-after-cancel", 1);
    assert!(!sidecar.dir.path().join("tasks/t-cancel.wake.log").exists());
    assert!(!sidecar.dir.path().join("tasks/t-cancel.json").exists());
    assert!(task_frames(&hub, "task_failed", "t-cancel").is_empty());
}

#[test]
fn the_agent_started_by_the_wake_command_outlives_a_sidecar_restart() {
    let hub = hub();
    // The "agent" detaches and keeps running; the wake command returns at once.
    let script = "sleep 60 >/dev/null 2>&1 & echo $! > \"$(dirname \"$RESULTS_DIR\")/agent.pid\"";
    let mut sidecar = start(&hub, script, json!({"confirmation_timeout_ms": 60000}));
    assign(&hub, json!({"task_id": "t-survive"}));
    sidecar.wait_event("wake_success");
    let pid_file = sidecar.dir.path().join("agent.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    };
    assert!(alive(pid));

    // An orderly stop, then a crash: the agent is left alone both times.
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    assert!(alive(pid), "SIGTERM to the sidecar killed the agent");
    sidecar.restart();
    wait_task_frame(&hub, "task_recovering", "t-survive", 1);
    sidecar.kill();
    assert_eq!(
        wake_attempts(&sidecar, "t-survive"),
        1,
        "the restart started a second agent\n{}",
        sidecar.dump()
    );
    assert!(alive(pid), "SIGKILL of the sidecar killed the agent");
    // SAFETY: kill(2) on the agent this test started; no memory is touched.
    unsafe { libc::kill(pid, SIGKILL) };
}

#[test]
fn a_wake_command_that_fails_after_the_agent_confirmed_does_not_fail_the_task() {
    let hub = hub();
    // Starts the agent (which confirms), then exits non-zero anyway.
    let script = "touch \"$RESULTS_DIR/$TASK_ID.started\"; exit 1";
    let sidecar = start(&hub, script, json!({"wake_retry_delays_ms": [1000, 1000]}));
    assign(&hub, json!({"task_id": "t-confirmed"}));
    sidecar.wait_event("confirmation_received");
    sidecar.wait_event("wake_error");
    sidecar.write_result("t-confirmed", r#"{"status":"success"}"#);
    wait_task_frame(&hub, "task_complete", "t-confirmed", 1);
    assert!(task_frames(&hub, "task_failed", "t-confirmed").is_empty());
    assert_eq!(
        sidecar.events("wake_attempt").len(),
        1,
        "no second agent after the confirmation"
    );
}

#[test]
fn cancel_and_assign_again_in_one_burst_keeps_the_new_task_file() {
    let hub = hub();
    // The agent proves TASK_FILE is there when it is woken.
    let script = "test -f \"$TASK_FILE\" && touch \"$RESULTS_DIR/$TASK_ID.started\"";
    let sidecar = start(&hub, script, json!({"wake_retry_delays_ms": []}));
    let assign_frame = |generation: u64| {
        json!({"type": "task_assign", "task_id": "t-again", "description": "d", "generation": generation}).to_string()
    };
    hub.send(AGENT, RawFrame::Text(assign_frame(1)));
    hub.send(
        AGENT,
        RawFrame::Text(json!({"type": "task_cancelled", "task_id": "t-again"}).to_string()),
    );
    hub.send(AGENT, RawFrame::Text(assign_frame(2)));
    // The first acceptance may never reach the hub (cancelled before it was on disk); the
    // second one does.
    eventually("task_accepted for generation 2", || {
        task_frames(&hub, "task_accepted", "t-again")
            .iter()
            .any(|f| f["generation"] == 2)
    });
    sidecar.wait_event("confirmation_received");
    assert!(
        sidecar.dir.path().join("tasks/t-again.json").exists(),
        "the new task's TASK_FILE was removed"
    );
    assert!(task_frames(&hub, "task_failed", "t-again").is_empty());
    // The first generation may have been woken before its cancel; after the cancel, one
    // agent in all.
    let lines = sidecar.lines();
    let cancel = lines
        .iter()
        .position(|l| l["event"] == "task_cancelled")
        .expect("the cancel logged");
    let after = lines[cancel..]
        .iter()
        .filter(|l| l["event"] == "wake_attempt" && l["task_id"] == "t-again")
        .count();
    assert_eq!(after, 1, "{}", sidecar.dump());
}

#[test]
fn a_task_whose_acceptance_cannot_be_saved_is_given_back_to_the_hub() {
    let hub = hub();
    let sidecar = start(&hub, CONFIRM_ONLY, json!({}));
    // The tasks directory cannot be created: a regular file stands in its way.
    std::fs::write(sidecar.dir.path().join("tasks"), "in the way").unwrap();
    assign(
        &hub,
        json!({"task_id": "t-unsaved", "description": "x".repeat(10_000)}),
    );
    let refused = wait_task_frame(&hub, "task_failed", "t-unsaved", 1);
    assert_eq!(refused["reason"], "storage_unavailable");
    assert!(
        task_frames(&hub, "task_accepted", "t-unsaved").is_empty(),
        "never accepted"
    );
    assert!(sidecar.events("wake_attempt").is_empty(), "never run");
    // The failed writes are logged without the task's bytes.
    let failures = sidecar.events("queue_write_failed");
    assert!(!failures.is_empty());
    assert!(
        failures.iter().all(|l| l.to_string().len() < 2000),
        "task data in the log"
    );

    std::fs::remove_file(sidecar.dir.path().join("tasks")).unwrap();
    assign(&hub, json!({"task_id": "t-later"}));
    wait_task_frame(&hub, "task_accepted", "t-later", 1);
}

#[test]
fn a_replaced_results_dir_is_watched_again() {
    let hub = hub();
    let sidecar = start(&hub, CONFIRM_ONLY, json!({}));
    assign(&hub, json!({"task_id": "t-dir"}));
    sidecar.wait_event("confirmation_received");
    let results = sidecar.results_dir();
    std::fs::remove_dir_all(&results).unwrap();
    sidecar.wait_event("results_dir_replaced");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("t-dir.json"), r#"{"status":"success"}"#).unwrap();
    wait_task_frame(&hub, "task_complete", "t-dir", 1);
}

#[test]
fn task_values_too_large_for_the_environment_are_left_to_task_file() {
    let hub = hub();
    let script = "dir=$(dirname \"$RESULTS_DIR\"); printf '%s' \"${TASK_DESCRIPTION_OMITTED:-no}\" > \"$dir/omitted\"; cp \"$TASK_FILE\" \"$dir/task\"; touch \"$RESULTS_DIR/$TASK_ID.started\"";
    let sidecar = start(&hub, script, json!({}));
    let description = "y".repeat(200_000);
    assign(
        &hub,
        json!({"task_id": "t-big", "description": description}),
    );
    sidecar.wait_event("confirmation_received");
    assert_eq!(
        std::fs::read_to_string(sidecar.dir.path().join("omitted")).unwrap(),
        "1"
    );
    let task: Value =
        serde_json::from_str(&std::fs::read_to_string(sidecar.dir.path().join("task")).unwrap())
            .unwrap();
    assert_eq!(task["description"].as_str().unwrap().len(), 200_000);
    let omitted: Vec<Value> = sidecar
        .events("wake_env_omitted")
        .into_iter()
        .map(|l| l["variable"].clone())
        .collect();
    assert_eq!(omitted, ["TASK_JSON", "TASK_DESCRIPTION"]);
}

#[test]
fn a_re_push_never_lowers_the_generation_and_starts_no_second_agent() {
    let hub = hub();
    let sidecar = start(&hub, CONFIRM_ONLY, json!({}));
    assign(&hub, json!({"task_id": "t-gen", "generation": 1}));
    sidecar.wait_event("confirmation_received");
    assign(&hub, json!({"task_id": "t-gen", "generation": 3}));
    wait_task_frame(&hub, "task_accepted", "t-gen", 2);
    assign(&hub, json!({"task_id": "t-gen", "generation": 2}));
    let again = wait_task_frame(&hub, "task_accepted", "t-gen", 3);
    assert_eq!(
        again["generation"], 3,
        "a late re-push does not lower the generation"
    );
    sidecar.wait_event("task_generation_stale");
    sidecar.write_result("t-gen", r#"{"status":"success"}"#);
    let complete = wait_task_frame(&hub, "task_complete", "t-gen", 1);
    assert_eq!(complete["generation"], 3);
    assert_eq!(sidecar.events("wake_attempt").len(), 1);
}
