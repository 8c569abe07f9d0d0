//! The tasks: the rules of a task's life and the state they keep, apart from the actor that
//! runs them.
//!
//! - [`model`] — the persisted state as values (`queue_file`'s contents).
//! - [`effects`] — what goes in ([`Event`]) and comes out ([`Effect`]) of the machine.
//! - [`machine`] — the pure state machine: events in, effects out, no I/O. Its rules are in
//!   `lifecycle.rs` (the hub's side), `agent.rs` (the agent's side), `timers.rs`,
//!   `session.rs` (what is sent on the hub session, when), `recovery.rs` (what is kept,
//!   pruned, recovered at start-up) and `parking.rs` (a task pushed while another is in
//!   progress).
//! - [`progress`] — the agent's progress events waiting for the hub: what merges, what is
//!   bounded.
//! - [`store`] — the blocking file work: load, results at start-up, the durable write step.
//!
//! The QueueActor (`actors/queue.rs`) is a thin shell: it feeds events in and carries the
//! effects out (writes on the blocking pool, frames to the HubActor, wakes to the
//! WakerActor, timers on its context). The machine's unit tests are in `tests.rs` (the hub's
//! side) and `tests_agent.rs`; property tests over random interleavings (crashes included)
//! in `props.rs`.

mod agent;
pub mod effects;
mod lifecycle;
pub mod machine;
pub mod model;
mod parking;
pub mod progress;
mod recovery;
mod session;
pub mod store;
mod timers;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_agent;
#[cfg(test)]
mod tests_wake;

pub use effects::{
    Answer, Assign, Effect, Event, FileOp, Note, Persist, Timer, WakeOrder, WakeOutcome,
};
pub use machine::{DiskFacts, Machine, Settings, WakeRule, WakeTargets};
pub use model::{valid_task_id, QueueState, ReportKind};
