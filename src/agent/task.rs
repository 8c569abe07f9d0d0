//! One task as a bundled agent sees it: the environment contract (`TASK_ID`, `TASK_FILE`,
//! `RESULTS_DIR`, … and the `AGENTCOM_*` settings the sidecar adds), the task frame read from
//! `TASK_FILE`, and the three files the agent answers through: `<id>.started`, progress lines
//! appended to `<id>.progress` (streamed text batched into lines of reasonable size), and the
//! result `<id>.json`, written under a temporary name and renamed into place.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use crate::fsx;

/// The largest task file read (the sidecar's own frame limit is far below).
const TASK_FILE_MAX: u64 = 16 << 20;
/// Streamed text is written as a line once this much is pending…
const BATCH_BYTES: usize = 2048;
/// …or once the oldest pending text is this old.
const BATCH_AGE: Duration = Duration::from_millis(200);
/// No progress line carries more text than this (the sidecar skips lines over 64 KiB).
const LINE_TEXT_MAX: usize = 4096;

/// Execution time limits when neither the task nor the operator sets one (the Node sidecar's).
pub const TIMEOUT_TRIVIAL: Duration = Duration::from_secs(10 * 60);
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30 * 60);

/// What the environment says, before the task file is read.
#[derive(Debug, Clone)]
pub struct Env {
    pub task_id: String,
    pub results_dir: PathBuf,
    pub task_file: Option<PathBuf>,
    pub wake_attempt: Option<u64>,
    pub target_type: Option<String>,
    pub model: Option<String>,
    pub ollama_url: Option<String>,
    pub allow_hub_commands: bool,
    pub claude_command: String,
    /// `AGENTCOM_AGENT_TIMEOUT_MS`: the operator's cap on any run.
    pub timeout_cap: Option<Duration>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Env {
    /// Reads the environment; an error when the agent cannot even say where its result goes
    /// (no valid `TASK_ID` or no `RESULTS_DIR`).
    pub fn from_env() -> Result<Env, String> {
        let task_id = var("TASK_ID").ok_or("TASK_ID is not set")?;
        if !crate::tasks::model::valid_task_id(&task_id) {
            return Err(format!("TASK_ID {task_id:?} is not a valid task id"));
        }
        let results_dir = PathBuf::from(var("RESULTS_DIR").ok_or("RESULTS_DIR is not set")?);
        if !results_dir.is_dir() {
            return Err(format!(
                "RESULTS_DIR {} is not a directory",
                results_dir.display()
            ));
        }
        Ok(Env {
            task_id,
            results_dir,
            task_file: var("TASK_FILE").map(PathBuf::from),
            wake_attempt: var("WAKE_ATTEMPT").and_then(|a| a.parse().ok()),
            target_type: var("TASK_TARGET_TYPE"),
            model: var("TASK_MODEL"),
            ollama_url: var("AGENTCOM_OLLAMA_URL"),
            allow_hub_commands: var("AGENTCOM_ALLOW_HUB_COMMANDS").as_deref() == Some("1"),
            claude_command: var("AGENTCOM_CLAUDE_COMMAND").unwrap_or_else(|| "claude".into()),
            timeout_cap: var("AGENTCOM_AGENT_TIMEOUT_MS")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        })
    }
}

/// The task: the environment and the `task_assign` frame from `TASK_FILE`.
#[derive(Debug, Clone)]
pub struct Task {
    pub env: Env,
    pub frame: Value,
}

impl Task {
    /// Reads `TASK_FILE` (the text of the frame, a JSON object).
    pub fn load(env: Env) -> Result<Task, String> {
        let path = env.task_file.clone().ok_or("TASK_FILE is not set")?;
        let bytes = match fsx::read_untrusted(&path, TASK_FILE_MAX) {
            Ok(fsx::Untrusted::Bytes(b)) => b,
            Ok(fsx::Untrusted::NotRegular) => {
                return Err(format!("{} is not a regular file", path.display()))
            }
            Ok(fsx::Untrusted::TooLarge(n)) => {
                return Err(format!("{} is too large ({n} bytes)", path.display()))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let frame: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        if !frame.is_object() {
            return Err(format!("{} does not hold a JSON object", path.display()));
        }
        Ok(Task { env, frame })
    }

    pub fn id(&self) -> &str {
        &self.env.task_id
    }

    /// A string field of the frame (`None` when absent, null, empty or not a string).
    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.frame
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The description as text (a non-string description as its JSON text).
    pub fn description(&self) -> String {
        match self.frame.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }

    pub fn metadata(&self) -> &Value {
        self.frame.get("metadata").unwrap_or(&Value::Null)
    }

    pub fn routing(&self, key: &str) -> Option<&str> {
        self.frame
            .get("routing_decision")
            .and_then(|r| r.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The model: the routing decision's, else `TASK_MODEL`.
    pub fn model(&self) -> Option<String> {
        self.routing("selected_model")
            .map(str::to_string)
            .or_else(|| self.env.model.clone())
    }

    /// The task's tier (`complexity.effective_tier`, else the routing decision's).
    pub fn effective_tier(&self) -> Option<&str> {
        self.frame
            .get("complexity")
            .and_then(|c| c.get("effective_tier"))
            .and_then(Value::as_str)
            .or_else(|| self.routing("effective_tier"))
    }

    /// `metadata.timeout_ms` when it is a positive whole number.
    pub fn metadata_timeout(&self) -> Option<Duration> {
        self.metadata()
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    /// The time limit of a run: `metadata.timeout_ms`, else `default`; never above the
    /// operator's `AGENTCOM_AGENT_TIMEOUT_MS`.
    pub fn timeout_or(&self, default: Duration) -> Duration {
        let t = self.metadata_timeout().unwrap_or(default);
        match self.env.timeout_cap {
            Some(cap) => t.min(cap),
            None => t,
        }
    }

    /// The time limit of a model run: 10 min for trivial tasks, 30 min otherwise (see
    /// [`Task::timeout_or`]).
    pub fn model_timeout(&self) -> Duration {
        let default = if self.effective_tier() == Some("trivial") {
            TIMEOUT_TRIVIAL
        } else {
            TIMEOUT_DEFAULT
        };
        self.timeout_or(default)
    }

    /// The directory the work and its verification happen in: `metadata.repo_dir` when the
    /// operator lets the hub direct the work (`allow_hub_commands`), else the agent's working
    /// directory. A directory named by the hub could be anything this user can read (the
    /// home directory, say): the claude tool works in it, and `file_exists` and `git_clean`
    /// report on it.
    pub fn repo_dir(&self) -> PathBuf {
        match self.metadata().get("repo_dir").and_then(Value::as_str) {
            Some(d) if !d.is_empty() && self.env.allow_hub_commands => PathBuf::from(d),
            _ => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }

    /// The system prompt: what the task says about where and how the work is judged.
    pub fn system_prompt(&self) -> String {
        let mut p = String::from(
            "You are an agent doing one task from an AgentCom hub. Answer with the complete result of the task.\n",
        );
        if let Some(repo) = self.str_field("repo") {
            p.push_str(&format!("Repository: {repo}\n"));
        }
        if let Some(branch) = self.str_field("branch") {
            p.push_str(&format!("Branch: {branch}\n"));
        }
        let list = |key: &str| -> Vec<String> {
            match self.frame.get(key) {
                Some(Value::Array(items)) => items.iter().map(item_text).collect(),
                _ => Vec::new(),
            }
        };
        let hints = list("file_hints");
        if !hints.is_empty() {
            p.push_str("Relevant files:\n");
            for h in hints {
                p.push_str(&format!("- {h}\n"));
            }
        }
        let criteria = list("success_criteria");
        if !criteria.is_empty() {
            p.push_str("Success criteria:\n");
            for c in criteria {
                p.push_str(&format!("- {c}\n"));
            }
        }
        p
    }

    pub fn skip_verification(&self) -> bool {
        self.frame.get("skip_verification") == Some(&Value::Bool(true))
    }

    pub fn verification_steps(&self) -> Vec<Value> {
        match self.frame.get("verification_steps") {
            Some(Value::Array(steps)) => steps.clone(),
            _ => Vec::new(),
        }
    }

    /// `verification_timeout_ms`, default 120 s.
    /// The hub's `verification_timeout_ms` (default 120 s), never more than the operator's
    /// cap (`AGENTCOM_AGENT_TIMEOUT_MS`).
    pub fn verification_timeout(&self) -> Duration {
        let asked = self
            .frame
            .get("verification_timeout_ms")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
            .map_or(Duration::from_secs(120), Duration::from_millis);
        self.env.timeout_cap.map_or(asked, |cap| asked.min(cap))
    }

    pub fn max_verification_retries(&self) -> u64 {
        self.frame
            .get("max_verification_retries")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(10)
    }
}

/// A file hint or a criterion as one line of text: a string as is, `{path, reason}` as
/// `path (reason)`, anything else as its JSON text.
fn item_text(item: &Value) -> String {
    match item {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("path").and_then(Value::as_str) {
            Some(path) => match o.get("reason").and_then(Value::as_str) {
                Some(reason) if !reason.is_empty() => format!("{path} ({reason})"),
                _ => path.to_string(),
            },
            None => item.to_string(),
        },
        other => other.to_string(),
    }
}

/// Whether `path` stays inside the directory it is taken relative to: relative, and no
/// `..` that climbs above its start (checked on the text, links are not resolved).
pub fn stays_inside(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The agent's files in `RESULTS_DIR`.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
    id: String,
}

impl Files {
    pub fn new(env: &Env) -> Files {
        Files {
            dir: env.results_dir.clone(),
            id: env.task_id.clone(),
        }
    }

    fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.id))
    }

    /// `<id>.started`, empty.
    pub fn started(&self) -> io::Result<()> {
        fsx::open_private_append(&self.path("started")).map(drop)
    }

    /// The result, by rename: it appears whole or not at all.
    pub fn result(&self, result: &Value) -> io::Result<()> {
        let mut text = serde_json::to_vec(result).map_err(io::Error::other)?;
        text.push(b'\n');
        fsx::write_atomic(&self.path("json"), &text)
    }

    /// Opens `<id>.progress` for appending.
    fn progress_file(&self) -> io::Result<File> {
        fsx::open_private_append(&self.path("progress"))
    }
}

/// Text waiting to become a progress line.
struct Pending {
    file: Option<File>,
    event_type: &'static str,
    text: String,
    since: Option<Instant>,
    tokens_so_far: Option<u64>,
    model: Option<String>,
}

impl Pending {
    /// Writes one line, each with one write (the sidecar reads whole lines only).
    fn write_line(&mut self, mut event: Map<String, Value>) {
        event.insert("timestamp".into(), now_ms().into());
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut line = Value::Object(event).to_string();
        line.push('\n');
        if let Err(e) = file.write_all(line.as_bytes()) {
            eprintln!("progress line not written: {e}");
        }
    }

    fn flush(&mut self) {
        self.since = None;
        if self.text.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.text);
        for piece in split_at_chars(&text, LINE_TEXT_MAX) {
            let mut event = Map::new();
            event.insert("event_type".into(), self.event_type.into());
            event.insert("text".into(), piece.into());
            if let Some(n) = self.tokens_so_far {
                event.insert("tokens_so_far".into(), n.into());
            }
            if let Some(m) = &self.model {
                event.insert("model".into(), m.clone().into());
            }
            self.write_line(event);
        }
    }
}

/// Pieces of at most `max` bytes, cut at character boundaries.
fn split_at_chars(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// The progress lines of one run. Streamed text (`token`, `stdout`, `stderr`) is batched: a
/// line is written once 2 KiB are pending or the oldest pending text is 200 ms old (a
/// thread looks every 50 ms), and before text of another event type or any other event, so
/// the lines, concatenated per type, hold the whole text in order.
pub struct Progress {
    pending: Arc<Mutex<Pending>>,
    stop: Option<mpsc::Sender<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn new(files: &Files) -> Progress {
        let file = match files.progress_file() {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("progress file not opened: {e}");
                None
            }
        };
        let pending = Arc::new(Mutex::new(Pending {
            file,
            event_type: "token",
            text: String::new(),
            since: None,
            tokens_so_far: None,
            model: None,
        }));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = pending.clone();
        let flusher = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(50))
                {
                    let mut p = lock(&shared);
                    if p.since.is_some_and(|t| t.elapsed() >= BATCH_AGE) {
                        p.flush();
                    }
                }
            })
            .ok();
        Progress {
            pending,
            stop: Some(stop),
            flusher,
        }
    }

    /// Streamed text of `event_type` (`token`, `stdout`, `stderr`).
    pub fn text(&self, event_type: &'static str, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut p = lock(&self.pending);
        if p.event_type != event_type {
            p.flush();
            p.event_type = event_type;
        }
        p.text.push_str(text);
        if p.since.is_none() {
            p.since = Some(Instant::now());
        }
        if p.text.len() >= BATCH_BYTES {
            p.flush();
        }
    }

    /// Sets the `tokens_so_far` and `model` that streamed lines carry from now on.
    pub fn counts(&self, tokens_so_far: Option<u64>, model: Option<&str>) {
        let mut p = lock(&self.pending);
        p.tokens_so_far = tokens_so_far;
        if let Some(m) = model {
            if p.model.as_deref() != Some(m) {
                p.model = Some(m.to_string());
            }
        }
    }

    /// A line of its own (`status`, `error`), after any pending text.
    pub fn event(&self, event_type: &str, text: &str) {
        let mut p = lock(&self.pending);
        p.flush();
        let mut event = Map::new();
        event.insert("event_type".into(), event_type.into());
        event.insert("text".into(), text.into());
        if let Some(m) = &p.model {
            event.insert("model".into(), m.clone().into());
        }
        p.write_line(event);
    }

    /// Writes what is pending.
    pub fn flush(&self) {
        lock(&self.pending).flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        self.flush();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A failed result: `reason` a short code, `error` the text for people.
pub fn failed(reason: &str, error: impl Into<String>) -> Value {
    json!({"status": "failed", "reason": reason, "error": error.into()})
}

/// Bytes decoded as UTF-8 as they stream in: a character cut between two reads is kept for
/// the next one; invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(&self.carry) {
            Ok(_) => self.carry.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.carry.len(),
        };
        let rest = self.carry.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        text
    }
}

/// The last `max` bytes of a stream of text, and how much there was in all.
#[derive(Debug)]
pub struct Tail {
    max: usize,
    text: String,
    pub total_bytes: u64,
}

impl Tail {
    pub fn new(max: usize) -> Tail {
        Tail {
            max,
            text: String::new(),
            total_bytes: 0,
        }
    }

    pub fn push(&mut self, text: &str) {
        self.total_bytes += text.len() as u64;
        self.text.push_str(text);
        if self.text.len() > self.max * 2 {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.text.len() > self.max {
            let mut cut = self.text.len() - self.max;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }

    pub fn truncated(&self) -> bool {
        self.total_bytes > self.max as u64
    }

    pub fn text(&mut self) -> String {
        self.trim();
        self.text.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(frame: Value, cap_ms: Option<u64>) -> Task {
        Task {
            env: Env {
                task_id: "t".into(),
                results_dir: PathBuf::from("."),
                task_file: None,
                wake_attempt: None,
                target_type: None,
                model: Some("from-env".into()),
                ollama_url: None,
                allow_hub_commands: false,
                claude_command: "claude".into(),
                timeout_cap: cap_ms.map(Duration::from_millis),
            },
            frame,
        }
    }

    #[test]
    fn time_limits_by_tier_task_and_operator() {
        let trivial = json!({"complexity": {"effective_tier": "trivial"}});
        assert_eq!(task(trivial.clone(), None).model_timeout(), TIMEOUT_TRIVIAL);
        let routed = json!({"routing_decision": {"effective_tier": "trivial"}});
        assert_eq!(task(routed, None).model_timeout(), TIMEOUT_TRIVIAL);
        assert_eq!(task(json!({}), None).model_timeout(), TIMEOUT_DEFAULT);
        let own = json!({"metadata": {"timeout_ms": 5000}});
        assert_eq!(
            task(own.clone(), None).model_timeout(),
            Duration::from_secs(5)
        );
        assert_eq!(
            task(own, Some(1000)).model_timeout(),
            Duration::from_secs(1)
        );
        assert_eq!(
            task(trivial, Some(1000)).model_timeout(),
            Duration::from_secs(1)
        );
        let bad = json!({"metadata": {"timeout_ms": -3}});
        assert_eq!(task(bad, None).model_timeout(), TIMEOUT_DEFAULT);
        // Verification: the hub's limit, never past the operator's cap.
        let verify = json!({"verification_timeout_ms": 300_000});
        assert_eq!(
            task(verify.clone(), None).verification_timeout(),
            Duration::from_secs(300)
        );
        assert_eq!(
            task(verify, Some(2000)).verification_timeout(),
            Duration::from_secs(2)
        );
        assert_eq!(
            task(json!({}), None).verification_timeout(),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn model_and_prompt_from_the_frame() {
        let t = task(
            json!({"routing_decision": {"selected_model": "m1"}, "description": 7,
                   "file_hints": [{"path": "a.rs"}, {"x": 1}], "success_criteria": []}),
            None,
        );
        assert_eq!(t.model().as_deref(), Some("m1"));
        assert_eq!(t.description(), "7");
        let p = t.system_prompt();
        assert!(p.contains("- a.rs\n") && p.contains("{\"x\":1}"), "{p}");
        assert!(!p.contains("Success criteria"));
        assert_eq!(task(json!({}), None).model().as_deref(), Some("from-env"));
    }

    #[test]
    fn paths_inside_and_out() {
        assert!(stays_inside(Path::new("a/b.txt")));
        assert!(stays_inside(Path::new("./a/../b")));
        assert!(!stays_inside(Path::new("../etc/passwd")));
        assert!(!stays_inside(Path::new("a/../../b")));
        assert!(!stays_inside(Path::new("/etc/passwd")));
    }

    #[test]
    fn utf8_cut_between_reads() {
        let bytes = "héllo".as_bytes();
        let mut s = Utf8Stream::default();
        let a = s.push(&bytes[..2]);
        let b = s.push(&bytes[2..]);
        assert_eq!((a.as_str(), b.as_str()), ("h", "éllo"));
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::new(4);
        for _ in 0..10 {
            t.push("abcdef");
        }
        assert_eq!(t.text(), "cdef");
        assert!(t.truncated());
        assert_eq!(t.total_bytes, 60);
    }

    #[test]
    fn pieces_at_char_boundaries() {
        let text = "é".repeat(5);
        let pieces = split_at_chars(&text, 3);
        assert!(pieces.iter().all(|p| p.len() <= 3));
        assert_eq!(pieces.concat(), text);
    }
}
