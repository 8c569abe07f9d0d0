//! `agentcom-sidecar agent shell`: the hub's `metadata.shell_command` is refused unless the
//! operator opted in; allowed, it runs as the one `sh -c` argument, its output streamed and
//! bounded in the result, its exit code deciding; its time limit and its exit end its whole
//! process group.

mod agent_support;

use std::time::Duration;

use agent_support::{frame, gone, read_pid, run_agent, AgentRun};
use serde_json::{json, Value};

fn shell_task(task_id: &str, command: &str, extra_metadata: Value) -> Value {
    let mut metadata = json!({"shell_command": command});
    metadata
        .as_object_mut()
        .unwrap()
        .extend(extra_metadata.as_object().unwrap().clone());
    frame(
        task_id,
        json!({
            "description": "run it",
            "metadata": metadata,
            "routing_decision": {"effective_tier": "trivial", "target_type": "sidecar", "selected_endpoint": null, "selected_model": null},
        }),
    )
}

const ALLOW: (&str, &str) = ("AGENTCOM_ALLOW_HUB_COMMANDS", "1");

fn allowed(f: &Value) -> AgentRun {
    run_agent("shell", f, &[ALLOW])
}

#[test]
fn refused_unless_the_operator_opted_in() {
    let marker = tempfile::tempdir().unwrap();
    let path = marker.path().join("ran");
    let command = format!("touch '{}'", path.display());
    for env in [
        vec![],
        vec![("AGENTCOM_ALLOW_HUB_COMMANDS", "0")],
        vec![("AGENTCOM_ALLOW_HUB_COMMANDS", "true")],
    ] {
        let run = run_agent("shell", &shell_task("t-refused", &command, json!({})), &env);
        assert!(run.started());
        let r = run.failed_with("shell_tasks_disabled");
        assert!(
            r["error"].as_str().unwrap().contains("allow_hub_commands"),
            "{r:#}"
        );
        assert!(run.elapsed < Duration::from_secs(5));
    }
    assert!(!path.exists(), "the command never ran");
}

#[test]
fn an_allowed_command_streams_its_output_and_reports_its_exit_code() {
    let run = allowed(&shell_task(
        "t-ok",
        "echo hello; echo oops >&2; printf 'caf\\303\\251\\n'",
        json!({}),
    ));
    let r = run.result();
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["output"], "hello\ncafé\n");
    assert_eq!(r["stderr"], "oops\n");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["output_truncated"], false);
    assert!(r["execution_ms"].is_u64());
    assert_eq!(run.streamed("stdout"), "hello\ncafé\n");
    assert_eq!(run.streamed("stderr"), "oops\n");
    assert_eq!(r["verification_report"]["status"], "auto_pass");

    let run = allowed(&shell_task(
        "t-exit3",
        "echo partial; echo broken >&2; exit 3",
        json!({}),
    ));
    let r = run.failed_with("command_failed");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["output"], "partial\n");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("exit code 3") && e.contains("broken"), "{e}");

    let run = allowed(&frame("t-nocmd", json!({"metadata": {}})));
    run.failed_with("no_shell_command");
}

#[test]
fn task_data_is_seen_by_no_shell_but_the_one_sh_c() {
    let marker = tempfile::tempdir().unwrap();
    let m = marker.path().display();
    // The command prints a literal that looks like code; the description and metadata carry
    // code too. Only the command itself is shell code, parsed once.
    let command = format!("printf '%s\\n' '$(touch {m}/literal)' \"`echo inner`\"");
    let mut f = shell_task(
        "t-hostile",
        &command,
        json!({"note": format!("$(touch {m}/metadata)")}),
    );
    f["description"] = format!("`touch {m}/description`; $(touch {m}/description2)").into();
    let run = allowed(&f);
    let r = run.result();
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["output"], format!("$(touch {m}/literal)\ninner\n"));
    assert_eq!(
        std::fs::read_dir(marker.path()).unwrap().count(),
        0,
        "nothing else ran"
    );
}

#[test]
fn the_time_limit_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let bg = dir.path().join("bg");
    let command = format!(
        "sleep 30 & echo $! > '{}'; echo waiting; sleep 30",
        bg.display()
    );
    let run = allowed(&shell_task("t-slow", &command, json!({"timeout_ms": 400})));
    let r = run.failed_with("timeout");
    assert!(r["error"].as_str().unwrap().contains("400 ms"), "{r:#}");
    assert_eq!(r["output"], "waiting\n");
    assert!(r["exit_code"].is_null());
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    let pid = read_pid(&bg);
    agent_support::eventually("the background sleep killed", || gone(pid));
}

#[test]
fn what_the_command_leaves_running_ends_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let bg = dir.path().join("bg");
    let command = format!("sleep 30 & echo $! > '{}'; echo done", bg.display());
    let run = allowed(&shell_task("t-bg", &command, json!({})));
    assert_eq!(run.result()["status"], "success");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    let pid = read_pid(&bg);
    agent_support::eventually("the background sleep killed", || gone(pid));
}

#[test]
fn large_output_is_bounded_in_the_result_and_whole_in_progress() {
    let run = allowed(&shell_task(
        "t-big",
        "head -c 200000 /dev/zero | tr '\\0' a",
        json!({}),
    ));
    let r = run.result();
    assert_eq!(r["status"], "success");
    assert_eq!(r["output"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(r["output_truncated"], true);
    assert_eq!(run.streamed("stdout").len(), 200_000);
    let lines = run
        .progress()
        .into_iter()
        .filter(|e| e["event_type"] == "stdout")
        .count();
    assert!((49..200).contains(&lines), "{lines} lines");
}
