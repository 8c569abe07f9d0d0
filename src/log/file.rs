//! The log file: one JSON line per record, appended with one write call, rotated by size,
//! reopened after logrotate moved it, and replaced by stderr while it cannot be written.
//!
//! [`FileSink`] is what slog-json writes into, on the writer thread (`writer.rs`); it never
//! fails and never stops the writer: a line the file cannot take goes to stderr (counted in
//! [`LINES_TO_STDERR`], or in [`LINES_LOST`] if stderr fails too). It knows nothing of the
//! records' content, of stdout, or of the LoggerActor.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{LINES_LOST, LINES_TO_STDERR};

/// When the log file is rotated: before it would pass `max_bytes` (0: never), keeping `keep`
/// older files.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

/// The log file behind slog-json. Collects one line, writes it with one call on flush
/// (slog-json flushes after every record), falls back to stderr when the file cannot be
/// written, and reopens the file when asked or when its path no longer leads to it.
pub(super) struct FileSink {
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
    pub(super) fn new(path: PathBuf, rotation: Rotation, reopen: Arc<AtomicBool>) -> Self {
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
        // Private like every file the sidecar makes; a link planted at the name is refused.
        match crate::fsx::open_private(&self.path, crate::fsx::Access::LogSink) {
            Ok(mut f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                // A process killed in the middle of a line left it unfinished: the next line
                // starts on a line of its own.
                if self.size > 0 && !ends_with_newline(&self.path) && f.write_all(b"\n").is_ok() {
                    self.size += 1;
                }
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

/// Whether the file's last byte is a newline.
fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::End(-1))?;
            f.read_exact(&mut last)
        })
        .map_or(true, |()| last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::super::test_support::record;
    use super::super::LogWriter;
    use super::*;
    use serde_json::Value;

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
            w.write_blocking(record(vec![("n", n.into())]));
        }
        assert!(w.finish(Duration::from_secs(10)));
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
}
