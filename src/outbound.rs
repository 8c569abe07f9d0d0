//! The session's send discipline and reply attribution: which frame goes out when, and which
//! sent frame each answer from the hub belongs to. Pure rules (time comes in as an
//! `Instant`); the HubActor runs them on its one connection.
//!
//! The hub handles one socket's frames in order and answers each in order, but it does not
//! say which frame an answer is for: `task_ack` carries a task id, while the errors that
//! refuse a report (`task_complete_failed: …`, `validation_failed`) and `rate_limited` carry
//! none. So every sent frame is kept here, in order, until it is answered (or, for a frame
//! the hub never answers, until a later answer proves it was handled), and an answer
//! belongs to the oldest frame it can belong to. Two rules make that exact:
//!
//! - **Isolation.** Within a rate-limit tier, a frame the hub does not answer
//!   (`task_progress`, `wake_result`, `resource_report`) is sent only when nothing else of
//!   its tier is waiting for an answer, and is followed by a `ping` whose `pong` proves it
//!   was handled; until then nothing else of that tier is sent. So a `rate_limited` or a
//!   `validation_failed` always belongs to the oldest unsettled frame of its tier.
//! - **Pacing.** Each tier has a token bucket below the hub's own limits (the hub drops a
//!   frame over its limit), so the hub's limit is reached only if something else shares the
//!   agent's bucket. A frame the hub dropped (`rate_limited`) is sent again after
//!   `retry_after_ms`, in its original place in line (two dropped frames go again in the
//!   order they were first sent: an accept before its report), and its tier waits until
//!   then. The heartbeat, which goes even while its tier waits, does not end the wait.
//! - **Pacing outlives the connection.** The hub's limits are per agent, not per socket: the
//!   buckets and the waits the hub asked for are carried to the next session ([`Pacer`]),
//!   so a reconnect does not start with a full allowance the hub does not give.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::RateLimits;
use crate::protocol::{Incoming, Outgoing};

/// The hub's rate-limit tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Light,
    Normal,
    Heavy,
}

impl Tier {
    fn index(self) -> usize {
        self as usize
    }

    /// The hub's tier of a frame type (unknown types are normal, as on the hub).
    pub fn of(frame_type: &str) -> Tier {
        match frame_type {
            "ping" | "list_agents" | "list_channels" | "status" | "channel_history" => Tier::Light,
            "identify" => Tier::Heavy,
            _ => Tier::Normal,
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        match text {
            "light" => Some(Tier::Light),
            "normal" => Some(Tier::Normal),
            "heavy" => Some(Tier::Heavy),
            _ => None,
        }
    }
}

/// What answer a frame gets from the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// None: the hub handles it silently.
    Nothing,
    Identified,
    Pong,
    /// `task_ack` (or an error).
    TaskAck,
    /// `task_continue` or `task_reassign`.
    Recovery,
    StateReportAck,
}

impl Expect {
    pub fn of(frame: &Outgoing) -> Expect {
        match frame {
            Outgoing::Identify { .. } => Expect::Identified,
            Outgoing::Ping => Expect::Pong,
            Outgoing::TaskAccepted { .. }
            | Outgoing::TaskComplete { .. }
            | Outgoing::TaskFailed { .. } => Expect::TaskAck,
            Outgoing::TaskRecovering { .. } => Expect::Recovery,
            Outgoing::StateReport { .. } => Expect::StateReportAck,
            _ => Expect::Nothing,
        }
    }
}

/// A sent frame waiting for its answer (or to be proven handled).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub frame: Outgoing,
    /// Its place in line: the order frames were submitted in.
    pub seq: u64,
    pub tier: Tier,
    pub expect: Expect,
    /// A ping sent only to settle the frames before it (its pong goes to nobody).
    pub fence: bool,
}

/// What an incoming frame meant for the frames sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribution {
    /// Not an answer to anything sent (a push: `task_assign`, chat, …).
    NotAnAnswer,
    /// The answer to `sent`.
    Answer(Sent),
    /// `rate_limited`: `sent` was dropped; it goes again after the wait.
    Dropped { sent: Sent, retry_after: Duration },
    /// An answer that fits no frame waiting for one (logged by the caller).
    Unmatched,
}

/// Frames per minute per tier the sidecar allows itself (below the hub's, see
/// [`Pacing::below`]).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub light: u32,
    pub normal: u32,
    pub heavy: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing::below(RateLimits::default())
    }
}

impl Pacing {
    /// Five sixths of what the hub allows per tier (at least one a minute: 100, 50 and 8
    /// against the hub's 120, 60 and 10), so that a clock drift or a frame the hub counted
    /// that we did not never tips it over.
    pub fn below(hub: RateLimits) -> Pacing {
        let under = |n: u32| (n.saturating_mul(5) / 6).max(1);
        Pacing {
            light: under(hub.light),
            normal: under(hub.normal),
            heavy: under(hub.heavy),
        }
    }
}

/// How often one task's agent events may go out: `agent_progress_min`, but never faster
/// than half the normal tier's pacing (2.4 s against the hub's 60 a minute), so that they
/// never queue up here and the other half is left to reports, keep-alives and the rest.
pub fn agent_progress_gap(agent_progress_min: Duration, pacing: Pacing) -> Duration {
    let half = Duration::from_secs(120) / pacing.normal.max(1);
    agent_progress_min.max(half)
}

#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Bucket {
        let capacity = f64::from(per_minute.max(1));
        Bucket {
            capacity,
            per_sec: capacity / 60.0,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * self.per_sec).min(self.capacity);
        self.at = now;
    }

    fn available(&mut self, now: Instant, n: f64) -> bool {
        self.refill(now);
        self.tokens >= n
    }

    fn take(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// When `n` tokens will be there.
    fn ready_at(&self, n: f64) -> Instant {
        let missing = (n - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.per_sec)
    }
}

#[derive(Debug, Clone)]
struct Waiting {
    frame: Outgoing,
    seq: u64,
    not_before: Option<Instant>,
}

/// The agent's allowance at the hub: a token bucket per tier and the wait the hub asked for
/// (`rate_limited`) per tier. It belongs to the agent, not to one connection: the HubActor
/// carries it from one session to the next ([`Outbound::pacer`], [`Outbound::resume`]).
#[derive(Debug, Clone)]
pub struct Pacer {
    buckets: [Bucket; 3],
    paused: [Option<Instant>; 3],
}

impl Pacer {
    pub fn new(pacing: Pacing, now: Instant) -> Pacer {
        Pacer {
            buckets: [
                Bucket::new(pacing.light, now),
                Bucket::new(pacing.normal, now),
                Bucket::new(pacing.heavy, now),
            ],
            paused: [None; 3],
        }
    }
}

/// One connection's outgoing side.
#[derive(Debug, Clone)]
pub struct Outbound {
    waiting: VecDeque<Waiting>,
    inflight: VecDeque<Sent>,
    pacer: Pacer,
    next_seq: u64,
}

impl Outbound {
    /// A first session: a full allowance.
    pub fn new(pacing: Pacing, now: Instant) -> Outbound {
        Outbound::resume(Pacer::new(pacing, now))
    }

    /// A later session: the allowance the earlier ones left (tokens refill with time as
    /// usual; a wait the hub asked for still holds).
    pub fn resume(pacer: Pacer) -> Outbound {
        Outbound {
            waiting: VecDeque::new(),
            inflight: VecDeque::new(),
            pacer,
            next_seq: 0,
        }
    }

    /// The allowance as it stands, to carry to the next session.
    pub fn pacer(&self) -> Pacer {
        self.pacer.clone()
    }

    /// Queues a frame; [`Outbound::poll`] says when it goes.
    pub fn submit(&mut self, frame: Outgoing) {
        // Progress waiting to go is merged with a newer one of the same task where the
        // dashboard shows the pair alike (keeping its place in line), so a chatty agent never
        // builds a backlog in front of its reports: a keep-alive (no event) only updates the
        // `progress` number; an agent's event is merged as `tasks::progress::merge` allows
        // (text of the same event type concatenated, an event without text replaced). Text
        // is never dropped for a newer event: what cannot merge waits behind it.
        if let Outgoing::TaskProgress {
            task_id,
            progress,
            execution_event,
        } = frame
        {
            let last = self
                .waiting
                .iter_mut()
                .rev()
                .find_map(|w| match &mut w.frame {
                    Outgoing::TaskProgress {
                        task_id: t,
                        progress,
                        execution_event,
                    } if *t == task_id => Some((progress, execution_event)),
                    _ => None,
                });
            let rest = match last {
                None => Some((progress, execution_event)),
                Some((old_progress, old_event)) => {
                    let rest = match (old_event.as_mut(), execution_event) {
                        (_, None) => None,
                        (None, Some(event)) => {
                            *old_event = Some(event);
                            None
                        }
                        (Some(old), Some(event)) => crate::tasks::progress::merge(
                            old,
                            event,
                            crate::tasks::progress::FRAME_TEXT_MAX,
                        )
                        .err(),
                    };
                    match rest {
                        None => {
                            if progress.is_some() {
                                *old_progress = progress;
                            }
                            None
                        }
                        Some(event) => Some((progress, Some(event))),
                    }
                }
            };
            if let Some((progress, execution_event)) = rest {
                let seq = self.next_seq();
                self.waiting.push_back(Waiting {
                    frame: Outgoing::TaskProgress {
                        task_id,
                        progress,
                        execution_event,
                    },
                    seq,
                    not_before: None,
                });
            }
            return;
        }
        let seq = self.next_seq();
        self.waiting.push_back(Waiting {
            frame,
            seq,
            not_before: None,
        });
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Frames waiting to be sent.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Frames sent and not settled yet.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// The frames that may go now, in order (fence pings included).
    pub fn poll(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut held = [false; 3];
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &self.waiting[i];
            let tier = Tier::of(w.frame.kind());
            let expect = Expect::of(&w.frame);
            let t = tier.index();
            // A heartbeat goes when it is due (its own interval paces it): holding it back
            // would only make the session look dead.
            let heartbeat = matches!(w.frame, Outgoing::Ping);
            let blocked = held[t]
                || (!heartbeat && self.pacer.paused[t].is_some_and(|p| p > now))
                || w.not_before.is_some_and(|nb| nb > now)
                || !self.isolated(tier, expect);
            // A silent frame takes a light token too, for the ping that settles it (which
            // waits out a light-tier pause like any other ping but the heartbeat).
            let light = Tier::Light.index();
            let fence_ok = expect != Expect::Nothing
                || (self.pacer.buckets[light].available(now, 1.0)
                    && self.pacer.paused[light].is_none_or(|p| p <= now));
            let paced = heartbeat || self.pacer.buckets[t].available(now, 1.0);
            if blocked || !fence_ok || !paced {
                held[t] = true;
                i += 1;
                continue;
            }
            let Some(w) = self.waiting.remove(i) else {
                break;
            };
            if self.pacer.buckets[t].available(now, 1.0) {
                self.pacer.buckets[t].take(1.0);
            }
            // The heartbeat goes through a wait without ending it.
            if !heartbeat {
                self.pacer.paused[t] = None;
            }
            out.push(w.frame.clone());
            self.inflight.push_back(Sent {
                frame: w.frame,
                seq: w.seq,
                tier,
                expect,
                fence: false,
            });
            if expect == Expect::Nothing {
                self.pacer.buckets[Tier::Light.index()].take(1.0);
                out.push(Outgoing::Ping);
                self.inflight.push_back(Sent {
                    frame: Outgoing::Ping,
                    seq: w.seq,
                    tier: Tier::Light,
                    expect: Expect::Pong,
                    fence: true,
                });
            }
        }
        out
    }

    /// Whether a frame of `tier` expecting `expect` may be sent with what is in flight.
    fn isolated(&self, tier: Tier, expect: Expect) -> bool {
        let mut same = self.inflight.iter().filter(|s| s.tier == tier);
        if expect == Expect::Nothing {
            same.next().is_none()
        } else {
            same.all(|s| s.expect != Expect::Nothing)
        }
    }

    /// When something held could go (to poll again then), if anything is held.
    pub fn next_poll(&self, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut consider = |t: Instant| {
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        };
        for w in &self.waiting {
            if let Some(nb) = w.not_before.filter(|nb| *nb > now) {
                consider(nb);
            }
            // Its own tier, and the light tier of its fence ping if it gets one (as `poll`).
            let mut tiers = vec![Tier::of(w.frame.kind()).index()];
            if Expect::of(&w.frame) == Expect::Nothing {
                tiers.push(Tier::Light.index());
            }
            for tier in tiers {
                if let Some(p) = self.pacer.paused[tier].filter(|p| *p > now) {
                    consider(p);
                }
                let mut probe = self.pacer.buckets[tier].clone();
                if !probe.available(now, 1.0) {
                    consider(probe.ready_at(1.0));
                }
            }
        }
        earliest
    }

    /// Which sent frame an incoming frame answers; settles the frames before it.
    pub fn attribute(&mut self, incoming: &Incoming, now: Instant) -> Attribution {
        match incoming {
            Incoming::Identified => self.settle(|s| s.expect == Expect::Identified),
            Incoming::Pong { .. } => self.settle(|s| s.expect == Expect::Pong),
            Incoming::TaskAck { task_id, status } => self.settle(|s| {
                s.expect == Expect::TaskAck
                    && frame_task_id(&s.frame) == Some(task_id.as_str())
                    && (status == "accepted") == matches!(s.frame, Outgoing::TaskAccepted { .. })
            }),
            Incoming::TaskContinue { task_id, .. } | Incoming::TaskReassign { task_id } => self
                .settle(|s| {
                    s.expect == Expect::Recovery
                        && frame_task_id(&s.frame) == Some(task_id.as_str())
                }),
            Incoming::StateReportAck { task_id, .. } => self.settle(|s| {
                s.expect == Expect::StateReportAck
                    && frame_task_id(&s.frame) == Some(task_id.as_str())
            }),
            Incoming::RateLimited {
                retry_after_ms,
                tier,
            } => {
                let tier = tier.as_deref().and_then(Tier::parse);
                let Attribution::Answer(sent) = self.settle(|s| tier.is_none_or(|t| s.tier == t))
                else {
                    return Attribution::Unmatched;
                };
                let retry_after =
                    Duration::from_millis(retry_after_ms.unwrap_or(1000).min(3_600_000));
                let until = now + retry_after;
                self.pacer.paused[sent.tier.index()] = Some(until);
                // A ping is not sent again: the next heartbeat is one. Anything else goes
                // back to its original place in line: before every frame submitted after it
                // (so also after a frame dropped earlier that was sent before it).
                if !matches!(sent.frame, Outgoing::Ping) {
                    let at = self
                        .waiting
                        .iter()
                        .position(|w| w.seq > sent.seq)
                        .unwrap_or(self.waiting.len());
                    self.waiting.insert(
                        at,
                        Waiting {
                            frame: sent.frame.clone(),
                            seq: sent.seq,
                            not_before: Some(until),
                        },
                    );
                }
                Attribution::Dropped { sent, retry_after }
            }
            Incoming::Error {
                error,
                message_type,
                ..
            } => {
                match error.split(':').next().unwrap_or_default() {
                    "task_complete_failed" => {
                        return self.settle(|s| matches!(s.frame, Outgoing::TaskComplete { .. }))
                    }
                    "task_fail_failed" => {
                        return self.settle(|s| matches!(s.frame, Outgoing::TaskFailed { .. }))
                    }
                    _ => {}
                }
                match (error.as_str(), message_type) {
                    ("validation_failed", Some(m)) => {
                        let tier = Tier::of(m);
                        self.settle(|s| s.tier == tier && s.frame.kind() == m)
                    }
                    ("invalid_token" | "token_agent_mismatch", _) => {
                        self.settle(|s| s.expect == Expect::Identified)
                    }
                    // Errors that answer the oldest frame whatever it was.
                    (
                        "validation_failed"
                        | "invalid_json"
                        | "unknown_message_type"
                        | "not_identified",
                        _,
                    ) => self.settle(|_| true),
                    _ => Attribution::NotAnAnswer,
                }
            }
            _ => Attribution::NotAnAnswer,
        }
    }

    /// Pops the oldest sent frame that `fits`, and every frame before it (handled: the hub
    /// answers in order). A frame before it that expected an answer and got none is a
    /// protocol surprise; it is dropped from the books all the same.
    fn settle(&mut self, fits: impl Fn(&Sent) -> bool) -> Attribution {
        let Some(index) = self.inflight.iter().position(fits) else {
            return Attribution::Unmatched;
        };
        self.inflight.drain(..index);
        match self.inflight.pop_front() {
            Some(sent) => Attribution::Answer(sent),
            None => Attribution::Unmatched,
        }
    }
}

/// The task id a sent frame is about.
pub fn frame_task_id(frame: &Outgoing) -> Option<&str> {
    match frame {
        Outgoing::TaskAccepted { task_id, .. }
        | Outgoing::TaskProgress { task_id, .. }
        | Outgoing::TaskComplete { task_id, .. }
        | Outgoing::TaskFailed { task_id, .. }
        | Outgoing::TaskRecovering { task_id, .. }
        | Outgoing::WakeResult { task_id, .. }
        | Outgoing::StateReport { task_id, .. } => Some(task_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn complete(id: &str) -> Outgoing {
        Outgoing::task_complete(id.into(), 1, Map::new())
    }

    fn progress(id: &str) -> Outgoing {
        Outgoing::TaskProgress {
            task_id: id.into(),
            progress: None,
            execution_event: None,
        }
    }

    fn kinds(frames: &[Outgoing]) -> Vec<&'static str> {
        frames.iter().map(Outgoing::kind).collect()
    }

    fn error(e: &str) -> Incoming {
        Incoming::Error {
            error: e.into(),
            message_type: None,
            errors: None,
        }
    }

    #[test]
    fn reports_pipeline_and_task_id_less_errors_go_to_the_oldest() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(complete("a"));
        o.submit(complete("b"));
        assert_eq!(kinds(&o.poll(now)), ["task_complete", "task_complete"]);
        let a = o.attribute(&error("task_complete_failed: stale_generation"), now);
        assert!(matches!(a, Attribution::Answer(s) if frame_task_id(&s.frame) == Some("a")));
        let b = o.attribute(
            &Incoming::TaskAck {
                task_id: "b".into(),
                status: "complete".into(),
            },
            now,
        );
        assert!(matches!(b, Attribution::Answer(s) if frame_task_id(&s.frame) == Some("b")));
        assert_eq!(o.inflight(), 0);
    }

    #[test]
    fn a_silent_frame_goes_alone_with_a_fence_ping_and_holds_its_tier() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(complete("a"));
        o.submit(progress("a"));
        o.submit(complete("b"));
        // The progress waits for the first report's answer; the second report waits for
        // the progress to be settled.
        assert_eq!(kinds(&o.poll(now)), ["task_complete"]);
        o.attribute(
            &Incoming::TaskAck {
                task_id: "a".into(),
                status: "complete".into(),
            },
            now,
        );
        assert_eq!(kinds(&o.poll(now)), ["task_progress", "ping"]);
        assert!(o.poll(now).is_empty());
        // rate_limited now can only be the progress.
        let d = o.attribute(
            &Incoming::RateLimited {
                retry_after_ms: Some(500),
                tier: Some("normal".into()),
            },
            now,
        );
        assert!(
            matches!(d, Attribution::Dropped { ref sent, .. } if sent.frame.kind() == "task_progress")
        );
        // The fence's pong settles nothing else; the tier waits for retry_after.
        assert!(
            matches!(o.attribute(&Incoming::Pong { timestamp: None }, now), Attribution::Answer(s) if s.fence)
        );
        assert!(o.poll(now).is_empty());
        let later = now + Duration::from_millis(500);
        assert_eq!(o.next_poll(now), Some(later));
        assert_eq!(kinds(&o.poll(later)), ["task_progress", "ping"]);
        o.attribute(&Incoming::Pong { timestamp: None }, later);
        assert_eq!(kinds(&o.poll(later)), ["task_complete"]);
    }

    #[test]
    fn a_dropped_report_is_sent_again_first_after_the_wait() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(complete("a"));
        o.submit(complete("b"));
        o.poll(now);
        let d = o.attribute(
            &Incoming::RateLimited {
                retry_after_ms: Some(100),
                tier: Some("normal".into()),
            },
            now,
        );
        assert!(
            matches!(d, Attribution::Dropped { sent, .. } if frame_task_id(&sent.frame) == Some("a"))
        );
        // b's answer still comes and belongs to b.
        let b = o.attribute(&error("task_complete_failed: invalid_state"), now);
        assert!(matches!(b, Attribution::Answer(s) if frame_task_id(&s.frame) == Some("b")));
        assert!(o.poll(now).is_empty());
        let again = o.poll(now + Duration::from_millis(100));
        assert_eq!(again.len(), 1);
        assert_eq!(frame_task_id(&again[0]), Some("a"));
    }

    #[test]
    fn pacing_holds_frames_over_the_budget_until_tokens_come_back() {
        let now = Instant::now();
        let mut o = Outbound::new(
            Pacing {
                light: 100,
                normal: 2,
                heavy: 1,
            },
            now,
        );
        for id in ["a", "b", "c"] {
            o.submit(Outgoing::TaskAccepted {
                task_id: id.into(),
                generation: 1,
            });
        }
        o.submit(Outgoing::Ping);
        assert_eq!(
            kinds(&o.poll(now)),
            ["task_accepted", "task_accepted", "ping"]
        );
        let next = o.next_poll(now).expect("the third waits for a token");
        assert_eq!(next, now + Duration::from_secs(30));
        assert_eq!(o.poll(next).len(), 1);
    }

    #[test]
    fn a_silent_frame_waiting_for_its_fence_pings_token_has_a_time_to_poll_again() {
        let now = Instant::now();
        let mut o = Outbound::new(
            Pacing {
                light: 1,
                normal: 60,
                heavy: 10,
            },
            now,
        );
        // The heartbeat takes the one light token of the minute.
        o.submit(Outgoing::Ping);
        assert_eq!(kinds(&o.poll(now)), ["ping"]);
        o.attribute(&Incoming::Pong { timestamp: None }, now);
        // Progress is silent: it needs a light token for its fence ping.
        o.submit(progress("a"));
        assert!(o.poll(now).is_empty());
        let next = o.next_poll(now).expect("a time to look again");
        assert_eq!(next, now + Duration::from_secs(60));
        assert_eq!(kinds(&o.poll(next)), ["task_progress", "ping"]);
    }

    /// Sends what may go (a's report first), answers a's report, and returns what goes next.
    fn behind_acked_complete(o: &mut Outbound, now: Instant) -> Vec<Outgoing> {
        o.poll(now);
        o.attribute(
            &Incoming::TaskAck {
                task_id: "a".into(),
                status: "complete".into(),
            },
            now,
        );
        o.poll(now)
    }

    #[test]
    fn a_newer_progress_replaces_one_still_waiting() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(complete("a"));
        for p in [10, 20, 30] {
            o.submit(Outgoing::TaskProgress {
                task_id: "a".into(),
                progress: Some(p),
                execution_event: None,
            });
        }
        o.submit(progress("b"));
        assert_eq!(o.waiting(), 3);
        let sent = behind_acked_complete(&mut o, now);
        assert!(matches!(
            &sent[0],
            Outgoing::TaskProgress {
                progress: Some(30),
                ..
            }
        ));
    }

    fn text(id: &str, kind: &str, text: &str) -> Outgoing {
        let event: Map<String, Value> = [
            ("event_type".to_string(), json!(kind)),
            ("text".to_string(), json!(text)),
        ]
        .into_iter()
        .collect();
        Outgoing::TaskProgress {
            task_id: id.into(),
            progress: None,
            execution_event: Some(event),
        }
    }

    #[test]
    fn waiting_text_is_never_replaced_only_joined_with_text_of_its_kind() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(complete("a"));
        o.submit(text("a", "token", "Hel"));
        o.submit(text("a", "token", "lo"));
        o.submit(text("a", "stderr", "warn"));
        // A keep-alive only updates the number of the last one waiting.
        o.submit(Outgoing::TaskProgress {
            task_id: "a".into(),
            progress: Some(70),
            execution_event: None,
        });
        assert_eq!(o.waiting(), 3);
        let texts = |f: &Outgoing| match f {
            Outgoing::TaskProgress {
                execution_event: Some(e),
                progress,
                ..
            } => (e["text"].as_str().unwrap().to_string(), *progress),
            other => panic!("{other:?}"),
        };
        let sent = behind_acked_complete(&mut o, now);
        assert_eq!(texts(&sent[0]), ("Hello".to_string(), None));
        o.attribute(&Incoming::Pong { timestamp: None }, now);
        let sent = o.poll(now);
        assert_eq!(texts(&sent[0]), ("warn".to_string(), Some(70)));
    }

    #[test]
    fn agent_events_go_at_most_half_as_often_as_the_normal_tier_allows() {
        let p = Pacing::default();
        assert_eq!(
            agent_progress_gap(Duration::from_millis(1000), p),
            Duration::from_millis(2400)
        );
        assert_eq!(
            agent_progress_gap(Duration::from_secs(5), p),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn pacing_stays_a_sixth_below_the_hubs_limits() {
        let p = Pacing::default();
        assert_eq!((p.light, p.normal, p.heavy), (100, 50, 8));
        let p = Pacing::below(RateLimits {
            light: 1,
            normal: 0,
            heavy: u32::MAX,
        });
        assert_eq!((p.light, p.normal), (1, 1));
        assert!(p.heavy > 0);
    }

    #[test]
    fn a_keep_alive_progress_does_not_wipe_the_agents_event_still_waiting() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(complete("a"));
        let event: Map<String, Value> = [("event_type".to_string(), json!("tool_call"))]
            .into_iter()
            .collect();
        o.submit(Outgoing::TaskProgress {
            task_id: "a".into(),
            progress: Some(40),
            execution_event: Some(event.clone()),
        });
        o.submit(Outgoing::TaskProgress {
            task_id: "a".into(),
            progress: None,
            execution_event: None,
        });
        assert_eq!(o.waiting(), 2);
        let sent = behind_acked_complete(&mut o, now);
        match &sent[0] {
            Outgoing::TaskProgress {
                progress,
                execution_event,
                ..
            } => {
                assert_eq!(*progress, Some(40));
                assert_eq!(execution_event.as_ref(), Some(&event));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_failures_go_to_the_oldest_frame_of_that_type() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(Outgoing::Ping);
        o.submit(Outgoing::TaskFailed {
            task_id: "x".into(),
            generation: 2,
            reason: "r".into(),
            error: "e".into(),
        });
        o.poll(now);
        let a = o.attribute(
            &Incoming::Error {
                error: "validation_failed".into(),
                message_type: Some("task_failed".into()),
                errors: None,
            },
            now,
        );
        assert!(matches!(a, Attribution::Answer(s) if s.frame.kind() == "task_failed"));
        // The ping before it was handled (its pong may have been lost or is ignored).
        assert_eq!(o.inflight(), 0);
        assert_eq!(
            o.attribute(&Incoming::Pong { timestamp: None }, now),
            Attribution::Unmatched
        );
    }

    fn accepted(id: &str) -> Outgoing {
        Outgoing::TaskAccepted {
            task_id: id.into(),
            generation: 1,
        }
    }

    fn limited(ms: u64, tier: &str) -> Incoming {
        Incoming::RateLimited {
            retry_after_ms: Some(ms),
            tier: Some(tier.into()),
        }
    }

    #[test]
    fn two_dropped_frames_are_sent_again_in_their_original_order() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(accepted("a"));
        o.submit(complete("a"));
        assert_eq!(kinds(&o.poll(now)), ["task_accepted", "task_complete"]);
        o.submit(complete("b"));
        // The hub drops both, in order; the later report of b waits behind them.
        for _ in 0..2 {
            assert!(matches!(
                o.attribute(&limited(100, "normal"), now),
                Attribution::Dropped { .. }
            ));
        }
        let later = now + Duration::from_millis(100);
        let again = o.poll(later);
        assert_eq!(
            again
                .iter()
                .map(|f| (f.kind(), frame_task_id(f).unwrap()))
                .collect::<Vec<_>>(),
            [
                ("task_accepted", "a"),
                ("task_complete", "a"),
                ("task_complete", "b")
            ]
        );
    }

    #[test]
    fn the_heartbeat_does_not_end_a_wait_the_hub_asked_for() {
        let now = Instant::now();
        let mut o = Outbound::new(Pacing::default(), now);
        o.submit(Outgoing::Ping);
        o.poll(now);
        // The hub dropped that ping: the light tier waits a second.
        assert!(matches!(
            o.attribute(&limited(1000, "light"), now),
            Attribution::Dropped { .. }
        ));
        // The next heartbeat goes all the same...
        o.submit(Outgoing::Ping);
        assert_eq!(kinds(&o.poll(now)), ["ping"]);
        o.attribute(&Incoming::Pong { timestamp: None }, now);
        // ...but a silent frame's fence ping still waits out the light tier's pause.
        o.submit(progress("a"));
        assert!(o.poll(now).is_empty());
        let later = now + Duration::from_millis(1000);
        assert_eq!(o.next_poll(now), Some(later));
        assert_eq!(kinds(&o.poll(later)), ["task_progress", "ping"]);
    }

    #[test]
    fn the_allowance_and_a_wait_are_carried_to_the_next_session() {
        let now = Instant::now();
        let pacing = Pacing {
            light: 100,
            normal: 2,
            heavy: 1,
        };
        let mut first = Outbound::new(pacing, now);
        first.submit(accepted("a"));
        first.submit(accepted("b"));
        assert_eq!(first.poll(now).len(), 2);
        // The connection ends; the next one has no fresh allowance.
        let mut second = Outbound::resume(first.pacer());
        second.submit(accepted("c"));
        assert!(second.poll(now).is_empty());
        assert_eq!(second.next_poll(now), Some(now + Duration::from_secs(30)));
        // A wait the hub asked for holds in the next session too.
        let mut third = Outbound::new(Pacing::default(), now);
        third.submit(accepted("d"));
        third.poll(now);
        third.attribute(&limited(5000, "normal"), now);
        let mut fourth = Outbound::resume(third.pacer());
        fourth.submit(accepted("e"));
        assert!(fourth.poll(now).is_empty());
        let after = now + Duration::from_millis(5000);
        assert_eq!(fourth.next_poll(now), Some(after));
        assert_eq!(fourth.poll(after).len(), 1);
    }

    mod order {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Submit(u8),
            Poll(u16),
            Answer,
            Limited(bool, u16),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..5).prop_map(Op::Submit),
                3 => (0u16..400).prop_map(Op::Poll),
                2 => Just(Op::Answer),
                2 => (any::<bool>(), 0u16..300).prop_map(|(n, ms)| Op::Limited(n, ms)),
            ]
        }

        fn frame(kind: u8, n: usize) -> Outgoing {
            let id = format!("t{n}");
            match kind {
                0 => accepted(&id),
                1 => complete(&id),
                2 => progress(&id),
                3 => Outgoing::TaskFailed {
                    task_id: id,
                    generation: 1,
                    reason: "r".into(),
                    error: "e".into(),
                },
                _ => Outgoing::Ping,
            }
        }

        /// The hub's answer to the oldest frame that expects one.
        fn answer(o: &Outbound) -> Option<Incoming> {
            let sent = o.inflight.iter().find(|s| s.expect != Expect::Nothing)?;
            Some(match &sent.frame {
                Outgoing::Ping => Incoming::Pong { timestamp: None },
                f => Incoming::TaskAck {
                    task_id: frame_task_id(f)?.to_string(),
                    status: match f {
                        Outgoing::TaskAccepted { .. } => "accepted",
                        Outgoing::TaskComplete { .. } => "complete",
                        _ => "failed",
                    }
                    .into(),
                },
            })
        }

        proptest! {
            /// Whatever the hub drops and when, no frame overtakes an older one of its tier
            /// that still waits to be sent (or sent again), and the line stays in order.
            #[test]
            fn no_frame_overtakes_an_older_one_of_its_tier(ops in prop::collection::vec(op(), 1..80)) {
                let start = Instant::now();
                let mut now = start;
                let mut o = Outbound::new(Pacing { light: 100, normal: 6, heavy: 8 }, now);
                for (n, op) in ops.into_iter().enumerate() {
                    match op {
                        Op::Submit(kind) => o.submit(frame(kind, n)),
                        Op::Poll(ms) => {
                            now += Duration::from_millis(u64::from(ms));
                            let before = o.inflight.len();
                            let sent = o.poll(now);
                            let new: Vec<Sent> = o.inflight.iter().skip(before).cloned().collect();
                            prop_assert_eq!(new.len(), sent.len());
                            for s in new.iter().filter(|s| !s.fence) {
                                let older = o
                                    .waiting
                                    .iter()
                                    .find(|w| Tier::of(w.frame.kind()) == s.tier && w.seq < s.seq);
                                prop_assert!(older.is_none(), "{:?} overtook {:?}", s, older);
                            }
                        }
                        Op::Answer => {
                            if let Some(incoming) = answer(&o) {
                                o.attribute(&incoming, now);
                            }
                        }
                        Op::Limited(normal, ms) => {
                            let tier = if normal { "normal" } else { "light" };
                            o.attribute(&limited(u64::from(ms), tier), now);
                        }
                    }
                    let seqs: Vec<u64> = o.waiting.iter().map(|w| w.seq).collect();
                    prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{:?}", seqs);
                }
            }
        }
    }
}
