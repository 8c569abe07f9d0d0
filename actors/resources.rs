//! ResourceActor: tells the hub how loaded the machine is, for its routing.
//!
//! While a hub session is identified it sends a `resource_report` (CPU %, RAM used and
//! total, VRAM where the machine reports it; see [`crate::resources`]) every
//! `resource_report_interval`; with the interval set to 0 it does nothing at all. A first
//! reading at the identify is the baseline of the first report's CPU % (the average since
//! the previous reading), so the first report comes one interval after the identify. Each
//! reading is taken on the blocking pool (it reads `/proc` and `/sys`), never on the event
//! loop, and at most one is under way at a time. It accepts
//! [`SessionIdentified`] and [`SessionLost`] and nothing else; a report that finds no
//! identified session is not sent (the HubActor drops it). Its only state is the session and
//! the previous reading; a restart asks the HubActor for the session again
//! ([`AnnounceSession`]) and starts over. It stops on [`Stop`], and fails only if a reading
//! panicked.

use actix::prelude::*;

use super::hub::{AnnounceSession, SendFrame, SessionIdentified, SessionLost};
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::protocol::Outgoing;
use crate::resources::{self, Sample};

pub struct ResourceActor {
    env: Env,
    /// The identified session reports go to.
    session: Option<u64>,
    /// The previous reading of this session (CPU % needs two).
    previous: Option<Sample>,
    ticker: Option<SpawnHandle>,
    /// A reading is under way on the blocking pool.
    sampling: bool,
    /// `resource_report_unavailable` was logged (once per incarnation).
    told_unavailable: bool,
}

impl ResourceActor {
    pub fn new(env: &Env) -> Self {
        ResourceActor {
            env: env.clone(),
            session: None,
            previous: None,
            ticker: None,
            sampling: false,
            told_unavailable: false,
        }
    }
}

impl Actor for ResourceActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if self.env.config.resource_report_interval.is_some() {
            // After a restart of this actor alone, the session may already be up.
            let _ = self.env.bus.send(AnnounceSession);
        }
    }
}

crate::answers_probe!(ResourceActor);

impl Child for ResourceActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<SessionIdentified>());
        bus.register(addr.clone().recipient::<SessionLost>());
    }
}

impl Handler<Stop> for ResourceActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // A reading under way has nothing worth waiting for.
        ctx.stop();
    }
}

impl Handler<SessionIdentified> for ResourceActor {
    type Result = ();
    fn handle(&mut self, msg: SessionIdentified, ctx: &mut Context<Self>) {
        let Some(interval) = self.env.config.resource_report_interval else {
            return;
        };
        // Announced again for a session already reported on (another actor restarted).
        if self.session == Some(msg.session) && self.ticker.is_some() {
            return;
        }
        self.stop_reporting(ctx);
        self.session = Some(msg.session);
        self.sample(ctx);
        self.schedule(ctx, interval);
    }
}

impl Handler<SessionLost> for ResourceActor {
    type Result = ();
    fn handle(&mut self, msg: SessionLost, ctx: &mut Context<Self>) {
        if self.session == Some(msg.session) {
            self.stop_reporting(ctx);
        }
    }
}

impl ResourceActor {
    fn stop_reporting(&mut self, ctx: &mut Context<Self>) {
        if let Some(ticker) = self.ticker.take() {
            ctx.cancel_future(ticker);
        }
        self.session = None;
        self.previous = None;
    }

    /// The next reading, one interval from now. Not `run_interval`: after a stalled event
    /// loop that would fire the missed ticks in a burst, several reports in a row.
    fn schedule(&mut self, ctx: &mut Context<Self>, interval: std::time::Duration) {
        self.ticker = Some(ctx.run_later(interval, move |act, ctx| {
            act.sample(ctx);
            act.schedule(ctx, interval);
        }));
    }

    /// Takes a reading on the blocking pool; [`Self::sampled`] sends the report.
    fn sample(&mut self, ctx: &mut Context<Self>) {
        if self.sampling {
            return;
        }
        self.sampling = true;
        let session = self.session;
        let reading = actix_rt::task::spawn_blocking(resources::sample);
        ctx.spawn(reading.into_actor(self).map(move |result, act, ctx| {
            act.sampling = false;
            match result {
                Ok(sample) => act.sampled(session, sample),
                Err(e) => act
                    .env
                    .fail(ctx, format!("reading the machine's resources failed: {e}")),
            }
        }));
    }

    fn sampled(&mut self, taken_in: Option<u64>, sample: Sample) {
        // The session ended (or another began) while the reading was under way.
        let Some(session) = self.session.filter(|s| Some(*s) == taken_in) else {
            return;
        };
        // The reading at identify is only the baseline of the first report's CPU %.
        let Some(before) = self.previous.replace(sample.clone()) else {
            return;
        };
        let Some(frame) = resources::report(Some(&before), &sample) else {
            if !std::mem::replace(&mut self.told_unavailable, true) {
                log_event!(
                    self.env.log,
                    Info,
                    "resource_report_unavailable",
                    platform = std::env::consts::OS,
                );
            }
            return;
        };
        if let Outgoing::ResourceReport {
            cpu_percent,
            ram_used_bytes,
            ram_total_bytes,
            vram_used_bytes,
            vram_total_bytes,
            ..
        } = &frame
        {
            log_event!(
                self.env.log,
                Debug,
                "resource_report",
                session = session,
                cpu_percent = *cpu_percent,
                ram_used_bytes = *ram_used_bytes,
                ram_total_bytes = *ram_total_bytes,
                vram_used_bytes = *vram_used_bytes,
                vram_total_bytes = *vram_total_bytes,
            );
        }
        let _ = self.env.bus.send(SendFrame {
            session: Some(session),
            frame,
        });
    }
}
