//! Log events: how actors emit them and how they reach the disk.
//!
//! Actors hold a [`Log`] handle and call [`log_event!`](crate::log_event); each event is a [`LogRecord`]
//! (timestamp taken at the event, level, stable event name, typed fields) posted on the bus
//! to the LoggerActor, the one writer. The LoggerActor feeds a [`LogWriter`]: slog-async's
//! writer thread, which formats each record twice — one JSON line (slog-json) for the log
//! file, one human line for stdout — so no file I/O happens on the event loop.
//!
//! Nothing is dropped silently: the writer's channel is bounded, but a full channel hands
//! the record back (the LoggerActor keeps it in order and retries) instead of discarding
//! it; a log file that cannot be written sends its lines to stderr and is retried every
//! second; a record posted while the LoggerActor is restarting is written to stderr by the
//! sender itself.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::Message;
use serde_json::Value;
use slog::{Drain, KV};

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
fn with_slog_record<R>(
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

/// When the log file is rotated: before it would pass `max_bytes` (0: never), keeping `keep`
/// older files.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

/// Lines that could not go to the log file and went to stderr instead.
pub static LINES_TO_STDERR: AtomicU64 = AtomicU64::new(0);
/// Lines that could be written nowhere (log file and stderr both failed).
pub static LINES_LOST: AtomicU64 = AtomicU64::new(0);

/// The record could not be queued: the writer thread is behind. Try again later.
pub struct WriterBusy;

/// The writing end: slog-async's thread with the JSON-file and stdout drains behind it.
pub struct LogWriter {
    core: slog_async::AsyncCore,
    guard: Option<slog_async::AsyncGuard>,
    agent_id: String,
    reopen: Arc<AtomicBool>,
    empty: slog::OwnedKVList,
}

/// Records the writer thread holds at most; past that [`LogWriter::try_write`] says busy.
const CHANNEL: usize = 1024;

impl LogWriter {
    /// Starts the writer thread. The log file is opened lazily and never fails this call: an
    /// unwritable file means lines go to stderr until it can be written.
    pub fn start(path: &Path, rotation: Rotation, agent_id: &str, human_stdout: bool) -> LogWriter {
        let reopen = Arc::new(AtomicBool::new(false));
        let sink = FileSink::new(path.to_path_buf(), rotation, reopen.clone());
        let json = slog_json::Json::new(sink)
            .set_newlines(true)
            .set_flush(true)
            .build();
        let human = HumanStdout {
            enabled: human_stdout,
        };
        let drain = slog::Duplicate::new(json, human).ignore_res();
        let (core, guard) = slog_async::AsyncCore::custom(drain)
            .chan_size(CHANNEL)
            .blocking(false)
            .thread_name("log-writer".into())
            .build_with_guard();
        LogWriter {
            core,
            guard: Some(guard),
            agent_id: agent_id.to_string(),
            reopen,
            empty: slog::o!().into(),
        }
    }

    /// Queues a record without blocking.
    pub fn try_write(&self, record: &LogRecord) -> Result<(), WriterBusy> {
        let result = with_slog_record(record, &self.agent_id, |r| self.core.log(r, &self.empty));
        match result {
            Ok(()) => Ok(()),
            Err(slog_async::AsyncError::Full) => Err(WriterBusy),
            Err(_) => {
                // The writer thread is gone: this line goes to stderr, never nowhere.
                write_to_stderr(record, &self.agent_id);
                Ok(())
            }
        }
    }

    /// Queues a record, waiting for room: only for shutdown, when nothing else runs.
    pub fn write_blocking(&self, record: &LogRecord) {
        while self.try_write(record).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The log file is reopened before the next line (after logrotate moved it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Waits until the writer thread has written everything queued, then stops it.
    pub fn finish(&mut self) {
        drop(self.guard.take());
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The log file behind slog-json. Collects one line, writes it with one call on flush
/// (slog-json flushes after every record), falls back to stderr when the file cannot be
/// written, and reopens the file when asked or when its path no longer leads to it.
struct FileSink {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    /// Bytes in the open file.
    size: u64,
    line: Vec<u8>,
    reopen: Arc<AtomicBool>,
    next_open: Instant,
    next_check: Instant,
    failing: bool,
}

/// How often a failing log file is retried and a healthy one checked for having been moved.
const RECHECK: Duration = Duration::from_secs(1);

impl FileSink {
    fn new(path: PathBuf, rotation: Rotation, reopen: Arc<AtomicBool>) -> Self {
        let now = Instant::now();
        FileSink {
            path,
            rotation,
            file: None,
            size: 0,
            line: Vec::with_capacity(512),
            reopen,
            next_open: now,
            next_check: now + RECHECK,
            failing: false,
        }
    }

    fn open(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
        match options.open(&self.path) {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
                if self.failing {
                    self.failing = false;
                    self.notice("log_file_recovered", None);
                }
            }
            Err(e) => self.fail(&e),
        }
        self.next_open = Instant::now() + RECHECK;
    }

    fn fail(&mut self, e: &io::Error) {
        self.file = None;
        if !self.failing {
            self.failing = true;
            self.notice("log_file_unwritable", Some(e));
        }
    }

    /// A line about the log file itself, straight to stderr (it cannot go to the file).
    fn notice(&self, event: &str, error: Option<&io::Error>) {
        let line = serde_json::json!({
            "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "level": if error.is_some() { "error" } else { "info" },
            "event": event,
            "path": self.path.to_string_lossy(),
            "error": error.map(|e| e.to_string()),
            "note": error.map(|_| "log lines go to stderr until the file can be written again"),
        });
        let _ = writeln!(io::stderr().lock(), "{line}");
    }

    /// Whether the path still leads to the open file (logrotate, deletion).
    #[cfg(unix)]
    fn moved_away(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = &self.file else { return false };
        match (std::fs::metadata(&self.path), file.metadata()) {
            (Ok(on_disk), Ok(open)) => on_disk.ino() != open.ino() || on_disk.dev() != open.dev(),
            _ => true,
        }
    }

    #[cfg(not(unix))]
    fn moved_away(&self) -> bool {
        false
    }

    /// `sidecar.log` → `.1` → `.2` … → `.keep` (the oldest is overwritten), then a fresh file.
    /// Runs between two whole lines, so no line is ever split across files.
    fn rotate(&mut self) {
        self.file = None;
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let moved = if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path)
        } else {
            for n in (1..self.rotation.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))
        };
        if let Err(e) = moved {
            self.notice("log_rotate_failed", Some(&e));
        }
        self.open();
    }

    fn commit(&mut self) {
        let now = Instant::now();
        if self.reopen.swap(false, Ordering::Relaxed)
            || (now >= self.next_check && self.moved_away())
        {
            self.file = None;
            self.next_open = now;
        }
        if now >= self.next_check {
            self.next_check = now + RECHECK;
        }
        if self.file.is_none() && now >= self.next_open {
            self.open();
        }
        let max = self.rotation.max_bytes;
        if self.file.is_some()
            && max > 0
            && self.size > 0
            && self.size + self.line.len() as u64 > max
        {
            self.rotate();
        }
        let written = match &mut self.file {
            Some(f) => f.write_all(&self.line),
            None => Err(io::Error::other("log file not open")),
        };
        match written {
            Ok(()) => self.size += self.line.len() as u64,
            Err(e) => {
                if self.file.is_some() {
                    self.fail(&e);
                }
                LINES_TO_STDERR.fetch_add(1, Ordering::Relaxed);
                if io::stderr().lock().write_all(&self.line).is_err() {
                    LINES_LOST.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.line.clear();
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.commit();
        }
        Ok(())
    }
}

/// One readable line per event on stdout, for journald and pm2:
/// `2026-02-10T05:48:28.120Z INFO  identified hub_url=ws://hub:4000/ws`.
struct HumanStdout {
    enabled: bool,
}

impl Drain for HumanStdout {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let mut line = HumanLine::default();
        let _ = record.kv().serialize(record, &mut line);
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => "ERROR",
            slog::Level::Warning => "WARN ",
            slog::Level::Info => "INFO ",
            _ => "DEBUG",
        };
        let text = format!("{} {level} {}{}\n", line.ts, record.msg(), line.fields);
        // A closed stdout (EPIPE) must not stop logging: the error is ignored.
        let _ = io::stdout().lock().write_all(text.as_bytes());
        Ok(())
    }
}

#[derive(Default)]
struct HumanLine {
    ts: String,
    fields: String,
}

impl slog::Serializer for HumanLine {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        use std::fmt::Write as _;
        match key {
            "ts" => self.ts = val.to_string(),
            "level" | "event" | "agent_id" => {}
            _ => {
                let v = val.to_string();
                if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '"') {
                    let _ = write!(self.fields, " {key}={v:?}");
                } else {
                    let _ = write!(self.fields, " {key}={v}");
                }
            }
        }
        Ok(())
    }

    fn emit_serde(&mut self, key: slog::Key, value: &dyn slog::SerdeValue) -> slog::Result {
        use std::fmt::Write as _;
        let json = serde_json::to_string(value.as_serde()).unwrap_or_default();
        let _ = write!(self.fields, " {key}={json}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ROTATION: Rotation = Rotation {
        max_bytes: 0,
        keep: 0,
    };

    fn record(fields: Vec<(&'static str, Value)>) -> LogRecord {
        LogRecord {
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_707_500_000_123),
            level: LogLevel::Info,
            event: "ws_open",
            fields,
        }
    }

    #[test]
    fn any_value_can_be_logged_paths_lossily() {
        use super::field::{Field, ViaPath as _, ViaSerialize as _};
        use std::os::unix::ffi::OsStrExt;
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

    #[test]
    fn json_line_has_ts_level_event_agent_id_first_then_typed_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/sidecar.log");
        let mut w = LogWriter::start(&path, NO_ROTATION, "a1", false);
        let nested = serde_json::json!({"k": [1, 2]});
        w.write_blocking(&record(vec![
            ("attempt", 3.into()),
            ("url", "ws://h".into()),
            ("meta", nested),
        ]));
        w.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"ts\":\"2024-02-09T17:33:20.123Z\",\"level\":\"info\",\"event\":\"ws_open\",\"agent_id\":\"a1\",\"attempt\":3,\"url\":\"ws://h\",\"meta\":{\"k\":[1,2]}}\n"
        );
    }

    #[test]
    fn rotation_keeps_whole_lines_and_at_most_keep_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("side.log");
        let rotation = Rotation {
            max_bytes: 2000,
            keep: 2,
        };
        let mut w = LogWriter::start(&path, rotation, "a1", false);
        for n in 0..200 {
            w.write_blocking(&record(vec![("n", n.into())]));
        }
        w.finish();
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        let mut seen = Vec::new();
        for f in [
            path.with_extension("log.2"),
            path.with_extension("log.1"),
            path.clone(),
        ] {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(
                text.len() <= 2000,
                "{} is {} bytes",
                f.display(),
                text.len()
            );
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).expect("whole JSON line");
                seen.push(v["n"].as_u64().unwrap());
            }
        }
        // The newest lines, contiguous, ending with the last one.
        assert_eq!(*seen.last().unwrap(), 199);
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "gap in {seen:?}");
    }

    #[test]
    fn unwritable_log_file_does_not_fail_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: opening it for writing fails.
        let path = dir.path().join("is-a-dir");
        std::fs::create_dir(&path).unwrap();
        let mut w = LogWriter::start(&path, NO_ROTATION, "a1", false);
        w.write_blocking(&record(vec![]));
        w.finish();
        assert!(path.is_dir());
    }
}
