//! The dev hub: a model of the AgentCom hub as deployed today, for the `dev-hub` subcommand,
//! the demo, the integration tests and the benchmark. It speaks the hub's protocol on `/ws`
//! and serves its HTTP side, over TLS when given a certificate, on a thread of its own with
//! its own actix System; tests drive it through [`DevHub`]. Where a sidecar can get hurt it
//! behaves as the hub does: every frame validated (a failure is a violation; ten in a minute
//! lock the agent out), rate limits, a real task queue with generations and a scheduler, tasks
//! taken back on disconnect, acceptance timeout and silence, reports refused as stale or
//! unknown, the push registration defect of half-open sessions. `docs/usage/dev-hub.md` says
//! what it models and what not. The map:
//!
//! - [`options`] — [`DevHubOptions`], [`HubTimings`], [`HubLimits`] (the hub's values by
//!   default), [`Behaviour`] switches.
//! - [`events`] — [`HubEvent`]s: everything recorded, waited for by tests, served by
//!   `GET /api/events`.
//! - `server` — [`DevHub`]: start, stop, restart, test controls; `inspect` — the test
//!   accessors (tasks, violations, take-backs, assignments, …).
//! - `state` — the shared `Hub`: the model behind a lock, the events, the timers.
//! - `core` — the model: sessions, push registry, presence, FSMs, queue, tokens, limits;
//!   `frames` — answers to frames (`chat` for the frames a sidecar does not send);
//!   `deliver` — what a session does with the hub's messages (pushes, broadcasts);
//!   `scheduler` — assignments, take-backs and every timer.
//! - Pure rules, unit-tested: `validation` (schemas), `ratelimit` (token buckets),
//!   `violations` (windows and cooldowns), `queue` and `task` (tasks and generations), `fsm` (an agent's
//!   work state), `routing` (complexity and routing decision), `tokens`, `live` (the dashboard's live view
//!   of each task's progress events).
//! - Plumbing: `ws` (one connection's task), `http` (routes), `tls`.
//!
//! Other processes read the events over HTTP with `GET /api/events` (no auth: a dev hub, on
//! loopback by default), each stamped with the machine's monotonic clock.

mod chat;
mod core;
mod deliver;
pub mod events;
mod frames;
mod fsm;
mod http;
mod inspect;
mod live;
pub mod ollama;
pub mod options;
mod queue;
mod ratelimit;
mod routing;
mod scheduler;
mod server;
mod state;
mod task;
mod tls;
mod tokens;
mod validation;
mod violations;
mod ws;

use std::collections::HashMap;
use std::path::Path;

pub use events::{HubEvent, HubEventKind, TakeBackReason};
pub use inspect::{Assignment, RateLimitedFrame, TakeBack, ValidationFailure};
pub use options::{Behaviour, DevHubOptions, HubLimits, HubTimings, RateTier};
pub use server::{run_until_signal, DevHub};

/// A frame the hub sends as is.
#[derive(Clone, Debug)]
pub enum RawFrame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    /// A Close frame with code and reason; the hub then ends the connection once the client
    /// echoes it, or after 1 s. Frames queued after it are dropped.
    Close(u16, String),
    /// A text message split into continuation frames of at most this many bytes.
    FragmentedText(String, usize),
}

/// Reads a tokens file: a JSON object `{"agent_id": "token", …}`.
pub fn load_tokens(path: &Path) -> Result<HashMap<String, String>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let tokens: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
        format!("{shown}: expected a JSON object of agent id -> token strings: {e}")
    })?;
    if tokens.is_empty() {
        return Err(format!("{shown}: no agent in it"));
    }
    if let Some(agent) = tokens
        .iter()
        .find(|(_, token)| token.is_empty())
        .map(|(a, _)| a)
    {
        return Err(format!("{shown}: agent {agent:?} has an empty token"));
    }
    Ok(tokens)
}
