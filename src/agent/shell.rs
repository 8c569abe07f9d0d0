//! `agentcom-sidecar agent shell`: a task of target type `sidecar`, whose
//! `metadata.shell_command` is code the hub sent. Run only when the operator opted in
//! (`allow_hub_commands: true` in the config, which the sidecar passes on as
//! `AGENTCOM_ALLOW_HUB_COMMANDS=1`); otherwise the task fails at once with reason
//! `shell_tasks_disabled`.
//!
//! Allowed, the command runs as the single argument of `sh -c` (the only shell that ever sees
//! task data), in the repository directory, in a process group of its own, for
//! `metadata.timeout_ms` (default 60 s, capped by `AGENTCOM_AGENT_TIMEOUT_MS`) — then the
//! whole group is killed; it is killed too once `sh` exits, so nothing it left running in
//! the background survives. stdout and stderr stream to the progress file (`stdout` and
//! `stderr` events); the result has the last 64 KiB of each (`output`, `stderr`) and
//! `exit_code`. Success iff exit 0; then the task's verification steps run.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::proc::{self, Stream};
use super::task::{failed, Progress, Tail, Task, Utf8Stream};
use super::{ms, verify};

/// The default time limit of a shell task.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of each stream the result keeps (its end).
const OUTPUT_MAX: usize = 64 * 1024;

pub fn run(task: &Task, progress: &Progress) -> Value {
    // The test task of `register --test-task` (and the Node onboarding script's): no
    // command to run, so no opt-in needed; the answer proves the way there and back.
    let metadata = task.metadata();
    if metadata.get("onboarding_test") == Some(&Value::Bool(true))
        && metadata.get("shell_command").is_none()
    {
        return json!({
            "status": "success",
            "output": format!("onboarding test: task {} reached this agent's sidecar and its bundled shell agent answered (nothing was run)", task.id()),
        });
    }
    if !task.env.allow_hub_commands {
        return failed(
            "shell_tasks_disabled",
            "this sidecar does not run shell commands sent by the hub (target type sidecar); its operator can allow them with `allow_hub_commands: true` in the sidecar's config",
        );
    }
    let command = match task.metadata().get("shell_command") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        _ => {
            return failed(
                "no_shell_command",
                "the task has no metadata.shell_command to run",
            )
        }
    };
    let start = Instant::now();
    let limit = task.timeout_or(DEFAULT_TIMEOUT);
    let dir = task.repo_dir();
    progress.event("status", "running the task's shell command");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&command).current_dir(&dir);
    let mut stdout = (Utf8Stream::default(), Tail::new(OUTPUT_MAX));
    let mut stderr = (Utf8Stream::default(), Tail::new(OUTPUT_MAX));
    let outcome = proc::run(cmd, None, start + limit, |stream, bytes| {
        let (event_type, (decoder, tail)) = match stream {
            Stream::Stdout => ("stdout", &mut stdout),
            Stream::Stderr => ("stderr", &mut stderr),
        };
        let text = decoder.push(bytes);
        tail.push(&text);
        progress.text(event_type, &text);
    });
    for (event_type, (decoder, tail)) in [("stdout", &mut stdout), ("stderr", &mut stderr)] {
        let rest = decoder.finish();
        tail.push(&rest);
        progress.text(event_type, &rest);
    }
    progress.flush();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return failed("command_failed", format!("sh could not be started: {e}")),
    };
    let mut result = json!({
        "output": stdout.1.text(),
        "stderr": stderr.1.text(),
        "output_truncated": stdout.1.truncated() || stderr.1.truncated(),
        "exit_code": outcome.status.and_then(|s| s.code()),
        "execution_ms": start.elapsed().as_millis() as u64,
    });
    let set = |result: &mut Value, status: &str, reason: Option<(&str, String)>| {
        result["status"] = status.into();
        if let Some((reason, error)) = reason {
            result["reason"] = reason.into();
            result["error"] = error.into();
        }
    };
    if outcome.timed_out() {
        set(
            &mut result,
            "failed",
            Some((
                "timeout",
                format!(
                    "the shell command did not finish within {} ms; its process group was killed",
                    ms(limit)
                ),
            )),
        );
        return result;
    }
    if !outcome.status.is_some_and(|s| s.success()) {
        let tail: String = {
            let text = stderr.1.text();
            let t = text.trim_end();
            let skip = t.chars().count().saturating_sub(500);
            t.chars().skip(skip).collect()
        };
        let mut error = format!("the shell command ended with {}", outcome.describe());
        if !tail.is_empty() {
            error.push_str(": ");
            error.push_str(&tail);
        }
        set(&mut result, "failed", Some(("command_failed", error)));
        return result;
    }
    set(&mut result, "success", None);
    let report = verify::run(task, 1, &dir, progress);
    result["verification_history"] = json!([report.clone()]);
    result["verification_report"] = report;
    result["execution_ms"] = (start.elapsed().as_millis() as u64).into();
    result
}
