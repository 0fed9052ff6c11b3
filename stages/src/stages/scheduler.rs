//! Scheduler: decides when a tick starts and logs each tick's summary.
//!
//! Sends `ScanTrees` (with a new `TickCx`) at once when started, then, with an interval, again
//! one interval after the previous tick *started*, or at once if that tick
//! took longer: ticks never overlap and never pile up. Takes
//! `TickFinished` (logs the `tick` entry) and `StopTicks` (starts nothing
//! new; answers `TicksOver` when no tick is in flight). Runs on the async
//! thread; it only keeps timers.
//!
//! In watch mode it also takes `FoldersChanged` from the Watcher and
//! gathers the changed folders between ticks: a tick then lists only those
//! (`ScanScope::Folders`). A full rescan runs at the first tick, every
//! `rescan` period, after a tick that did not complete, whenever events may
//! have been lost, and at every tick once part of the trees is unwatched.

use crate::contract::messages::{
    Batch, FoldersChanged, LogEvent, ScanMode, ScanScope, ScanTrees, StopTicks, TickCx,
    TickFinished, TickOutcome, TicksOver,
};
use crate::contract::moves::Seen;
use crate::contract::relpath::RelPath;
use actix::{Actor, AsyncContext, Context, Handler, Recipient, SpawnHandle};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub struct Scheduler {
    /// `None`: one sync, then `TicksOver`.
    interval: Option<Duration>,
    dry_run: bool,
    scan: Recipient<Batch<ScanTrees>>,
    over: Recipient<TicksOver>,
    log: Recipient<LogEvent>,
    seq: u64,
    /// The tick in flight, by number.
    in_flight: Option<u64>,
    next_tick: Option<SpawnHandle>,
    stopping: bool,
    last: Option<TickOutcome>,
    watch: Option<Watching>,
}

/// What the Scheduler knows from the Watcher between ticks.
#[derive(Debug)]
struct Watching {
    rescan_every: Duration,
    /// Folders changed since the last tick started.
    dirty: BTreeSet<RelPath>,
    /// The next tick must walk everything.
    full_due: bool,
    /// Part of the trees is not watched: every tick walks everything.
    unwatched: bool,
    last_full: Option<Instant>,
    /// The last tick withheld deletions: plan over everything again.
    guard_pending: bool,
    /// What the Watcher saw of source renames since the last tick started
    /// (hints for the move search; without them moves are still found
    /// from metadata).
    seen: Vec<Seen>,
}

/// Most renames (and replacements after them) kept for one tick: beyond,
/// the hints are dropped and the move search relies on metadata alone.
const MAX_SEEN: usize = 10_000;

impl Scheduler {
    pub fn new(
        interval: Option<Duration>,
        dry_run: bool,
        scan: Recipient<Batch<ScanTrees>>,
        over: Recipient<TicksOver>,
        log: Recipient<LogEvent>,
    ) -> Self {
        Scheduler {
            interval,
            dry_run,
            scan,
            over,
            log,
            seq: 0,
            in_flight: None,
            next_tick: None,
            stopping: false,
            last: None,
            watch: None,
        }
    }

    /// Watch mode: ticks list only the folders `FoldersChanged` named,
    /// with a full rescan every `rescan_every`.
    pub fn with_watch(mut self, rescan_every: Duration) -> Self {
        self.watch = Some(Watching {
            rescan_every,
            dirty: BTreeSet::new(),
            full_due: true,
            unwatched: false,
            last_full: None,
            guard_pending: false,
            seen: Vec::new(),
        });
        self
    }

    fn next_scope(&mut self) -> ScanScope {
        let Some(w) = &mut self.watch else {
            return ScanScope::Full;
        };
        let overdue = w.last_full.is_none_or(|t| t.elapsed() >= w.rescan_every);
        if w.full_due || w.unwatched || overdue {
            w.full_due = false;
            w.last_full = Some(Instant::now());
            w.dirty.clear();
            ScanScope::Full
        } else {
            ScanScope::Folders(std::mem::take(&mut w.dirty).into_iter().collect())
        }
    }

    fn start_tick(&mut self) {
        self.next_tick = None;
        if self.stopping {
            return;
        }
        self.seq += 1;
        let mut cx = TickCx::new(self.seq);
        self.in_flight = Some(self.seq);
        let scope = self.next_scope();
        if self.watch.is_some() {
            cx.scan = Some(match &scope {
                ScanScope::Folders(f) => ScanMode {
                    full: false,
                    rescanned: f.len() as u64,
                },
                ScanScope::Full => ScanMode {
                    full: true,
                    rescanned: 0,
                },
            });
        }
        let whole_plan = self.watch.as_ref().is_some_and(|w| w.guard_pending);
        let seen = self
            .watch
            .as_mut()
            .map(|w| std::mem::take(&mut w.seen))
            .unwrap_or_default();
        let scan = ScanTrees {
            scope,
            whole_plan,
            seen,
        };
        self.scan.do_send(Batch::whole(cx, scan));
    }

    fn finish(&mut self) {
        self.over.do_send(TicksOver {
            last: self.last.clone(),
        });
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.start_tick();
    }
}

impl Handler<TickFinished> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: TickFinished, ctx: &mut Context<Self>) {
        if self.in_flight != Some(msg.cx.seq) {
            return;
        }
        self.in_flight = None;
        let elapsed = msg.cx.started.elapsed();
        let event = msg.outcome.summary(&msg.cx, elapsed).dry_run(self.dry_run);
        if let Some(w) = &mut self.watch {
            // What a tick that did not complete missed, only a walk finds;
            // what failed is tried again where it failed.
            let o = &msg.outcome;
            w.full_due |= o.aborted.is_some() || o.interrupted || o.unapplied;
            w.dirty.extend(o.retry.iter().cloned());
            // An idle tick planned nothing: withheld deletions still are.
            if !o.idle {
                w.guard_pending = o.guard_tripped;
            }
        }
        self.log.do_send(event);
        self.last = Some(msg.outcome);
        match self.interval {
            Some(interval) if !self.stopping => {
                let wait = interval.saturating_sub(elapsed);
                self.next_tick = Some(ctx.run_later(wait, |act, _| act.start_tick()));
            }
            _ => self.finish(),
        }
    }
}

impl Handler<FoldersChanged> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: FoldersChanged, _: &mut Context<Self>) {
        let Some(w) = &mut self.watch else { return };
        w.full_due |= msg.lost;
        w.unwatched |= msg.unwatched;
        w.dirty.extend(msg.folders);
        for seen in msg.seen {
            // A replacement matters only after a rename it may undo.
            if matches!(seen, Seen::Renamed { .. }) || !w.seen.is_empty() {
                w.seen.push(seen);
            }
        }
        if w.seen.len() > MAX_SEEN {
            w.seen = Vec::new();
        }
    }
}

impl Handler<StopTicks> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: StopTicks, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        if let Some(handle) = self.next_tick.take() {
            ctx.cancel_future(handle);
        }
        if self.in_flight.is_none() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::messages::{LogValue, Verb};
    use crate::testing::{wait_until, Collector};
    use actix::Actor;

    struct Rig {
        scheduler: actix::Addr<Scheduler>,
        scans: std::sync::Arc<std::sync::Mutex<Vec<Batch<ScanTrees>>>>,
        over: std::sync::Arc<std::sync::Mutex<Vec<TicksOver>>>,
        logs: std::sync::Arc<std::sync::Mutex<Vec<LogEvent>>>,
    }

    fn rig(interval: Option<Duration>) -> Rig {
        let (scan, scans) = Collector::<Batch<ScanTrees>>::start();
        let (over_addr, over) = Collector::<TicksOver>::start();
        let (log, logs) = Collector::<LogEvent>::start();
        let scheduler = Scheduler::new(
            interval,
            false,
            scan.recipient(),
            over_addr.recipient(),
            log.recipient(),
        )
        .start();
        Rig {
            scheduler,
            scans,
            over,
            logs,
        }
    }

    fn finish(r: &Rig, seq: u64, errors: u64) {
        let tick = r.scans.lock().unwrap()[seq as usize - 1].cx.clone();
        let outcome = TickOutcome {
            errors,
            ..TickOutcome::default()
        };
        r.scheduler.do_send(TickFinished { cx: tick, outcome });
    }

    #[actix_rt::test]
    async fn once_runs_one_tick_then_reports_over() {
        let r = rig(None);
        wait_until(|| r.scans.lock().unwrap().len() == 1).await;
        finish(&r, 1, 2);
        wait_until(|| r.over.lock().unwrap().len() == 1).await;
        assert_eq!(r.over.lock().unwrap()[0].last.as_ref().unwrap().errors, 2);
        let logs = r.logs.lock().unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].verb, Verb::Tick);
        assert_eq!(logs[0].field("errors"), Some(&LogValue::U64(2)));
        assert_eq!(r.scans.lock().unwrap().len(), 1);
    }

    #[actix_rt::test]
    async fn next_tick_waits_for_the_previous_and_stop_ends_cleanly() {
        let r = rig(Some(Duration::from_millis(20)));
        wait_until(|| r.scans.lock().unwrap().len() == 1).await;
        // However long tick 1 takes, tick 2 only starts after it finished.
        actix_rt::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(r.scans.lock().unwrap().len(), 1);
        finish(&r, 1, 0);
        wait_until(|| r.scans.lock().unwrap().len() == 2).await;
        r.scheduler.do_send(StopTicks);
        actix_rt::time::sleep(Duration::from_millis(10)).await;
        assert!(r.over.lock().unwrap().is_empty(), "tick 2 still in flight");
        finish(&r, 2, 0);
        wait_until(|| r.over.lock().unwrap().len() == 1).await;
        actix_rt::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(r.scans.lock().unwrap().len(), 2, "no tick after stop");
    }

    #[actix_rt::test]
    async fn stop_between_ticks_cancels_the_timer() {
        let r = rig(Some(Duration::from_secs(3600)));
        wait_until(|| r.scans.lock().unwrap().len() == 1).await;
        finish(&r, 1, 0);
        wait_until(|| r.logs.lock().unwrap().len() == 1).await;
        r.scheduler.do_send(StopTicks);
        wait_until(|| r.over.lock().unwrap().len() == 1).await;
    }

    #[actix_rt::test]
    async fn watch_mode_lists_only_changed_folders_and_rescans_when_events_were_lost() {
        let (scan, scans) = Collector::<Batch<ScanTrees>>::start();
        let (over, _) = Collector::<TicksOver>::start();
        let (log, logs) = Collector::<LogEvent>::start();
        let scheduler = Scheduler::new(
            Some(Duration::from_millis(1)),
            false,
            scan.recipient(),
            over.recipient(),
            log.recipient(),
        )
        .with_watch(Duration::from_secs(3600))
        .start();
        let r = Rig {
            scheduler,
            scans,
            over: Default::default(),
            logs,
        };
        let scope = |n: usize| r.scans.lock().unwrap()[n - 1].body.scope.clone();
        wait_until(|| r.scans.lock().unwrap().len() == 1).await;
        assert_eq!(scope(1), ScanScope::Full, "the first tick walks everything");
        let changed = |folders: &[&str], lost: bool, unwatched: bool| FoldersChanged {
            folders: folders.iter().map(|f| RelPath::from_str_lossy(f)).collect(),
            lost,
            unwatched,
            seen: Vec::new(),
        };
        r.scheduler.do_send(changed(&["a", "b", "a"], false, false));
        finish(&r, 1, 0);
        wait_until(|| r.scans.lock().unwrap().len() == 2).await;
        let folders =
            |v: &[&str]| ScanScope::Folders(v.iter().map(|f| RelPath::from_str_lossy(f)).collect());
        assert_eq!(scope(2), folders(&["a", "b"]));
        let whole_plan = |n: usize| r.scans.lock().unwrap()[n - 1].body.whole_plan;
        assert!(!whole_plan(2), "plans look only at what changed");
        let tick = r.scans.lock().unwrap()[1].cx.clone();
        let outcome = TickOutcome {
            retry: vec![RelPath::from_str_lossy("failed/here")],
            guard_tripped: true,
            ..TickOutcome::default()
        };
        r.scheduler.do_send(TickFinished { cx: tick, outcome });
        wait_until(|| r.scans.lock().unwrap().len() == 3).await;
        assert_eq!(
            scope(3),
            folders(&["failed/here"]),
            "what failed is listed again"
        );
        assert!(
            whole_plan(3),
            "withheld deletions are planned (and reported) again"
        );
        let tick = r.scans.lock().unwrap()[2].cx.clone();
        let idle = TickOutcome {
            idle: true,
            ..TickOutcome::default()
        };
        r.scheduler.do_send(TickFinished {
            cx: tick,
            outcome: idle,
        });
        wait_until(|| r.scans.lock().unwrap().len() == 4).await;
        assert!(
            whole_plan(4),
            "an idle tick planned nothing: still withheld"
        );
        assert_eq!(scope(4), folders(&[]), "nothing changed: nothing to list");
        let tick = r.scans.lock().unwrap()[3].cx.clone();
        let unapplied = TickOutcome {
            unapplied: true,
            ..TickOutcome::default()
        };
        r.scheduler.do_send(TickFinished {
            cx: tick,
            outcome: unapplied,
        });
        wait_until(|| r.scans.lock().unwrap().len() == 5).await;
        assert!(
            !whole_plan(5),
            "a tick that planned without tripping the guard"
        );
        assert_eq!(
            scope(5),
            ScanScope::Full,
            "a plan not carried out: full walk"
        );
        finish(&r, 5, 0);
        wait_until(|| r.scans.lock().unwrap().len() == 6).await;
        assert_eq!(scope(6), folders(&[]));
        r.scheduler.do_send(changed(&["c"], true, false));
        finish(&r, 6, 0);
        wait_until(|| r.scans.lock().unwrap().len() == 7).await;
        assert_eq!(scope(7), ScanScope::Full, "lost events: full rescan");
        r.scheduler.do_send(changed(&[], true, true));
        finish(&r, 7, 0);
        wait_until(|| r.scans.lock().unwrap().len() == 8).await;
        finish(&r, 8, 0);
        wait_until(|| r.scans.lock().unwrap().len() == 9).await;
        assert_eq!(scope(8), ScanScope::Full);
        assert_eq!(scope(9), ScanScope::Full, "unwatched: every tick is full");
        let logs = r.logs.lock().unwrap();
        assert_eq!(
            logs[1].field("mode"),
            Some(&LogValue::Str("incremental".into()))
        );
        assert_eq!(logs[1].field("rescanned"), Some(&LogValue::U64(2)));
        assert_eq!(logs[0].field("mode"), Some(&LogValue::Str("full".into())));
    }
}
