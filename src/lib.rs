//! agentcom-sidecar: an always-on relay between an AgentCom hub and one AI agent.
//!
//! The binary (`src/main.rs`) parses the command line and calls into this library:
//!
//! - [`config`] — the config file: located, read, validated into typed values.
//! - [`token_file`] — where a `token_file` is and what it must hold (systemd credentials included).
//! - [`register`] — `register`: a new agent from the hub, and a complete config written for it.
//! - [`wincmd`] — the Windows rules for wake commands (what cmd.exe may and may not be given).
//! - [`check`] — `check-config`: what a valid config cannot promise (writable paths, the wake program).
//! - [`runtime`] — builds the actor system from a config and runs it to its exit code.
//! - [`actors`] — the actors (one file each, in `actors/`) and the Supervisor's child list.
//! - [`bus`] — how actors reach each other by message type, across restarts.
//! - [`log`] — log events, the JSON-lines writer and the human stdout lines.
//! - [`protocol`] — the hub's frames as typed values.
//! - [`tasks`] — the task rules as a pure state machine, the state it keeps, and its file.
//! - [`outbound`] — the hub session's send discipline: pacing, and which sent frame an answer
//!   (or a `rate_limited`) belongs to.
//! - [`hubconn`] — the hub connection's plumbing: client build, writes, fragment reassembly.
//! - [`resources`] — the machine's CPU, RAM and VRAM use, read and turned into `resource_report`.
//! - [`result_file`] — the agent's result file parsed: the object, or why it is not one.
//! - [`room`] — room chat's rules: a `room_message` read, which may wake the agent (own,
//!   replayed, filtered), the pacing bucket, the room wake command's environment.
//! - [`proctree`] — a wake command's process tree: started apart from the sidecar, killed whole.
//! - [`process`] — the process itself: descriptor limit and inheritance, the agent's
//!   environment, reaping orphans as PID 1.
//!
//! The kit every actor uses: [`bus`], [`log`], [`backoff`], [`tls`] and [`fsx`] (the one
//! atomic write, private files, untrusted reads).
//!
//! - [`backoff`] — reconnect delays with equal jitter.
//! - [`tls`] — rustls client configuration for `wss://`.
//! - [`status`] — the running sidecar's report: state file, systemd status, Prometheus text.
//! - [`metrics`] — the optional `/healthz`, `/readyz`, `/metrics` endpoint.
//! - [`devhub`] — a small real hub for development, the demo and the tests.
//! - [`demo`] — the dev hub and a sidecar together, for a first look.
//! - [`agent`] — the bundled agents (`agentcom-sidecar agent ollama|claude|shell`): separate
//!   processes the waker starts for routed tasks, never code run inside the sidecar.

// The effective config is one `json!` object with every key: past the default macro depth.
#![recursion_limit = "256"]

#[path = "../actors/mod.rs"]
pub mod actors;
pub mod agent;
pub mod backoff;
pub mod bus;
pub mod check;
pub mod config;
pub mod demo;
pub mod devhub;
pub mod fsx;
pub mod hubconn;
pub mod log;
pub mod metrics;
pub mod outbound;
pub mod process;
pub mod proctree;
pub mod protocol;
pub mod register;
pub mod resources;
pub mod result_file;
pub mod room;
pub mod runtime;
pub mod status;
pub mod tasks;
pub mod tls;
pub mod token_file;
pub mod wincmd;
