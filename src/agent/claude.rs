//! `agentcom-sidecar agent claude`: the task given to the `claude` command-line tool in print
//! mode with streamed JSON output.
//!
//! The program is `AGENTCOM_CLAUDE_COMMAND` (default `claude`, looked up on `PATH`), run with
//! an argument list, never through a shell: `-p --output-format stream-json --verbose
//! [--model <M>]`, in the repository directory. The prompt (system prompt, a blank line, the
//! description) goes on its stdin (`-p` without a prompt argument reads it there), never on
//! the command line that other local users can read. `--model` is left out when the task names no
//! model or the hub's literal `claude` (the tool's own default then applies).
//!
//! The output's lines are JSON events: text in `content_block_delta` events (`delta.text`,
//! also inside a `stream_event`), whole `assistant` messages (`message.content[].text`, used
//! when no delta came), and the final `result` event with `result`, `usage.input_tokens`,
//! `usage.output_tokens`, `total_cost_usd` and `model`. Faults: `claude_not_installed` (the
//! program is not there), `claude_not_runnable`, `claude_error` (a `result` with `is_error`),
//! `claude_failed` (it ended without a result), `timeout` (its process group is killed).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proc::{self, Stream};
use super::task::{Progress, Tail, Task, Utf8Stream};
use super::{ms, Answer, Failure, Model, Prompt};

/// The most of a line of output kept (longer lines are not parsed).
const LINE_MAX: usize = 8 << 20;

pub fn run(task: &Task, progress: &Progress) -> serde_json::Value {
    let model = task.model().filter(|m| m != "claude");
    if let Some(m) = &model {
        progress.counts(None, Some(m));
    }
    progress.event("status", &format!("running {}", task.env.claude_command));
    let mut claude = Claude {
        program: task.env.claude_command.clone(),
        model,
        dir: task.repo_dir(),
        limit: task.model_timeout(),
    };
    super::run_model(task, &mut claude, progress)
}

struct Claude {
    program: String,
    model: Option<String>,
    dir: std::path::PathBuf,
    limit: Duration,
}

/// What the event stream said so far.
#[derive(Default)]
struct Events {
    text: String,
    /// Whether delta text came since the last whole message.
    deltas: bool,
    model: Option<String>,
    result: Option<Value>,
}

impl Events {
    fn line(&mut self, line: &str, progress: &Progress) {
        let Ok(event) = serde_json::from_str::<Value>(line.trim()) else {
            return;
        };
        let inner = if event["type"] == "stream_event" {
            &event["event"]
        } else {
            &event
        };
        match inner["type"].as_str() {
            Some("system") => {
                if let Some(m) = inner["model"].as_str() {
                    self.set_model(m, progress);
                }
            }
            Some("content_block_delta") => {
                if let Some(t) = inner["delta"]["text"].as_str() {
                    self.deltas = true;
                    self.text.push_str(t);
                    progress.text("token", t);
                }
            }
            Some("message_start") => {
                if let Some(m) = inner["message"]["model"].as_str() {
                    self.set_model(m, progress);
                }
            }
            Some("assistant") => {
                if let Some(m) = inner["message"]["model"].as_str() {
                    self.set_model(m, progress);
                }
                if !self.deltas {
                    for part in inner["message"]["content"].as_array().into_iter().flatten() {
                        if let Some(t) = part["text"].as_str() {
                            self.text.push_str(t);
                            progress.text("token", t);
                        }
                    }
                }
                self.deltas = false;
            }
            Some("result") => {
                if let Some(m) = inner["model"].as_str() {
                    self.set_model(m, progress);
                }
                self.result = Some(inner.clone());
            }
            _ => {}
        }
    }

    fn set_model(&mut self, model: &str, progress: &Progress) {
        if !model.is_empty() && self.model.as_deref() != Some(model) {
            self.model = Some(model.to_string());
            progress.counts(None, Some(model));
        }
    }
}

impl Model for Claude {
    fn ask(
        &mut self,
        prompt: &Prompt,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<Answer, Failure> {
        let text = format!("{}\n\n{}", prompt.system.trim_end(), prompt.user);
        let mut cmd = Command::new(&self.program);
        // The prompt goes on stdin, never on the command line: the task's text is not for
        // other local users to read in /proc/PID/cmdline (`ps`).
        cmd.arg("-p");
        let stdin = Some(text.into_bytes());
        cmd.args(["--output-format", "stream-json", "--verbose"]);
        if let Some(m) = &self.model {
            cmd.args(["--model", m]);
        }
        cmd.current_dir(&self.dir);
        let mut events = Events {
            model: self.model.clone(),
            ..Events::default()
        };
        let mut line = Vec::new();
        let mut err_text = Utf8Stream::default();
        let mut stderr = Tail::new(4096);
        let outcome = proc::run(cmd, stdin, deadline, |stream, bytes| match stream {
            Stream::Stdout => {
                for &b in bytes {
                    if b == b'\n' {
                        events.line(&String::from_utf8_lossy(&line), progress);
                        line.clear();
                    } else if line.len() < LINE_MAX {
                        line.push(b);
                    }
                }
            }
            Stream::Stderr => {
                let t = err_text.push(bytes);
                stderr.push(&t);
                progress.text("stderr", &t);
            }
        });
        if !line.is_empty() {
            events.line(&String::from_utf8_lossy(&line), progress);
        }
        progress.flush();
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let (reason, error) = match e.kind() {
                    std::io::ErrorKind::NotFound => (
                        "claude_not_installed",
                        format!(
                            "the Claude command-line tool ({:?}) is not installed or not on PATH: install it with `npm install -g @anthropic-ai/claude-code`, or set AGENTCOM_CLAUDE_COMMAND to its path",
                            self.program
                        ),
                    ),
                    _ => (
                        "claude_not_runnable",
                        format!("{:?} could not be started: {e}", self.program),
                    ),
                };
                return Err(Failure::new(reason, error));
            }
        };
        let mut answer = Answer {
            text: events.text.clone(),
            model: events.model.clone(),
            ..Answer::default()
        };
        if outcome.timed_out() {
            return Err(Failure {
                reason: "timeout",
                error: format!(
                    "claude did not finish within the task's time limit ({} ms); its process group was killed",
                    ms(self.limit)
                ),
                partial: answer,
            });
        }
        let Some(result) = events.result else {
            return Err(Failure {
                reason: "claude_failed",
                error: format!(
                    "claude ended ({}) without a result: {}",
                    outcome.describe(),
                    stderr.text().trim()
                ),
                partial: answer,
            });
        };
        answer.tokens_in = result["usage"]["input_tokens"].as_u64().unwrap_or(0);
        answer.tokens_out = result["usage"]["output_tokens"].as_u64().unwrap_or(0);
        answer.cost_usd = result["total_cost_usd"].as_f64();
        if answer.model.is_none() {
            // `modelUsage` is keyed by model.
            answer.model = result["modelUsage"]
                .as_object()
                .and_then(|m| m.keys().next().cloned());
        }
        if let Some(t) = result["result"].as_str() {
            answer.text = t.to_string();
        }
        let is_error = result["is_error"] == true
            || result["subtype"].as_str().is_some_and(|s| s != "success");
        if is_error {
            return Err(Failure {
                reason: "claude_error",
                error: format!(
                    "claude reported an error ({}): {}",
                    result["subtype"].as_str().unwrap_or("error"),
                    result["result"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| stderr.text())
                ),
                partial: answer,
            });
        }
        Ok(answer)
    }
}
