//! Scanner: takes `ScanTrees`, lists the source and the replica, sends
//! `TreesScanned` (or `TickFinished` when a root is missing).
//! (stub: to be written)

use crate::messages::{LogEvent, ScanTrees, TickFinished, TreesScanned};
use crate::options::SyncOptions;
use crate::stop::StopFlag;
use actix::{Actor, Context, Handler, Recipient};
use std::sync::Arc;

pub struct Scanner {
    opts: Arc<SyncOptions>,
    next: Recipient<TreesScanned>,
    finished: Recipient<TickFinished>,
    log: Recipient<LogEvent>,
    stop: StopFlag,
}

impl Scanner {
    pub fn new(
        opts: Arc<SyncOptions>,
        next: Recipient<TreesScanned>,
        finished: Recipient<TickFinished>,
        log: Recipient<LogEvent>,
        stop: StopFlag,
    ) -> Self {
        Scanner {
            opts,
            next,
            finished,
            log,
            stop,
        }
    }
}

impl Actor for Scanner {
    type Context = Context<Self>;
}

impl Handler<ScanTrees> for Scanner {
    type Result = ();

    fn handle(&mut self, _msg: ScanTrees, _ctx: &mut Context<Self>) {
        let _ = (
            &self.opts,
            &self.next,
            &self.finished,
            &self.log,
            &self.stop,
        );
        todo!("scanner")
    }
}
