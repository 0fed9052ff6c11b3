//! Scanner: takes `ScanTrees`, lists the source and the replica, and sends
//! `TreesScanned` to the next stage.
//!
//! A `Stage`: the scan runs on a blocking thread, never on the async
//! threads; its worker threads are the joint walk's (see `walk.rs`), with
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
//! updated where they changed (`merge`): a tick then costs what changed,
//! not the tree. A changed `.syncignore` changes what a whole subtree
//! excludes, so it makes the tick a full walk.

use crate::contract::messages::{
    LogEvent, ScanScope, ScanTrees, TickCx, TickOutcome, TreesScanned, Verb,
};
use crate::contract::model::{Entry, Listing, TempTokens, IGNORE_FILE, STATE_DIR};
use crate::contract::options::SyncOptions;
use crate::contract::plan::guard_base;
use crate::contract::relpath::RelPath;
use crate::contract::stage::{Flow, Stage};
use crate::contract::stop::StopFlag;
use crate::fs::identity::{open_roots, RootIdentity, Roots};
use crate::fs::root::Root;
use crate::fs::walk::{walk, walk_folders, KnownFolder, WalkOptions, WalkResult};
use actix::Recipient;
use std::collections::HashSet;
use std::sync::Arc;

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
        self.deliver(cx, result, narrow)
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
    let walked = walk(&roots.source, roots.replica.as_ref(), &walk_opts);
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

/// The changed folders worth listing again: the root, and folders the last
/// listings hold as folders that were entered (excluded replica folders are
/// entered only for `--delete-excluded`). Others are new (their parent
/// changed too and lists them) or gone.
fn relistable(
    folders: &[RelPath],
    src: &Listing,
    rep: &Listing,
    delete_excluded: bool,
) -> Vec<RelPath> {
    let mut seeds: Vec<RelPath> = folders
        .iter()
        // The tool's own folder is never listed, whatever happens in it
        // (the source's namesake is skipped, the replica's is ours).
        .filter(|f| f.components().next() != Some(STATE_DIR))
        .filter(|f| {
            f.is_root()
                || src.get(f).is_some_and(|e| e.kind.is_dir())
                || rep
                    .get(f)
                    .is_some_and(|e| e.kind.is_dir() && (!e.excluded || delete_excluded))
        })
        .cloned()
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
}

/// True when a folder of the source went (or became something else) while
/// the replica still has it: the rules deciding there were the source's and
/// now are the replica's own, for the whole subtree.
fn source_folder_went(
    relisted: &HashSet<RelPath>,
    old_src: &Listing,
    fresh_src: &Listing,
    old_rep: &Listing,
) -> bool {
    relisted.iter().any(|folder| {
        old_src.entries[subtree(&old_src.entries, folder)]
            .iter()
            .filter(|e| e.kind.is_dir() && e.path.parent().as_ref() == Some(folder))
            .any(|e| {
                !fresh_src.get(&e.path).is_some_and(|f| f.kind.is_dir())
                    && old_rep.get(&e.path).is_some_and(|r| r.kind.is_dir())
            })
    })
}

/// True when a `.syncignore` in a listed folder appeared, went or changed.
fn rules_changed(seeds: &[RelPath], old: &Listing, fresh: &Listing) -> bool {
    seeds.iter().any(|folder| {
        let path = folder.join(IGNORE_FILE);
        let (a, b) = (old.get(&path), fresh.get(&path));
        match (a, b) {
            (None, None) => false,
            (Some(a), Some(b)) => a.meta != b.meta || a.kind != b.kind,
            _ => true,
        }
    })
}

/// The previous listing with the entries of the `relisted` folders replaced
/// by the fresh ones. An old folder that is no longer a folder takes its
/// whole subtree with it; one still there keeps its subtree (whatever
/// changed inside it was listed again).
pub fn merge(old: Listing, mut fresh: Listing, relisted: &HashSet<RelPath>) -> Listing {
    let mut entries = old.entries;
    // Only the subtrees of the folders listed again change: each is one
    // contiguous run of the sorted listing, replaced in place. The rest of
    // the listing (all of it but what changed, usually) is not touched.
    let mut tops: Vec<&RelPath> = relisted
        .iter()
        .filter(|f| !ancestors(f).any(|a| relisted.contains(&a)))
        .collect();
    tops.sort_unstable();
    for top in tops.into_iter().rev() {
        let old_run = subtree(&entries, top);
        let fresh_run = subtree(&fresh.entries, top);
        let fresh_part: Vec<Entry> = fresh.entries.drain(fresh_run).collect();
        let old_part: Vec<Entry> = entries.drain(old_run.clone()).collect();
        let merged = merge_run(old_part, fresh_part, relisted);
        entries.splice(old_run.start..old_run.start, merged);
    }
    let mut merged = Listing {
        entries,
        incomplete: old.incomplete,
    };
    merged.incomplete.retain(|d| !relisted.contains(d));
    merged.incomplete.extend(fresh.incomplete);
    merged.incomplete.sort_unstable();
    merged.incomplete.dedup();
    let entries = &merged.entries;
    merged
        .incomplete
        .retain(|d| entries.binary_search_by(|e| e.path.cmp(d)).is_ok());
    merged
}

/// The folders above `path`, nearest first.
fn ancestors(path: &RelPath) -> impl Iterator<Item = RelPath> {
    std::iter::successors(path.parent(), RelPath::parent)
}

/// The parts of the listings a plan needs after a partial scan, `None`
/// where the whole is needed. Outside the folders listed again, the last
/// tick left the replica equal to the source (what failed is listed again
/// as a retried folder; an incomplete tick is followed by a full walk), so
/// a plan there finds nothing; at a million files that plan over the whole
/// listings was most of a tick's work. A part holds, for each folder listed
/// again: the folder, its entries, the whole subtree of an entry that is a
/// folder on one side only (created, removed or replaced), and the
/// folder's ancestors up to one listed again, whose times the plan
/// restores. Everything else
/// stands as it was. `None` too when the parts would be most of the tree,
/// or when an ancestor is not a folder on both sides.
pub fn narrowed<'a>(
    source: &Listing,
    replica: &Listing,
    listed: impl Iterator<Item = &'a RelPath>,
) -> Option<(Listing, Listing)> {
    let (s, r) = parts(source, replica, listed)?;
    let whole = source.entries.len() + replica.entries.len();
    (2 * (s.entries.len() + r.entries.len()) < whole).then_some((s, r))
}

/// The parts themselves (see `narrowed`), however large.
fn parts<'a>(
    source: &Listing,
    replica: &Listing,
    listed: impl Iterator<Item = &'a RelPath>,
) -> Option<(Listing, Listing)> {
    let folders: HashSet<&RelPath> = listed.collect();
    if folders.is_empty() {
        // Nothing listed: no part holds the roots the plan is checked by.
        return None;
    }
    let is_dir = |l: &Listing, p: &RelPath| l.get(p).is_some_and(|e| e.kind.is_dir());
    let mut context: HashSet<RelPath> = HashSet::new();
    for f in &folders {
        // Above a folder that is listed again too, that one's part holds
        // what is needed (a new folder is walked with its parent).
        for a in ancestors(f).take_while(|a| !folders.contains(a)) {
            if !(is_dir(source, &a) && is_dir(replica, &a)) {
                return None;
            }
            context.insert(a);
        }
    }
    let part = |this: &Listing, other: &Listing| {
        let mut picked = Vec::new();
        picked.extend(
            context
                .iter()
                .filter_map(|a| this.entries.binary_search_by(|e| e.path.cmp(a)).ok()),
        );
        for f in &folders {
            let range = subtree(&this.entries, f);
            let mut i = range.start;
            while i < range.end {
                let e = &this.entries[i];
                let child = e.path.parent().as_ref() == Some(*f);
                if e.path == **f || child {
                    picked.push(i);
                }
                if child && e.kind.is_dir() && !is_dir(other, &e.path) {
                    let below = subtree(&this.entries[i..range.end], &e.path);
                    picked.extend(i + 1..i + below.end);
                    i += below.end;
                    continue;
                }
                if child && e.kind.is_dir() {
                    // A folder on both sides: what is below it stands.
                    i += subtree(&this.entries[i..range.end], &e.path).end;
                    continue;
                }
                i += 1;
            }
        }
        picked.sort_unstable();
        picked.dedup();
        Listing {
            entries: picked
                .into_iter()
                .map(|i| this.entries[i].clone())
                .collect(),
            incomplete: this.incomplete.clone(),
        }
    };
    Some((part(source, replica), part(replica, source)))
}

/// The index range of `folder` and everything below it in a sorted listing.
fn subtree(entries: &[Entry], folder: &RelPath) -> std::ops::Range<usize> {
    let start = entries.partition_point(|e| e.path < *folder);
    let len = entries[start..].partition_point(|e| e.path.starts_with(folder));
    start..start + len
}

/// One subtree of the previous listing with the entries of the folders
/// listed again replaced by the fresh ones. An old folder that is no longer
/// a folder takes its whole subtree with it; one still there keeps its
/// subtree (whatever changed inside it was listed again).
fn merge_run(old: Vec<Entry>, fresh: Vec<Entry>, relisted: &HashSet<RelPath>) -> Vec<Entry> {
    let in_fresh = |path: &RelPath| {
        fresh
            .binary_search_by(|e| e.path.cmp(path))
            .ok()
            .map(|i| &fresh[i])
    };
    let mut kept: Vec<Entry> = Vec::with_capacity(old.len());
    let mut gone: Option<RelPath> = None;
    for e in old {
        if let Some(prefix) = &gone {
            if e.path.starts_with(prefix) {
                continue;
            }
            gone = None;
        }
        // Listed again: as an entry of a folder listed again, or as such a
        // folder itself (its own entry is listed with it).
        let now = in_fresh(&e.path);
        let replaced = e.path.parent().is_some_and(|p| relisted.contains(&p))
            || (relisted.contains(&e.path) && now.is_some());
        if !replaced {
            kept.push(e);
            continue;
        }
        if e.kind.is_dir() && !now.is_some_and(|f| f.kind.is_dir()) {
            gone = Some(e.path);
        }
    }
    merge_sorted(kept, fresh)
}

/// Merges two sorted, disjoint entry lists.
fn merge_sorted(a: Vec<Entry>, b: Vec<Entry>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.path < y.path,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
    out
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

/// A first full scan, as the last tick's listings for a partial one.
#[cfg(test)]
fn first_scan(o: &SyncOptions) -> (RootIdentity, Previous) {
    let first = scan(o, None, &StopFlag::new()).unwrap();
    let prev = Previous {
        source: Arc::new(first.walk.source),
        replica: Arc::new(first.walk.replica),
    };
    (first.identity, prev)
}

#[cfg(test)]
mod partial_tests {
    use super::*;
    use std::fs;

    fn listing_paths(l: &Listing) -> Vec<String> {
        l.entries
            .iter()
            .map(|e| format!("{} {}", e.path, e.kind.as_str()))
            .collect()
    }

    fn opts(src: &std::path::Path, dst: &std::path::Path) -> SyncOptions {
        let mut o = SyncOptions::new(src.to_path_buf(), dst.to_path_buf());
        o.watch = true;
        o
    }

    #[test]
    fn a_plan_after_a_partial_scan_sees_only_what_changed_and_its_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        for root in [&s, &r] {
            for d in 0..10 {
                fs::create_dir_all(root.join(format!("d{d}/sub"))).unwrap();
                for f in 0..4 {
                    fs::write(root.join(format!("d{d}/f{f}")), b"x").unwrap();
                }
            }
        }
        let o = opts(&s, &r);
        let stop = StopFlag::new();
        let (pinned, prev) = first_scan(&o);
        fs::write(s.join("d3/sub/new"), b"y").unwrap();
        fs::create_dir_all(s.join("d3/sub/made/deeper")).unwrap();
        fs::remove_dir_all(r.join("d7/sub")).unwrap();
        fs::write(r.join("d7/sub"), b"now a file").unwrap();
        let dirty = [
            RelPath::from_str_lossy("d3/sub"),
            RelPath::from_str_lossy("d7"),
        ];
        let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
        let w = &partial.walk;
        let listed = w.listed_source.iter().chain(&w.listed_replica);
        let (ps, pr) = narrowed(&w.source, &w.replica, listed).expect("a small part");
        let kinds = |l: &Listing| listing_paths(l).join(", ");
        assert_eq!(
            kinds(&ps),
            ". folder, d3 folder, d3/sub folder, d3/sub/made folder, d3/sub/made/deeper folder, \
             d3/sub/new file, d7 folder, d7/f0 file, d7/f1 file, d7/f2 file, d7/f3 file, \
             d7/sub folder"
        );
        assert_eq!(
            kinds(&pr),
            ". folder, d3 folder, d3/sub folder, d7 folder, d7/f0 file, d7/f1 file, \
             d7/f2 file, d7/f3 file, d7/sub file"
        );
        // The root listed again: its entries, not what is below them.
        let root = [RelPath::root()];
        let (ps, _) = narrowed(&w.source, &w.replica, root.iter()).unwrap();
        assert_eq!(ps.entries.len(), 11);
        // Every folder listed again is most of the tree: the plan takes the
        // whole listings.
        let every = w
            .source
            .entries
            .iter()
            .filter(|e| e.kind.is_dir())
            .map(|e| &e.path);
        assert!(narrowed(&w.source, &w.replica, every).is_none());
    }

    /// A partial scan of the changed folders must give what a full scan
    /// gives.
    fn check(
        setup: impl Fn(&std::path::Path, &std::path::Path),
        change: impl Fn(&std::path::Path, &std::path::Path),
        dirty: &[&str],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        fs::create_dir_all(&s).unwrap();
        fs::create_dir_all(&r).unwrap();
        setup(&s, &r);
        let o = opts(&s, &r);
        let stop = StopFlag::new();
        let (pinned, prev) = first_scan(&o);
        change(&s, &r);
        let dirty: Vec<RelPath> = dirty.iter().map(|d| RelPath::from_str_lossy(d)).collect();
        let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
        let full = scan(&o, Some(&pinned), &stop).unwrap();
        assert_eq!(
            listing_paths(&partial.walk.source),
            listing_paths(&full.walk.source),
            "source"
        );
        assert_eq!(
            listing_paths(&partial.walk.replica),
            listing_paths(&full.walk.replica),
            "replica"
        );
        assert_eq!(partial.walk.source.entries, full.walk.source.entries);
        assert_eq!(partial.walk.replica.entries, full.walk.replica.entries);
    }

    #[test]
    fn relisting_unchanged_known_folders_keeps_their_contents() {
        let tree = |root: &std::path::Path| {
            fs::create_dir_all(root.join("newdir/deep")).unwrap();
            fs::write(root.join("newdir/deep/z"), b"z").unwrap();
            fs::create_dir_all(root.join("sub")).unwrap();
            fs::write(root.join("sub/d"), b"d").unwrap();
        };
        check(
            |s, r| {
                tree(s);
                tree(r);
            },
            |_, _| {},
            &["", "newdir", "newdir/deep", "sub"],
        );
    }

    #[test]
    fn new_folders_are_walked_and_removed_ones_dropped() {
        check(
            |s, _| {
                fs::create_dir_all(s.join("old/inner")).unwrap();
                fs::write(s.join("old/inner/f"), b"f").unwrap();
            },
            |s, r| {
                fs::remove_dir_all(s.join("old")).unwrap();
                fs::create_dir_all(s.join("new/deeper")).unwrap();
                fs::write(s.join("new/deeper/g"), b"g").unwrap();
                fs::write(r.join("stray"), b"x").unwrap();
            },
            &[""],
        );
    }

    #[test]
    fn two_partial_ticks_in_a_row_match_full_scans() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        for root in [&s, &r] {
            fs::create_dir_all(root.join("sub")).unwrap();
            fs::write(root.join("sub/c"), b"c").unwrap();
        }
        let o = opts(&s, &r);
        let stop = StopFlag::new();
        let (pinned, mut prev) = first_scan(&o);
        let rel = |v: &[&str]| {
            v.iter()
                .map(|d| RelPath::from_str_lossy(d))
                .collect::<Vec<_>>()
        };
        // Tick 2: the source gains a file and a new subtree.
        fs::write(s.join("sub/d"), b"d").unwrap();
        fs::create_dir_all(s.join("newdir/deep")).unwrap();
        fs::write(s.join("newdir/deep/z"), b"z").unwrap();
        // Tick 3: the replica catches up (what the Applier would do).
        type Step<'a> = (Box<dyn Fn() + 'a>, Vec<RelPath>);
        let steps: Vec<Step> = vec![
            (Box::new(|| {}), rel(&["", "sub", "newdir", "newdir/deep"])),
            (
                Box::new(|| {
                    fs::write(r.join("sub/d"), b"d").unwrap();
                    fs::create_dir_all(r.join("newdir/deep")).unwrap();
                    fs::write(r.join("newdir/deep/z"), b"z").unwrap();
                }),
                rel(&["", "newdir", "newdir/deep", "sub"]),
            ),
        ];
        for (change, dirty) in steps {
            change();
            let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
            let full = scan(&o, Some(&pinned), &stop).unwrap();
            assert_eq!(
                listing_paths(&partial.walk.source),
                listing_paths(&full.walk.source)
            );
            assert_eq!(
                listing_paths(&partial.walk.replica),
                listing_paths(&full.walk.replica)
            );
            prev = Previous {
                source: Arc::new(partial.walk.source),
                replica: Arc::new(partial.walk.replica),
            };
        }
    }

    #[test]
    fn a_folder_new_on_one_side_only_leaves_the_other_sides_listing_alone() {
        // The replica gains newdir/deep/z, but the event for z was missed
        // (inotify watches a new folder only once it saw it created): only
        // the root and newdir are relisted. The source knew newdir/deep.
        check(
            |s, r| {
                fs::create_dir_all(s.join("newdir/deep")).unwrap();
                fs::write(s.join("newdir/deep/z"), b"z").unwrap();
                fs::create_dir_all(r.join("newdir")).unwrap();
            },
            |_, r| {
                fs::create_dir_all(r.join("newdir/deep")).unwrap();
                fs::write(r.join("newdir/deep/z"), b"z").unwrap();
            },
            &["", "newdir"],
        );
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

#[cfg(test)]
mod partial_properties {
    use super::*;
    use proptest::prelude::*;
    use std::fs;
    use std::path::Path;

    const PATHS: &[&str] = &[
        "a",
        "b",
        "a/x",
        "a/y",
        "b/x",
        "a/x/z",
        "c",
        "a/.syncignore",
        ".syncignore",
    ];

    #[derive(Clone, Debug)]
    enum Change {
        Write {
            replica: bool,
            path: usize,
            len: usize,
        },
        Mkdir {
            replica: bool,
            path: usize,
        },
        Remove {
            replica: bool,
            path: usize,
        },
    }

    fn change() -> impl Strategy<Value = Change> {
        let side = any::<bool>();
        let path = 0..PATHS.len();
        prop_oneof![
            (side, path.clone(), 0..4usize).prop_map(|(replica, path, len)| Change::Write {
                replica,
                path,
                len
            }),
            (side, path.clone()).prop_map(|(replica, path)| Change::Mkdir { replica, path }),
            (side, path).prop_map(|(replica, path)| Change::Remove { replica, path }),
        ]
    }

    /// Applies a change and returns the folders a watcher would report.
    fn apply(s: &Path, r: &Path, c: &Change) -> Vec<RelPath> {
        let (replica, idx) = match c {
            Change::Write { replica, path, .. }
            | Change::Mkdir { replica, path }
            | Change::Remove { replica, path } => (*replica, *path),
        };
        let root = if replica { r } else { s };
        let rel = RelPath::from_str_lossy(PATHS[idx]);
        let full = root.join(PATHS[idx]);
        let mut touched = Vec::new();
        let parents_made = |full: &Path, rel: &RelPath, touched: &mut Vec<RelPath>| {
            let mut missing = Vec::new();
            let mut p = rel.parent();
            while let Some(dir) = p {
                if dir.is_root() || fs::symlink_metadata(dir.under(root)).is_ok_and(|m| m.is_dir())
                {
                    break;
                }
                missing.push(dir.clone());
                p = dir.parent();
            }
            for d in missing.iter().rev() {
                let _ = fs::remove_file(d.under(root));
                touched.push(d.parent().unwrap_or_default());
            }
            if let Some(parent) = full.parent() {
                let _ = fs::create_dir_all(parent);
            }
        };
        let remove = |full: &Path| {
            let _ = fs::remove_file(full).or_else(|_| fs::remove_dir_all(full));
        };
        match c {
            Change::Write { len, .. } => {
                parents_made(&full, &rel, &mut touched);
                remove(&full);
                // Rules files exclude what other changes create.
                let content = if rel.name() == IGNORE_FILE {
                    b"x\nz\n".to_vec()
                } else {
                    vec![b'x'; *len]
                };
                let _ = fs::write(&full, content);
            }
            Change::Mkdir { .. } => {
                parents_made(&full, &rel, &mut touched);
                if !full.is_dir() {
                    remove(&full);
                    let _ = fs::create_dir(&full);
                }
            }
            Change::Remove { .. } => remove(&full),
        }
        touched.push(rel.parent().unwrap_or_default());
        touched
    }

    /// What plans depend on: an excluded replica entry is kept (or, with
    /// `--delete-excluded`, deleted) whatever its metadata, which a
    /// partial scan does not refresh (its folder is never entered).
    fn planned(entries: &[Entry]) -> Vec<Entry> {
        entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if e.excluded {
                    e.meta = Default::default();
                }
                e
            })
            .collect()
    }

    /// Two empty roots `s` and `r` in a temporary folder, watch-mode
    /// options, and their first scan.
    fn empty_trees() -> (tempfile::TempDir, SyncOptions, RootIdentity, Previous) {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        fs::create_dir_all(&s).unwrap();
        fs::create_dir_all(&r).unwrap();
        let mut o = SyncOptions::new(s, r);
        o.watch = true;
        let (pinned, prev) = first_scan(&o);
        (tmp, o, pinned, prev)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// From a mirrored state, whatever changes on either side, the plan
        /// made from the parts of the listings (`narrowed`) is the plan
        /// made from the whole listings, but for reports (skips, warnings)
        /// about entries outside the parts.
        #[test]
        fn narrowed_plans_equal_whole_plans(batches in prop::collection::vec(prop::collection::vec(change(), 1..5), 1..5)) {
            use crate::stages::differ::{diff, DiffOptions};
            use crate::contract::plan::guard_base;
            use crate::contract::model::SameContent;
            use crate::contract::plan::Op;
            let (tmp, o, pinned, mut prev) = empty_trees();
            let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
            let stop = StopFlag::new();
            let is_report = |op: &Op| matches!(op, Op::Skip { .. } | Op::Warn { .. } | Op::Refuse { .. });
            for batch in &batches {
                let dirty: Vec<RelPath> = batch.iter().flat_map(|c| apply(&s, &r, c)).collect();
                let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
                let w = &partial.walk;
                let listed = w.listed_source.iter().chain(&w.listed_replica);
                // Content checks decide nothing here: every candidate differs.
                let same = SameContent::default();
                let whole = diff(&w.source, &w.replica, &same, DiffOptions::from(&o));
                if let Some((ps, pr)) = parts(&w.source, &w.replica, listed) {
                    let opts = DiffOptions {
                        managed: Some(guard_base(&w.replica, &w.source, o.delete_excluded, &TempTokens::this_run())),
                        ..DiffOptions::from(&o)
                    };
                    let part = diff(&ps, &pr, &same, opts);
                    let work = |ops: &[Op]| ops.iter().filter(|op| !is_report(op)).cloned().collect::<Vec<_>>();
                    prop_assert_eq!(work(&part.ops), work(&whole.ops));
                    prop_assert_eq!(part.guard, whole.guard);
                    for op in part.ops.iter().filter(|op| is_report(op)) {
                        prop_assert!(whole.ops.contains(op), "{:?} not in the whole plan", op);
                    }
                }
                // Mirror, so the next batch starts from a mirrored state.
                let log = |_: LogEvent| {};
                crate::stages::applier::apply(&whole, &o, &stop, &log);
                let after = scan(&o, Some(&pinned), &stop).unwrap();
                prev = Previous {
                    source: Arc::new(after.walk.source),
                    replica: Arc::new(after.walk.replica),
                };
            }
        }

        /// Whatever changes between two ticks, listing only the folders a
        /// watcher reports gives the listings a full walk gives.
        #[test]
        fn partial_scans_equal_full_scans(batches in prop::collection::vec(prop::collection::vec(change(), 1..5), 1..5)) {
            let (tmp, o, pinned, mut prev) = empty_trees();
            let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
            let stop = StopFlag::new();
            for batch in &batches {
                let dirty: Vec<RelPath> = batch.iter().flat_map(|c| apply(&s, &r, c)).collect();
                let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
                let full = scan(&o, Some(&pinned), &stop).unwrap();
                prop_assert_eq!(&partial.walk.source.entries, &full.walk.source.entries);
                prop_assert_eq!(
                    planned(&partial.walk.replica.entries),
                    planned(&full.walk.replica.entries)
                );
                prev = Previous {
                    source: Arc::new(partial.walk.source),
                    replica: Arc::new(partial.walk.replica),
                };
            }
        }
    }
}
