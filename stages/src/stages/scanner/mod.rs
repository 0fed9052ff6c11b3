//! Scanner: takes `ScanTrees`, lists the source and the replica, and sends
//! `TreesScanned` to the next stage.
//!
//! A `Stage`: the scan runs on a blocking thread, never on the async
//! threads; its worker threads are the joint walk's (see `fs::walk`), with
//! the `.syncignore` rules of `rules.rs`. Per-folder errors are logged and
//! counted, and the folder is marked incomplete so that nothing below it is
//! deleted. A root problem (the source missing or not a folder, the replica
//! missing outside a dry run, a root path that names another folder than
//! at start: see `identity`) makes the tick impossible: it is logged as
//! `error op=root` (counted in the tick's errors) and the tick ends with
//! `aborted`. The root handles the tick checked travel on with it. A stop
//! raised during the walk ends the tick with `interrupted`. Nothing is
//! ever created.
//!
//! With `ScanScope::Folders` (watch mode) only the folders that changed are
//! listed again, and the listings of the previous tick, kept here, are
//! updated where they changed (`merge.rs`): a tick then costs what
//! changed, not the tree. A changed `.syncignore` changes what a whole
//! subtree excludes, so it makes the tick a full walk.

mod merge;

use crate::contract::messages::{
    LogEvent, ScanScope, ScanTrees, TickCx, TickOutcome, TreesScanned, Verb,
};
use crate::contract::model::{Entry, Listing, TempTokens};
use crate::contract::moves::Seen;
use crate::contract::options::SyncOptions;
use crate::contract::plan::guard_base;
use crate::contract::relpath::RelPath;
use crate::contract::stage::{Flow, Stage};
use crate::contract::stop::StopFlag;
use crate::fs::identity::{open_roots, RootIdentity, Roots};
use crate::fs::root::Root;
use crate::fs::walk::{walk, walk_folders, KnownFolder, WalkOptions, WalkResult};
use actix::Recipient;
use merge::{relistable, rules_changed, source_folder_went, with_link_partners};
use std::collections::HashSet;
use std::sync::Arc;

pub use merge::{merge, narrowed};

pub struct Scanner {
    opts: Arc<SyncOptions>,
    log: Recipient<LogEvent>,
    /// The roots as recorded at start (or, without that, at the first
    /// tick): a root path naming anything else makes the tick impossible.
    pinned: Option<RootIdentity>,
    /// The last tick's listings, kept for partial scans.
    previous: Option<Previous>,
}

/// Listings of the last complete scan, shared with the stages downstream
/// until they are done with them.
#[derive(Clone, Debug)]
pub struct Previous {
    pub source: Arc<Listing>,
    pub replica: Arc<Listing>,
}

impl Scanner {
    pub fn new(opts: Arc<SyncOptions>, log: Recipient<LogEvent>) -> Self {
        Scanner {
            opts: opts.clone(),
            log,
            pinned: opts.identity.clone(),
            previous: None,
        }
    }

    /// Sends what the scan found on to the next stage, or ends the tick.
    /// `narrow`: the plan may look only at what changed.
    fn deliver(
        &mut self,
        cx: &mut TickCx,
        result: Result<Scan, String>,
        narrow: bool,
        seen: Vec<Seen>,
    ) -> Flow<TreesScanned> {
        let scan = match result {
            Ok(scan) => scan,
            Err(msg) => return self.abort(msg),
        };
        if self.pinned.is_none() {
            self.pinned = Some(scan.identity);
        }
        let roots = Arc::new(scan.roots);
        for event in scan.walk.events {
            self.log.do_send(event);
        }
        cx.errors += scan.walk.errors;
        if scan.walk.interrupted {
            return Flow::End(TickOutcome {
                interrupted: true,
                ..TickOutcome::default()
            });
        }
        if let Some(n) = scan.partial {
            self.log
                .do_send(LogEvent::new(Verb::Detail("scan"), None).with_u64("folders_relisted", n));
        }
        let (listed_source, listed_replica) = (scan.walk.listed_source, scan.walk.listed_replica);
        let listings = Previous {
            source: Arc::new(scan.walk.source),
            replica: Arc::new(scan.walk.replica),
        };
        if scan.unchanged {
            // Nothing to plan: the tick ends here, idle ticks stay cheap.
            self.previous = Some(listings);
            return Flow::End(TickOutcome {
                idle: true,
                ..TickOutcome::default()
            });
        }
        self.previous = self.opts.watch.then(|| listings.clone());
        let listed = listed_source.iter().chain(&listed_replica);
        let parts = match scan.partial {
            Some(_) if narrow => narrowed(&listings.source, &listings.replica, listed),
            _ => None,
        };
        let (source, replica, managed) = match parts {
            Some((source, replica)) => {
                let managed = guard_base(
                    &listings.replica,
                    &listings.source,
                    self.opts.delete_excluded,
                    &TempTokens::this_run(),
                );
                (Arc::new(source), Arc::new(replica), Some(managed))
            }
            None => (listings.source, listings.replica, None),
        };
        Flow::Next(TreesScanned {
            source,
            replica,
            managed,
            roots,
            seen,
        })
    }

    fn abort(&mut self, msg: String) -> Flow<TreesScanned> {
        self.previous = None;
        self.log.do_send(LogEvent::error(None, "root", &msg));
        // The `error` line just logged counts in the tick's summary.
        Flow::End(TickOutcome {
            aborted: Some(msg),
            errors: 1,
            ..TickOutcome::default()
        })
    }
}

impl Stage for Scanner {
    type In = ScanTrees;
    type Out = TreesScanned;

    fn name(&self) -> &'static str {
        "scan"
    }

    fn run(&mut self, msg: ScanTrees, cx: &mut TickCx) -> Flow<TreesScanned> {
        let narrow = !msg.whole_plan;
        // A partial scan updates the last listings; without them (first
        // tick, or after a failed one) only a full walk will do.
        let previous = match msg.scope {
            ScanScope::Folders(folders) => self.previous.take().map(|p| (p, folders)),
            ScanScope::Full => None,
        };
        self.previous = None;
        let (opts, pinned, stop) = (&self.opts, self.pinned.as_ref(), cx.stop());
        let result = match previous {
            Some((prev, folders)) => scan_folders(opts, pinned, stop, prev, &folders),
            None => scan(opts, pinned, stop),
        };
        self.deliver(cx, result, narrow, msg.seen)
    }
}

/// What one scan found.
#[derive(Debug)]
pub struct Scan {
    pub walk: WalkResult,
    /// The roots as walked, checked against the recorded identity.
    pub roots: Roots,
    /// What identifies the roots found (the pin where none was recorded).
    pub identity: RootIdentity,
    /// A partial scan: how many folders were listed again.
    pub partial: Option<u64>,
    /// Nothing changed since the last tick: the listings are the last ones
    /// and the tick has nothing to do.
    pub unchanged: bool,
}

/// Checks both roots and walks them: the whole of one tick's scan, as a
/// plain blocking function. `known` is the roots' identity recorded so
/// far; an `Err` is the reason the tick cannot run.
pub fn scan(
    opts: &SyncOptions,
    known: Option<&RootIdentity>,
    stop: &StopFlag,
) -> Result<Scan, String> {
    let (roots, identity) = check_roots(opts, known)?;
    let walk_opts = walk_options(opts, stop, None);
    let mut walked = walk(&roots.source, roots.replica.as_ref(), &walk_opts);
    // A remote replica: the source was walked alone, the store is listed.
    if let (Some(remote), false) = (&opts.remote, walked.interrupted) {
        walked.replica = remote
            .list(&walked.source, &roots.source, opts, stop)
            .map_err(|e| format!("replica {} cannot be listed: {e}", remote.address))?;
    }
    Ok(Scan {
        walk: walked,
        roots,
        identity,
        partial: None,
        unchanged: false,
    })
}

/// Opens both roots and checks they are the folders the run started with.
fn check_roots(
    opts: &SyncOptions,
    known: Option<&RootIdentity>,
) -> Result<(Roots, RootIdentity), String> {
    open_roots(&opts.source, &opts.replica, known, opts.dry_run)
}

fn walk_options<'a>(
    opts: &'a SyncOptions,
    stop: &'a StopFlag,
    known: Option<&'a KnownFolder<'a>>,
) -> WalkOptions<'a> {
    WalkOptions {
        jobs: opts.jobs,
        excludes: &opts.excludes,
        hidden: &opts.hidden,
        delete_excluded: opts.delete_excluded,
        one_file_system: opts.one_file_system,
        unlock_replica: !opts.dry_run,
        stop,
        known,
    }
}

/// Lists again only `folders` (and what is new below them) and updates the
/// previous listings; falls back to a full scan where a partial one cannot
/// be trusted (rules changed or unreadable, a replica that appeared).
pub fn scan_folders(
    opts: &SyncOptions,
    known: Option<&RootIdentity>,
    stop: &StopFlag,
    previous: Previous,
    folders: &[RelPath],
) -> Result<Scan, String> {
    let full = || scan(opts, known, stop);
    let (roots, identity) = check_roots(opts, known)?;
    let (source, replica) = (&roots.source, roots.replica.as_ref());
    // A root that is another folder now (same device, new inode) shares
    // nothing with the last listings.
    let same_root = |root: Option<&Root>, old: &Listing| match (root, old.root()) {
        (Some(root), Some(e)) => root.stat().is_ok_and(|st| st.st_ino == e.meta.id.ino),
        (None, None) => true,
        _ => false,
    };
    if !same_root(Some(source), &previous.source) || !same_root(replica, &previous.replica) {
        return full();
    }
    let Previous {
        source: old_src,
        replica: old_rep,
    } = previous;
    let seeds = relistable(folders, &old_src, &old_rep, opts.delete_excluded);
    let seeds = with_link_partners(seeds, &old_src, &old_rep);
    let owned = |l: Arc<Listing>| Arc::try_unwrap(l).unwrap_or_else(|shared| (*shared).clone());
    if seeds.is_empty() {
        // The last tick left the replica as planned and nothing changed
        // since: only the roots needed checking.
        let walk = WalkResult {
            source: owned(old_src),
            replica: owned(old_rep),
            ..WalkResult::default()
        };
        return Ok(Scan {
            walk,
            roots,
            identity,
            partial: Some(0),
            unchanged: true,
        });
    }
    // A subfolder listed last time, still the same folder (inode) with the
    // same mtime and ctime, holds the same names: its listing stands (what
    // changed inside it is among the folders). Any other is walked, and so
    // is one that failed last time.
    let seed_set: HashSet<&RelPath> = seeds.iter().collect();
    let is_known = |fresh: &Entry, source_side: bool| {
        // A changed folder below another is listed as a folder of its own.
        if seed_set.contains(&fresh.path) {
            return true;
        }
        let old = if source_side { &old_src } else { &old_rep };
        old.get(&fresh.path).is_some_and(|e| {
            // An excluded folder was not entered: its listing is not known.
            e.kind.is_dir()
                && e.excluded == fresh.excluded
                && e.meta.id == fresh.meta.id
                && e.meta.mtime == fresh.meta.mtime
                && e.meta.ctime == fresh.meta.ctime
        }) && !old.incomplete.contains(&fresh.path)
    };
    let replica_excluded = |rel: &RelPath| old_rep.get(rel).is_some_and(|e| e.excluded);
    let walk_opts = walk_options(opts, stop, Some(&is_known));
    let Ok(fresh) = walk_folders(source, replica, &seeds, &replica_excluded, &walk_opts) else {
        return full();
    };
    if fresh.interrupted {
        return Ok(Scan {
            walk: fresh,
            roots,
            identity,
            partial: None,
            unchanged: false,
        });
    }
    // The replica's own rules decide in folders only the replica has.
    if rules_changed(&seeds, &old_src, &fresh.source)
        || rules_changed(&seeds, &old_rep, &fresh.replica)
    {
        return full();
    }
    let src_relisted: HashSet<RelPath> = fresh.listed_source.iter().cloned().collect();
    let rep_relisted: HashSet<RelPath> = fresh.listed_replica.iter().cloned().collect();
    if source_folder_went(&src_relisted, &old_src, &fresh.source, &old_rep) {
        return full();
    }
    let count = src_relisted.union(&rep_relisted).count() as u64;
    // The stages downstream are done with the last listings by now: they
    // are updated in place, not copied.
    let walk = WalkResult {
        source: merge(owned(old_src), fresh.source, &src_relisted),
        replica: merge(owned(old_rep), fresh.replica, &rep_relisted),
        ..fresh
    };
    Ok(Scan {
        walk,
        roots,
        identity,
        partial: Some(count),
        unchanged: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::messages::{Batch, TickFinished};
    use crate::contract::model::Listing;
    use crate::contract::relpath::RelPath;
    use crate::testing::{start_stage, wait_until, Collector};
    use std::fs;
    use std::path::PathBuf;

    /// Tick `seq`, walking everything.
    fn full_scan(seq: u64) -> Batch<ScanTrees> {
        Batch::whole(
            TickCx::new(seq),
            ScanTrees {
                scope: ScanScope::Full,
                whole_plan: false,
                seen: Vec::new(),
            },
        )
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
        let err = scan(&opts, None, &StopFlag::new()).unwrap_err();
        assert!(
            err.contains("source folder") && err.contains("is missing"),
            "{err}"
        );
        let opts = SyncOptions::new(s.join("sub/f"), s.clone());
        let err = scan(&opts, None, &StopFlag::new()).unwrap_err();
        assert!(err.contains("is not a folder"), "{err}");
    }

    #[test]
    fn a_missing_replica_is_empty_in_a_dry_run_and_fatal_otherwise() {
        let (_tmp, s, d) = trees();
        let mut opts = SyncOptions::new(s, d.join("nope"));
        let err = scan(&opts, None, &StopFlag::new()).unwrap_err();
        assert!(
            err.contains("replica folder") && err.contains("is missing"),
            "{err}"
        );
        opts.dry_run = true;
        let found = scan(&opts, None, &StopFlag::new()).unwrap();
        assert!(found.walk.replica.entries.is_empty());
        assert_eq!(found.walk.source.entries.len(), 3);
        assert_eq!(found.identity.replica, None);
        assert!(!d.join("nope").exists(), "nothing is created");
        // Once seen, a replica that goes away has vanished, dry run or not.
        std::fs::create_dir(d.join("nope")).unwrap();
        let seen = scan(&opts, None, &StopFlag::new()).unwrap().identity;
        std::fs::remove_dir(d.join("nope")).unwrap();
        assert!(scan(&opts, Some(&seen), &StopFlag::new()).is_err());
    }

    #[test]
    fn a_root_that_is_another_folder_now_has_vanished() {
        let (_tmp, s, d) = trees();
        let opts = SyncOptions::new(s, d.clone());
        let first = scan(&opts, None, &StopFlag::new()).unwrap().identity;
        assert!(scan(&opts, Some(&first), &StopFlag::new()).is_ok());
        let moved = |f: fn(&mut RootIdentity)| {
            let mut other = first.clone();
            f(&mut other);
            other
        };
        for other in [
            moved(|i| i.source.dev += 1),
            moved(|i| i.source.ino += 1),
            moved(|i| i.replica.as_mut().unwrap().ino += 1),
        ] {
            let err = scan(&opts, Some(&other), &StopFlag::new()).unwrap_err();
            assert!(
                err.contains("not the folder this run started with"),
                "{err}"
            );
        }
        // The folder moved away and another put at its path.
        std::fs::rename(&d, d.with_file_name("moved")).unwrap();
        std::fs::create_dir(&d).unwrap();
        let err = scan(&opts, Some(&first), &StopFlag::new()).unwrap_err();
        assert!(
            err.contains("not the folder this run started with"),
            "{err}"
        );
    }

    type Stages = (
        Recipient<Batch<ScanTrees>>,
        Arc<std::sync::Mutex<Vec<Batch<TreesScanned>>>>,
        Arc<std::sync::Mutex<Vec<TickFinished>>>,
        Arc<std::sync::Mutex<Vec<LogEvent>>>,
    );

    fn start(opts: SyncOptions, stop: StopFlag) -> Stages {
        let (log, logged) = Collector::<LogEvent>::start();
        let scanner = Scanner::new(Arc::new(opts), log.clone().recipient());
        let (scanner, (scanned, ended)) = start_stage(scanner, log.recipient(), stop);
        (scanner, scanned, ended, logged)
    }

    #[actix::test]
    async fn sends_both_listings_downstream() {
        let (_tmp, s, d) = trees();
        let (scanner, scanned, ended, _) = start(SyncOptions::new(s, d), StopFlag::new());
        scanner.do_send(full_scan(1));
        wait_until(|| !scanned.lock().unwrap().is_empty()).await;
        let Batch { cx, body: got, .. } = scanned.lock().unwrap().remove(0);
        assert_eq!(cx.seq, 1);
        assert_eq!(cx.errors, 0);
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
        scanner.do_send(full_scan(7));
        wait_until(|| !ended.lock().unwrap().is_empty()).await;
        let end = ended.lock().unwrap().remove(0);
        assert_eq!(end.cx.seq, 7);
        let reason = end.outcome.aborted.expect("aborted");
        assert!(reason.contains("is missing"), "{reason}");
        wait_until(|| !logged.lock().unwrap().is_empty()).await;
        let event = logged.lock().unwrap().remove(0);
        assert_eq!(event.path, None);
        assert_eq!(
            event.field("op").map(|v| v.to_string()),
            Some("root".into())
        );
        assert!(scanned.lock().unwrap().is_empty());
    }

    #[actix::test]
    async fn a_stop_ends_the_tick_as_interrupted() {
        let (_tmp, s, d) = trees();
        let stop = StopFlag::new();
        stop.request();
        let (scanner, scanned, ended, _) = start(SyncOptions::new(s, d), stop);
        scanner.do_send(full_scan(2));
        wait_until(|| !ended.lock().unwrap().is_empty()).await;
        assert!(ended.lock().unwrap()[0].outcome.interrupted);
        assert!(scanned.lock().unwrap().is_empty());
    }

    #[actix::test]
    async fn scan_errors_are_logged_and_counted() {
        let (_tmp, s, d) = trees();
        fs::create_dir(s.join(".syncignore")).unwrap();
        let (scanner, scanned, _, logged) = start(SyncOptions::new(s, d), StopFlag::new());
        scanner.do_send(full_scan(1));
        wait_until(|| !scanned.lock().unwrap().is_empty()).await;
        let Batch { cx, body: got, .. } = scanned.lock().unwrap().remove(0);
        assert_eq!(cx.errors, 1);
        assert_eq!(got.source.incomplete, [RelPath::root()]);
        wait_until(|| !logged.lock().unwrap().is_empty()).await;
        let event = logged.lock().unwrap().remove(0);
        assert_eq!(event.path, Some(RelPath::from_str_lossy(".syncignore")));
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;

    #[test]
    fn no_changed_folder_reuses_the_listings_and_only_checks_the_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        std::fs::create_dir_all(s.join("d")).unwrap();
        std::fs::create_dir_all(&r).unwrap();
        let mut o = SyncOptions::new(s.clone(), r.clone());
        o.watch = true;
        let stop = StopFlag::new();
        let first = scan(&o, None, &stop).unwrap();
        let before = first.walk.source.entries.clone();
        let prev = Previous {
            source: Arc::new(first.walk.source),
            replica: Arc::new(first.walk.replica),
        };
        let idle = scan_folders(&o, Some(&first.identity), &stop, prev.clone(), &[]).unwrap();
        assert!(idle.unchanged);
        assert_eq!(idle.walk.source.entries, before);
        // A vanished source is still noticed by an idle tick.
        std::fs::remove_dir_all(&s).unwrap();
        assert!(scan_folders(&o, Some(&first.identity), &stop, prev, &[]).is_err());
    }
}
