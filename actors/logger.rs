//! LoggerActor: the one writer of the JSON-lines log.
//!
//! Accepts [`LogRecord`]s from every actor and hands them, in order, to the [`LogWriter`]
//! (a thread that writes the file, and another for stdout). When the writer is behind,
//! records wait here in a bounded [`Backlog`] and are offered again a moment later, so a
//! burst never blocks the event loop. A writer that stays stuck (a log file on a dead
//! device) fills the backlog; records that do not fit are counted, and a `log_lines_lost`
//! line says how many as soon as the backlog has been written out. [`ReopenLog`] (SIGHUP)
//! makes the writer reopen the file.
//!
//! On [`Stop`] it goes on offering the backlog, then asks the writer to finish and waits for
//! it without blocking the event loop, and stops once everything is written: it is last in
//! the stop order, so the log ends with the `shutdown` line. Nothing here waits on a write
//! past the shutdown deadline: if the writer has not finished by then, the Supervisor aborts
//! this actor, which (when dropped) counts what was never written and says so on stderr
//! (`log_lines_lost`), leaving the stuck thread behind. It never stops on its own (an
//! unwritable file is the writer's business: lines go to stderr); a restart after a panic
//! starts a fresh writer.

use std::io::Write;
use std::time::Duration;

use actix::prelude::*;

use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log::backlog::{self, Backlog, BACKLOG};
use crate::log::{write_to_stderr, LogRecord, LogWriter, Rotation, LINES_LOST};

/// Reopen the log file before the next line (SIGHUP, for logrotate's `create` mode).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ReopenLog;

pub struct LoggerActor {
    env: Env,
    writer: Option<LogWriter>,
    backlog: Backlog,
    retry_scheduled: bool,
    /// How long the next retry waits: doubles while the writer stays full.
    retry: Duration,
    stopping: bool,
    /// Everything was written and the actor stopped in good order.
    finished: bool,
}

/// The first wait before the writer is offered the backlog again, and the longest.
const RETRY: Duration = Duration::from_millis(1);
const RETRY_MAX: Duration = Duration::from_millis(16);

/// Why lines were lost while the sidecar ran.
const BEHIND: &str =
    "the log writer did not keep up (log file not taking writes?); these lines were not written";
/// Why lines were lost at the end.
const UNFINISHED: &str = "the log writer had not written these lines when the logger stopped (log file not taking writes?)";

/// How long a last report may take on a stderr that is not ready before it is given up
/// (stderr may be stuck too).
const STDERR_WAIT: Duration = Duration::from_millis(50);

impl LoggerActor {
    pub fn new(env: &Env) -> Self {
        LoggerActor {
            env: env.clone(),
            writer: None,
            backlog: Backlog::new(BACKLOG),
            retry_scheduled: false,
            retry: RETRY,
            stopping: false,
            finished: false,
        }
    }

    /// Offers the backlog to the writer, oldest first, then the loss report if any; when
    /// stopping, finishes once everything is written. Comes back later while anything waits.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let Some(writer) = &mut self.writer else {
            return;
        };
        let mut progressed = false;
        let behind = loop {
            let record = match self.backlog.pop() {
                Some(record) => record,
                None => match self.backlog.take_report(BEHIND) {
                    Some(report) => report,
                    None => break false,
                },
            };
            match writer.try_write(record) {
                Ok(()) => progressed = true,
                Err(record) => {
                    self.backlog.unpop(record);
                    break true;
                }
            }
        };
        if progressed {
            self.retry = RETRY;
        }
        if !behind && self.stopping && writer.request_finish() && writer.finished() {
            self.finished = true;
            ctx.stop();
            return;
        }
        if (behind || self.stopping) && !self.retry_scheduled {
            self.retry_scheduled = true;
            let wait = self.retry;
            self.retry = (self.retry * 2).min(RETRY_MAX);
            ctx.run_later(wait, |act, ctx| {
                act.retry_scheduled = false;
                act.drain(ctx);
            });
        }
    }
}

impl Actor for LoggerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let config = &self.env.config;
        let rotation = Rotation {
            max_bytes: config.log_max_bytes,
            keep: config.log_keep,
        };
        self.writer = Some(LogWriter::start(
            &config.log_file,
            rotation,
            &config.agent_id,
            true,
        ));
        self.drain(ctx);
    }
}

impl Drop for LoggerActor {
    /// Stopped before the writer finished (aborted at the shutdown deadline, or a panic):
    /// what was never written is counted and said on stderr, without waiting on it for long.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let in_writer = self.writer.as_ref().map_or(0, LogWriter::unwritten);
        LINES_LOST.fetch_add(in_writer, std::sync::atomic::Ordering::Relaxed);
        let lost = self.backlog.abandon();
        let count = in_writer + lost.as_ref().map_or(0, |l| l.count);
        if count == 0 {
            return;
        }
        let mut record = match &lost {
            Some(lost) => backlog::report(lost, UNFINISHED),
            None => LogRecord {
                ts: std::time::SystemTime::now(),
                level: crate::config::LogLevel::Error,
                event: "log_lines_lost",
                fields: vec![("reason", UNFINISHED.into())],
            },
        };
        record.fields.retain(|(k, _)| *k != "count");
        record.fields.insert(0, ("count", count.into()));
        record
            .fields
            .insert(1, ("held_by_writer", in_writer.into()));
        let agent_id = self.env.config.agent_id.clone();
        if stderr_takes_a_line() {
            // Room for a line: the write cannot block.
            write_to_stderr(&record, &agent_id);
            return;
        }
        // stderr may be stuck too: write from a thread, and wait for it only a moment.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("log-lost".into())
            .spawn(move || {
                write_to_stderr(&record, &agent_id);
                let _ = std::io::stderr().flush();
                let _ = done_tx.send(());
            });
        if spawned.is_ok() {
            let _ = done_rx.recv_timeout(STDERR_WAIT);
        }
    }
}

/// Whether stderr takes a line now without blocking: writable at once (for a pipe, that
/// means room for at least `PIPE_BUF` bytes, which one write of a line fits in).
#[cfg(unix)]
fn stderr_takes_a_line() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDERR_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd we own, with a zero timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLOUT != 0
}

#[cfg(not(unix))]
fn stderr_takes_a_line() -> bool {
    false
}

crate::answers_probe!(LoggerActor);

impl Child for LoggerActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        // Never held while the logger restarts: the sender writes the line to stderr at once.
        bus.register_unheld(addr.clone().recipient::<LogRecord>());
        bus.register(addr.clone().recipient::<ReopenLog>());
    }
}

impl Handler<Stop> for LoggerActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // The backlog is written out, then the writer finished; `drain` stops the actor.
        self.stopping = true;
        self.drain(ctx);
    }
}

impl Handler<LogRecord> for LoggerActor {
    type Result = ();
    fn handle(&mut self, record: LogRecord, ctx: &mut Context<Self>) {
        self.backlog.push(record);
        if !self.retry_scheduled {
            self.drain(ctx);
        }
    }
}

impl Handler<ReopenLog> for LoggerActor {
    type Result = ();
    fn handle(&mut self, _: ReopenLog, _: &mut Context<Self>) {
        if let Some(writer) = &self.writer {
            writer.reopen();
        }
    }
}
