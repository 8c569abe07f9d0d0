//! LoggerActor: the one writer of the JSON-lines log.
//!
//! Accepts [`LogRecord`]s from every actor and hands them, in order, to the
//! [`LogWriter`] (slog-async's thread, which writes the file and stdout). When the writer
//! is behind, records wait here in a backlog and are retried a millisecond later, so a
//! burst never blocks the event loop and never loses a line. [`ReopenLog`] (SIGHUP) makes the
//! writer reopen the file. On [`Stop`] the backlog is written out and the writer thread
//! flushed and joined before the actor stops: it is last in the stop order, so the log ends
//! with the `shutdown` line. It never stops on its own (an unwritable file is the writer's
//! business: lines go to stderr); a restart after a panic starts a fresh writer.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;

use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log::{LogRecord, LogWriter, Rotation};

/// Reopen the log file before the next line (SIGHUP, for logrotate's `create` mode).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ReopenLog;

pub struct LoggerActor {
    env: Env,
    writer: Option<LogWriter>,
    backlog: VecDeque<LogRecord>,
    retry_scheduled: bool,
}

/// How long the backlog waits before the writer thread is offered it again.
const RETRY: Duration = Duration::from_millis(1);

impl LoggerActor {
    pub fn new(env: &Env) -> Self {
        LoggerActor {
            env: env.clone(),
            writer: None,
            backlog: VecDeque::new(),
            retry_scheduled: false,
        }
    }

    /// Offers the backlog to the writer, oldest first, until it is empty or the writer is full.
    fn drain_backlog(&mut self, ctx: &mut Context<Self>) {
        let Some(writer) = &self.writer else { return };
        while let Some(record) = self.backlog.front() {
            if writer.try_write(record).is_err() {
                if !self.retry_scheduled {
                    self.retry_scheduled = true;
                    ctx.run_later(RETRY, |act, ctx| {
                        act.retry_scheduled = false;
                        act.drain_backlog(ctx);
                    });
                }
                return;
            }
            self.backlog.pop_front();
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
        self.drain_backlog(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(mut writer) = self.writer.take() {
            for record in self.backlog.drain(..) {
                writer.write_blocking(&record);
            }
            writer.finish();
        }
    }
}

crate::answers_probe!(LoggerActor);

impl Child for LoggerActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<LogRecord>());
        bus.register(addr.clone().recipient::<ReopenLog>());
    }
}

impl Handler<Stop> for LoggerActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // `stopped` writes the backlog and joins the writer thread.
        ctx.stop();
    }
}

impl Handler<LogRecord> for LoggerActor {
    type Result = ();
    fn handle(&mut self, record: LogRecord, ctx: &mut Context<Self>) {
        self.backlog.push_back(record);
        self.drain_backlog(ctx);
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
