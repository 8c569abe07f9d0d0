//! The writing end of the log: a thread that formats each record twice — one JSON line
//! (slog-json) into the log file ([`FileSink`]), one human line for stdout — so no file I/O
//! happens on the event loop.
//!
//! Two threads, so that neither output can hold the other up:
//! - `log-writer` takes records from a bounded channel ([`CHANNEL`]); [`LogWriter::try_write`]
//!   never blocks and hands a record back when the channel is full (the LoggerActor keeps it
//!   and offers it again);
//! - `log-stdout` prints the human lines, from a bounded queue of its own ([`STDOUT_QUEUE`]).
//!   A stdout nobody reads (a full pipe) blocks only this thread: lines that find its queue
//!   full are not printed, counted in [`STDOUT_LINES_DROPPED`], and said — one
//!   `stdout_lines_dropped` line in the log file and on stdout as soon as stdout takes lines
//!   again. The JSON log file, the record of truth, misses nothing because of stdout.
//!
//! Nothing here ever waits on a write without a deadline: [`LogWriter::request_finish`] and
//! [`LogWriter::finished`] let the caller wait for the threads as long as it can afford, and
//! dropping a [`LogWriter`] never joins them (a thread stuck in a write on a dead device is
//! left behind; the process exits without it). What the writer accepted and never wrote is
//! [`LogWriter::unwritten`], for the caller to account for.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use slog::{Drain, KV};

use super::file::{FileSink, Rotation};
use super::{with_slog_record, write_to_stderr, LogRecord};
use crate::config::LogLevel;

/// Records the writer thread's channel holds; past that [`LogWriter::try_write`] hands the
/// record back.
pub const CHANNEL: usize = 1024;

/// Human lines waiting for stdout; past that they are dropped and counted.
pub const STDOUT_QUEUE: usize = 1024;

/// Human lines not printed on stdout because it did not take them (the JSON log has them).
pub static STDOUT_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

enum Msg {
    Record(LogRecord),
    Finish,
}

/// What the threads tell the caller.
#[derive(Default)]
struct Shared {
    /// Records the writer thread has written (to the file or its stderr fallback).
    written: AtomicU64,
    /// The writer thread has written everything before `Finish`, or is gone.
    file_done: AtomicBool,
    /// The stdout thread has printed everything queued, or is gone (or never ran).
    stdout_done: AtomicBool,
    /// The stdout queue was full at the last attempt: stdout is not taking lines.
    stdout_stuck: AtomicBool,
}

/// The writing end: the writer thread with the JSON-file and stdout drains behind it.
pub struct LogWriter {
    tx: SyncSender<Msg>,
    agent_id: String,
    reopen: Arc<AtomicBool>,
    shared: Arc<Shared>,
    /// Records handed to the writer thread.
    accepted: u64,
    finish_sent: bool,
}

impl LogWriter {
    /// Starts the writer thread (and the stdout thread when `human_stdout`). The log file is
    /// opened lazily and never fails this call: an unwritable file means lines go to stderr
    /// until it can be written.
    pub fn start(path: &Path, rotation: Rotation, agent_id: &str, human_stdout: bool) -> LogWriter {
        let reopen = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let sink = FileSink::new(path.to_path_buf(), rotation, reopen.clone());
        let json = slog_json::Json::new(sink)
            .set_newlines(true)
            .set_flush(true)
            .build();
        let stdout = if human_stdout {
            Some(start_stdout_thread(shared.clone()))
        } else {
            shared.stdout_done.store(true, Ordering::Relaxed);
            None
        };
        let (tx, rx) = sync_channel(CHANNEL);
        let thread = WriterThread {
            json,
            stdout,
            agent_id: agent_id.to_string(),
            shared: shared.clone(),
            dropped_unreported: 0,
        };
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || thread.run(rx));
        if started.is_err() {
            // No thread: every record goes to stderr (try_write sees the channel closed).
            shared.file_done.store(true, Ordering::Relaxed);
            shared.stdout_done.store(true, Ordering::Relaxed);
        }
        LogWriter {
            tx,
            agent_id: agent_id.to_string(),
            reopen,
            shared,
            accepted: 0,
            finish_sent: false,
        }
    }

    /// Queues a record without blocking; hands it back when the writer is behind.
    pub fn try_write(&mut self, record: LogRecord) -> Result<(), LogRecord> {
        if self.finish_sent {
            // Behind the `Finish`, the thread would never write it: stderr instead.
            write_to_stderr(&record, &self.agent_id);
            return Ok(());
        }
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => {
                self.accepted += 1;
                Ok(())
            }
            Err(TrySendError::Full(Msg::Record(record))) => Err(record),
            Err(TrySendError::Disconnected(Msg::Record(record))) => {
                // The writer thread is gone: this line goes to stderr, never nowhere.
                write_to_stderr(&record, &self.agent_id);
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// Queues a record, waiting for room (tests, and callers with nothing else to do).
    pub fn write_blocking(&mut self, mut record: LogRecord) {
        while let Err(back) = self.try_write(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The log file is reopened before the next line (after logrotate moved it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Asks the threads to write what they hold and end, without waiting; `false` if the
    /// channel is full (ask again later).
    pub fn request_finish(&mut self) -> bool {
        if !self.finish_sent {
            self.finish_sent = match self.tx.try_send(Msg::Finish) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => true,
                Err(TrySendError::Full(_)) => false,
            };
        }
        self.finish_sent
    }

    /// Whether everything accepted before [`request_finish`](Self::request_finish) is
    /// written: the log file always, stdout unless it has stopped taking lines (then its
    /// queue is abandoned, already counted as dropped).
    pub fn finished(&self) -> bool {
        self.shared.file_done.load(Ordering::Acquire)
            && (self.shared.stdout_done.load(Ordering::Acquire)
                || self.shared.stdout_stuck.load(Ordering::Relaxed))
    }

    /// Records accepted and not written (yet, or ever if the writer is stuck).
    pub fn unwritten(&self) -> u64 {
        self.accepted
            .saturating_sub(self.shared.written.load(Ordering::Acquire))
    }

    /// Finishes, waiting at most `timeout`; whether everything was written. Blocking: for
    /// tests and for callers with nothing else to do.
    pub fn finish(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !(self.request_finish() && self.finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Never a join: a thread stuck in a write would hold the caller forever. Without a
        // `Finish` the thread still ends once it has written its queue (the channel closes).
        let _ = self.request_finish();
    }
}

/// The writer thread's side.
struct WriterThread {
    json: slog_json::Json<FileSink>,
    stdout: Option<SyncSender<String>>,
    agent_id: String,
    shared: Arc<Shared>,
    /// Human lines dropped since the last `stdout_lines_dropped` line.
    dropped_unreported: u64,
}

/// Marks the file side done however the thread ends (a panic included), and lets the
/// stdout thread end.
struct DoneOnDrop(Arc<Shared>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.file_done.store(true, Ordering::Release);
    }
}

impl WriterThread {
    fn run(mut self, rx: Receiver<Msg>) {
        let _done = DoneOnDrop(self.shared.clone());
        let empty: slog::OwnedKVList = slog::o!().into();
        while let Ok(Msg::Record(record)) = rx.recv() {
            self.write(&record, &empty);
            self.shared.written.fetch_add(1, Ordering::Release);
        }
        // `Finish`, or every sender gone: the file has everything; stdout gets the rest of
        // its queue once this sender is dropped.
        self.stdout = None;
    }

    fn write(&mut self, record: &LogRecord, empty: &slog::OwnedKVList) {
        self.report_dropped(empty);
        let _ = with_slog_record(record, &self.agent_id, |r| self.json.log(r, empty));
        if self.stdout.is_some() {
            let line = with_slog_record(record, &self.agent_id, human_line);
            self.print(line);
        }
    }

    /// After drops, once stdout has room again: one line saying how many it missed, on
    /// stdout and in the log file, before the next line.
    fn report_dropped(&mut self, empty: &slog::OwnedKVList) {
        let Some(stdout) = &self.stdout else { return };
        if self.dropped_unreported == 0 {
            return;
        }
        let report = dropped_report(self.dropped_unreported);
        let line = with_slog_record(&report, &self.agent_id, human_line);
        if stdout.try_send(line).is_ok() {
            self.dropped_unreported = 0;
            let _ = with_slog_record(&report, &self.agent_id, |r| self.json.log(r, empty));
        }
    }

    /// Queues a human line for stdout, or counts it dropped (also while an earlier drop is
    /// not reported yet, so the report comes first).
    fn print(&mut self, line: String) {
        let Some(stdout) = &self.stdout else { return };
        let sent = self.dropped_unreported == 0 && stdout.try_send(line).is_ok();
        self.shared.stdout_stuck.store(!sent, Ordering::Relaxed);
        if !sent {
            self.dropped_unreported += 1;
            STDOUT_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The line that says how many human lines stdout missed.
fn dropped_report(count: u64) -> LogRecord {
    LogRecord {
        ts: SystemTime::now(),
        level: LogLevel::Warn,
        event: "stdout_lines_dropped",
        fields: vec![
            ("count", Value::from(count)),
            (
                "note",
                Value::from(
                    "stdout did not take these lines (nobody reading it?); the log file has them",
                ),
            ),
        ],
    }
}

fn start_stdout_thread(shared: Arc<Shared>) -> SyncSender<String> {
    let (tx, rx) = sync_channel::<String>(STDOUT_QUEUE);
    let done = shared.clone();
    let started = std::thread::Builder::new()
        .name("log-stdout".into())
        .spawn(move || {
            let _done = StdoutDone(done);
            for line in rx {
                // A closed stdout (EPIPE) must not stop logging: the error is ignored.
                let _ = io::stdout().lock().write_all(line.as_bytes());
            }
        });
    if started.is_err() {
        shared.stdout_done.store(true, Ordering::Release);
    }
    tx
}

struct StdoutDone(Arc<Shared>);

impl Drop for StdoutDone {
    fn drop(&mut self) {
        self.0.stdout_done.store(true, Ordering::Release);
    }
}

/// One readable line per event on stdout, for journald and pm2:
/// `2026-02-10T05:48:28.120Z INFO  identified hub_url=ws://hub:4000/ws`.
fn human_line(record: &slog::Record) -> String {
    let mut line = HumanLine::default();
    let _ = record.kv().serialize(record, &mut line);
    let level = match record.level() {
        slog::Level::Critical | slog::Level::Error => "ERROR",
        slog::Level::Warning => "WARN ",
        slog::Level::Info => "INFO ",
        _ => "DEBUG",
    };
    format!("{} {level} {}{}\n", line.ts, record.msg(), line.fields)
}

#[derive(Default)]
struct HumanLine {
    ts: String,
    event: String,
    fields: String,
}

/// Fields the human line leaves to the log file: (event, field). The `startup` line's
/// `config` is every key in effect, over a thousand characters; the line on stdout keeps what
/// a reader needs first (version, pid, config file, hub, log file).
const LOG_FILE_ONLY: [(&str, &str); 1] = [("startup", "config")];

impl slog::Serializer for HumanLine {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        use std::fmt::Write as _;
        match key {
            "ts" => self.ts = val.to_string(),
            "event" => self.event = val.to_string(),
            "level" | "agent_id" => {}
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
        if LOG_FILE_ONLY.contains(&(self.event.as_str(), key)) {
            return Ok(());
        }
        let json = serde_json::to_string(value.as_serde()).unwrap_or_default();
        let _ = write!(self.fields, " {key}={json}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{record, NO_ROTATION};
    use super::*;

    #[test]
    fn json_line_has_ts_level_event_agent_id_first_then_typed_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/sidecar.log");
        let mut w = LogWriter::start(&path, NO_ROTATION, "a1", false);
        let nested = serde_json::json!({"k": [1, 2]});
        w.write_blocking(record(vec![
            ("attempt", 3.into()),
            ("url", "ws://h".into()),
            ("meta", nested),
        ]));
        assert!(w.finish(Duration::from_secs(10)));
        assert_eq!(w.unwritten(), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"ts\":\"2024-02-09T17:33:20.123Z\",\"level\":\"info\",\"event\":\"ws_open\",\"agent_id\":\"a1\",\"attempt\":3,\"url\":\"ws://h\",\"meta\":{\"k\":[1,2]}}\n"
        );
    }

    #[test]
    fn unwritable_log_file_does_not_fail_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: opening it for writing fails.
        let path = dir.path().join("is-a-dir");
        std::fs::create_dir(&path).unwrap();
        let before = crate::log::LINES_TO_STDERR.load(Ordering::Relaxed);
        let mut w = LogWriter::start(&path, NO_ROTATION, "a1", false);
        w.write_blocking(record(vec![]));
        assert!(w.finish(Duration::from_secs(10)));
        assert!(path.is_dir());
        // The line went to stderr instead, and was counted there.
        assert!(crate::log::LINES_TO_STDERR.load(Ordering::Relaxed) > before);
    }

    #[test]
    fn lines_stdout_does_not_take_are_counted_and_said_once_it_takes_lines_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.log");
        let shared = Arc::new(Shared::default());
        let sink = FileSink::new(path.clone(), NO_ROTATION, Arc::new(AtomicBool::new(false)));
        // A stdout queue of two lines that nobody empties for now.
        let (tx, stdout) = sync_channel::<String>(2);
        let mut thread = WriterThread {
            json: slog_json::Json::new(sink)
                .set_newlines(true)
                .set_flush(true)
                .build(),
            stdout: Some(tx),
            agent_id: "a1".into(),
            shared: shared.clone(),
            dropped_unreported: 0,
        };
        let empty: slog::OwnedKVList = slog::o!().into();
        for n in 0..5 {
            thread.write(&record(vec![("n", n.into())]), &empty);
        }
        assert!(shared.stdout_stuck.load(Ordering::Relaxed));
        let printed: Vec<String> = stdout.try_iter().collect();
        assert_eq!(printed.len(), 2);
        assert!(printed[0].ends_with(" n=0\n") && printed[1].ends_with(" n=1\n"));
        // stdout takes lines again: first the count, then the line.
        thread.write(&record(vec![("n", 5.into())]), &empty);
        let printed: Vec<String> = stdout.try_iter().collect();
        assert_eq!(printed.len(), 2, "{printed:?}");
        assert!(
            printed[0].contains(" WARN  stdout_lines_dropped count=3 "),
            "{}",
            printed[0]
        );
        assert!(printed[1].ends_with(" n=5\n"));
        assert!(!shared.stdout_stuck.load(Ordering::Relaxed));
        // The log file has every line, and the count.
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 7);
        assert_eq!(events[5]["event"], "stdout_lines_dropped");
        assert_eq!(events[5]["count"], 3);
        assert_eq!(events[6]["n"], 5);
    }

    #[test]
    fn the_human_line_names_the_event_and_its_fields() {
        let line = with_slog_record(
            &record(vec![("url", "ws://h".into()), ("note", "two words".into())]),
            "a1",
            human_line,
        );
        assert_eq!(
            line,
            "2024-02-09T17:33:20.123Z INFO  ws_open url=ws://h note=\"two words\"\n"
        );
    }

    #[test]
    fn the_startup_line_on_stdout_leaves_the_whole_config_to_the_log_file() {
        let mut startup = record(vec![
            ("version", "0.1.0".into()),
            (
                "config",
                serde_json::json!({"agent_id": "a1", "log_level": "info"}),
            ),
        ]);
        startup.event = "startup";
        let line = with_slog_record(&startup, "a1", human_line);
        assert_eq!(
            line,
            "2024-02-09T17:33:20.123Z INFO  startup version=0.1.0\n"
        );
        // Another event's nested value is printed.
        let other = record(vec![("config", serde_json::json!({"k": 1}))]);
        let line = with_slog_record(&other, "a1", human_line);
        assert!(line.ends_with(" config={\"k\":1}\n"), "{line}");
    }
}
