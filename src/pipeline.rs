//! Assembles the stages into the pipeline, runs it to its end and turns the
//! outcome into an exit status. The only place that names concrete stages:
//! the stage list below reads in the order data flows.

use crate::config::Config;
use crate::shutdown::{RunEnd, ShutdownCoordinator};
use actix::{Actor, Addr, AsyncContext, Context, Handler, ResponseFuture};
use std::sync::Arc;
use tokio::sync::oneshot;
use treesync_stages::contract::messages::{FlushLog, LogEvent, LogHealth, Verb};
use treesync_stages::contract::stage::Pipeline;
use treesync_stages::contract::stop::StopFlag;
use treesync_stages::log::logger::{Logger, ReopenLog};
use treesync_stages::log::progress::Above;
use treesync_stages::stages::applier::Applier;
use treesync_stages::stages::differ::Differ;
use treesync_stages::stages::hasher::Hasher;
use treesync_stages::stages::on_tick::OnTick;
use treesync_stages::stages::scanner::Scanner;
use treesync_stages::stages::scheduler::Scheduler;
use treesync_stages::stages::watcher::Watcher;

pub use treesync_stages::contract::messages::exit;

/// Runs one pipeline per pair, side by side on the same threads, until
/// every sync (or the stop) is over; returns the exit status: the first
/// of the contract's order (1, 130, 4, 3, 0) among the pairs'. A pair
/// with a name (`--config`) has it on each of its log entries (`pair`).
pub async fn run_all(pairs: Vec<(Option<String>, Config)>, logger: Logger) -> i32 {
    let terminal = logger.above();
    let log = logger.start();
    let runs: Vec<_> = pairs
        .into_iter()
        .map(|(name, config)| {
            let pair_log = PairLog {
                name,
                logger: log.clone(),
            }
            .start();
            actix::spawn(run(config, pair_log, terminal.clone()))
        })
        .collect();
    let mut status = exit::OK;
    for run in runs {
        status = first_in_order(status, run.await.unwrap_or(exit::FATAL));
    }
    // Every entry sent so far is written before the process ends.
    // A Logger that cannot answer may have lost lines: the log is no full
    // record then either.
    let health = log.send(FlushLog).await.unwrap_or(LogHealth { lost: 1 });
    with_log_health(status, health)
}

/// Of two exit statuses, the one the contract puts first (1, 2, 130, 4,
/// 3, 0).
fn first_in_order(a: i32, b: i32) -> i32 {
    let rank = |s: i32| match s {
        exit::OK => 0,
        exit::FAILED_OPS => 1,
        exit::GUARD => 2,
        exit::INTERRUPTED => 3,
        _ => 4,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// One pipeline's way to the Logger: adds the pair's name, if any.
struct PairLog {
    name: Option<String>,
    logger: Addr<Logger>,
}

impl Actor for PairLog {
    type Context = Context<Self>;
}

impl Handler<LogEvent> for PairLog {
    type Result = ();

    fn handle(&mut self, ev: LogEvent, _: &mut Context<Self>) {
        let ev = match &self.name {
            Some(name) => ev.with_str("pair", name.clone()),
            None => ev,
        };
        self.logger.do_send(ev);
    }
}

impl Handler<ReopenLog> for PairLog {
    type Result = ();

    fn handle(&mut self, msg: ReopenLog, _: &mut Context<Self>) {
        self.logger.do_send(msg);
    }
}

impl Handler<FlushLog> for PairLog {
    type Result = ResponseFuture<LogHealth>;

    fn handle(&mut self, msg: FlushLog, _: &mut Context<Self>) -> Self::Result {
        let sent = self.logger.send(msg);
        Box::pin(async move { sent.await.unwrap_or(LogHealth { lost: 1 }) })
    }
}

/// Runs one pair's pipeline until its sync (or the stop) is over; returns
/// its exit status.
async fn run(mut config: Config, log: Addr<PairLog>, terminal: Above) -> i32 {
    let once = config.interval.is_none();
    let stop = StopFlag::new();
    let probe_failed = config.sync.settle_replica_fs();
    let opts = Arc::new(config.sync);
    if let Some(reason) = probe_failed {
        log.do_send(LogEvent::new(Verb::Warn, None).with_str("reason", reason));
    }

    // The Scheduler both starts the pipeline and receives its end: its
    // address exists before the stages that need it are started.
    let scheduler_ctx = Context::<Scheduler>::new();
    let scheduler = scheduler_ctx.address();
    let first = Pipeline::new(log.clone().recipient(), stop.clone())
        .then(Scanner::new(opts.clone(), log.clone().recipient()))
        .then(Hasher::new(opts.clone(), log.clone().recipient()))
        .then(Differ::new(opts.clone(), log.clone().recipient()))
        .then(Applier::new(opts.clone(), log.clone().recipient()))
        .then_some(config.on_tick.map(|(cmd, t)| {
            OnTick::new(cmd, opts.dry_run, log.clone().recipient()).with_timeout(t)
        }))
        .end(scheduler.clone().recipient());
    let (done_tx, done_rx) = oneshot::channel();
    let coordinator =
        ShutdownCoordinator::new(stop, scheduler.clone().recipient(), done_tx, terminal)
            .reopening(log.clone().recipient())
            .start();
    let mut schedule = Scheduler::new(
        config.interval,
        // `--verify` writes nothing, yet its sync is no dry run of one.
        opts.dry_run && !opts.verify,
        first,
        coordinator.recipient(),
        log.clone().recipient(),
    );
    // The Watcher lives as long as the run: its watches end with it.
    let mut _watcher = None;
    if opts.watch {
        schedule = schedule.with_watch(config.rescan);
        let mut roots = vec![opts.source.clone()];
        if opts.replica.is_dir() {
            roots.push(opts.replica.clone());
        }
        let watcher = Watcher::new(
            roots,
            scheduler.clone().recipient(),
            log.clone().recipient(),
        );
        _watcher = Some(watcher.start());
    }
    scheduler_ctx.run(schedule);

    let end = done_rx.await.unwrap_or(RunEnd {
        last: None,
        signalled: false,
    });
    exit_status(once, &end)
}

/// A log that lost lines is no full record of the run: where nothing
/// graver applies, the run ends as one whose operations partly failed.
pub fn with_log_health(status: i32, health: LogHealth) -> i32 {
    if status == exit::OK && health.lost > 0 {
        exit::FAILED_OPS
    } else {
        status
    }
}

/// The contract's order when several apply: 1, 130, 4, 3, 0. Codes 3 and 4
/// describe a `--once` sync; a stopped interval run ends with 0.
pub fn exit_status(once: bool, end: &RunEnd) -> i32 {
    let Some(last) = &end.last else {
        return if once && !end.signalled {
            exit::FATAL
        } else if once {
            exit::INTERRUPTED
        } else {
            exit::OK
        };
    };
    if !once {
        return exit::OK;
    }
    last.once_status()
}

#[cfg(test)]
mod tests {
    use super::*;
    use treesync_stages::contract::messages::TickOutcome;

    fn end(o: TickOutcome) -> RunEnd {
        RunEnd {
            last: Some(o),
            signalled: false,
        }
    }

    #[test]
    fn first_applicable_status_wins() {
        let all = TickOutcome {
            aborted: Some("gone".into()),
            interrupted: true,
            guard_tripped: true,
            errors: 1,
            ..TickOutcome::default()
        };
        assert_eq!(exit_status(true, &end(all.clone())), 1);
        let o = TickOutcome {
            aborted: None,
            ..all
        };
        assert_eq!(exit_status(true, &end(o.clone())), 130);
        let o = TickOutcome {
            interrupted: false,
            ..o
        };
        assert_eq!(exit_status(true, &end(o.clone())), 4);
        let o = TickOutcome {
            guard_tripped: false,
            ..o
        };
        assert_eq!(exit_status(true, &end(o.clone())), 3);
        assert_eq!(exit_status(false, &end(o)), 0);
        assert_eq!(exit_status(true, &end(TickOutcome::default())), 0);
    }

    #[test]
    fn lost_log_lines_turn_success_into_3_and_nothing_graver() {
        let lost = LogHealth { lost: 1 };
        assert_eq!(with_log_health(exit::OK, lost), exit::FAILED_OPS);
        assert_eq!(with_log_health(exit::OK, LogHealth::default()), exit::OK);
        for graver in [
            exit::FATAL,
            exit::INTERRUPTED,
            exit::GUARD,
            exit::FAILED_OPS,
        ] {
            assert_eq!(with_log_health(graver, lost), graver);
        }
    }
}
