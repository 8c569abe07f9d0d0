//! `agentcom-sidecar agent ollama`: the task as a chat with an Ollama server, streamed.
//!
//! `POST <endpoint>/api/chat` with `stream: true`: the endpoint is the routing decision's
//! `selected_endpoint` (the hub gives `host:port`; `http://` is added), else
//! `AGENTCOM_OLLAMA_URL`, else `http://localhost:11434`; the model is the routing decision's
//! `selected_model`, else `TASK_MODEL`, else the first model the server lists
//! (`GET /api/tags`). The answer comes as NDJSON chunks (`message.content`; the last one
//! `done: true` with `prompt_eval_count` and `eval_count`), streamed to the progress file as
//! `token` events.
//!
//! Faults, each a failed result: `ollama_unreachable` (no connection, or no response),
//! `ollama_http_error` (an HTTP error status), `model_not_found` (404, or an error naming the
//! model), `ollama_error` (an `{"error": …}` line in the stream), `stream_cut` (the stream
//! ended before `done`), `ollama_bad_response` (a line that is not JSON), `timeout`,
//! `ollama_bad_endpoint`, `no_model`. A refused connection, a failed connection or a 5xx is
//! tried again (three tries in all, 250 ms then 750 ms apart), only before any text came.

use std::io::{BufRead, Read};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{self, Url};
use super::task::{failed, Progress, Task};
use super::{ms, Answer, Failure, Model, Prompt};

const DEFAULT_URL: &str = "http://localhost:11434";
/// Delays before the second and third try.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(750)];
/// The longest NDJSON line read.
const LINE_MAX: u64 = 4 << 20;
/// The most of an error body kept.
const ERROR_BODY_MAX: u64 = 4096;

pub fn run(task: &Task, progress: &Progress) -> Value {
    let endpoint = task
        .routing("selected_endpoint")
        .map(str::to_string)
        .or_else(|| task.env.ollama_url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let url = match Url::parse(&endpoint) {
        Ok(u) => u,
        Err(e) => return failed("ollama_bad_endpoint", format!("Ollama endpoint: {e}")),
    };
    let model = match task.model() {
        Some(m) => m,
        None => match first_model(&url, Instant::now() + Duration::from_secs(30)) {
            Ok(m) => m,
            Err(f) => return failed(f.reason, f.error),
        },
    };
    progress.counts(None, Some(&model));
    progress.event("status", &format!("asking {model} at {}", url.display()));
    let mut ollama = Ollama {
        url,
        model,
        limit: task.model_timeout(),
    };
    super::run_model(task, &mut ollama, progress)
}

struct Ollama {
    url: Url,
    model: String,
    /// The task's time limit, for messages.
    limit: Duration,
}

/// The first model of `GET /api/tags`, for a task that names none.
fn first_model(url: &Url, deadline: Instant) -> Result<String, Failure> {
    let limit = deadline.saturating_duration_since(Instant::now());
    let response = http::request(url, "GET", "/api/tags", None, deadline)
        .map_err(|e| request_failure(url, e, limit))?;
    let status = response.status;
    let body = response
        .text(1 << 20)
        .map_err(|e| request_failure(url, e, limit))?;
    if status != 200 {
        return Err(Failure::new(
            "ollama_http_error",
            format!(
                "Ollama at {} answered HTTP {status} to GET /api/tags: {body}",
                url.display()
            ),
        ));
    }
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["models"][0]["name"].as_str().map(str::to_string))
        .ok_or_else(|| {
            Failure::new(
                "no_model",
                format!(
                    "the task names no model and Ollama at {} lists none",
                    url.display()
                ),
            )
        })
}

fn request_failure(url: &Url, e: http::Error, limit: Duration) -> Failure {
    match e {
        http::Error::Timeout => timeout(limit),
        http::Error::Connect(e) => Failure::new(
            "ollama_unreachable",
            format!("Ollama at {} is unreachable: {e}", url.display()),
        ),
        http::Error::Io(e) => Failure::new(
            "ollama_unreachable",
            format!("no response from Ollama at {}: {e}", url.display()),
        ),
    }
}

fn timeout(limit: Duration) -> Failure {
    Failure::new(
        "timeout",
        format!(
            "no complete answer from Ollama within the task's time limit ({} ms)",
            ms(limit)
        ),
    )
}

impl Model for Ollama {
    fn ask(
        &mut self,
        prompt: &Prompt,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<Answer, Failure> {
        let body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "stream": true,
        })
        .to_string();
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let failure = match http::request(
                &self.url,
                "POST",
                "/api/chat",
                Some(body.as_bytes()),
                deadline,
            ) {
                Ok(r) if r.status == 200 => {
                    return self.stream(r, deadline, progress, started);
                }
                Ok(r) => {
                    let status = r.status;
                    let text = r.text(ERROR_BODY_MAX).unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or(text);
                    if status == 404 || (status < 500 && mentions_missing_model(&message)) {
                        return Err(Failure::new(
                            "model_not_found",
                            format!(
                                "Ollama at {} does not have model {:?} (HTTP {status}: {message}); pull it with `ollama pull {}`",
                                self.url.display(),
                                self.model,
                                self.model
                            ),
                        ));
                    }
                    let f = Failure::new(
                        "ollama_http_error",
                        format!(
                            "Ollama at {} answered HTTP {status}: {message}",
                            self.url.display()
                        ),
                    );
                    if status < 500 {
                        return Err(f);
                    }
                    f
                }
                Err(http::Error::Timeout) => return Err(timeout(self.limit)),
                Err(e) => request_failure(&self.url, e, self.limit),
            };
            let Some(delay) = RETRY_DELAYS.get(tries - 1) else {
                return Err(failure);
            };
            if Instant::now() + *delay >= deadline {
                return Err(failure);
            }
            progress.event(
                "status",
                &format!("{}; trying again in {} ms", failure.error, ms(*delay)),
            );
            std::thread::sleep(*delay);
        }
    }
}

fn mentions_missing_model(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("model") && m.contains("not found")
}

impl Ollama {
    /// Reads the NDJSON chunks up to `done: true`.
    fn stream(
        &self,
        response: http::Response,
        deadline: Instant,
        progress: &Progress,
        started: Instant,
    ) -> Result<Answer, Failure> {
        let mut body = response.body;
        let mut answer = Answer {
            model: Some(self.model.clone()),
            ..Answer::default()
        };
        let mut chunks: u64 = 0;
        let fail = |reason: &'static str, error: String, answer: &Answer| Failure {
            reason,
            error,
            partial: answer.clone(),
        };
        loop {
            let mut line = Vec::new();
            let read = (&mut body).take(LINE_MAX).read_until(b'\n', &mut line);
            match read {
                Err(e) => {
                    progress.flush();
                    return Err(match http::io_error(e) {
                        http::Error::Timeout => Failure {
                            partial: answer,
                            ..timeout(self.limit)
                        },
                        other => fail(
                            "stream_cut",
                            format!(
                                "the answer from Ollama at {} was cut after {chunks} chunks ({} ms): {}",
                                self.url.display(),
                                ms(started.elapsed()),
                                match other {
                                    http::Error::Io(e) | http::Error::Connect(e) => e,
                                    http::Error::Timeout => String::new(),
                                }
                            ),
                            &answer,
                        ),
                    });
                }
                Ok(0) => {
                    return Err(fail(
                        "stream_cut",
                        format!(
                            "the answer from Ollama at {} ended after {chunks} chunks without its last one (done)",
                            self.url.display()
                        ),
                        &answer,
                    ))
                }
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(text) else {
                return Err(fail(
                    "ollama_bad_response",
                    format!(
                        "Ollama at {} sent a line that is not JSON: {}",
                        self.url.display(),
                        text.chars().take(200).collect::<String>()
                    ),
                    &answer,
                ));
            };
            if let Some(e) = chunk.get("error") {
                let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
                let reason = if mentions_missing_model(&message) {
                    "model_not_found"
                } else {
                    "ollama_error"
                };
                return Err(fail(
                    reason,
                    format!("Ollama at {}: {message}", self.url.display()),
                    &answer,
                ));
            }
            if let Some(m) = chunk["model"].as_str().filter(|m| !m.is_empty()) {
                if answer.model.as_deref() != Some(m) {
                    answer.model = Some(m.to_string());
                }
            }
            if let Some(content) = chunk["message"]["content"].as_str() {
                if !content.is_empty() {
                    chunks += 1;
                    answer.text.push_str(content);
                    progress.counts(Some(chunks), answer.model.as_deref());
                    progress.text("token", content);
                }
            }
            if chunk["done"] == true {
                answer.tokens_in = chunk["prompt_eval_count"].as_u64().unwrap_or(0);
                answer.tokens_out = chunk["eval_count"].as_u64().unwrap_or(chunks);
                progress.flush();
                return Ok(answer);
            }
            if Instant::now() >= deadline {
                progress.flush();
                return Err(Failure {
                    partial: answer,
                    ..timeout(self.limit)
                });
            }
        }
    }
}
