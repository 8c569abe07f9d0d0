//! Shared by the bundled agents' tests: runs `agentcom-sidecar agent KIND` as the sidecar's
//! waker would (the task in `TASK_FILE`, a fresh `RESULTS_DIR`, the working directory a
//! fresh `work/`), waits for it to exit (bounded), and reads back what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The longest an agent run may take in a test before it fails.
pub const RUN_MAX: Duration = Duration::from_secs(60);

pub fn bin() -> String {
    std::env::var("SIDECAR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentcom-sidecar").to_string())
}

/// A task frame as the hub pushes it, with `extra` merged in.
pub fn frame(task_id: &str, extra: Value) -> Value {
    let mut f = json!({
        "type": "task_assign",
        "task_id": task_id,
        "description": "Write a haiku about relays",
        "metadata": {},
        "generation": 1,
        "assigned_at": 1_707_500_000_000u64,
        "repo": null,
        "branch": null,
        "file_hints": [],
        "success_criteria": [],
        "verification_steps": [],
        "skip_verification": false,
        "verification_timeout_ms": null,
        "max_verification_retries": 0,
    });
    f.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    f
}

/// One finished agent run and its directory.
pub struct AgentRun {
    pub dir: tempfile::TempDir,
    pub task_id: String,
    pub code: Option<i32>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A directory for a run: `work/` (the agent's working directory) and `results/`.
pub fn prepare() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::create_dir(dir.path().join("results")).unwrap();
    dir
}

/// Runs `agent KIND` for `frame` in a fresh directory with these extra environment
/// variables (the runner's own `AGENTCOM_*` and task variables are removed first).
pub fn run_agent(kind: &str, frame: &Value, env: &[(&str, &str)]) -> AgentRun {
    run_agent_in(prepare(), kind, frame, env)
}

/// [`run_agent`] in a directory made by [`prepare`] (files put in `work/` beforehand).
pub fn run_agent_in(
    dir: tempfile::TempDir,
    kind: &str,
    frame: &Value,
    env: &[(&str, &str)],
) -> AgentRun {
    let task_id = frame["task_id"].as_str().unwrap().to_string();
    let task_file = dir.path().join("task.json");
    std::fs::write(&task_file, frame.to_string()).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["agent", kind]);
    for (name, _) in std::env::vars() {
        if name.starts_with("AGENTCOM_") || name.starts_with("TASK_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("TASK_ID", &task_id)
        .env("TASK_FILE", &task_file)
        .env("RESULTS_DIR", dir.path().join("results"))
        .env("WAKE_ATTEMPT", "1");
    if let Some(t) = frame["routing_decision"]["target_type"].as_str() {
        cmd.env("TASK_TARGET_TYPE", t);
    }
    if let Some(m) = frame["routing_decision"]["selected_model"].as_str() {
        cmd.env("TASK_MODEL", m);
    }
    cmd.envs(env.iter().copied())
        .current_dir(dir.path().join("work"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("the agent starts");
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > RUN_MAX {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent ran over {RUN_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    AgentRun {
        dir,
        task_id,
        code,
        stderr: reader.join().unwrap_or_default(),
        elapsed,
    }
}

impl AgentRun {
    pub fn results(&self) -> PathBuf {
        self.dir.path().join("results")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn started(&self) -> bool {
        self.results()
            .join(format!("{}.started", self.task_id))
            .exists()
    }

    /// The result file, parsed; panics (with the agent's stderr) when there is none.
    pub fn result(&self) -> Value {
        let path = self.results().join(format!("{}.json", self.task_id));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no result ({e}); stderr:\n{}", self.stderr));
        serde_json::from_str(&text).unwrap()
    }

    /// Every progress line, parsed (each must be a JSON object).
    pub fn progress(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.results().join(format!("{}.progress", self.task_id)))
                .unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "the last progress line is not ended"
        );
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("a progress line is JSON");
                assert!(v.is_object(), "a progress line is an object: {l}");
                v
            })
            .collect()
    }

    /// The text of every progress event of this type, concatenated in order.
    pub fn streamed(&self, event_type: &str) -> String {
        self.progress()
            .iter()
            .filter(|e| e["event_type"] == event_type)
            .map(|e| e["text"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Asserts a failed result with this reason; returns the result.
    pub fn failed_with(&self, reason: &str) -> Value {
        let r = self.result();
        assert_eq!(self.code, Some(0), "exit code; stderr:\n{}", self.stderr);
        assert_eq!(r["status"], "failed", "{r:#}");
        assert_eq!(r["reason"], reason, "{r:#}");
        assert!(
            r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "an error text: {r:#}"
        );
        r
    }
}

/// Whether the process is gone (or a zombie awaiting its reaper).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                == Some("Z")
        }
    }
}

/// Waits until `cond` holds, for at most 10 s.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "waited 10 s for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pid a test script wrote to `path`, waiting for it to be there.
pub fn read_pid(path: &Path) -> u32 {
    let mut pid = None;
    eventually(&format!("a pid in {}", path.display()), || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}
