//! `agentcom-sidecar agent ollama` against the stand-in Ollama server: the streamed answer
//! in the progress file and the result, where the endpoint and the model come from, every
//! fault as a failed result with its reason, the time limit; and once end to end through a
//! real sidecar and dev hub.

mod agent_support;
mod common;

use std::time::Duration;

use agent_support::{frame, run_agent, AgentRun};
use agentcom_sidecar::devhub::ollama::{OllamaBehaviour, StandinOllama};
use serde_json::{json, Value};

const MODEL: &str = StandinOllama::MODEL;

fn standin(behaviour: OllamaBehaviour) -> StandinOllama {
    StandinOllama::start(behaviour).expect("the stand-in starts")
}

/// A task routed to the stand-in with its model.
fn routed(task_id: &str, ollama: &StandinOllama, extra: Value) -> Value {
    let mut f = frame(
        task_id,
        json!({"routing_decision": {
            "effective_tier": "standard",
            "target_type": "ollama",
            "selected_endpoint": ollama.endpoint(),
            "selected_model": MODEL,
        }}),
    );
    f.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    f
}

fn run(f: &Value, env: &[(&str, &str)]) -> AgentRun {
    run_agent("ollama", f, env)
}

#[test]
fn the_answer_streams_to_progress_and_the_result_has_text_tokens_and_model() {
    let ollama = standin(OllamaBehaviour::Reply);
    let f = routed(
        "t-reply",
        &ollama,
        json!({
            "description": "Explain the plan",
            "repo": "https://git.example/acme/widgets",
            "branch": "feature/x",
            "file_hints": [{"path": "src/lib.rs", "reason": "the entry point"}, "README.md"],
            "success_criteria": ["the tests pass"],
        }),
    );
    let run = run(&f, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.started());
    let r = run.result();
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["output"], StandinOllama::REPLY);
    assert_eq!(r["model_used"], MODEL);
    let chunks = StandinOllama::REPLY.split(' ').count() as u64;
    assert_eq!(r["tokens_out"], chunks);
    let tokens_in = r["tokens_in"].as_u64().unwrap();
    assert!(tokens_in > 10, "prompt words counted: {r:#}");
    assert_eq!(r["tokens_used"], tokens_in + chunks);
    assert!(r["execution_ms"].is_u64());
    assert_eq!(r["verification_report"]["status"], "auto_pass");
    assert_eq!(r["verification_history"].as_array().unwrap().len(), 1);

    // The progress lines hold the whole text, in order, in far fewer lines than chunks.
    assert_eq!(run.streamed("token"), StandinOllama::REPLY);
    let tokens: Vec<Value> = run
        .progress()
        .into_iter()
        .filter(|e| e["event_type"] == "token")
        .collect();
    assert!(!tokens.is_empty() && (tokens.len() as u64) < chunks / 4);
    for t in &tokens {
        assert_eq!(t["model"], MODEL);
        assert!(
            t["tokens_so_far"].is_u64() && t["timestamp"].is_u64(),
            "{t}"
        );
    }
    assert_eq!(
        tokens.last().unwrap()["tokens_so_far"],
        chunks,
        "the last line counts every chunk"
    );

    // What was asked: the system prompt from the task's fields, the description as is.
    let chats = ollama.chats();
    assert_eq!(chats.len(), 1);
    let body = &chats[0].body;
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert_eq!(body["messages"][0]["role"], "system");
    for part in [
        "https://git.example/acme/widgets",
        "feature/x",
        "src/lib.rs (the entry point)",
        "README.md",
        "the tests pass",
    ] {
        assert!(
            system.contains(part),
            "{part:?} in the system prompt:\n{system}"
        );
    }
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Explain the plan"})
    );
}

#[test]
fn a_long_answer_is_batched_into_lines_of_bounded_size() {
    let ollama = standin(OllamaBehaviour::Reply);
    let long: String = (0..4000).map(|i| format!("word{i} ")).collect();
    ollama.set_reply(&long);
    let run = run(&routed("t-long", &ollama, json!({})), &[]);
    assert_eq!(run.result()["output"], long.as_str());
    assert_eq!(run.streamed("token"), long);
    let lines: Vec<Value> = run
        .progress()
        .into_iter()
        .filter(|e| e["event_type"] == "token")
        .collect();
    assert!(lines.len() >= long.len() / 4096, "{} lines", lines.len());
    assert!(
        lines.len() < 4000 / 20,
        "{} lines for 4000 chunks",
        lines.len()
    );
    assert!(lines
        .iter()
        .all(|l| l["text"].as_str().unwrap().len() <= 4096));
}

#[test]
fn endpoint_and_model_fall_back_to_the_environment_then_to_the_server_list() {
    let ollama = standin(OllamaBehaviour::Reply);
    // No routing decision: AGENTCOM_OLLAMA_URL and TASK_MODEL.
    let f = frame("t-env", json!({}));
    let run1 = run(
        &f,
        &[
            ("AGENTCOM_OLLAMA_URL", &ollama.url()),
            ("TASK_MODEL", MODEL),
        ],
    );
    assert_eq!(run1.result()["status"], "success", "{:#}", run1.result());
    // No model anywhere: the first one the server lists.
    let run2 = run(&f, &[("AGENTCOM_OLLAMA_URL", &ollama.endpoint())]);
    assert_eq!(run2.result()["model_used"], MODEL, "{:#}", run2.result());
    let requests = ollama.requests();
    assert_eq!(
        requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>(),
        ["POST /api/chat", "GET /api/tags", "POST /api/chat"]
    );
}

#[test]
fn a_refused_connection_is_ollama_unreachable() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let f = frame(
        "t-refused",
        json!({"routing_decision": {"target_type": "ollama", "selected_endpoint": format!("127.0.0.1:{port}"), "selected_model": MODEL}}),
    );
    let run = run(&f, &[]);
    let r = run.failed_with("ollama_unreachable");
    assert!(
        r["error"].as_str().unwrap().contains(&port.to_string()),
        "{r:#}"
    );
    assert!(run.started());
    // Tried three times, with short pauses: it did not hang.
    assert!(run.elapsed < Duration::from_secs(10));
    let retries = run
        .progress()
        .iter()
        .filter(|e| {
            e["event_type"] == "status" && e["text"].as_str().unwrap().contains("trying again")
        })
        .count();
    assert_eq!(retries, 2);
}

#[test]
fn an_unknown_model_is_model_not_found_without_retry() {
    let ollama = standin(OllamaBehaviour::Reply);
    let mut f = routed("t-nomodel", &ollama, json!({}));
    f["routing_decision"]["selected_model"] = "llama-nope:1b".into();
    let run = run(&f, &[]);
    let r = run.failed_with("model_not_found");
    assert!(
        r["error"].as_str().unwrap().contains("llama-nope:1b"),
        "{r:#}"
    );
    assert_eq!(ollama.chats().len(), 1);
}

#[test]
fn server_errors_are_retried_then_reported() {
    let ollama = standin(OllamaBehaviour::Http500);
    let run1 = run(&routed("t-500", &ollama, json!({})), &[]);
    let r = run1.failed_with("ollama_http_error");
    assert!(r["error"].as_str().unwrap().contains("500"), "{r:#}");
    assert_eq!(ollama.chats().len(), 3, "three tries");

    // One 500, then an answer: the retry gets it.
    let ollama = standin(OllamaBehaviour::Http500First(1));
    let run2 = run(&routed("t-500-once", &ollama, json!({})), &[]);
    assert_eq!(run2.result()["output"], StandinOllama::REPLY);
    assert_eq!(ollama.chats().len(), 2);
}

#[test]
fn a_stream_cut_halfway_is_stream_cut_with_the_text_so_far_and_no_retry() {
    let ollama = standin(OllamaBehaviour::CutMidStream);
    let run = run(&routed("t-cut", &ollama, json!({})), &[]);
    let r = run.failed_with("stream_cut");
    let partial = r["output"].as_str().unwrap();
    assert!(!partial.is_empty() && StandinOllama::REPLY.starts_with(partial));
    assert!(partial.len() < StandinOllama::REPLY.len());
    assert_eq!(run.streamed("token"), partial);
    assert_eq!(ollama.chats().len(), 1, "text had come: no retry");
    assert!(run
        .progress()
        .iter()
        .any(|e| e["event_type"] == "error" && e["text"] == r["error"]));
}

#[test]
fn an_error_line_in_the_stream_is_ollama_error() {
    let ollama = standin(OllamaBehaviour::ErrorMidStream("out of memory".into()));
    let run = run(&routed("t-errline", &ollama, json!({})), &[]);
    let r = run.failed_with("ollama_error");
    assert!(r["error"].as_str().unwrap().contains("out of memory"));
}

#[test]
fn a_slow_stream_ends_at_the_time_limit() {
    let ollama = standin(OllamaBehaviour::Slow(Duration::from_millis(100)));
    let run = run(
        &routed("t-slow", &ollama, json!({})),
        &[("AGENTCOM_AGENT_TIMEOUT_MS", "700")],
    );
    let r = run.failed_with("timeout");
    assert!(r["error"].as_str().unwrap().contains("700 ms"), "{r:#}");
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    // What came before the limit is kept, and was streamed.
    let partial = r["output"].as_str().unwrap();
    assert!(StandinOllama::REPLY.starts_with(partial));
    assert_eq!(run.streamed("token"), partial);

    // metadata.timeout_ms, under the operator's cap, applies too.
    let run = run_agent(
        "ollama",
        &routed(
            "t-slow-meta",
            &ollama,
            json!({"metadata": {"timeout_ms": 300}}),
        ),
        &[("AGENTCOM_AGENT_TIMEOUT_MS", "60000")],
    );
    let r = run.failed_with("timeout");
    assert!(r["error"].as_str().unwrap().contains("300 ms"), "{r:#}");
}

#[test]
fn an_unreadable_task_file_still_gets_a_result_and_a_missing_task_id_exit_code_2() {
    let dir = agent_support::prepare();
    let out = std::process::Command::new(agent_support::bin())
        .args(["agent", "ollama"])
        .env("TASK_ID", "t-nofile")
        .env("TASK_FILE", dir.path().join("missing.json"))
        .env("RESULTS_DIR", dir.path().join("results"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results/t-nofile.json")).unwrap())
            .unwrap();
    assert_eq!(r["reason"], "task_unreadable");

    let out = std::process::Command::new(agent_support::bin())
        .args(["agent", "ollama"])
        .env_remove("TASK_ID")
        .env("RESULTS_DIR", dir.path().join("results"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TASK_ID"));
}

/// End to end: a real sidecar whose wake command for `ollama` tasks is the bundled agent,
/// a task pushed by the dev hub, the answer in `task_complete`, one wake attempt.
#[test]
fn end_to_end_through_the_sidecar() {
    use common::*;
    let ollama = standin(OllamaBehaviour::Reply);
    let hub = hub();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({
            "wake_commands": {"ollama": [bin(), "agent", "ollama"]},
            "ollama_url": ollama.url(),
        }),
    );
    let sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    assign(
        &hub,
        json!({
            "task_id": "t-e2e",
            "generation": 1,
            "description": "Explain the plan",
            "routing_decision": {
                "effective_tier": "standard",
                "target_type": "ollama",
                "selected_endpoint": ollama.endpoint(),
                "selected_model": MODEL,
            },
        }),
    );
    let complete = wait_task_frame(&hub, "task_complete", "t-e2e", 1);
    assert_eq!(
        complete["result"]["output"],
        StandinOllama::REPLY,
        "{complete:#}"
    );
    assert_eq!(complete["result"]["model_used"], MODEL);
    assert_eq!(wake_attempts(&sidecar, "t-e2e"), 1, "{}", sidecar.dump());
    assert_eq!(ollama.chats().len(), 1);
}
