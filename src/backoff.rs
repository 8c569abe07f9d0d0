//! Reconnect delays: exponential steps with "equal jitter".
//!
//! The step starts at the initial delay and doubles up to the maximum; each delay is drawn
//! uniformly between half the step and the whole step, so a hub restart does not bring a
//! fleet back in the same millisecond and no retry comes faster than half its step.
//! [`Backoff::reset`] is called by the session once a connection has proved itself.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// The next delay; the step doubles for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let spread = (step - half).as_micros() as u64;
        half + Duration::from_micros(fastrand::u64(0..=spread))
    }

    /// The step the next delay will be drawn from.
    pub fn current_step(&self) -> Duration {
        self.step
    }

    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_half_and_whole_step_and_double_to_the_cap() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        for step in [100, 200, 400, 800, 1000, 1000, 1000] {
            for _ in 0..1 {
                let d = b.next_delay();
                assert!(
                    d >= ms(step / 2) && d <= ms(step),
                    "{d:?} outside [{}, {step}] ms",
                    step / 2
                );
            }
        }
        b.reset();
        assert_eq!(b.current_step(), ms(100));
    }

    #[test]
    fn jitter_actually_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            seen.insert(b.next_delay());
        }
        assert!(
            seen.len() > 10,
            "50 draws gave only {} distinct delays",
            seen.len()
        );
    }
}
