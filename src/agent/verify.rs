//! Verification: the task's `verification_steps`, run after a successful run, and the report
//! in the shape the hub stores and shows:
//!
//! `{task_id, run_number, status, started_at, duration_ms, timeout_ms, checks: [{type,
//! target, description, status, output, duration_ms}], summary: {total, passed, failed,
//! errors, timed_out}}`
//!
//! Overall `status`: `skip` (`skip_verification`, or every check skipped), `auto_pass` (no
//! steps), `pass` (no check failed), `fail`. A check's `status`: `pass`, `fail`, `error`
//! (it could not be run: a path outside the directory, no test runner, an unknown kind),
//! `timeout` (the run's `verification_timeout_ms` passed) or `skip`.
//!
//! Kinds: `file_exists` (a path relative to the repository directory; a path that leaves it
//! is an error), `git_clean` (`git status --porcelain` prints nothing), `test_passes` (a test
//! command, or `auto`: `mix test`, `npm test` or `make test` by the files present) and
//! `command_succeeds` (a shell command). The last two run commands the hub sent: only with
//! `AGENTCOM_ALLOW_HUB_COMMANDS=1`, otherwise they are `skip`ped, saying why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::proc;
use super::task::{now_rfc3339, stays_inside, Progress, Tail, Task};

/// The most output a check keeps (its end).
const CHECK_OUTPUT_MAX: usize = 4096;

/// Runs the task's verification as attempt `run_number` (1 for the first).
pub fn run(task: &Task, run_number: u64, dir: &Path, progress: &Progress) -> Value {
    let timeout = task.verification_timeout();
    let started_at = now_rfc3339();
    let start = Instant::now();
    let steps = task.verification_steps();
    let overall_without_checks = if task.skip_verification() {
        Some("skip")
    } else if steps.is_empty() {
        Some("auto_pass")
    } else {
        None
    };
    if let Some(status) = overall_without_checks {
        return report(task, run_number, status, started_at, start, timeout, vec![]);
    }
    progress.event(
        "status",
        &format!("verification {run_number}: {} checks", steps.len()),
    );
    let deadline = start + timeout;
    let checks: Vec<Value> = steps
        .iter()
        .map(|step| {
            let check = check(task, step, dir, deadline);
            progress.event(
                "status",
                &format!(
                    "verification {run_number}: {} {}: {}",
                    check["type"].as_str().unwrap_or(""),
                    check["target"].as_str().unwrap_or(""),
                    check["status"].as_str().unwrap_or("")
                ),
            );
            check
        })
        .collect();
    let status = overall(&checks);
    report(task, run_number, status, started_at, start, timeout, checks)
}

/// The overall status of checks run.
fn overall(checks: &[Value]) -> &'static str {
    let is = |s: &str| checks.iter().filter(|c| c["status"] == s).count();
    if is("fail") + is("error") + is("timeout") > 0 {
        "fail"
    } else if is("skip") == checks.len() {
        "skip"
    } else {
        "pass"
    }
}

fn report(
    task: &Task,
    run_number: u64,
    status: &str,
    started_at: String,
    start: Instant,
    timeout: Duration,
    checks: Vec<Value>,
) -> Value {
    let count = |s: &str| checks.iter().filter(|c| c["status"] == s).count();
    let summary = json!({
        "total": checks.len(),
        "passed": count("pass"),
        "failed": count("fail"),
        "errors": count("error"),
        "timed_out": count("timeout"),
    });
    json!({
        "task_id": task.id(),
        "run_number": run_number,
        "status": status,
        "started_at": started_at,
        "duration_ms": start.elapsed().as_millis() as u64,
        "timeout_ms": timeout.as_millis() as u64,
        "checks": checks,
        "summary": summary,
    })
}

/// One check's result.
struct Checked {
    status: &'static str,
    output: String,
}

fn checked(status: &'static str, output: impl Into<String>) -> Checked {
    Checked {
        status,
        output: output.into(),
    }
}

fn check(task: &Task, step: &Value, dir: &Path, deadline: Instant) -> Value {
    let kind = step.get("type").and_then(Value::as_str).unwrap_or("");
    let target = match step.get("target") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    let description = step.get("description").cloned().unwrap_or(Value::Null);
    let start = Instant::now();
    let result = if Instant::now() >= deadline {
        checked(
            "timeout",
            "the verification time limit was reached before this check",
        )
    } else {
        match kind {
            "file_exists" => file_exists(dir, &target),
            "git_clean" => git_clean(dir, &target, deadline),
            "test_passes" | "command_succeeds" if !task.env.allow_hub_commands => checked(
                "skip",
                "commands sent by the hub are not run: set allow_hub_commands: true in the sidecar's config to run them",
            ),
            "test_passes" => test_passes(dir, &target, deadline),
            "command_succeeds" => {
                if target.trim().is_empty() {
                    checked("error", "no command given")
                } else {
                    command(shell(&target), dir, deadline)
                }
            }
            other => checked("error", format!("unknown verification step type {other:?}")),
        }
    };
    json!({
        "type": kind,
        "target": target,
        "description": description,
        "status": result.status,
        "output": result.output,
        "duration_ms": start.elapsed().as_millis() as u64,
    })
}

/// `target` inside `dir`, or why not.
fn inside(dir: &Path, target: &str) -> Result<PathBuf, String> {
    let path = Path::new(target);
    if path.is_absolute() {
        if let Ok(rest) = path.strip_prefix(dir) {
            if stays_inside(rest) {
                return Ok(path.to_path_buf());
            }
        }
    } else if stays_inside(path) {
        return Ok(dir.join(path));
    }
    Err(format!(
        "{target:?} is outside the repository directory {}",
        dir.display()
    ))
}

fn file_exists(dir: &Path, target: &str) -> Checked {
    if target.is_empty() {
        return checked("error", "no path given");
    }
    match inside(dir, target) {
        Err(e) => checked("error", e),
        Ok(path) => match std::fs::symlink_metadata(&path) {
            Ok(_) => checked("pass", format!("{} exists", path.display())),
            Err(e) => checked("fail", format!("{}: {e}", path.display())),
        },
    }
}

fn git_clean(dir: &Path, target: &str, deadline: Instant) -> Checked {
    let where_ = match target {
        "" | "." => dir.to_path_buf(),
        t => match inside(dir, t) {
            Ok(p) if p.is_dir() => p,
            Ok(_) => dir.to_path_buf(),
            Err(e) => return checked("error", e),
        },
    };
    let mut cmd = Command::new("git");
    cmd.args(["status", "--porcelain"]).current_dir(&where_);
    let mut out = Tail::new(CHECK_OUTPUT_MAX);
    let mut err = Tail::new(CHECK_OUTPUT_MAX);
    let outcome = proc::run(cmd, None, deadline, |stream, bytes| {
        let text = String::from_utf8_lossy(bytes);
        match stream {
            proc::Stream::Stdout => out.push(&text),
            proc::Stream::Stderr => err.push(&text),
        }
    });
    match outcome {
        Err(e) => checked("error", format!("git could not be run: {e}")),
        Ok(o) if o.timed_out() => checked("timeout", "git status timed out"),
        Ok(o) if o.status.is_some_and(|s| s.success()) => {
            let changes = out.text();
            if changes.trim().is_empty() {
                checked("pass", "working tree clean")
            } else {
                checked("fail", changes)
            }
        }
        Ok(o) => checked(
            "error",
            format!("git status: {}: {}", o.describe(), err.text()),
        ),
    }
}

/// `mix test`, `npm test` or `make test`, by the files in `dir`.
fn detect_tests(dir: &Path) -> Option<[&'static str; 2]> {
    if dir.join("mix.exs").is_file() {
        Some(["mix", "test"])
    } else if dir.join("package.json").is_file() {
        Some(["npm", "test"])
    } else if ["Makefile", "makefile", "GNUmakefile"]
        .iter()
        .any(|m| dir.join(m).is_file())
    {
        Some(["make", "test"])
    } else {
        None
    }
}

fn test_passes(dir: &Path, target: &str, deadline: Instant) -> Checked {
    let target = target.trim();
    if target.is_empty() || target == "auto" {
        match detect_tests(dir) {
            None => checked(
                "error",
                "no test runner found: no mix.exs, package.json or Makefile in the repository directory",
            ),
            Some([program, arg]) => {
                let mut cmd = Command::new(program);
                cmd.arg(arg);
                command(cmd, dir, deadline)
            }
        }
    } else {
        command(shell(target), dir, deadline)
    }
}

/// A command the hub sent, as one `sh -c` argument.
fn shell(text: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(text);
    cmd
}

/// Runs a command in `dir`: pass on exit 0; its output (the end of it) either way.
fn command(mut cmd: Command, dir: &Path, deadline: Instant) -> Checked {
    cmd.current_dir(dir);
    let mut out = Tail::new(CHECK_OUTPUT_MAX);
    let outcome = proc::run(cmd, None, deadline, |_, bytes| {
        out.push(&String::from_utf8_lossy(bytes))
    });
    match outcome {
        Err(e) => checked("error", format!("could not be run: {e}")),
        Ok(o) => {
            let mut text = out.text();
            let status = if o.timed_out() {
                "timeout"
            } else if o.status.is_some_and(|s| s.success()) {
                "pass"
            } else {
                "fail"
            };
            if status != "pass" {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&o.describe());
            }
            checked(status, text)
        }
    }
}

/// Whether a report counts as passed (`pass`, `skip`, `auto_pass`).
pub fn passed(report: &Value) -> bool {
    report["status"] != "fail"
}

/// The failed checks of a report, as text for a corrective prompt.
pub fn failures(report: &Value) -> String {
    let mut text = String::new();
    for c in report["checks"].as_array().into_iter().flatten() {
        if matches!(c["status"].as_str(), Some("fail" | "error" | "timeout")) {
            text.push_str(&format!(
                "- {} {}{}: {}\n",
                c["type"].as_str().unwrap_or(""),
                c["target"].as_str().unwrap_or(""),
                c["description"]
                    .as_str()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                c["status"].as_str().unwrap_or("")
            ));
            let output = c["output"].as_str().unwrap_or("").trim_end();
            if !output.is_empty() {
                for line in output.lines() {
                    text.push_str("    ");
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    text
}
