//! Scanner: takes `ScanTrees`, lists the source and the replica, and sends
//! `TreesScanned` to the next stage.
//!
//! The scan runs in a blocking task (`spawn_blocking`), never on the async
//! threads; its worker threads are the joint walk's (see `walk.rs`), with
//! the `.syncignore` rules of `rules.rs`. Per-folder errors are logged and
//! counted, and the folder is marked incomplete so that nothing below it is
//! deleted. A root problem (the source missing or not a folder, the replica
//! missing outside a dry run, a root whose device changed since the first
//! tick) makes the tick impossible: it is logged and `TickFinished` with
//! `aborted` goes to the Scheduler instead. A stop raised during the walk
//! ends the tick with `interrupted`. Nothing is ever created.

use crate::messages::{LogEvent, ScanTrees, TickFinished, TickInfo, TickOutcome, TreesScanned};
use crate::options::SyncOptions;
use crate::root::Root;
use crate::stop::StopFlag;
use crate::walk::{walk, WalkOptions, WalkResult};
use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Recipient, WrapFuture};
use std::io;
use std::path::Path;
use std::sync::Arc;

pub struct Scanner {
    opts: Arc<SyncOptions>,
    next: Recipient<TreesScanned>,
    finished: Recipient<TickFinished>,
    log: Recipient<LogEvent>,
    stop: StopFlag,
    /// Each root's device as first seen; a later change means the root
    /// vanished (a mount came or went).
    devices: Devices,
}

/// Devices (`st_dev`) of the roots, recorded at the first tick that saw them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    pub source: Option<u64>,
    pub replica: Option<u64>,
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
            devices: Devices::default(),
        }
    }

    /// Sends what the scan found on to the next stage, or ends the tick.
    fn deliver(&mut self, tick: TickInfo, result: Result<Scan, String>) {
        let scan = match result {
            Ok(scan) => scan,
            Err(msg) => return self.abort(tick, msg),
        };
        self.devices = scan.devices;
        for event in scan.walk.events {
            self.log.do_send(event);
        }
        if scan.walk.interrupted {
            let outcome = TickOutcome {
                errors: scan.walk.errors,
                interrupted: true,
                ..TickOutcome::default()
            };
            self.finished.do_send(TickFinished { tick, outcome });
            return;
        }
        self.next.do_send(TreesScanned {
            tick,
            source: scan.walk.source,
            replica: scan.walk.replica,
            errors: scan.walk.errors,
        });
    }

    fn abort(&self, tick: TickInfo, msg: String) {
        self.log.do_send(LogEvent::error(None, "scan", &msg));
        let outcome = TickOutcome {
            aborted: Some(msg),
            ..TickOutcome::default()
        };
        self.finished.do_send(TickFinished { tick, outcome });
    }
}

impl Actor for Scanner {
    type Context = Context<Self>;
}

impl Handler<ScanTrees> for Scanner {
    type Result = ();

    fn handle(&mut self, msg: ScanTrees, ctx: &mut Context<Self>) {
        let opts = self.opts.clone();
        let stop = self.stop.clone();
        let devices = self.devices;
        let tick = msg.tick;
        let task = async move {
            actix_rt::task::spawn_blocking(move || scan(&opts, devices, &stop)).await
        };
        ctx.spawn(task.into_actor(self).map(move |joined, scanner, _| {
            let result = joined.unwrap_or_else(|e| Err(format!("the scan failed: {e}")));
            scanner.deliver(tick, result);
        }));
    }
}

/// What one scan found.
#[derive(Debug)]
pub struct Scan {
    pub walk: WalkResult,
    /// The roots' devices, to compare with at the next tick.
    pub devices: Devices,
}

/// Checks both roots and walks them: the whole of one tick's scan, as a
/// plain blocking function. `known` are the devices recorded so far; an
/// `Err` is the reason the tick cannot run.
pub fn scan(opts: &SyncOptions, known: Devices, stop: &StopFlag) -> Result<Scan, String> {
    let (source, source_dev) =
        open_root(&opts.source, "source", known.source).map_err(|e| e.message)?;
    let replica = match open_root(&opts.replica, "replica", known.replica) {
        Ok(root) => Some(root),
        // A dry run never creates the replica: it plans against nothing.
        // One that was there before and is gone has vanished, though.
        Err(e) if e.missing && opts.dry_run && known.replica.is_none() => None,
        Err(e) => return Err(e.message),
    };
    let devices = Devices {
        source: Some(source_dev),
        replica: replica.as_ref().map(|(_, dev)| *dev),
    };
    let walk_opts = WalkOptions {
        jobs: opts.jobs,
        excludes: &opts.excludes,
        hidden: &opts.hidden,
        delete_excluded: opts.delete_excluded,
        stop,
    };
    let walked = walk(&source, replica.as_ref().map(|(root, _)| root), &walk_opts);
    Ok(Scan {
        walk: walked,
        devices,
    })
}

/// Why a root cannot be scanned.
struct RootError {
    /// Nothing is at the root's path.
    missing: bool,
    message: String,
}

/// Opens a root and checks it is the folder seen at the first tick.
fn open_root(path: &Path, which: &str, known_dev: Option<u64>) -> Result<(Root, u64), RootError> {
    let shown = path.display();
    let fail = |missing, message| RootError { missing, message };
    let root = Root::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => fail(true, format!("{which} folder {shown} is missing")),
        io::ErrorKind::NotADirectory => fail(false, format!("{which} {shown} is not a folder")),
        _ => fail(
            false,
            format!("{which} folder {shown} cannot be opened: {e}"),
        ),
    })?;
    let dev = root
        .stat()
        .map_err(|e| fail(false, format!("{which} folder {shown} cannot be read: {e}")))?
        .st_dev;
    match known_dev {
        Some(known) if known != dev => Err(fail(
            false,
            format!("{which} folder {shown} vanished: its device changed (a mount came or went)"),
        )),
        _ => Ok((root, dev)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Listing;
    use crate::relpath::RelPath;
    use crate::testing::{wait_until, Collector};
    use std::fs;
    use std::path::PathBuf;
    use std::time::Instant;

    fn tick(seq: u64) -> TickInfo {
        TickInfo {
            seq,
            started: Instant::now(),
        }
    }

    fn trees() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        fs::create_dir_all(s.join("sub")).unwrap();
        fs::write(s.join("sub/f"), b"new").unwrap();
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("old"), b"old").unwrap();
        (tmp, s, d)
    }

    #[test]
    fn a_missing_source_makes_the_tick_impossible() {
        let (_tmp, s, d) = trees();
        let opts = SyncOptions::new(s.join("nope"), d);
        let err = scan(&opts, Devices::default(), &StopFlag::new()).unwrap_err();
        assert!(
            err.contains("source folder") && err.contains("is missing"),
            "{err}"
        );
        let opts = SyncOptions::new(s.join("sub/f"), s.clone());
        let err = scan(&opts, Devices::default(), &StopFlag::new()).unwrap_err();
        assert!(err.contains("is not a folder"), "{err}");
    }

    #[test]
    fn a_missing_replica_is_empty_in_a_dry_run_and_fatal_otherwise() {
        let (_tmp, s, d) = trees();
        let mut opts = SyncOptions::new(s, d.join("nope"));
        let err = scan(&opts, Devices::default(), &StopFlag::new()).unwrap_err();
        assert!(
            err.contains("replica folder") && err.contains("is missing"),
            "{err}"
        );
        opts.dry_run = true;
        let found = scan(&opts, Devices::default(), &StopFlag::new()).unwrap();
        assert!(found.walk.replica.entries.is_empty());
        assert_eq!(found.walk.source.entries.len(), 3);
        assert_eq!(found.devices.replica, None);
        assert!(!d.join("nope").exists(), "nothing is created");
        // Once seen, a replica that goes away has vanished, dry run or not.
        let seen = Devices {
            replica: Some(1),
            ..Devices::default()
        };
        assert!(scan(&opts, seen, &StopFlag::new()).is_err());
    }

    #[test]
    fn a_root_whose_device_changed_has_vanished() {
        let (_tmp, s, d) = trees();
        let opts = SyncOptions::new(s, d);
        let first = scan(&opts, Devices::default(), &StopFlag::new()).unwrap();
        let devices = first.devices;
        assert!(devices.source.is_some() && devices.replica.is_some());
        assert!(scan(&opts, devices, &StopFlag::new()).is_ok());
        for moved in [
            Devices {
                source: devices.source.map(|d| d + 1),
                ..devices
            },
            Devices {
                replica: devices.replica.map(|d| d + 1),
                ..devices
            },
        ] {
            let err = scan(&opts, moved, &StopFlag::new()).unwrap_err();
            assert!(
                err.contains("vanished") && err.contains("device changed"),
                "{err}"
            );
        }
    }

    type Stages = (
        actix::Addr<Scanner>,
        Arc<std::sync::Mutex<Vec<TreesScanned>>>,
        Arc<std::sync::Mutex<Vec<TickFinished>>>,
        Arc<std::sync::Mutex<Vec<LogEvent>>>,
    );

    fn start(opts: SyncOptions, stop: StopFlag) -> Stages {
        let (next, scanned) = Collector::<TreesScanned>::start();
        let (finished, ended) = Collector::<TickFinished>::start();
        let (log, logged) = Collector::<LogEvent>::start();
        let scanner = Scanner::new(
            Arc::new(opts),
            next.recipient(),
            finished.recipient(),
            log.recipient(),
            stop,
        )
        .start();
        (scanner, scanned, ended, logged)
    }

    #[actix::test]
    async fn sends_both_listings_downstream() {
        let (_tmp, s, d) = trees();
        let (scanner, scanned, ended, _) = start(SyncOptions::new(s, d), StopFlag::new());
        scanner.do_send(ScanTrees { tick: tick(1) });
        wait_until(|| !scanned.lock().unwrap().is_empty()).await;
        let got = scanned.lock().unwrap().remove(0);
        assert_eq!(got.tick.seq, 1);
        assert_eq!(got.errors, 0);
        let paths = |l: &Listing| {
            l.entries
                .iter()
                .map(|e| e.path.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&got.source), [".", "sub", "sub/f"]);
        assert_eq!(paths(&got.replica), [".", "old"]);
        assert!(ended.lock().unwrap().is_empty());
    }

    #[actix::test]
    async fn a_missing_source_ends_the_tick_with_a_logged_reason() {
        let (_tmp, s, d) = trees();
        let (scanner, scanned, ended, logged) =
            start(SyncOptions::new(s.join("gone"), d), StopFlag::new());
        scanner.do_send(ScanTrees { tick: tick(7) });
        wait_until(|| !ended.lock().unwrap().is_empty()).await;
        let end = ended.lock().unwrap().remove(0);
        assert_eq!(end.tick.seq, 7);
        let reason = end.outcome.aborted.expect("aborted");
        assert!(reason.contains("is missing"), "{reason}");
        wait_until(|| !logged.lock().unwrap().is_empty()).await;
        let event = logged.lock().unwrap().remove(0);
        assert_eq!(event.path, None);
        assert_eq!(
            event.field("op").map(|v| v.to_string()),
            Some("scan".into())
        );
        assert!(scanned.lock().unwrap().is_empty());
    }

    #[actix::test]
    async fn a_stop_ends_the_tick_as_interrupted() {
        let (_tmp, s, d) = trees();
        let stop = StopFlag::new();
        stop.request();
        let (scanner, scanned, ended, _) = start(SyncOptions::new(s, d), stop);
        scanner.do_send(ScanTrees { tick: tick(2) });
        wait_until(|| !ended.lock().unwrap().is_empty()).await;
        assert!(ended.lock().unwrap()[0].outcome.interrupted);
        assert!(scanned.lock().unwrap().is_empty());
    }

    #[actix::test]
    async fn scan_errors_are_logged_and_counted() {
        let (_tmp, s, d) = trees();
        fs::create_dir(s.join(".syncignore")).unwrap();
        let (scanner, scanned, _, logged) = start(SyncOptions::new(s, d), StopFlag::new());
        scanner.do_send(ScanTrees { tick: tick(1) });
        wait_until(|| !scanned.lock().unwrap().is_empty()).await;
        let got = scanned.lock().unwrap().remove(0);
        assert_eq!(got.errors, 1);
        assert_eq!(got.source.incomplete, [RelPath::root()]);
        wait_until(|| !logged.lock().unwrap().is_empty()).await;
        let event = logged.lock().unwrap().remove(0);
        assert_eq!(event.path, Some(RelPath::from_str_lossy(".syncignore")));
    }
}
