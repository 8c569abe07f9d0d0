//! Log events: how actors emit them and how they reach the disk.
//!
//! Actors hold a [`Log`] handle and call [`log_event!`](crate::log_event); each event is a [`LogRecord`]
//! (timestamp taken at the event, level, stable event name, typed fields) posted on the bus
//! to the LoggerActor, the one writer. The LoggerActor keeps what the writer cannot take yet
//! in a bounded [`backlog`] and feeds the [`writer`]: a thread that writes one JSON line per
//! record into the log [`file`] and hands a human line to a second thread for stdout, so no
//! file I/O happens on the event loop and a stuck stdout cannot hold up the log file.
//!
//! Nothing is lost silently: a line that cannot be written is counted ([`LINES_LOST`], and
//! [`STDOUT_LINES_DROPPED`] for human lines stdout did not take) and the count is logged
//! (`log_lines_lost`, `stdout_lines_dropped`) as soon as writing works again, in the final
//! `shutdown` line, or on stderr when the log never works again. A log file that cannot be
//! written sends its lines to stderr and is retried every second; a record posted while
//! the LoggerActor is restarting is written to stderr by the sender itself.

pub mod backlog;
pub mod file;
pub mod writer;

use std::io::{self, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use actix::Message;
use serde_json::Value;
use slog::{Drain, KV};

pub use file::Rotation;
pub use writer::{LogWriter, STDOUT_LINES_DROPPED};

use crate::bus::Bus;
use crate::config::LogLevel;

/// One event, as emitted. Fields keep their JSON types (numbers stay numbers).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct LogRecord {
    pub ts: SystemTime,
    pub level: LogLevel,
    pub event: &'static str,
    pub fields: Vec<(&'static str, Value)>,
}

/// Emits an event through a [`Log`]:
/// `log_event!(log, Info, "ws_open", url = url.as_str(), attempt = 3)`.
///
/// Any value that is `Serialize` or a path can be logged, and logging never fails: a path
/// (anything `AsRef<Path>`) is written as text, lossily if it is not UTF-8 (U+FFFD for each
/// bad byte); a value serde cannot turn into JSON is written as a note saying why
/// ([`field`]).
#[macro_export]
macro_rules! log_event {
    // A level decided at run time: `log_event!(log, [level], "event", …)`.
    ($log:expr, [$level:expr], $event:expr $(, $key:ident = $value:expr)* $(,)?) => {{
        #[allow(unused_imports)]
        use $crate::log::field::{ViaPath as _, ViaSerialize as _};
        $log.emit(
            $level,
            $event,
            vec![$((stringify!($key), (&$crate::log::field::Field(&$value)).log_value())),*],
        )
    }};
    ($log:expr, $level:ident, $event:expr $(, $key:ident = $value:expr)* $(,)?) => {{
        #[allow(unused_imports)]
        use $crate::log::field::{ViaPath as _, ViaSerialize as _};
        $log.emit(
            $crate::config::LogLevel::$level,
            $event,
            vec![$((stringify!($key), (&$crate::log::field::Field(&$value)).log_value())),*],
        )
    }};
}

/// How [`log_event!`](crate::log_event) turns a field's value into JSON without failing.
///
/// `serde_json::json!` unwraps `to_value`, which fails (and so panicked) on a path that is not
/// UTF-8 and on maps whose keys are not strings. The macro instead picks, at compile time, the
/// first of two conversions that applies to the value's type (autoref specialization): paths
/// and strings as lossy text ([`ViaPath`]), anything else through serde ([`ViaSerialize`]),
/// whose failure becomes a note in place of the value.
#[doc(hidden)]
pub mod field {
    use std::path::Path;

    use serde_json::Value;

    /// A value on its way into a log field.
    pub struct Field<'a, T: ?Sized>(pub &'a T);

    /// Paths, `OsStr`s and strings: text, lossy when not UTF-8.
    pub trait ViaPath {
        fn log_value(&self) -> Value;
    }

    impl<T: AsRef<Path> + ?Sized> ViaPath for Field<'_, T> {
        fn log_value(&self) -> Value {
            Value::String(self.0.as_ref().to_string_lossy().into_owned())
        }
    }

    /// Everything else serde can serialize.
    pub trait ViaSerialize {
        fn log_value(&self) -> Value;
    }

    impl<T: serde::Serialize + ?Sized> ViaSerialize for &Field<'_, T> {
        fn log_value(&self) -> Value {
            to_value(self.0)
        }
    }

    /// `serde_json::to_value`, with a note in place of a value it cannot convert.
    pub fn to_value<T: serde::Serialize + ?Sized>(value: &T) -> Value {
        serde_json::to_value(value)
            .unwrap_or_else(|e| Value::String(format!("<not loggable: {e}>")))
    }
}

/// The handle every actor logs through. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    bus: Bus,
    min_level: LogLevel,
    agent_id: Rc<str>,
}

impl Log {
    pub fn new(bus: Bus, min_level: LogLevel, agent_id: &str) -> Self {
        Log {
            bus,
            min_level,
            agent_id: agent_id.into(),
        }
    }

    fn enabled(&self, level: LogLevel) -> bool {
        level >= self.min_level
    }

    pub fn emit(&self, level: LogLevel, event: &'static str, fields: Vec<(&'static str, Value)>) {
        if !self.enabled(level) {
            return;
        }
        let record = LogRecord {
            ts: SystemTime::now(),
            level,
            event,
            fields,
        };
        if let Err(record) = self.bus.send(record) {
            write_to_stderr(&record, &self.agent_id);
        }
    }
}

/// Writes one record as a JSON line to stderr, synchronously, in one write (so it cannot
/// interleave with other stderr output): the path of last resort.
pub fn write_to_stderr(record: &LogRecord, agent_id: &str) {
    let line = Arc::new(std::sync::Mutex::new(Vec::with_capacity(256)));
    let drain = slog_json::Json::new(SharedBuf(line.clone()))
        .set_newlines(true)
        .build();
    let _ = with_slog_record(record, agent_id, |r| drain.log(r, &slog::o!().into()));
    let bytes = line.lock().map(|b| b.clone()).unwrap_or_default();
    LINES_TO_STDERR.fetch_add(1, Ordering::Relaxed);
    if io::stderr().lock().write_all(&bytes).is_err() {
        LINES_LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// A byte buffer slog-json can write into and the caller can read back.
struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The record as slog sees it: message = event name, and a key-value list that starts
/// with `ts`, `level`, `event`, `agent_id`, then the event's own fields.
pub(crate) fn with_slog_record<R>(
    record: &LogRecord,
    agent_id: &str,
    f: impl FnOnce(&slog::Record) -> R,
) -> R {
    static LOCATION: slog::RecordLocation = slog::RecordLocation {
        file: "",
        line: 0,
        column: 0,
        function: "",
        module: "agentcom_sidecar",
    };
    let ts = humantime::format_rfc3339_millis(record.ts).to_string();
    let kv = RecordKv {
        record,
        agent_id,
        ts: &ts,
    };
    let rs = slog::RecordStatic {
        location: &LOCATION,
        tag: "",
        level: match record.level {
            LogLevel::Debug => slog::Level::Debug,
            LogLevel::Info => slog::Level::Info,
            LogLevel::Warn => slog::Level::Warning,
            LogLevel::Error => slog::Level::Error,
        },
    };
    f(&slog::Record::new(
        &rs,
        &format_args!("{}", record.event),
        slog::BorrowedKV(&kv),
    ))
}

struct RecordKv<'a> {
    record: &'a LogRecord,
    agent_id: &'a str,
    ts: &'a str,
}

impl KV for RecordKv<'_> {
    fn serialize(&self, _: &slog::Record, s: &mut dyn slog::Serializer) -> slog::Result {
        s.emit_str("ts", self.ts)?;
        s.emit_str("level", self.record.level.as_str())?;
        s.emit_str("event", self.record.event)?;
        s.emit_str("agent_id", self.agent_id)?;
        for (key, value) in &self.record.fields {
            match value {
                // An absent optional field is left out rather than written as null.
                Value::Null => {}
                Value::Bool(b) => s.emit_bool(key, *b)?,
                Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => s.emit_u64(key, u)?,
                    (None, Some(i)) => s.emit_i64(key, i)?,
                    _ => s.emit_f64(key, n.as_f64().unwrap_or(f64::NAN))?,
                },
                Value::String(v) => s.emit_str(key, v)?,
                nested => s.emit_serde(key, &slog::Serde(nested.clone()))?,
            }
        }
        Ok(())
    }
}

/// Lines that could not go to the log file and went to stderr instead.
pub static LINES_TO_STDERR: AtomicU64 = AtomicU64::new(0);
/// Lines that could be written nowhere: dropped by a full backlog, held by a writer that
/// never wrote them, or refused by the log file and stderr both.
pub static LINES_LOST: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub const NO_ROTATION: Rotation = Rotation {
        max_bytes: 0,
        keep: 0,
    };

    pub fn record(fields: Vec<(&'static str, Value)>) -> LogRecord {
        LogRecord {
            ts: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_707_500_000_123),
            level: LogLevel::Info,
            event: "ws_open",
            fields,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_value_can_be_logged_paths_lossily() {
        use super::field::{Field, ViaPath as _, ViaSerialize as _};
        use std::os::unix::ffi::OsStrExt;
        use std::path::PathBuf;
        // What log_event! does with each field's value.
        macro_rules! field {
            ($value:expr) => {
                (&Field(&$value)).log_value()
            };
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/caf\xe9/x.log"));
        assert_eq!(field!(path), "/tmp/caf\u{FFFD}/x.log");
        assert_eq!(field!(path.as_path()), "/tmp/caf\u{FFFD}/x.log");
        assert_eq!(field!("text"), "text");
        assert_eq!(field!(String::from("s")), "s");
        assert_eq!(field!(3u64), 3);
        assert_eq!(field!(Some(-1i64)), -1);
        assert_eq!(field!(vec!["a", "b"]), serde_json::json!(["a", "b"]));
        // What serde cannot turn into JSON becomes a note, never a panic.
        let keys: std::collections::BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        let note = field!(keys);
        assert!(
            note.as_str().unwrap().starts_with("<not loggable: "),
            "{note}"
        );
        let nested = field!(Some(path.clone()));
        assert!(
            nested.as_str().unwrap().starts_with("<not loggable"),
            "{nested}"
        );
    }
}
