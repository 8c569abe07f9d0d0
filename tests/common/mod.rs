//! Shared by the integration tests: a real sidecar process (the built binary) with its own
//! config in a temporary directory, and waits on its JSON-lines log. Every wait has a
//! timeout and returns as soon as the awaited line is there.
#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use agentcom_sidecar::devhub::{
    Behaviour, DevHub, DevHubOptions, HubEvent, HubEventKind, RawFrame, TakeBackReason,
};

/// Generous: tests wait for events, so a slow machine only makes them slower, not red.
pub const WAIT: Duration = Duration::from_secs(15);
pub const TOKEN: &str = "tok-9f8e7d6c5b4a";
pub const AGENT: &str = "agent-1";

/// The sidecar binary under test: this build's, or the one `SIDECAR_BIN` names (to run the
/// same tests against another build, e.g. to see a defect's test fail on an older one).
pub fn bin() -> String {
    std::env::var("SIDECAR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentcom-sidecar").to_string())
}

/// A dev hub on 127.0.0.1:0 that knows [`AGENT`] with [`TOKEN`].
pub fn hub() -> DevHub {
    DevHub::start(DevHubOptions {
        tokens: Some([(AGENT.to_string(), TOKEN.to_string())].into()),
        ..DevHubOptions::default()
    })
    .expect("dev hub starts")
}

/// Test timings: tens of milliseconds instead of seconds.
pub fn fast_config(hub_url: &str) -> Value {
    json!({
        "agent_id": AGENT,
        "token": TOKEN,
        "hub_url": hub_url,
        "heartbeat_interval_ms": 200,
        "heartbeat_timeout_ms": 400,
        "reconnect_initial_ms": 50,
        "reconnect_max_ms": 400,
        "connect_timeout_ms": 2000,
        "shutdown_timeout_ms": 2000,
        "log_level": "debug",
        // Tests that give no wake command play the agent themselves.
        "agent_starts_itself": true,
    })
}

/// Merges `extra`'s keys into `base`.
pub fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

pub struct Sidecar {
    pub child: Child,
    /// Programs the binary runs under (e.g. `sh -c 'ulimit …; exec "$@"' sh`), if any.
    wrapper: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    exit: Option<ExitStatus>,
}

impl Sidecar {
    /// Starts the binary with `config` written to `<tmp>/config.json` (mode 600).
    pub fn start(config: Value) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        write_config(&path, &config);
        Self::start_in(dir, &["--config", path.to_str().unwrap()])
    }

    /// Starts the binary in `dir` with these arguments.
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Sidecar {
        Self::start_with_env(dir, args, &[])
    }

    /// Starts the binary in `dir` with these arguments and extra environment variables.
    pub fn start_with_env(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Sidecar {
        Self::start_via(dir, &[], args, env)
    }

    /// Starts the binary under `wrapper` (programs and arguments that end by running the
    /// binary's path and arguments appended to them), in `dir`.
    pub fn start_via(
        dir: tempfile::TempDir,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, String)],
    ) -> Sidecar {
        let wrapper: Vec<String> = wrapper.iter().map(|a| a.to_string()).collect();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let (child, stdout, stderr) = spawn(dir.path(), &wrapper, &args, &env);
        let log_path = dir.path().join("sidecar.log");
        Sidecar {
            child,
            wrapper,
            args,
            env,
            dir,
            log_path,
            stdout,
            stderr,
            exit: None,
        }
    }

    /// SIGKILLs the process (no chance to clean up) and starts it again in the same
    /// directory with the same arguments, as a service manager would.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        self.signal(SIGKILL);
        let _ = self.child.wait();
    }

    /// Starts the process again in the same directory with the same arguments.
    pub fn restart(&mut self) {
        let (child, stdout, stderr) = spawn(self.dir.path(), &self.wrapper, &self.args, &self.env);
        self.child = child;
        self.stdout = stdout;
        self.stderr = stderr;
        self.exit = None;
    }

    /// The parsed queue file.
    pub fn queue(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.path().join("queue.json"))
            .unwrap_or_else(|_| "null".into());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub fn results_dir(&self) -> PathBuf {
        self.dir.path().join("results")
    }

    /// Writes `<task_id>.json` into the results directory in place (not renamed into place),
    /// as an agent that writes its result directly would.
    pub fn write_result(&self, task_id: &str, text: &str) {
        std::fs::write(self.results_dir().join(format!("{task_id}.json")), text).unwrap();
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every parsed line of the JSON log so far. A line that does not parse fails the test,
    /// except a line cut short by a SIGKILL in the middle of writing it (it ends early).
    pub fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        // A line being written while this reads may be cut (a write that crosses a page
        // boundary lands in two steps): only whole lines, up to the last newline, count.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .filter(|l| !l.is_empty())
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(v) => Some(v),
                Err(e) if e.is_eof() && l.starts_with("{\"ts\":") => None,
                Err(e) => panic!("log line is not JSON ({e}): {l}"),
            })
            .collect()
    }

    pub fn events(&self, name: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["event"] == name)
            .collect()
    }

    /// Waits until the log holds a line matching `pred` (including lines already there).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the log holds at least `n` lines of event `name`; panics with the log if not.
    pub fn wait_count(&self, name: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.events(name);
            if found.len() >= n {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {WAIT:?} for {n} `{name}` lines, saw {}\n{}",
                    found.len(),
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the first line of event `name`; panics with the log if it never comes.
    pub fn wait_event(&self, name: &str) -> Value {
        self.wait_count(name, 1).remove(0)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The log, stdout and stderr, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- log ---\n{}\n--- stderr ---\n{}",
            std::fs::read_to_string(&self.log_path).unwrap_or_default(),
            self.stderr()
        )
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what the sidecar did: the assertion alone rarely says why.
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

fn spawn(
    dir: &Path,
    wrapper: &[String],
    args: &[String],
    env: &[(String, String)],
) -> (Child, Arc<Mutex<String>>, Arc<Mutex<String>>) {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    let mut child = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sidecar binary starts");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    (child, stdout, stderr)
}

/// Pushes a `task_assign` frame straight to the agent's connection.
pub fn assign(hub: &DevHub, task: Value) {
    let mut frame = json!({"type": "task_assign", "description": "do the thing", "metadata": {}, "assigned_at": 1_707_500_000_000u64});
    frame
        .as_object_mut()
        .unwrap()
        .extend(task.as_object().unwrap().clone());
    assert_eq!(
        hub.send(AGENT, RawFrame::Text(frame.to_string())),
        1,
        "agent not connected"
    );
}

/// Frames of one type about one task.
pub fn task_frames(hub: &DevHub, frame_type: &str, task_id: &str) -> Vec<Value> {
    frames_of(hub, frame_type)
        .into_iter()
        .filter(|f| f["task_id"] == task_id)
        .collect()
}

/// Waits for the n-th frame of this type about this task and returns it.
pub fn wait_task_frame(hub: &DevHub, frame_type: &str, task_id: &str, n: usize) -> Value {
    eventually(&format!("{n} `{frame_type}` for {task_id}"), || {
        task_frames(hub, frame_type, task_id).len() >= n
    });
    task_frames(hub, frame_type, task_id).swap_remove(n - 1)
}

pub fn write_config(path: &Path, config: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    set_mode(path, 0o600);
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM};

/// Whether the hub received a Close frame with `code` on connection `conn`.
pub fn saw_close(hub: &DevHub, conn: u64, code: u16) -> bool {
    hub.events().iter().any(|e| {
        e.conn == conn
            && matches!(&e.kind, HubEventKind::CloseReceived { code: Some(c), .. } if *c == code)
    })
}

/// Frames of one type the sidecar sent to the hub, parsed.
pub fn frames_of(hub: &DevHub, frame_type: &str) -> Vec<Value> {
    hub.events()
        .into_iter()
        .filter_map(|e| match e.kind {
            HubEventKind::Frame { json, .. } if json["type"] == frame_type => Some(json),
            _ => None,
        })
        .collect()
}

/// Polls `cond` until it holds; panics naming `what` after [`WAIT`].
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the hub has seen `n` frames of this type; returns them all.
pub fn wait_frames(hub: &DevHub, frame_type: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} `{frame_type}` frames at the hub"), || {
        frames_of(hub, frame_type).len() >= n
    });
    frames_of(hub, frame_type)
}

/// Identify acceptances of [`AGENT`] at the hub so far.
pub fn identified(hub: &DevHub) -> Vec<HubEvent> {
    hub.events()
        .into_iter()
        .filter(|e| matches!(&e.kind, HubEventKind::Identified { agent_id } if agent_id == AGENT))
        .collect()
}

/// Waits until the agent has been identified at the hub `n` times in all; returns the n-th.
pub fn wait_identified(hub: &DevHub, n: usize) -> HubEvent {
    eventually(&format!("identify #{n} at the hub"), || {
        identified(hub).len() >= n
    });
    identified(hub).swap_remove(n - 1)
}

pub use agentcom_sidecar::devhub::{HubLimits, HubTimings, RateTier};

/// A dev hub knowing [`AGENT`] (and `agent-0`, a second agent) with these timings and limits.
pub fn hub_with(timings: HubTimings, limits: HubLimits) -> DevHub {
    DevHub::start(DevHubOptions {
        tokens: Some(
            [
                (AGENT.to_string(), TOKEN.to_string()),
                (OTHER.to_string(), OTHER_TOKEN.to_string()),
            ]
            .into(),
        ),
        timings,
        limits,
        ..DevHubOptions::default()
    })
    .expect("dev hub starts")
}

/// A second agent, for tests where the hub gives a task to someone else.
pub const OTHER: &str = "agent-0";
pub const OTHER_TOKEN: &str = "tok-0123456789ab";

/// An agent for fault tests: it records every start (`starts` beside the results dir:
/// task id, attempt, target type, model), confirms at once, and writes its result by rename
/// when the test says so ([`release`]), giving up after 30 s.
pub const RECORDING_AGENT: &str = r#"
dir=$(dirname "$RESULTS_DIR")
printf '%s %s %s %s\n' "$TASK_ID" "${WAKE_ATTEMPT:-}" "${TASK_TARGET_TYPE:--}" "${TASK_MODEL:--}" >> "$dir/starts"
(
  touch "$RESULTS_DIR/$TASK_ID.started"
  n=0
  while [ ! -e "$dir/go-$TASK_ID" ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done
  [ -e "$dir/go-$TASK_ID" ] || exit 0
  cp "$dir/go-$TASK_ID" "$RESULTS_DIR/.$TASK_ID.tmp"
  mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json"
) >/dev/null 2>&1 </dev/null &
"#;

/// Every start the recording agent wrote: (task id, attempt, target type, model).
pub fn starts(sidecar: &Sidecar) -> Vec<Vec<String>> {
    std::fs::read_to_string(sidecar.dir.path().join("starts"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

/// How many times the agent was started for `task_id`.
pub fn starts_of(sidecar: &Sidecar, task_id: &str) -> usize {
    starts(sidecar).iter().filter(|s| s[0] == task_id).count()
}

/// How many wake commands the sidecar ran for `task_id`, across its restarts (the log file
/// is appended to): for tests whose wake command is not the recording agent.
pub fn wake_attempts(sidecar: &Sidecar, task_id: &str) -> usize {
    sidecar
        .events("wake_attempt")
        .iter()
        .filter(|e| e["task_id"] == task_id)
        .count()
}

/// Lets the recording agent of `task_id` write `result` as its result.
pub fn release(sidecar: &Sidecar, task_id: &str, result: &Value) {
    let dir = sidecar.dir.path();
    let tmp = dir.join(format!(".go-{task_id}"));
    std::fs::write(&tmp, result.to_string()).unwrap();
    std::fs::rename(tmp, dir.join(format!("go-{task_id}"))).unwrap();
}

/// Submits a task to the hub's queue (as `POST /api/tasks`); its id.
pub fn submit(hub: &DevHub, body: Value) -> String {
    hub.submit_task(body).expect("the hub takes the task")
}

/// The hub's view of a task, field `key`.
pub fn task_field(hub: &DevHub, task_id: &str, key: &str) -> Value {
    hub.task(task_id)
        .map(|t| t[key].clone())
        .unwrap_or(Value::Null)
}

/// Waits until the hub has the task in `status`.
pub fn wait_status(hub: &DevHub, task_id: &str, status: &str) {
    eventually(&format!("task {task_id} {status} at the hub"), || {
        task_field(hub, task_id, "status") == status
    });
}

/// A sidecar for [`AGENT`] in a fresh directory, with the recording agent as its wake
/// command and test timings; waits until the hub has it identified.
pub fn recording_sidecar(hub: &DevHub, extra: Value) -> Sidecar {
    let timings = json!({
        "wake_retry_delays_ms": [100, 100],
        "wake_timeout_ms": 10000,
        "confirmation_timeout_ms": 5000,
        "progress_interval_ms": 500,
        "agent_progress_min_ms": 100,
    });
    sidecar_with_script(hub, RECORDING_AGENT, with(timings, extra))
}

/// Frames of one type the agent sent, parsed (only [`AGENT`]'s connections).
pub fn agent_frames(hub: &DevHub, frame_type: &str, task_id: &str) -> Vec<Value> {
    let conns: std::collections::HashSet<u64> = identified(hub).iter().map(|e| e.conn).collect();
    hub.events()
        .into_iter()
        .filter(|e| conns.contains(&e.conn))
        .filter_map(|e| match e.kind {
            HubEventKind::Frame { json, .. }
                if json["type"] == frame_type && json["task_id"] == task_id =>
            {
                Some(json)
            }
            _ => None,
        })
        .collect()
}

/// A sidecar for [`AGENT`] in a fresh directory whose wake command runs `script` (written to
/// `agent.sh` there) with `sh`, with test timings and `extra`; waits until the hub has it
/// identified.
pub fn sidecar_with_script(hub: &DevHub, script: &str, extra: Value) -> Sidecar {
    sidecar_with_script_via(hub, script, extra, &[], &[])
}

/// [`sidecar_with_script`], run under `wrapper` (see [`Sidecar::start_via`]) with extra
/// environment variables.
pub fn sidecar_with_script_via(
    hub: &DevHub,
    script: &str,
    extra: Value,
    wrapper: &[&str],
    env: &[(&str, String)],
) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sh");
    std::fs::write(&path, script).unwrap();
    // The script serves every task, routed or not (the bundled agents are not used); the
    // test's own `wake_commands` entries are added to these.
    let command = format!("sh {}", path.display());
    let mut routes = json!({"ollama": command, "claude": command, "sidecar": command});
    let mut extra = extra;
    if let Some(own) = extra
        .as_object_mut()
        .and_then(|e| e.remove("wake_commands"))
    {
        routes = with(routes, own);
    }
    let config = with(
        with(
            fast_config(&hub.ws_url()),
            json!({"wake_command": command, "wake_commands": routes}),
        ),
        extra,
    );
    let config_path = dir.path().join("config.json");
    write_config(&config_path, &config);
    let before = identified(hub).len();
    let sidecar = Sidecar::start_via(
        dir,
        wrapper,
        &["--config", config_path.to_str().unwrap()],
        env,
    );
    wait_identified(hub, before + 1);
    sidecar
}

/// Another client, identified as [`AGENT`], has the hub lock the agent out: `violations`
/// frames the hub refuses, until the violation threshold closes it with 1008 and the
/// agent's identify cooldown begins.
pub fn lock_out(hub: &DevHub, violations: usize) {
    use awc::ws::{Frame, Message};
    use futures_util::{SinkExt, StreamExt};
    actix_rt::System::new().block_on(async {
        let (_, mut ws) = awc::Client::new()
            .ws(hub.ws_url())
            .connect()
            .await
            .expect("connects");
        let identify = json!({"type": "identify", "agent_id": AGENT, "token": TOKEN,
            "name": AGENT, "status": "idle", "capabilities": [], "client_type": "sidecar",
            "protocol_version": 1});
        let mut frames = vec![identify];
        frames.extend((0..violations).map(|_| json!({"type": "task_rejected"})));
        for frame in frames {
            ws.send(Message::Text(frame.to_string().into()))
                .await
                .expect("sent");
        }
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Frame::Close(reason)))) => {
                    assert_eq!(reason.map(|r| u16::from(r.code)), Some(1008));
                    break;
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no close from the hub: {other:?}"),
            }
        }
    });
}

/// Runs the binary with `args` in `cwd` (no `SIDECAR_CONFIG` from the test's environment)
/// to its end.
pub fn run_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("SIDECAR_CONFIG")
        .output()
        .expect("binary runs")
}

/// Output bytes as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
