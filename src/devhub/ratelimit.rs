//! WebSocket rate limits, as the hub's `RateLimiter` applies them: one token bucket per agent
//! and tier (light, normal, heavy), in thousandths of a token, refilled lazily by the time since
//! the bucket was last checked; a frame costs one token; under 20 % left the frame passes with
//! a warning; without a whole token it is denied, with the time until one is back rounded up to
//! a whole second. Denials are counted per agent: while the first denial of a streak is
//! younger than the quiet period the agent counts as rate limited, and the scheduler passes it
//! over. Buckets outlive connections (the hub keeps them in ETS), not a hub restart. Pure
//! values; the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A tier's limit: `capacity` frames, refilled in full over `refill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateTier {
    pub capacity: u32,
    pub refill: Duration,
}

impl RateTier {
    /// `capacity` frames per minute, the hub's form.
    pub const fn per_minute(capacity: u32) -> RateTier {
        RateTier {
            capacity,
            refill: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Tier {
    Light,
    Normal,
    Heavy,
}

impl Tier {
    /// The tier of a frame type (`RateLimiter.Config.ws_tier`); unknown types are normal.
    pub fn of(frame_type: &str) -> Tier {
        match frame_type {
            "ping" | "list_agents" | "list_channels" | "status" | "channel_history" => Tier::Light,
            "identify" => Tier::Heavy,
            _ => Tier::Normal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Light => "light",
            Tier::Normal => "normal",
            Tier::Heavy => "heavy",
        }
    }
}

/// The answer to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Allow,
    /// Allowed, with this many whole tokens left of `capacity`.
    Warn {
        remaining: u64,
        capacity: u64,
    },
    /// Dropped; a token is back after this many milliseconds.
    Deny {
        retry_after_ms: u64,
    },
}

const COST: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    last: Instant,
    capacity: u64,
    /// Thousandths of a token per millisecond.
    rate: f64,
}

#[derive(Clone, Copy, Debug)]
struct Streak {
    started: Instant,
    consecutive: u32,
}

#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: HashMap<(String, Tier), Bucket>,
    streaks: HashMap<String, Streak>,
}

impl RateLimiter {
    /// Takes one token from `agent_id`'s bucket of `tier` (created full at the first frame).
    pub fn check(&mut self, agent_id: &str, tier: Tier, limit: RateTier, now: Instant) -> Check {
        let capacity = u64::from(limit.capacity) * COST;
        let refill_ms = limit.refill.as_millis().max(1) as f64;
        let rate = capacity as f64 / refill_ms;
        let key = (agent_id.to_string(), tier);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            last: now,
            capacity,
            rate,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_millis() as f64;
        let refilled = (bucket.tokens + (elapsed * bucket.rate) as u64).min(bucket.capacity);
        bucket.last = now;
        if refilled >= COST {
            let remaining = refilled - COST;
            bucket.tokens = remaining;
            if remaining < (bucket.capacity as f64 * 0.2) as u64 {
                Check::Warn {
                    remaining: remaining / COST,
                    capacity: bucket.capacity / COST,
                }
            } else {
                Check::Allow
            }
        } else {
            bucket.tokens = refilled;
            let retry_ms = if bucket.rate > 0.0 {
                ((COST - refilled) as f64 / bucket.rate).ceil() as u64
            } else {
                60_000
            };
            Check::Deny {
                retry_after_ms: retry_ms.div_ceil(1000) * 1000,
            }
        }
    }

    /// Counts a denial for `agent_id` (a streak ends after `quiet` without one).
    pub fn record_denial(&mut self, agent_id: &str, now: Instant, quiet: Duration) {
        let streak = self.streaks.entry(agent_id.to_string()).or_insert(Streak {
            started: now,
            consecutive: 0,
        });
        if now.saturating_duration_since(streak.started) > quiet {
            *streak = Streak {
                started: now,
                consecutive: 1,
            };
        } else {
            streak.consecutive += 1;
        }
    }

    /// Whether `agent_id` is within a streak of denials (the scheduler skips it).
    pub fn is_limited(&self, agent_id: &str, now: Instant, quiet: Duration) -> bool {
        self.streaks.get(agent_id).is_some_and(|streak| {
            streak.consecutive > 0 && now.saturating_duration_since(streak.started) <= quiet
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn tiers_as_the_hub_has_them() {
        assert_eq!(Tier::of("ping"), Tier::Light);
        assert_eq!(Tier::of("identify"), Tier::Heavy);
        assert_eq!(Tier::of("task_complete"), Tier::Normal);
        assert_eq!(Tier::of("state_report"), Tier::Normal);
        assert_eq!(Tier::Normal.name(), "normal");
    }

    #[test]
    fn a_minute_of_normal_frames_warns_at_eighty_percent_then_denies() {
        let t0 = Instant::now();
        let limit = RateTier::per_minute(60);
        let mut limiter = RateLimiter::default();
        let answers: Vec<Check> = (0..61)
            .map(|_| limiter.check("a", Tier::Normal, limit, t0))
            .collect();
        assert!(answers[..48].iter().all(|c| *c == Check::Allow));
        assert_eq!(
            answers[48],
            Check::Warn {
                remaining: 11,
                capacity: 60
            }
        );
        assert_eq!(
            answers[59],
            Check::Warn {
                remaining: 0,
                capacity: 60
            }
        );
        assert_eq!(
            answers[60],
            Check::Deny {
                retry_after_ms: 1000
            }
        );
        // Other agents and tiers have buckets of their own.
        assert_eq!(limiter.check("b", Tier::Normal, limit, t0), Check::Allow);
        assert_eq!(
            limiter.check("a", Tier::Light, RateTier::per_minute(120), t0),
            Check::Allow
        );
        // One token back after a second: 1000 thousandths at 1 per ms.
        assert_eq!(
            limiter.check("a", Tier::Normal, limit, t0 + MS * 999),
            Check::Deny {
                retry_after_ms: 1000
            }
        );
        assert!(matches!(
            limiter.check("a", Tier::Normal, limit, t0 + MS * 1000),
            Check::Warn { remaining: 0, .. }
        ));
    }

    #[test]
    fn a_slow_refill_rounds_the_retry_up_to_seconds() {
        let t0 = Instant::now();
        let limit = RateTier::per_minute(10);
        let mut limiter = RateLimiter::default();
        for _ in 0..10 {
            assert_ne!(
                limiter.check("a", Tier::Heavy, limit, t0),
                Check::Deny {
                    retry_after_ms: 6000
                }
            );
        }
        assert_eq!(
            limiter.check("a", Tier::Heavy, limit, t0),
            Check::Deny {
                retry_after_ms: 6000
            }
        );
        let fast = RateTier {
            capacity: 2,
            refill: MS * 100,
        };
        let mut limiter = RateLimiter::default();
        limiter.check("a", Tier::Normal, fast, t0);
        limiter.check("a", Tier::Normal, fast, t0);
        assert_eq!(
            limiter.check("a", Tier::Normal, fast, t0),
            Check::Deny {
                retry_after_ms: 1000
            }
        );
        assert_ne!(
            limiter.check("a", Tier::Normal, fast, t0 + MS * 50),
            Check::Deny {
                retry_after_ms: 1000
            }
        );
    }

    #[test]
    fn denial_streaks_end_after_the_quiet_period() {
        let t0 = Instant::now();
        let quiet = MS * 100;
        let mut limiter = RateLimiter::default();
        assert!(!limiter.is_limited("a", t0, quiet));
        limiter.record_denial("a", t0, quiet);
        limiter.record_denial("a", t0 + MS * 50, quiet);
        assert!(limiter.is_limited("a", t0 + MS * 100, quiet));
        assert!(
            !limiter.is_limited("a", t0 + MS * 101, quiet),
            "counted from the first denial"
        );
        limiter.record_denial("a", t0 + MS * 150, quiet);
        assert!(limiter.is_limited("a", t0 + MS * 200, quiet));
    }
}
