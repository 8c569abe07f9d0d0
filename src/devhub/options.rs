//! How a dev hub runs: where it listens, who may connect, its timings and limits (the real
//! hub's by default, shortened by tests), and the behaviour switches tests flip at run time.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use super::ratelimit::RateTier;

/// How to run a [`DevHub`](super::DevHub).
#[derive(Clone, Debug)]
pub struct DevHubOptions {
    pub listen: SocketAddr,
    /// agent_id -> token. `None` accepts any non-empty token for any agent id.
    pub tokens: Option<HashMap<String, String>>,
    /// PEM certificate chain file and PEM private key file: serve wss/https instead of ws/http.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Print one human line per presence event (connected, identified, left, task pushed).
    pub print_presence: bool,
    /// The `default_repo` that `POST /api/onboard/register` hands out (the hub's config
    /// value; `null` when unset).
    pub default_repo: Option<String>,
    pub timings: HubTimings,
    pub limits: HubLimits,
}

impl Default for DevHubOptions {
    fn default() -> Self {
        DevHubOptions {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tokens: None,
            tls: None,
            print_presence: false,
            default_repo: None,
            timings: HubTimings::default(),
            limits: HubLimits::default(),
        }
    }
}

/// The hub's timers. `Default` is the deployed hub's values; tests use milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubTimings {
    /// An assignment not answered by `task_accepted` within this is taken back (AgentFSM).
    pub acceptance_timeout: Duration,
    /// An assigned task whose last sign of life is older than this is taken back (twice
    /// this while its agent is `working`), looked at every `stuck_sweep_interval` (Scheduler).
    pub stuck_threshold: Duration,
    pub stuck_sweep_interval: Duration,
    /// How often assigned tasks past their `complete_by` are taken back (TaskQueue).
    pub overdue_sweep_interval: Duration,
    /// A task queued longer than this, unless trivial, is dead-lettered `ttl_expired`,
    /// looked at every `ttl_sweep_interval` (Scheduler).
    pub task_ttl: Duration,
    pub ttl_sweep_interval: Duration,
    /// After a task went the routing fallback way, the scheduler tries again this much later.
    pub fallback_wait: Duration,
    /// An agent without a `ping` for this long is stale, looked at every `reaper_interval`
    /// (Reaper; see the docs for what that does and does not do).
    pub presence_ttl: Duration,
    pub reaper_interval: Duration,
    /// A WebSocket session that receives nothing (no frame, no message from inside the hub)
    /// for this long is closed (1002) and cleaned up: the half-open session's lifetime.
    pub idle_timeout: Duration,
    /// Dev hub only, with [`Behaviour::repush_before_reassign`]: the scheduling an identify
    /// triggers waits for the session's next frame, or this long at most.
    pub join_schedule_delay: Duration,
}

impl Default for HubTimings {
    fn default() -> Self {
        let s = Duration::from_secs;
        HubTimings {
            acceptance_timeout: s(60),
            stuck_threshold: s(600),
            stuck_sweep_interval: s(30),
            overdue_sweep_interval: s(30),
            task_ttl: s(600),
            ttl_sweep_interval: s(60),
            fallback_wait: s(5),
            presence_ttl: s(60),
            reaper_interval: s(30),
            idle_timeout: s(60),
            join_schedule_delay: Duration::from_millis(50),
        }
    }
}

/// The hub's limits. `Default` is the deployed hub's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubLimits {
    /// This many validation failures on one connection within `violation_window` close it
    /// (1008 `too many validation errors`).
    pub violation_threshold: u32,
    pub violation_window: Duration,
    /// The identify cooldown after an agent's 1st, 2nd, and 3rd or later such close.
    pub cooldowns: [Duration; 3],
    /// WebSocket frames per agent: `ping` and listings.
    pub light: RateTier,
    /// Task frames and everything not light or heavy.
    pub normal: RateTier,
    /// `identify` on an identified session.
    pub heavy: RateTier,
    /// An agent denied a frame is passed over by the scheduler until this long after the
    /// first denial of its streak.
    pub rate_quiet_period: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        let s = Duration::from_secs;
        HubLimits {
            violation_threshold: 10,
            violation_window: s(60),
            cooldowns: [s(30), s(60), s(300)],
            light: RateTier::per_minute(120),
            normal: RateTier::per_minute(60),
            heavy: RateTier::per_minute(10),
            rate_quiet_period: s(60),
        }
    }
}

/// Runtime switches; they apply to current and future connections.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Reply `{"type":"pong","timestamp":ms}` to an application-level ping.
    pub answer_pings: bool,
    /// Answer `task_accepted`, `task_complete` and `task_failed` (with `task_ack` or the
    /// refusal); `false`: handle them but send nothing back (a lost answer).
    pub auto_ack: bool,
    /// `false`: swallow identify frames and send nothing back.
    pub answer_identify: bool,
    /// Answer a client's Close frame as the hub does (a Close 1000, or 1002 for a code the
    /// hub does not accept), then end; `false`: ignore it and keep the connection open until
    /// the client drops it.
    pub echo_close: bool,
    /// After an identify, let the scheduling it triggers run after the session's next frame
    /// was evaluated, and write a `task_assign` it makes for that session *before* that
    /// frame's answer when the answer is `task_reassign` (see the docs). `false`: schedule at
    /// identify.
    pub repush_before_reassign: bool,
    /// What the reaper's eviction does to a stale agent's socket. `false` (the deployed hub):
    /// nothing, since the socket process traps the exit signal. `true`: the socket dies as an
    /// untrapped kill would have it (dropped without a Close frame, no clean-up of presence).
    pub evict_kills: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            answer_pings: true,
            auto_ack: true,
            answer_identify: true,
            echo_close: true,
            repush_before_reassign: true,
            evict_kills: false,
        }
    }
}
