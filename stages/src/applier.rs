//! Applier: takes `PlanMade`, carries out the plan on the replica, logs
//! every operation and sends `TickFinished`.
//! (stub: to be written)

use crate::messages::{LogEvent, PlanMade, TickFinished};
use crate::options::SyncOptions;
use crate::stop::StopFlag;
use actix::{Actor, Context, Handler, Recipient};
use std::sync::Arc;

pub struct Applier {
    opts: Arc<SyncOptions>,
    done: Recipient<TickFinished>,
    log: Recipient<LogEvent>,
    stop: StopFlag,
}

impl Applier {
    pub fn new(
        opts: Arc<SyncOptions>,
        done: Recipient<TickFinished>,
        log: Recipient<LogEvent>,
        stop: StopFlag,
    ) -> Self {
        Applier {
            opts,
            done,
            log,
            stop,
        }
    }
}

impl Actor for Applier {
    type Context = Context<Self>;
}

impl Handler<PlanMade> for Applier {
    type Result = ();

    fn handle(&mut self, _msg: PlanMade, _ctx: &mut Context<Self>) {
        let _ = (&self.opts, &self.done, &self.log, &self.stop);
        todo!("applier")
    }
}
