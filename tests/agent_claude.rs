//! `agentcom-sidecar agent claude` with a stand-in `claude` program (a shell script written
//! by the test) that records its argument list, stdin and directory and prints stream-json
//! lines: the prompt arrives as one argument, intact, whatever it holds; a large prompt comes
//! on stdin; the events become progress and the result; each fault has its reason; the time
//! limit kills the program's whole process group.

mod agent_support;

use std::path::Path;
use std::time::Duration;

use agent_support::{frame, gone, prepare, read_pid, run_agent_in, AgentRun};
use serde_json::{json, Value};

/// The stand-in: records argv (NUL-separated), its directory, and stdin when the prompt is
/// not an argument; then behaves as STANDIN_MODE says.
const STANDIN: &str = r#"#!/bin/sh
rec=$(dirname "$0")
for a in "$@"; do printf '%s\0' "$a"; done > "$rec/argv"
pwd > "$rec/cwd"
if [ "$2" = "--output-format" ]; then cat > "$rec/stdin"; fi
case "${STANDIN_MODE:-ok}" in
ok)
  echo '{"type":"system","subtype":"init","model":"claude-sonnet-4-5","tools":[]}'
  echo '{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}}'
  echo '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", world"}}'
  echo '{"type":"assistant","message":{"model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello, world"}]}}'
  echo 'not json at all'
  echo '{"type":"result","subtype":"success","is_error":false,"result":"Hello, world","usage":{"input_tokens":12,"output_tokens":3},"total_cost_usd":0.0012,"model":"claude-sonnet-4-5"}'
  ;;
messages)
  echo '{"type":"assistant","message":{"content":[{"type":"text","text":"One. "}]}}'
  echo '{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Read"},{"type":"text","text":"Two."}]}}'
  echo '{"type":"result","subtype":"success","is_error":false,"result":"One. Two.","usage":{"input_tokens":5,"output_tokens":2},"modelUsage":{"claude-haiku-4-5":{}}}'
  ;;
error)
  echo '{"type":"result","subtype":"error_max_turns","is_error":true,"result":"too many turns","usage":{"input_tokens":1,"output_tokens":1}}'
  ;;
crash)
  echo 'Error: invalid API key' >&2
  exit 1
  ;;
hang)
  sleep 30 &
  echo $! > "$rec/bg"
  echo '{"type":"content_block_delta","delta":{"text":"thinking"}}'
  sleep 30
  ;;
esac
"#;

/// A run directory with the stand-in at `<dir>/bin/claude`.
fn with_standin() -> (tempfile::TempDir, String) {
    let dir = prepare();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let path = bin.join("claude");
    std::fs::write(&path, STANDIN).unwrap();
    chmod_755(&path);
    let program = path.to_str().unwrap().to_string();
    (dir, program)
}

fn chmod_755(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn claude_task(task_id: &str, model: &str, extra: Value) -> Value {
    let mut f = frame(
        task_id,
        json!({"routing_decision": {"effective_tier": "complex", "target_type": "claude", "selected_endpoint": "claude_api", "selected_model": model}}),
    );
    f.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    f
}

fn run(mode: &str, f: &Value, extra_env: &[(&str, &str)]) -> AgentRun {
    let (dir, program) = with_standin();
    let mut env = vec![
        ("AGENTCOM_CLAUDE_COMMAND", program.as_str()),
        ("STANDIN_MODE", mode),
    ];
    env.extend_from_slice(extra_env);
    run_agent_in(dir, "claude", f, &env)
}

fn argv(run: &AgentRun) -> Vec<String> {
    let bytes = std::fs::read(run.path().join("bin/argv")).expect("the stand-in ran");
    let mut args: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect();
    // The empty piece after the last NUL.
    assert_eq!(args.pop().as_deref(), Some(""));
    args
}

#[test]
fn a_hostile_prompt_arrives_intact_on_stdin_never_on_the_command_line_and_the_events_become_the_result(
) {
    let marker = tempfile::tempdir().unwrap();
    let m = marker.path().display();
    let description = format!(
        "Fix it $(touch {m}/dollar) and `touch {m}/backtick`; echo 'single' \"double\" \\ \n second line ${{HOME}} ; touch {m}/semicolon\n\ttab & touch {m}/amp | cat"
    );
    let f = claude_task(
        "t-hostile",
        "claude-opus-4-1",
        json!({"description": description, "repo": "acme/widgets"}),
    );
    let run = run("ok", &f, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let args = argv(&run);
    assert_eq!(args.len(), 6, "{args:#?}");
    assert_eq!(args[0], "-p");
    let stdin = std::fs::read_to_string(run.path().join("bin/stdin")).unwrap();
    assert!(stdin.ends_with(&format!("\n\n{description}")), "{stdin:?}");
    assert!(stdin.contains("Repository: acme/widgets"));
    assert!(!args.iter().any(|a| a.contains("Fix it")), "{args:#?}");
    assert_eq!(
        &args[1..],
        [
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "claude-opus-4-1"
        ]
    );
    assert_eq!(
        std::fs::read_dir(marker.path()).unwrap().count(),
        0,
        "nothing ran"
    );
    // The directory: the agent's working directory (no metadata.repo_dir).
    let cwd = std::fs::read_to_string(run.path().join("bin/cwd")).unwrap();
    assert_eq!(
        Path::new(cwd.trim()).canonicalize().unwrap(),
        run.work().canonicalize().unwrap()
    );

    let r = run.result();
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["output"], "Hello, world");
    assert_eq!(r["model_used"], "claude-sonnet-4-5");
    assert_eq!(
        (r["tokens_in"].as_u64(), r["tokens_out"].as_u64()),
        (Some(12), Some(3))
    );
    assert_eq!(r["tokens_used"], 15);
    assert_eq!(r["estimated_cost_usd"], 0.0012);
    assert!(r["execution_ms"].is_u64());
    // Deltas streamed, the whole message not repeated.
    assert_eq!(run.streamed("token"), "Hello, world");
}

#[test]
fn the_hub_literal_claude_model_is_left_to_the_tool_and_whole_messages_are_streamed() {
    let run = run("messages", &claude_task("t-msg", "claude", json!({})), &[]);
    let args = argv(&run);
    assert_eq!(&args[1..], ["--output-format", "stream-json", "--verbose"]);
    let r = run.result();
    assert_eq!(r["output"], "One. Two.");
    assert_eq!(r["model_used"], "claude-haiku-4-5");
    assert_eq!(run.streamed("token"), "One. Two.");
}

#[test]
fn a_prompt_over_100_kib_goes_on_stdin() {
    let description = "x".repeat(150 * 1024);
    let run = run(
        "ok",
        &claude_task("t-big", "claude", json!({"description": description})),
        &[],
    );
    let args = argv(&run);
    assert_eq!(args, ["-p", "--output-format", "stream-json", "--verbose"]);
    let stdin = std::fs::read_to_string(run.path().join("bin/stdin")).unwrap();
    assert!(stdin.ends_with(&format!("\n\n{description}")));
    assert_eq!(run.result()["status"], "success");
}

#[test]
fn not_installed_says_how_to_install() {
    let f = claude_task("t-none", "claude", json!({}));
    let run = agent_support::run_agent(
        "claude",
        &f,
        &[("AGENTCOM_CLAUDE_COMMAND", "/nonexistent/bin/claude")],
    );
    let r = run.failed_with("claude_not_installed");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("npm install -g @anthropic-ai/claude-code")
            && e.contains("AGENTCOM_CLAUDE_COMMAND"),
        "{e}"
    );
}

#[test]
fn an_error_result_and_a_crash_are_failures_with_their_reasons() {
    let run1 = run("error", &claude_task("t-err", "claude", json!({})), &[]);
    let r = run1.failed_with("claude_error");
    assert!(
        r["error"].as_str().unwrap().contains("too many turns"),
        "{r:#}"
    );

    let run2 = run("crash", &claude_task("t-crash", "claude", json!({})), &[]);
    let r = run2.failed_with("claude_failed");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("exit code 1") && e.contains("invalid API key"),
        "{e}"
    );
    assert_eq!(run2.streamed("stderr"), "Error: invalid API key\n");
}

#[test]
fn the_time_limit_kills_the_whole_process_group() {
    let run = run(
        "hang",
        &claude_task("t-hang", "claude", json!({})),
        &[("AGENTCOM_AGENT_TIMEOUT_MS", "500")],
    );
    let r = run.failed_with("timeout");
    assert!(
        r["error"].as_str().unwrap().contains("process group"),
        "{r:#}"
    );
    assert_eq!(r["output"], "thinking");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    let bg = read_pid(&run.path().join("bin/bg"));
    agent_support::eventually("the background child killed", || gone(bg));
}
