//! The LoggerActor's backlog: records the writer could not take yet, bounded, with every
//! record that did not fit counted.
//!
//! A pure rule (no actor, no I/O), apart from `actors/logger.rs` that runs it. The backlog
//! keeps the oldest records, in order; a record that finds it full is dropped and counted
//! (here, and in the process-wide [`LINES_LOST`](super::LINES_LOST) that the status file and
//! `/metrics` report). Once the backlog has been written out, [`Backlog::take_report`] gives
//! the `log_lines_lost` line that says how many lines were lost and when: no line is lost
//! silently.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::Value;

use super::{LogRecord, LINES_LOST};
use crate::config::LogLevel;

/// Records the LoggerActor holds at most while the writer is behind (on top of the writer's
/// own channel). A few MiB at worst.
pub const BACKLOG: usize = 4096;

/// Lines lost since the last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub count: u64,
    /// Timestamps of the first and the last line lost.
    pub first: SystemTime,
    pub last: SystemTime,
}

pub struct Backlog {
    records: VecDeque<LogRecord>,
    capacity: usize,
    lost: Option<Lost>,
}

impl Backlog {
    pub fn new(capacity: usize) -> Self {
        Backlog {
            records: VecDeque::new(),
            capacity,
            lost: None,
        }
    }

    /// Adds a record at the end, or counts it lost when the backlog is full.
    pub fn push(&mut self, record: LogRecord) {
        if self.records.len() < self.capacity {
            self.records.push_back(record);
        } else {
            self.count_lost(1, record.ts);
        }
    }

    /// Puts back a record taken with [`pop`](Self::pop) that the writer did not take.
    pub fn unpop(&mut self, record: LogRecord) {
        self.records.push_front(record);
    }

    pub fn pop(&mut self) -> Option<LogRecord> {
        self.records.pop_front()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Lines lost elsewhere (e.g. held by a writer that never wrote them), counted with
    /// these.
    pub fn count_lost(&mut self, count: u64, at: SystemTime) {
        if count == 0 {
            return;
        }
        LINES_LOST.fetch_add(count, Ordering::Relaxed);
        let lost = self.lost.get_or_insert(Lost {
            count: 0,
            first: at,
            last: at,
        });
        lost.count += count;
        lost.first = lost.first.min(at);
        lost.last = lost.last.max(at);
    }

    /// Every record left is lost (the writer will not take them): counts them, empties the
    /// backlog, and returns what is lost in all.
    pub fn abandon(&mut self) -> Option<Lost> {
        let left: Vec<SystemTime> = self.records.drain(..).map(|r| r.ts).collect();
        if let (Some(first), Some(last)) = (left.iter().min(), left.iter().max()) {
            self.count_lost(left.len() as u64, *first);
            if let Some(lost) = &mut self.lost {
                lost.last = lost.last.max(*last);
            }
        }
        self.lost.take()
    }

    /// The `log_lines_lost` line, once the backlog is empty and something was lost; the
    /// count starts again from zero.
    pub fn take_report(&mut self, reason: &'static str) -> Option<LogRecord> {
        if !self.records.is_empty() {
            return None;
        }
        self.lost.take().map(|lost| report(&lost, reason))
    }
}

/// `log_lines_lost`: how many lines, between which timestamps, and why.
pub fn report(lost: &Lost, reason: &'static str) -> LogRecord {
    let ts = |t: SystemTime| Value::from(humantime::format_rfc3339_millis(t).to_string());
    LogRecord {
        ts: SystemTime::now(),
        level: LogLevel::Error,
        event: "log_lines_lost",
        fields: vec![
            ("count", Value::from(lost.count)),
            ("first_ts", ts(lost.first)),
            ("last_ts", ts(lost.last)),
            ("reason", Value::from(reason)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(n: u64) -> LogRecord {
        LogRecord {
            ts: SystemTime::UNIX_EPOCH + Duration::from_secs(n),
            level: LogLevel::Info,
            event: "n",
            fields: vec![("n", n.into())],
        }
    }

    #[test]
    fn the_backlog_is_bounded_keeps_the_oldest_in_order_and_counts_the_rest() {
        let mut b = Backlog::new(3);
        for n in 0..10 {
            b.push(record(n));
        }
        assert_eq!(b.len(), 3);
        assert!(
            b.take_report("stuck").is_none(),
            "no report while lines wait"
        );
        let kept: Vec<_> = std::iter::from_fn(|| b.pop())
            .map(|r| r.fields[0].1.clone())
            .collect();
        assert_eq!(kept, [0, 1, 2]);
        let report = b.take_report("stuck").expect("a report once written out");
        assert_eq!(report.event, "log_lines_lost");
        assert_eq!(report.fields[0], ("count", Value::from(7)));
        assert_eq!(report.fields[1].1, "1970-01-01T00:00:03.000Z");
        assert_eq!(report.fields[2].1, "1970-01-01T00:00:09.000Z");
        assert_eq!(report.fields[3], ("reason", Value::from("stuck")));
        assert!(b.take_report("stuck").is_none(), "reported once");
        // Room again: new records are kept.
        b.push(record(10));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_record_put_back_goes_first() {
        let mut b = Backlog::new(2);
        b.push(record(1));
        b.push(record(2));
        let first = b.pop().unwrap();
        b.unpop(first);
        assert_eq!(b.pop().unwrap().ts, record(1).ts);
    }

    #[test]
    fn abandoning_counts_what_is_left_with_what_was_lost() {
        let mut b = Backlog::new(2);
        for n in 5..8 {
            b.push(record(n));
        }
        b.count_lost(4, record(20).ts);
        let lost = b.abandon().unwrap();
        assert_eq!(lost.count, 1 + 4 + 2);
        assert_eq!(lost.first, record(5).ts);
        assert_eq!(lost.last, record(20).ts);
        assert!(b.is_empty());
        assert!(b.abandon().is_none());
    }
}
