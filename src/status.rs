//! What the running sidecar reports about itself: the state file behind
//! `agentcom-sidecar status`, the systemd `STATUS=` line, and the Prometheus text of
//! `/metrics`.
//!
//! The StatusActor keeps one [`Status`] up to date from the events the other actors
//! publish and writes it to `status_file` (atomically, at most about once a second). This
//! module is the data and its renderings; it does no waiting and owns no timers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Everything `status` shows. Timestamps are RFC 3339, UTC, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub agent_id: String,
    pub hub_url: String,
    pub started_at: String,
    pub updated_at: String,
    /// Set when the process stopped in good order.
    #[serde(default)]
    pub stopped_at: Option<String>,
    pub session: Session,
    pub reconnects: u64,
    #[serde(default)]
    pub restarts: BTreeMap<String, Restarts>,
    /// The hub's refusals of the agent since the start, by reason (`invalid_token`,
    /// `token_agent_mismatch`, `hub_lockout`).
    #[serde(default)]
    pub hub_refusals: BTreeMap<String, u64>,
    pub tasks: Tasks,
    pub log: LogCounters,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// `starting`, `connecting`, `identified`, `waiting`, `stopping`.
    pub state: String,
    pub attempt: u64,
    pub identified_since: Option<String>,
    /// With `waiting`: the next attempt's delay.
    pub retry_in_ms: Option<u64>,
    pub last_pong: Option<String>,
    pub heartbeat_rtt_ms: Option<f64>,
    /// The hub's refusal of the agent, until the next identify succeeds.
    #[serde(default)]
    pub last_error: Option<HubRefusal>,
}

/// Why the hub will not have the agent: a refused identify or a lockout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HubRefusal {
    /// `invalid_token`, `token_agent_mismatch` or `hub_lockout`.
    pub error: String,
    /// A lockout's close reason (`too many validation errors`, `cooldown active: retry in 30s`).
    #[serde(default)]
    pub detail: Option<String>,
    /// Since when the hub has refused it this way.
    pub since: String,
    /// No attempt before this (a cooldown the hub named).
    #[serde(default)]
    pub cooldown_until: Option<String>,
}

/// The reasons the hub refuses an agent for, as `/metrics` labels them.
pub const REFUSALS: [&str; 3] = ["invalid_token", "token_agent_mismatch", "hub_lockout"];

/// The outcomes a task leaves the sidecar with, as `finished:` and `/metrics` name them.
pub const OUTCOMES: [&str; 7] = [
    "complete",
    "failed",
    "rejected",
    "cancelled",
    "aborted",
    "reassigned",
    "refused",
];

impl HubRefusal {
    /// One line: what the hub refused, since when, and what to do.
    pub fn describe(&self) -> String {
        let why = match self.error.as_str() {
            "invalid_token" => {
                "the hub does not know this token; check token (or token_file) in the config"
                    .to_string()
            }
            "token_agent_mismatch" => {
                "the token belongs to another agent; check token and agent_id in the config"
                    .to_string()
            }
            "hub_lockout" => format!(
                "the hub closed the session with 1008 ({})",
                self.detail.as_deref().unwrap_or("policy violation")
            ),
            _ => "the hub refused the agent".to_string(),
        };
        let mut line = format!("{} since {}: {why}", self.error, self.since);
        if let Some(until) = &self.cooldown_until {
            let _ = write!(line, "; no attempt before {until}");
        }
        line
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Restarts {
    pub count: u64,
    pub last_reason: String,
    pub last_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tasks {
    pub active: Option<ActiveTask>,
    pub recovering: Option<String>,
    pub outbox: usize,
    /// Tasks the hub took back whose agent may still run or whose result is kept aside.
    #[serde(default)]
    pub released: usize,
    /// Reports the hub refused for good (kept in `queue_file` for the operator).
    #[serde(default)]
    pub refused: Vec<RefusedReport>,
    /// Tasks that left the sidecar's hands, by outcome: complete, failed, rejected, cancelled,
    /// aborted, reassigned, refused.
    #[serde(default)]
    pub ended: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveTask {
    pub task_id: String,
    pub status: String,
}

/// A report the hub refused, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedReport {
    pub task_id: String,
    pub frame: String,
    pub generation: u64,
    pub error: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogCounters {
    pub lines_to_stderr: u64,
    pub lines_lost: u64,
    /// Human lines stdout did not take (a stdout nobody reads); the log file has them all.
    pub stdout_lines_dropped: u64,
}

impl LogCounters {
    /// The process's log counters as they are now.
    pub fn current() -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        LogCounters {
            lines_to_stderr: crate::log::LINES_TO_STDERR.load(Relaxed),
            lines_lost: crate::log::LINES_LOST.load(Relaxed),
            stdout_lines_dropped: crate::log::STDOUT_LINES_DROPPED.load(Relaxed),
        }
    }
}

impl Status {
    /// One line for systemd's `STATUS=`: what it is doing now.
    pub fn one_line(&self) -> String {
        let mut session = self.session_line();
        if let Some(refusal) = &self.session.last_error {
            session = format!("REFUSED: {}; {session}", refusal.describe());
        }
        match (&self.tasks.active, &self.tasks.recovering) {
            (Some(t), _) => format!("{session}; working on {} ({})", t.task_id, t.status),
            (None, Some(r)) => format!("{session}; recovering {r}"),
            (None, None) => format!("{session}; idle"),
        }
    }

    /// Where the hub session stands.
    fn session_line(&self) -> String {
        let hub = &self.hub_url;
        match self.session.state.as_str() {
            "identified" => format!("identified to {hub}"),
            "waiting" => match self.session.retry_in_ms {
                Some(ms) => format!("reconnecting to {hub} in {}", human_ms(ms)),
                None => format!("reconnecting to {hub}"),
            },
            "connecting" => format!("connecting to {hub} (attempt {})", self.session.attempt),
            other => other.to_string(),
        }
    }

    /// The readable report of `agentcom-sidecar status`.
    pub fn report(&self, liveness: &Liveness) -> String {
        let mut out = String::new();
        let state = match liveness {
            Liveness::Running => "running".to_string(),
            Liveness::Stopped => format!(
                "STOPPED (in good order at {}); the state below is its last",
                self.stopped_at.as_deref().unwrap_or("?")
            ),
            Liveness::Stale => format!(
                "NOT RUNNING: pid {} is gone without a clean stop; the state below is stale (written {})",
                self.pid, self.updated_at
            ),
        };
        let _ = writeln!(
            out,
            "agentcom-sidecar {} for agent {} (pid {}): {state}",
            self.version, self.agent_id, self.pid
        );
        let s = &self.session;
        let since = s
            .identified_since
            .as_deref()
            .map(|t| format!(" since {t}"))
            .unwrap_or_default();
        // `connecting` names its attempt already.
        let attempt = match s.state.as_str() {
            "connecting" | "starting" => String::new(),
            _ => format!(" (attempt {})", s.attempt),
        };
        let _ = writeln!(out, "  session:    {}{since}{attempt}", self.session_line());
        if let Some(refusal) = &s.last_error {
            let _ = writeln!(out, "  hub says:   {}", refusal.describe());
        }
        let pong = match (&s.last_pong, s.heartbeat_rtt_ms) {
            (Some(at), Some(rtt)) => format!("{at} (round trip {rtt:.1} ms)"),
            (Some(at), None) => at.clone(),
            _ => "none yet".to_string(),
        };
        let _ = writeln!(out, "  last pong:  {pong}");
        let _ = writeln!(out, "  reconnects: {}", self.reconnects);
        if self.restarts.is_empty() {
            let _ = writeln!(out, "  restarts:   none");
        }
        for (actor, r) in &self.restarts {
            let _ = writeln!(
                out,
                "  restarts:   {actor} ×{} (last {}: {})",
                r.count, r.last_at, r.last_reason
            );
        }
        let t = &self.tasks;
        let active = t
            .active
            .as_ref()
            .map(|a| format!("{} ({})", a.task_id, a.status))
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(
            out,
            "  tasks:      active {active}; recovering {}; outbox {}; released {}",
            t.recovering.as_deref().unwrap_or("none"),
            t.outbox,
            t.released
        );
        for r in &t.refused {
            let _ = writeln!(
                out,
                "  refused:    {} {} (generation {}) at {}: {}",
                r.frame, r.task_id, r.generation, r.at, r.error
            );
        }
        let ended: Vec<String> = t.ended.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let ended = if ended.is_empty() {
            "none".to_string()
        } else {
            ended.join(", ")
        };
        let _ = writeln!(out, "  finished:   {ended}");
        let _ = writeln!(
            out,
            "  log:        {} lines to stderr, {} lost, {} not printed on stdout",
            self.log.lines_to_stderr, self.log.lines_lost, self.log.stdout_lines_dropped
        );
        let _ = writeln!(
            out,
            "  started:    {}; updated {}",
            self.started_at, self.updated_at
        );
        out
    }

    /// The Prometheus text exposition of `/metrics`.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP agentcom_sidecar_{name} {help}");
            let _ = writeln!(out, "# TYPE agentcom_sidecar_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "agentcom_sidecar_{name}{labels} {value}");
            }
        };
        let s = &self.session;
        let states = ["connecting", "identified", "waiting", "stopping"];
        let session: Vec<(String, f64)> = states
            .iter()
            .map(|st| {
                (
                    format!("{{state=\"{st}\"}}"),
                    f64::from(u8::from(s.state == *st)),
                )
            })
            .collect();
        metric(
            "session_state",
            "gauge",
            "1 for the hub session's current state.",
            &session,
        );
        metric(
            "up",
            "gauge",
            "1 while the hub session is identified.",
            &[(String::new(), f64::from(u8::from(s.state == "identified")))],
        );
        metric(
            "reconnects_total",
            "counter",
            "Reconnects scheduled after a lost or failed session.",
            &[(String::new(), self.reconnects as f64)],
        );
        if let Some(rtt) = s.heartbeat_rtt_ms {
            metric(
                "heartbeat_rtt_seconds",
                "gauge",
                "Round trip of the last answered heartbeat.",
                &[(String::new(), rtt / 1000.0)],
            );
        }
        let restarts: Vec<(String, f64)> = self
            .restarts
            .iter()
            .map(|(actor, r)| (format!("{{actor=\"{}\"}}", escape(actor)), r.count as f64))
            .collect();
        metric(
            "actor_restarts_total",
            "counter",
            "Restarts of each actor by the Supervisor.",
            &restarts,
        );
        let refusals: Vec<(String, f64)> = REFUSALS
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{r}\"}}"),
                    self.hub_refusals.get(*r).copied().unwrap_or(0) as f64,
                )
            })
            .collect();
        metric(
            "hub_refusals_total",
            "counter",
            "The hub's refusals of the agent (identify refused, lockout), by reason.",
            &refusals,
        );
        let current: Vec<(String, f64)> = REFUSALS
            .iter()
            .map(|r| {
                let now = s.last_error.as_ref().is_some_and(|e| e.error == *r);
                (format!("{{reason=\"{r}\"}}"), f64::from(u8::from(now)))
            })
            .collect();
        metric(
            "hub_refused",
            "gauge",
            "1 for the reason the hub refuses the agent now (until an identify succeeds).",
            &current,
        );
        let ended: Vec<(String, f64)> = OUTCOMES
            .iter()
            .map(|o| {
                (
                    format!("{{outcome=\"{o}\"}}"),
                    self.tasks.ended.get(*o).copied().unwrap_or(0) as f64,
                )
            })
            .collect();
        metric(
            "tasks_total",
            "counter",
            "Tasks that left the sidecar, by outcome.",
            &ended,
        );
        metric(
            "task_active",
            "gauge",
            "1 while a task is active.",
            &[(
                String::new(),
                f64::from(u8::from(self.tasks.active.is_some())),
            )],
        );
        metric(
            "outbox_length",
            "gauge",
            "Lifecycle frames waiting for the hub's ack.",
            &[(String::new(), self.tasks.outbox as f64)],
        );
        metric(
            "log_lines_to_stderr_total",
            "counter",
            "Log lines written to stderr because the log file could not be.",
            &[(String::new(), self.log.lines_to_stderr as f64)],
        );
        metric(
            "log_lines_dropped_total",
            "counter",
            "Log lines written nowhere (log file and stderr both failed).",
            &[(String::new(), self.log.lines_lost as f64)],
        );
        metric(
            "stdout_lines_dropped_total",
            "counter",
            "Human lines not printed because stdout did not take them (the log file has them).",
            &[(String::new(), self.log.stdout_lines_dropped as f64)],
        );
        out
    }
}

/// Whether the process that wrote a state file is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// It wrote `stopped_at`: it stopped in good order.
    Stopped,
    /// Its pid is gone (or belongs to something else) and it never said it stopped.
    Stale,
}

impl Status {
    pub fn liveness(&self) -> Liveness {
        if self.stopped_at.is_some() {
            return Liveness::Stopped;
        }
        if process_is_ours(self.pid) {
            Liveness::Running
        } else {
            Liveness::Stale
        }
    }
}

/// Whether `pid` is alive and is this program (a recycled pid is not). Without `/proc`, only
/// "alive" can be checked.
#[cfg(not(windows))]
fn process_is_ours(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        #[cfg(unix)]
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        return i32::try_from(pid).is_ok_and(|p| unsafe { libc::kill(p, 0) } == 0);
        #[cfg(not(unix))]
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    !zombie && String::from_utf8_lossy(&cmdline).contains(env!("CARGO_PKG_NAME"))
}

/// Whether `pid` is alive and is this program: on Windows, still running (`STILL_ACTIVE`)
/// with an image of this program's file name (a recycled pid is not).
#[cfg(windows)]
fn process_is_ours(pid: u32) -> bool {
    use std::os::windows::ffi::OsStringExt;
    use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, QueryFullProcessImageNameW, PROCESS_NAME_WIN32,
        PROCESS_QUERY_LIMITED_INFORMATION,
    };
    let mut name = [0u16; 1024];
    let mut len = name.len() as u32;
    let mut code = 0u32;
    // SAFETY: the handle is checked for null, used only with buffers that live on this stack
    // frame (with their true lengths), and closed before returning.
    let (alive, named) = unsafe {
        let process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if process.is_null() {
            return false;
        }
        let alive = GetExitCodeProcess(process, &mut code) != 0 && code == STILL_ACTIVE as u32;
        let named =
            QueryFullProcessImageNameW(process, PROCESS_NAME_WIN32, name.as_mut_ptr(), &mut len)
                != 0;
        CloseHandle(process);
        (alive, named)
    };
    let image = std::path::PathBuf::from(std::ffi::OsString::from_wide(
        &name[..(len as usize).min(name.len())],
    ));
    let ours = std::env::current_exe().ok();
    alive
        && named
        && image.file_name().is_some_and(|n| {
            ours.as_ref()
                .and_then(|p| p.file_name())
                .is_some_and(|o| o.eq_ignore_ascii_case(n))
        })
}

/// Largest state file read (one is a few KiB; the task list is bounded).
const MAX_STATE_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a state file, as any file others could have put there: a regular file only (a FIFO
/// or a device at the name cannot hang the reader), of bounded size. Blocking: off the
/// event loop.
pub fn read(path: &Path) -> Result<Status, String> {
    use crate::fsx::Untrusted;
    let shown = path.display();
    let file = crate::fsx::open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("no state file at {shown}: the sidecar has not run with this config")
        }
        _ => format!("{shown}: {e}"),
    })?;
    let Some(file) = file else {
        return Err(format!("{shown}: not a regular file; refusing to read it"));
    };
    let bytes = match crate::fsx::read_limited(file, MAX_STATE_FILE_BYTES) {
        Ok(Untrusted::Bytes(b)) => b,
        Ok(Untrusted::TooLarge(n)) => {
            return Err(format!(
            "{shown}: {n} bytes or more, larger than a state file can be ({MAX_STATE_FILE_BYTES})"
        ))
        }
        Ok(Untrusted::NotRegular) => {
            return Err(format!("{shown}: not a regular file; refusing to read it"))
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("{shown}: not a state file: {e}"))
}

fn human_ms(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.0} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// Prometheus label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let mut s = Status {
            version: "0.1.0".into(),
            pid: u32::MAX,
            agent_id: "a1".into(),
            hub_url: "ws://hub/ws".into(),
            ..Status::default()
        };
        s.session.state = "waiting".into();
        s.session.retry_in_ms = Some(8000);
        s.tasks.active = Some(ActiveTask {
            task_id: "task-abc".into(),
            status: "working".into(),
        });
        s.restarts.insert(
            "hub".into(),
            Restarts {
                count: 2,
                last_reason: "panic: boom".into(),
                last_at: "t".into(),
            },
        );
        s
    }

    #[test]
    fn one_line_says_what_it_is_doing() {
        assert_eq!(
            sample().one_line(),
            "reconnecting to ws://hub/ws in 8 s; working on task-abc (working)"
        );
    }

    #[test]
    fn a_refusal_leads_the_status_line_and_the_report() {
        let mut s = sample();
        s.session.state = "connecting".into();
        s.session.attempt = 1;
        s.tasks.active = None;
        let report = s.report(&Liveness::Running);
        assert_eq!(report.matches("(attempt 1)").count(), 1, "{report}");
        s.session.last_error = Some(HubRefusal {
            error: "hub_lockout".into(),
            detail: Some("cooldown active: retry in 30s".into()),
            since: "t0".into(),
            cooldown_until: Some("t1".into()),
        });
        assert_eq!(
            s.one_line(),
            "REFUSED: hub_lockout since t0: the hub closed the session with 1008 (cooldown active: retry in 30s); no attempt before t1; connecting to ws://hub/ws (attempt 1); idle"
        );
        assert!(s
            .report(&Liveness::Running)
            .contains("  hub says:   hub_lockout since t0"));
        let text = s.prometheus();
        assert!(text.contains("agentcom_sidecar_hub_refused{reason=\"hub_lockout\"} 1"));
        assert!(text.contains("agentcom_sidecar_hub_refused{reason=\"invalid_token\"} 0"));
    }

    #[test]
    fn prometheus_text_has_help_type_and_labelled_samples() {
        let text = sample().prometheus();
        assert!(text.contains("# TYPE agentcom_sidecar_reconnects_total counter"));
        assert!(text.contains("agentcom_sidecar_session_state{state=\"waiting\"} 1"));
        assert!(text.contains("agentcom_sidecar_actor_restarts_total{actor=\"hub\"} 2"));
        assert!(text.contains("agentcom_sidecar_tasks_total{outcome=\"failed\"} 0"));
        assert!(text.contains("agentcom_sidecar_log_lines_dropped_total 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn a_pid_that_is_not_running_makes_the_state_stale() {
        assert_eq!(sample().liveness(), Liveness::Stale);
        let mut stopped = sample();
        stopped.stopped_at = Some("t".into());
        assert_eq!(stopped.liveness(), Liveness::Stopped);
        assert!(sample().report(&Liveness::Stale).contains("NOT RUNNING"));
    }
}
