//! Verification by the bundled agents: every kind of step passing and failing, the report's
//! shape, `skip_verification`, no steps, the time limit, command steps skipped without the
//! operator's opt-in, and the corrective retry of a model task (the stand-in Ollama records
//! the second request, which carries the failed check).

mod agent_support;

use std::process::Command;
use std::time::Duration;

use agent_support::{frame, prepare, run_agent, run_agent_in, AgentRun};
use agentcom_sidecar::devhub::ollama::{OllamaBehaviour, StandinOllama};
use serde_json::{json, Value};

const ALLOW: (&str, &str) = ("AGENTCOM_ALLOW_HUB_COMMANDS", "1");

/// A shell task running `true`, with these verification fields.
fn shell_task(task_id: &str, verification: Value) -> Value {
    let mut f = frame(
        task_id,
        json!({
            "metadata": {"shell_command": "true"},
            "routing_decision": {"target_type": "sidecar"},
        }),
    );
    f.as_object_mut()
        .unwrap()
        .extend(verification.as_object().unwrap().clone());
    f
}

/// Runs the shell agent (commands allowed) in a work directory set up by `setup`.
fn verify_in(setup: impl FnOnce(&std::path::Path), f: &Value) -> AgentRun {
    let dir = prepare();
    setup(&dir.path().join("work"));
    run_agent_in(dir, "shell", f, &[ALLOW])
}

fn statuses(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap().to_string())
        .collect()
}

fn step(kind: &str, target: &str) -> Value {
    json!({"type": kind, "target": target})
}

#[test]
fn file_exists_passes_fails_and_refuses_paths_outside_the_directory() {
    let f = shell_task(
        "t-files",
        json!({"verification_steps": [
            {"type": "file_exists", "target": "present.txt", "description": "the output file"},
            step("file_exists", "missing.txt"),
            step("file_exists", "../outside"),
            step("file_exists", "/etc/passwd"),
        ]}),
    );
    let run = verify_in(|w| std::fs::write(w.join("present.txt"), "x").unwrap(), &f);
    let r = run.result();
    assert_eq!(r["status"], "success", "the work itself succeeded: {r:#}");
    let report = &r["verification_report"];
    assert_eq!(statuses(report), ["pass", "fail", "error", "error"]);
    assert_eq!(report["status"], "fail");
    assert_eq!(report["task_id"], "t-files");
    assert_eq!(report["run_number"], 1);
    assert_eq!(report["timeout_ms"], 120_000);
    assert!(report["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(report["duration_ms"].is_u64());
    assert_eq!(
        report["summary"],
        json!({"total": 4, "passed": 1, "failed": 1, "errors": 2, "timed_out": 0})
    );
    let first = &report["checks"][0];
    assert_eq!(first["type"], "file_exists");
    assert_eq!(first["target"], "present.txt");
    assert_eq!(first["description"], "the output file");
    assert!(first["output"].is_string() && first["duration_ms"].is_u64());
    assert!(report["checks"][2]["output"]
        .as_str()
        .unwrap()
        .contains("outside the repository directory"));
    assert_eq!(r["verification_history"], json!([report.clone()]));
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn git_clean_passes_on_a_clean_tree_and_fails_listing_changes() {
    let f = shell_task(
        "t-git",
        json!({"verification_steps": [step("git_clean", ".")]}),
    );
    let setup = |w: &std::path::Path| {
        git(w, &["init", "-q"]);
        std::fs::write(w.join("a.txt"), "a").unwrap();
        git(w, &["add", "a.txt"]);
        git(w, &["commit", "-q", "-m", "a"]);
    };
    let run = verify_in(setup, &f);
    assert_eq!(run.result()["verification_report"]["status"], "pass");

    let run = verify_in(
        |w| {
            setup(w);
            std::fs::write(w.join("new.txt"), "n").unwrap();
        },
        &f,
    );
    let report = &run.result()["verification_report"];
    assert_eq!(report["status"], "fail");
    assert!(report["checks"][0]["output"]
        .as_str()
        .unwrap()
        .contains("new.txt"));

    // Not a repository: the check could not run.
    let run = verify_in(|_| {}, &f);
    assert_eq!(statuses(&run.result()["verification_report"]), ["error"]);
}

#[test]
fn test_passes_and_command_succeeds_run_commands_and_auto_finds_the_test_runner() {
    let f = shell_task(
        "t-cmds",
        json!({"verification_steps": [
            step("test_passes", "test -e ok"),
            step("test_passes", "test -e missing"),
            step("command_succeeds", "echo fine"),
            step("command_succeeds", "echo bad; exit 4"),
            step("test_passes", "auto"),
        ]}),
    );
    let run = verify_in(
        |w| {
            std::fs::write(w.join("ok"), "").unwrap();
            std::fs::write(w.join("Makefile"), "test:\n\t@echo make-tests-ran\n").unwrap();
        },
        &f,
    );
    let report = &run.result()["verification_report"];
    assert_eq!(
        statuses(report),
        ["pass", "fail", "pass", "fail", "pass"],
        "{report:#}"
    );
    assert_eq!(report["checks"][2]["output"], "fine\n");
    let failed = report["checks"][3]["output"].as_str().unwrap();
    assert!(
        failed.contains("bad") && failed.contains("exit code 4"),
        "{failed}"
    );
    assert!(report["checks"][4]["output"]
        .as_str()
        .unwrap()
        .contains("make-tests-ran"));

    // No runner to find.
    let f = shell_task(
        "t-auto",
        json!({"verification_steps": [step("test_passes", "auto")]}),
    );
    let run = verify_in(|_| {}, &f);
    assert_eq!(statuses(&run.result()["verification_report"]), ["error"]);
}

#[test]
fn command_steps_are_skipped_without_the_opt_in() {
    let ollama = StandinOllama::start(OllamaBehaviour::Reply).unwrap();
    let marker = tempfile::tempdir().unwrap();
    let touch = format!("touch '{}/ran'", marker.path().display());
    let f = frame(
        "t-noopt",
        json!({
            "routing_decision": {"target_type": "ollama", "selected_endpoint": ollama.endpoint(), "selected_model": StandinOllama::MODEL},
            "verification_steps": [step("command_succeeds", &touch), step("test_passes", &touch)],
        }),
    );
    let run = run_agent("ollama", &f, &[]);
    let r = run.result();
    let report = &r["verification_report"];
    assert_eq!(statuses(report), ["skip", "skip"]);
    assert_eq!(report["status"], "skip");
    assert!(report["checks"][0]["output"]
        .as_str()
        .unwrap()
        .contains("allow_hub_commands"));
    assert!(!marker.path().join("ran").exists());
    assert_eq!(r["status"], "success");

    // With a check that can run: it decides.
    let mut f = f;
    f["verification_steps"]
        .as_array_mut()
        .unwrap()
        .push(step("file_exists", "nothing-here"));
    let run = run_agent("ollama", &f, &[]);
    assert_eq!(run.result()["verification_report"]["status"], "fail");
}

#[test]
fn skip_verification_and_no_steps() {
    let f = shell_task(
        "t-skip",
        json!({"skip_verification": true, "verification_steps": [step("file_exists", "missing")]}),
    );
    let report = run_agent("shell", &f, &[ALLOW]).result()["verification_report"].clone();
    assert_eq!(report["status"], "skip");
    assert_eq!(report["checks"], json!([]));
    assert_eq!(report["summary"]["total"], 0);

    let report = run_agent("shell", &shell_task("t-none", json!({})), &[ALLOW]).result()
        ["verification_report"]
        .clone();
    assert_eq!(report["status"], "auto_pass");
}

#[test]
fn the_verification_time_limit_ends_the_checks() {
    let f = shell_task(
        "t-vtimeout",
        json!({
            "verification_timeout_ms": 400,
            "verification_steps": [step("command_succeeds", "sleep 20"), step("file_exists", "x")],
        }),
    );
    let run = verify_in(|_| {}, &f);
    let report = &run.result()["verification_report"];
    assert_eq!(statuses(report), ["timeout", "timeout"]);
    assert_eq!(report["summary"]["timed_out"], 2);
    assert_eq!(report["status"], "fail");
    assert_eq!(report["timeout_ms"], 400);
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
}

#[test]
fn a_failed_check_asks_the_model_again_with_the_failure() {
    let ollama = StandinOllama::start(OllamaBehaviour::Reply).unwrap();
    // Fails the first time (and says so), passes the second.
    let check = "test -e marker || { touch marker; echo first-run-missing; exit 1; }";
    let f = frame(
        "t-retry",
        json!({
            "description": "Make the marker",
            "routing_decision": {"target_type": "ollama", "selected_endpoint": ollama.endpoint(), "selected_model": StandinOllama::MODEL},
            "verification_steps": [{"type": "command_succeeds", "target": check, "description": "the marker exists"}],
            "max_verification_retries": 2,
        }),
    );
    let run = run_agent("ollama", &f, &[ALLOW]);
    let r = run.result();
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["attempts"], 2);
    let history = r["verification_history"].as_array().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h["status"].clone())
            .collect::<Vec<_>>(),
        ["fail", "pass"]
    );
    assert_eq!(history[1]["run_number"], 2);
    assert_eq!(r["verification_report"], history[1]);

    let chats = ollama.chats();
    assert_eq!(chats.len(), 2);
    let second = chats[1].body["messages"][1]["content"].as_str().unwrap();
    for part in [
        "command_succeeds",
        "the marker exists",
        "first-run-missing",
        "Make the marker",
        StandinOllama::REPLY,
    ] {
        assert!(
            second.contains(part),
            "{part:?} in the corrective prompt:\n{second}"
        );
    }
    assert_eq!(
        chats[1].body["messages"][0], chats[0].body["messages"][0],
        "same system prompt"
    );
    // Tokens summed over both attempts.
    let chunks = StandinOllama::REPLY.split(' ').count() as u64;
    assert_eq!(r["tokens_out"], 2 * chunks);
    let words = |m: &Value| -> u64 {
        m["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().split_whitespace().count() as u64)
            .sum()
    };
    assert_eq!(
        r["tokens_in"],
        words(&chats[0].body) + words(&chats[1].body)
    );
}

#[test]
fn retries_end_at_the_limit_with_the_last_report() {
    let ollama = StandinOllama::start(OllamaBehaviour::Reply).unwrap();
    let f = frame(
        "t-exhausted",
        json!({
            "routing_decision": {"target_type": "ollama", "selected_endpoint": ollama.endpoint(), "selected_model": StandinOllama::MODEL},
            "verification_steps": [step("file_exists", "never.txt")],
            "max_verification_retries": 2,
        }),
    );
    let r = run_agent("ollama", &f, &[]).result();
    assert_eq!(ollama.chats().len(), 3);
    assert_eq!(r["attempts"], 3);
    assert_eq!(r["verification_history"].as_array().unwrap().len(), 3);
    assert_eq!(r["verification_report"]["status"], "fail");
    assert_eq!(r["verification_report"]["run_number"], 3);
}
