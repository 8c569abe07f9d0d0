//! Validation violations, as the hub's `ViolationTracker` counts them: per connection, a
//! window that starts at a violation and lasts `window` (a violation after it starts a new
//! window at 1); at `threshold` violations in a window the connection is closed. Per agent,
//! across connections, the disconnects so far and the last one's time: the cooldown on
//! identify is the 1st, 2nd or 3rd (and later) duration after the last disconnect. Pure
//! values; the caller passes the time and does the closing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One connection's violations.
#[derive(Clone, Debug, Default)]
pub(crate) struct ViolationWindow {
    count: u32,
    started: Option<Instant>,
}

impl ViolationWindow {
    /// Counts one violation at `now`; the count in the current window afterwards.
    pub fn track(&mut self, now: Instant, window: Duration) -> u32 {
        match self.started {
            Some(started) if now.saturating_duration_since(started) <= window => {
                self.count += 1;
            }
            _ => {
                self.count = 1;
                self.started = Some(now);
            }
        }
        self.count
    }
}

/// Per agent: disconnects for violations, and when the last one was.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cooldowns {
    agents: HashMap<String, (u32, Instant)>,
}

impl Cooldowns {
    /// A disconnect of `agent_id` at `now`; the cooldown that now applies.
    pub fn record_disconnect(
        &mut self,
        agent_id: &str,
        now: Instant,
        durations: &[Duration; 3],
    ) -> Duration {
        let entry = self.agents.entry(agent_id.to_string()).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        duration(entry.0, durations)
    }

    /// `Some(seconds)` while `agent_id` must wait: the remaining time in whole seconds, plus
    /// one (the hub's `div(remaining_ms, 1000) + 1`).
    pub fn remaining(
        &self,
        agent_id: &str,
        now: Instant,
        durations: &[Duration; 3],
    ) -> Option<u64> {
        let (count, last) = self.agents.get(agent_id)?;
        let cooldown = duration(*count, durations);
        let elapsed = now.saturating_duration_since(*last);
        (elapsed < cooldown).then(|| (cooldown - elapsed).as_millis() as u64 / 1000 + 1)
    }
}

fn duration(count: u32, durations: &[Duration; 3]) -> Duration {
    match count {
        0 => Duration::ZERO,
        1 => durations[0],
        2 => durations[1],
        _ => durations[2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_window_counts_until_it_expires() {
        let t0 = Instant::now();
        let mut window = ViolationWindow::default();
        for n in 1..=9 {
            assert_eq!(window.track(t0 + S * n, S * 60), n);
        }
        // The window started at the first violation, t0 + 1 s.
        assert_eq!(
            window.track(t0 + S * 61, S * 60),
            10,
            "60 s after its start: same window"
        );
        assert_eq!(window.track(t0 + S * 62, S * 60), 1, "later: a new window");
        assert_eq!(window.track(t0 + S * 63, S * 60), 2);
    }

    #[test]
    fn cooldowns_escalate_per_agent() {
        let durations = [S * 30, S * 60, S * 300];
        let t0 = Instant::now();
        let mut cooldowns = Cooldowns::default();
        assert_eq!(cooldowns.remaining("a", t0, &durations), None);
        assert_eq!(cooldowns.record_disconnect("a", t0, &durations), S * 30);
        assert_eq!(cooldowns.remaining("a", t0, &durations), Some(31));
        assert_eq!(cooldowns.remaining("a", t0 + S * 29, &durations), Some(2));
        assert_eq!(cooldowns.remaining("a", t0 + S * 30, &durations), None);
        assert_eq!(cooldowns.remaining("b", t0, &durations), None);
        let t1 = t0 + S * 40;
        assert_eq!(cooldowns.record_disconnect("a", t1, &durations), S * 60);
        assert_eq!(cooldowns.remaining("a", t1 + S * 59, &durations), Some(2));
        let t2 = t1 + S * 100;
        assert_eq!(cooldowns.record_disconnect("a", t2, &durations), S * 300);
        assert_eq!(cooldowns.record_disconnect("a", t2, &durations), S * 300);
        assert_eq!(cooldowns.remaining("a", t2 + S * 299, &durations), Some(2));
    }
}
