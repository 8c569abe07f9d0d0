//! The bundled agents: `agentcom-sidecar agent ollama|claude|shell`. Each is a short-lived
//! process the sidecar's waker starts for one task like any wake command (the task in
//! `TASK_FILE` and the environment, never in shell text); it answers through the files of
//! the agent contract (docs/usage/writing-an-agent.md) and exits. Nothing here runs inside
//! the sidecar process: a model's or a command's fault ends one agent, never the relay.
//!
//! - [`task`] — the environment contract, the task frame, `.started`, progress lines, the
//!   result file.
//! - `ollama` — a chat with an Ollama server, streamed (over [`http`], a minimal blocking
//!   HTTP/1.1 client).
//! - `claude` — the `claude` command-line tool in print mode with streamed JSON output.
//! - `shell` — the hub's `metadata.shell_command`, only when the operator allowed it.
//! - [`verify`] — the task's verification steps and the report the hub stores.
//! - `proc` — one program run in its own process group, killed whole.
//!
//! Every run ends with a result file: a failure is a result too (`status: "failed"` with a
//! short `reason` and an `error` for people), a panic included. Exit code 0 once a result is
//! written; 2 when the environment does not say where it goes.

mod claude;
pub mod http;
mod ollama;
mod proc;
mod shell;
pub mod task;
pub mod verify;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use task::{failed, Env, Files, Progress, Task};

/// Which agent to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ollama,
    Claude,
    Shell,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ollama => "ollama",
            Kind::Claude => "claude",
            Kind::Shell => "shell",
        }
    }
}

/// Runs one task with the agent `kind`, from the environment; the process's exit code.
pub fn run(kind: Kind) -> i32 {
    let env = match Env::from_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{} agent: {e}", env!("CARGO_PKG_NAME"));
            return 2;
        }
    };
    let files = Files::new(&env);
    if let Err(e) = files.started() {
        // The result confirms the start too; go on.
        eprintln!(
            "{} agent: .started not written: {e}",
            env!("CARGO_PKG_NAME")
        );
    }
    let start = Instant::now();
    let mut result = match Task::load(env) {
        Err(e) => failed(
            "task_unreadable",
            format!("the task could not be read: {e}"),
        ),
        Ok(task) => {
            let progress = Progress::new(&files);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
                Kind::Ollama => ollama::run(&task, &progress),
                Kind::Claude => claude::run(&task, &progress),
                Kind::Shell => shell::run(&task, &progress),
            }));
            let result = outcome.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                failed("agent_crashed", format!("the agent crashed: {what}"))
            });
            if result["status"] != "success" {
                if let Some(e) = result["error"].as_str() {
                    progress.event("error", e);
                }
            }
            result
        }
    };
    if result.get("execution_ms").is_none() {
        result["execution_ms"] = (start.elapsed().as_millis() as u64).into();
    }
    // One line for the wake log (the sidecar's log shows its start as the attempt's output).
    eprintln!(
        "{} agent {}: {}{}",
        env!("CARGO_PKG_NAME"),
        kind.name(),
        result["status"].as_str().unwrap_or("?"),
        result["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    match files.result(&result) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{} agent: result not written: {e}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}

/// What a model is asked.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

/// A model's answer and what it cost.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub text: String,
    pub model: Option<String>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: Option<f64>,
}

/// Why a model gave no answer: `reason` a short code, `error` the text for people, and what
/// had arrived before.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: &'static str,
    pub error: String,
    pub partial: Answer,
}

impl Failure {
    pub fn new(reason: &'static str, error: impl Into<String>) -> Failure {
        Failure {
            reason,
            error: error.into(),
            partial: Answer::default(),
        }
    }
}

/// A model the agents can ask.
pub trait Model {
    /// Asks once, streaming the answer's text to `progress`, within `deadline`.
    fn ask(
        &mut self,
        prompt: &Prompt,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<Answer, Failure>;
}

/// The most of a previous answer a corrective prompt repeats (its end).
const PREVIOUS_ANSWER_MAX: usize = 16 * 1024;

/// A model-run task from start to result: ask, verify, and after a failed verification ask
/// again with the failed checks, up to `max_verification_retries` times. Tokens, cost and
/// time are summed over the attempts; the report is the last attempt's, the history all of
/// them.
pub fn run_model(task: &Task, model: &mut dyn Model, progress: &Progress) -> Value {
    let start = Instant::now();
    let timeout = task.model_timeout();
    let deadline = start + timeout;
    let dir = task.repo_dir();
    let max_retries = task.max_verification_retries();
    let mut prompt = Prompt {
        system: task.system_prompt(),
        user: task.description(),
    };
    let mut history: Vec<Value> = Vec::new();
    let mut totals = Answer::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answer = match model.ask(&prompt, deadline, progress) {
            Ok(a) => a,
            Err(f) => {
                add(&mut totals, &f.partial);
                let mut result = failed(f.reason, f.error);
                fill(&mut result, &totals, &f.partial.text, start, attempt);
                if !history.is_empty() {
                    result["verification_report"] = history.last().cloned().unwrap_or_default();
                    result["verification_history"] = Value::Array(history);
                }
                return result;
            }
        };
        add(&mut totals, &answer);
        let report = verify::run(task, attempt, &dir, progress);
        history.push(report.clone());
        if verify::passed(&report) || attempt > max_retries {
            let mut result = json!({"status": "success"});
            fill(&mut result, &totals, &answer.text, start, attempt);
            if answer.model.is_some() {
                result["model_used"] = answer.model.clone().into();
            }
            result["verification_report"] = report;
            result["verification_history"] = Value::Array(history);
            return result;
        }
        progress.event(
            "status",
            &format!(
                "verification failed (attempt {attempt} of {}): asking again with the failed checks",
                max_retries + 1
            ),
        );
        prompt.user = corrective(task, &report, &answer.text);
    }
}

fn add(totals: &mut Answer, a: &Answer) {
    totals.tokens_in += a.tokens_in;
    totals.tokens_out += a.tokens_out;
    if let Some(c) = a.cost_usd {
        totals.cost_usd = Some(totals.cost_usd.unwrap_or(0.0) + c);
    }
    if a.model.is_some() {
        totals.model.clone_from(&a.model);
    }
}

/// The most of an answer the result keeps (its start): the sidecar refuses result files over
/// `max_result_bytes` (16 MiB by default), and a result must always get through.
const OUTPUT_MAX: usize = 4 << 20;

fn fill(result: &mut Value, totals: &Answer, output: &str, start: Instant, attempts: u64) {
    if output.len() > OUTPUT_MAX {
        let mut cut = OUTPUT_MAX;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        result["output"] = output[..cut].into();
        result["output_truncated"] = true.into();
    } else {
        result["output"] = output.into();
    }
    result["model_used"] = totals.model.clone().into();
    result["tokens_in"] = totals.tokens_in.into();
    result["tokens_out"] = totals.tokens_out.into();
    result["tokens_used"] = (totals.tokens_in + totals.tokens_out).into();
    if let Some(c) = totals.cost_usd {
        result["estimated_cost_usd"] = c.into();
    }
    result["execution_ms"] = (start.elapsed().as_millis() as u64).into();
    result["attempts"] = attempts.into();
}

/// The prompt of a retry: what failed, the task, and the previous answer.
fn corrective(task: &Task, report: &Value, previous: &str) -> String {
    let mut cut = previous.len().saturating_sub(PREVIOUS_ANSWER_MAX);
    while !previous.is_char_boundary(cut) {
        cut += 1;
    }
    format!(
        "Your previous answer to this task did not pass verification.\n\nChecks that failed:\n{}\nThe task:\n{}\n\nYour previous answer{}:\n{}\n\nGive the complete answer again, corrected so that every check passes.",
        verify::failures(report),
        task.description(),
        if cut > 0 { " (its end)" } else { "" },
        &previous[cut..],
    )
}

/// Milliseconds, for messages.
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}
