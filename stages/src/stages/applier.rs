//! Applier: takes `PlanMade`, carries out the plan on the replica, logs
//! every operation and ends the tick with its outcome.
//!
//! A `Stage`: the work runs on a blocking thread, off the async threads. The plan runs in its
//! order, which the Differ makes so that each operation finds what it
//! needs done: reports, then deletions (children first), folders (parents
//! first), moves (one at a time), the folders the moves emptied, files and
//! links (each run of consecutive ones in parallel over `jobs` threads,
//! since they are independent), and last the folders' own metadata
//! (deepest first), so that writing a folder's contents cannot disturb its
//! restored mtime. The file-system work itself
//! is in `replica_ops`.
//!
//! A failing operation is logged as `error` and counted, and the plan goes
//! on; a root that cannot be opened stops everything but the reports. A
//! raised `StopFlag` starts no new operation. `apply` is the whole stage as
//! a plain function, for tests and for callers without actix.

use crate::contract::hooks::{HookAt, HookCx};
use crate::contract::messages::{
    Counts, Done, Fact, LogEvent, LogValue, OpDone, PlanMade, Tallies, TickCx, TickOutcome, Verb,
};
use crate::contract::options::SyncOptions;
use crate::contract::plan::{GuardTrip, Op, Phase, Plan, RootIds};
use crate::contract::relpath::RelPath;
use crate::contract::replica::Replica;
use crate::contract::stage::{Flow, Stage};
use crate::contract::stop::StopFlag;
use crate::fs::identity::Roots;
use crate::fs::replica_ops::{fail_point, Copied, OpError, ReplicaOps, CHANGED_WHILE_COPIED};
use crate::fs::root::Root;
use crate::remote::ops::RemoteOps;
use actix::Recipient;
use rustix::fd::AsFd;
use rustix::io::Errno;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub struct Applier {
    opts: Arc<SyncOptions>,
    log: Recipient<LogEvent>,
    /// Files skipped as changed while being copied, with how many ticks
    /// in a row: at `CHRONIC` a skip is an error (a file always being
    /// written, a database or a VM image, is never mirrored unseen).
    changing: HashMap<RelPath, u32>,
}

/// Ticks in a row a file may be skipped as changing before it is an error.
const CHRONIC: u32 = 3;

/// The files whose next skip as changing would be the `CHRONIC`th in a row.
fn chronic(streaks: &HashMap<RelPath, u32>) -> HashSet<RelPath> {
    streaks
        .iter()
        .filter(|(_, n)| **n + 1 >= CHRONIC)
        .map(|(p, _)| p.clone())
        .collect()
}

/// The streaks after a tick that skipped `changing` as changing: those
/// counted again, the others start over (copied, gone, not planned).
fn streaks(before: &HashMap<RelPath, u32>, changing: Vec<RelPath>) -> HashMap<RelPath, u32> {
    changing
        .into_iter()
        .map(|path| {
            let n = before.get(&path).copied().unwrap_or(0) + 1;
            (path, n)
        })
        .collect()
}

impl Applier {
    pub fn new(opts: Arc<SyncOptions>, log: Recipient<LogEvent>) -> Self {
        Applier {
            opts,
            log,
            changing: HashMap::new(),
        }
    }
}

impl Stage for Applier {
    type In = PlanMade;
    type Out = Done;

    fn name(&self) -> &'static str {
        "apply"
    }

    fn run(&mut self, msg: PlanMade, cx: &mut TickCx) -> Flow<Done> {
        let send = |event: LogEvent| self.log.do_send(event);
        let (roots, started) = (Some(&*msg.roots), cx.started_at);
        let chronic = chronic(&self.changing);
        let at = Tick {
            roots,
            start: started,
            chronic: &chronic,
        };
        let (outcome, changing) = apply_at(&msg.plan, &self.opts, at, cx.stop(), &send);
        self.changing = streaks(&self.changing, changing);
        Flow::End(outcome)
    }
}

/// Carries out `plan` on the replica (or, with `dry_run`, only logs it),
/// logging every operation through `log`, and returns the tick's outcome.
/// `errors` counts only this plan's failures; the caller adds those of
/// earlier stages.
pub fn apply(
    plan: &Plan,
    opts: &SyncOptions,
    stop: &StopFlag,
    log: &(dyn Fn(LogEvent) + Sync),
) -> TickOutcome {
    apply_in(plan, opts, None, SystemTime::now(), stop, log)
}

/// Where and when a plan runs: the roots the tick checked, the tick's
/// start (wall clock), and the files that were skipped as changing at the
/// ticks before (an error now, not a skip).
struct Tick<'a> {
    roots: Option<&'a Roots>,
    start: SystemTime,
    chronic: &'a HashSet<RelPath>,
}

/// `apply` in the roots the tick checked and listed (`None`: opened by
/// path, for callers that have none), for the tick that started (wall
/// clock) at `tick_start`: the hooks see it (`--backup-dir` names its
/// folder after it).
pub fn apply_in(
    plan: &Plan,
    opts: &SyncOptions,
    roots: Option<&Roots>,
    tick_start: SystemTime,
    stop: &StopFlag,
    log: &(dyn Fn(LogEvent) + Sync),
) -> TickOutcome {
    let none = HashSet::new();
    let at = Tick {
        roots,
        start: tick_start,
        chronic: &none,
    };
    apply_at(plan, opts, at, stop, log).0
}

/// `apply_in`, also returning the files skipped as changed while copied.
fn apply_at(
    plan: &Plan,
    opts: &SyncOptions,
    at: Tick,
    stop: &StopFlag,
    log: &(dyn Fn(LogEvent) + Sync),
) -> (TickOutcome, Vec<RelPath>) {
    let Tick {
        roots,
        start: tick_start,
        chronic,
    } = at;
    let mut tally = Tally::default();
    if let Some(trip) = &plan.guard {
        // An `error` entry like any other: the tick's count includes it.
        log(guard_event(trip).dry_run(opts.dry_run));
        tally.errors += 1;
    }
    let target = open_target(opts, roots, plan.roots, tick_start, log, &mut tally);
    if let Target::Replica(replica) = &target {
        for event in replica.start_hooks() {
            tally.count(&event);
            log(event);
        }
    }
    let unapplied = matches!(target, Target::Unavailable)
        && plan.ops.iter().any(|op| op.phase() != Phase::Report);
    let run = Run {
        opts,
        stop,
        log,
        target,
        tick_start,
        chronic,
    };
    // In plan order; each run of consecutive file operations in parallel,
    // and so each run of removals between two folder removals: the plan
    // removes a folder's contents before the folder (see `Run::removals`).
    let ops: Vec<&Op> = plan.ops.iter().collect();
    for run_ops in ops.chunk_by(|a, b| a.phase() == b.phase()) {
        match run_ops[0].phase() {
            Phase::Files | Phase::Links => run.parallel(run_ops, &mut tally),
            Phase::Clean => run.removals(run_ops, &mut tally),
            _ => run.serial(run_ops, &mut tally),
        }
        if tally.stopped {
            break;
        }
    }
    if let Target::Replica(replica) = &run.target {
        // Permissions or owners the replica cannot store: one `warn` a run.
        if let Some(reason) = opts.replica_fs.unkept_warning(replica.unkept()) {
            let event = LogEvent::new(Verb::Warn, None).with_str("reason", reason);
            tally.count(&event);
            log(event);
        }
        if let Err(e) = replica.forget_attrs_sweep_if_failed() {
            let reason = format!("a failure to set attributes cannot be recorded, so the next run may not retry it: {e}");
            let event = LogEvent::new(Verb::Warn, None).with_str("reason", reason);
            tally.count(&event);
            log(event);
        }
        if plan.attrs_sweep && tally.errors == 0 && !tally.stopped {
            if let Err(e) = replica.record_attrs_sweep() {
                let reason = format!("the comparison of every entry's attributes cannot be recorded, so the next run compares them all again: {e}");
                let event = LogEvent::new(Verb::Warn, None).with_str("reason", reason);
                tally.count(&event);
                log(event);
            }
        }
        if let Err(e) = replica.record_racy(&tally.racy, &tally.settled, &tally.moved) {
            let reason =
                format!("files copied while written cannot be recorded for a recheck: {e}");
            let event = LogEvent::new(Verb::Warn, None).with_str("reason", reason);
            tally.count(&event);
            log(event);
        }
    }
    if let Target::Remote(_) = &run.target {
        if let (Some(remote), Err(e)) = (
            &opts.remote,
            opts.remote.as_ref().map_or(Ok(()), |r| r.save_records()),
        ) {
            let reason = format!("the records of what was written to {} cannot be saved (the next sync reads the metadata of those objects again): {e}", remote.address);
            let event = LogEvent::new(Verb::Warn, None).with_str("reason", reason);
            tally.count(&event);
            log(event);
        }
    }
    let outcome = TickOutcome {
        counts: tally.counts,
        bytes: tally.bytes,
        errors: tally.errors,
        guard_tripped: plan.guard.is_some(),
        aborted: None,
        interrupted: tally.stopped,
        unapplied,
        idle: false,
        retry: tally.retry,
        tallies: tally.others,
    };
    (outcome, tally.changing)
}

fn guard_event(trip: &GuardTrip) -> LogEvent {
    LogEvent::error(
        None,
        "guard",
        format!(
            "would delete {} of {} entries (limit {}): deletions withheld",
            trip.would_delete, trip.managed, trip.limit
        ),
    )
}

/// Where the operations go.
enum Target {
    /// `--dry-run`: nothing is written, every operation only logged. The
    /// replica root is opened (when it exists) only for the hooks to say
    /// what they would do, and both roots to compare attributes (read,
    /// never written).
    DryRun {
        hooks: Option<Root>,
        reader: Option<ReplicaOps>,
    },
    Replica(ReplicaOps),
    /// A remote store (`s3://...`).
    Remote(RemoteOps),
    /// A root could not be opened (already logged): only reports run.
    Unavailable,
}

fn open_target(
    opts: &SyncOptions,
    checked: Option<&Roots>,
    roots: Option<RootIds>,
    tick_start: SystemTime,
    log: &(dyn Fn(LogEvent) + Sync),
    tally: &mut Tally,
) -> Target {
    if let Some(remote) = &opts.remote {
        return open_remote(remote, opts, roots, log, tally);
    }
    if opts.dry_run {
        // The hooks read (never write) the replica the scan checked; a
        // caller without checked roots opens it by path.
        let replica = (!opts.hooks.is_empty())
            .then(|| match checked.and_then(|c| c.replica.as_ref()) {
                Some(root) => root.try_clone().ok(),
                None => Root::open(&opts.replica).ok(),
            })
            .flatten();
        let reader = match checked {
            Some(checked) => ReplicaOps::from_roots(checked, opts).ok(),
            None => ReplicaOps::open(opts).ok(),
        };
        return Target::DryRun {
            hooks: replica,
            reader,
        };
    }
    let opened = match checked {
        Some(checked) => ReplicaOps::from_roots(checked, opts),
        None => ReplicaOps::open(opts),
    };
    match opened {
        Ok(ops) if roots.is_some_and(|ids| !ops.roots_are(ids)) => {
            // Planned for other folders: a disk unmounted or swapped since
            // the scan. Writing now could fill an empty mount point.
            let msg = "a root is no longer the folder that was scanned (unmounted or replaced?): nothing done";
            log(LogEvent::error(None, "apply", msg));
            tally.errors += 1;
            Target::Unavailable
        }
        Ok(ops) => Target::Replica(ops.at_tick(tick_start)),
        Err(e) => {
            log(LogEvent::error(None, "apply", &e));
            tally.errors += 1;
            Target::Unavailable
        }
    }
}

/// A remote replica: the source root is opened again for reading the
/// files, and must be the one the scan walked.
fn open_remote(
    remote: &Arc<crate::remote::Remote>,
    opts: &SyncOptions,
    roots: Option<RootIds>,
    log: &(dyn Fn(LogEvent) + Sync),
    tally: &mut Tally,
) -> Target {
    if opts.dry_run {
        return Target::DryRun {
            hooks: None,
            reader: None,
        };
    }
    let source = match Root::open(&opts.source) {
        Ok(root) => root,
        Err(e) => {
            log(LogEvent::error(
                None,
                "apply",
                format!("open the source root: {e}"),
            ));
            tally.errors += 1;
            return Target::Unavailable;
        }
    };
    let same = source.stat().is_ok_and(|st| {
        roots.is_none_or(|ids| (st.st_dev, st.st_ino) == (ids.source.dev, ids.source.ino))
    });
    if !same {
        let msg = "the source root is no longer the folder that was scanned (unmounted or replaced?): nothing done";
        log(LogEvent::error(None, "apply", msg));
        tally.errors += 1;
        return Target::Unavailable;
    }
    Target::Remote(RemoteOps::new(remote.clone(), source, opts.fsync))
}

/// What the operations of one thread came to.
#[derive(Default)]
struct Tally {
    counts: Counts,
    bytes: u64,
    errors: u64,
    /// An operation was not started because a stop was asked.
    stopped: bool,
    /// Folders of operations that failed or were skipped while applied.
    retry: Vec<RelPath>,
    /// Files copied while their source may have been written (`racy.rs`),
    /// and files copied with no such doubt.
    racy: Vec<RelPath>,
    settled: Vec<RelPath>,
    /// Files moved (old path, new path): a recheck follows a file.
    moved: Vec<(RelPath, RelPath)>,
    /// Files skipped as changed while being copied.
    changing: Vec<RelPath>,
    /// Verbs of per-operation features (a hook's `backup`).
    others: Tallies,
}

impl Tally {
    /// Counts a logged event by its verb.
    fn count(&mut self, event: &LogEvent) {
        match event.verb {
            Verb::Error => self.errors += 1,
            Verb::Other { name, .. } => self.others.add(name, 1),
            verb => {
                self.counts.add(verb);
            }
        }
        if let Some(Fact::OpDone(done)) = event.fact {
            self.bytes += done.bytes;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.counts.merge(&other.counts);
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.retry.extend(other.retry);
        self.racy.extend(other.racy);
        self.settled.extend(other.settled);
        self.moved.extend(other.moved);
        self.changing.extend(other.changing);
        self.stopped |= other.stopped;
        for (name, n) in other.others.iter() {
            self.others.add(name, n);
        }
    }
}

/// One plan's run: shared read-only by the worker threads.
struct Run<'a> {
    opts: &'a SyncOptions,
    stop: &'a StopFlag,
    log: &'a (dyn Fn(LogEvent) + Sync),
    target: Target,
    tick_start: SystemTime,
    /// Files skipped as changing at the ticks before: an error now.
    chronic: &'a HashSet<RelPath>,
}

impl Run<'_> {
    /// In plan order, one at a time (the order matters in these phases).
    fn serial(&self, ops: &[&Op], tally: &mut Tally) {
        for op in ops {
            if self.stop.is_requested() {
                tally.stopped = true;
                return;
            }
            self.one(op, tally);
        }
    }

    /// The removals of the `Clean` phase. The plan lists a folder's
    /// contents before the folder itself, so the removals between two
    /// folder removals touch no folder another of them needs: they run in
    /// parallel, and each run of folder removals in order, after them.
    fn removals(&self, ops: &[&Op], tally: &mut Tally) {
        let is_rmdir = |op: &&Op| matches!(op, Op::Rmdir { .. });
        for part in ops.chunk_by(|a, b| is_rmdir(a) == is_rmdir(b)) {
            if is_rmdir(&part[0]) {
                self.serial(part, tally);
            } else {
                self.parallel(part, tally);
            }
            if tally.stopped {
                return;
            }
        }
    }

    /// Independent operations over `jobs` threads, each taking the next
    /// batch not yet taken (see `batches`).
    fn parallel(&self, ops: &[&Op], tally: &mut Tally) {
        let workers = match &self.target {
            Target::Replica(r) => r.workers(self.opts.jobs),
            Target::Remote(r) => r.workers(self.opts.jobs),
            _ => 1,
        };
        let workers = workers.max(1).min(ops.len());
        // Without file-system work threads gain nothing, and one thread
        // keeps a dry run's log in plan order.
        if workers <= 1 {
            return self.serial(ops, tally);
        }
        let batches = batches(ops);
        let next = AtomicUsize::new(0);
        let worker = || {
            let mut mine = Tally::default();
            while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                for op in &ops[batch.clone()] {
                    if self.stop.is_requested() {
                        mine.stopped = true;
                        return mine;
                    }
                    self.one(op, &mut mine);
                }
            }
            mine
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
            for handle in handles {
                match handle.join() {
                    Ok(mine) => tally.merge(mine),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        });
    }

    /// Carries out one operation, then logs and counts what it came to.
    fn one(&self, op: &Op, tally: &mut Tally) {
        fail_point!("applier::before_op");
        // The hooks' events, logged before the operation's own line.
        let mut before = Vec::new();
        let result = match &self.target {
            Target::DryRun { reader, .. } if self.opts.verify => {
                match verify_event(op, reader.as_ref()) {
                    Some(event) => Ok(Some(event)),
                    None => return,
                }
            }
            // Reported only where the attributes differ, as when applied.
            Target::DryRun { reader, .. } if matches!(op, Op::Attrs { .. }) => {
                let Op::Attrs { path, dir, .. } = op else {
                    return;
                };
                // Not there yet (a folder the plan moves first): unknown,
                // not reported.
                match reader.as_ref().map(|r| r.attrs_differ(path, *dir)) {
                    Some(Ok(true)) => Ok(done_event(op, None)),
                    Some(Ok(false) | Err(_)) | None => return,
                }
            }
            Target::DryRun { hooks, .. } => self
                .dry_run_hooks(hooks.as_ref(), op, &mut before)
                .map(|()| done_event(op, planned_bytes(op))),
            Target::Replica(replica) => execute(replica, op, tally, &mut before, self.chronic),
            Target::Remote(remote) => execute(remote, op, tally, &mut before, self.chronic),
            Target::Unavailable if op.phase() == Phase::Report => Ok(done_event(op, None)),
            Target::Unavailable => return,
        };
        let dry = self.opts.dry_run && !self.opts.verify;
        for event in before {
            tally.count(&event);
            (self.log)(event.dry_run(dry));
        }
        let event = match result {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                LogEvent::error(Some(op.path()), op_name(op), e).with_fact(Fact::OpDone(OpDone {
                    verb: Verb::Error,
                    write: writes(op),
                    bytes: 0,
                }))
            }
        };
        let failed = matches!(event.verb, Verb::Error | Verb::Skip);
        if failed && op.phase() != Phase::Report {
            tally.retry.extend(op.path().parent());
            if let Op::Move { from, .. } | Op::MoveDir { from, .. } = op {
                tally.retry.extend(from.parent());
            }
        }
        tally.count(&event);
        (self.log)(event.dry_run(dry));
    }
}

/// What `--verify` reports for `op`: the difference it stands for, as an
/// `error` with `op=verify`; `None` where it stands for none (a folder's
/// times put back after its contents, a temporary of ours).
fn verify_event(op: &Op, reader: Option<&ReplicaOps>) -> Option<LogEvent> {
    let what: std::borrow::Cow<'static, str> = match op {
        Op::Skip { .. } | Op::Warn { .. } | Op::Refuse { .. } => return done_event(op, None),
        Op::RemoveStale { .. } | Op::FinishDir { changed: false, .. } => return None,
        Op::Delete { .. } => "in the replica only".into(),
        Op::Rmdir { .. } => "folder in the replica only".into(),
        Op::Mkdir { .. } => "folder missing in the replica".into(),
        Op::Copy { .. } => "missing in the replica".into(),
        Op::Update { .. } => "content differs".into(),
        Op::Move { from, .. } => format!("missing in the replica, which has it at {from}").into(),
        Op::MoveDir { from, .. } => {
            format!("folder missing in the replica, which has it at {from}").into()
        }
        Op::Symlink { .. } => "symlink missing or pointing elsewhere".into(),
        Op::Link { to, .. } => format!("not a hard link of {to}, as in the source").into(),
        Op::SetMeta { .. } => "times, permissions or owner differ".into(),
        Op::FinishDir { changed: true, .. } => "folder's times, permissions or owner differ".into(),
        Op::Attrs { path, dir, .. } => match reader.map(|r| r.attrs_differ(path, *dir)) {
            Some(Ok(true)) => "extended attributes or ACLs differ".into(),
            _ => return None,
        },
    };
    let done = OpDone {
        verb: Verb::Error,
        write: false,
        bytes: 0,
    };
    Some(LogEvent::error(Some(op.path()), "verify", what).with_fact(Fact::OpDone(done)))
}

impl Run<'_> {
    /// In a dry run, asks the hooks what they would do before `op`, on the
    /// replica folder as it is (none when it or the entry's folder is not
    /// there: nothing to replace then).
    fn dry_run_hooks(
        &self,
        replica: Option<&Root>,
        op: &Op,
        events: &mut Vec<LogEvent>,
    ) -> Result<(), OpError> {
        let (Some(replica), Some(at)) = (replica, hook_at(op)) else {
            return Ok(());
        };
        let path = op.path();
        let Ok((dir, name)) = replica.open_parent(path) else {
            return Ok(());
        };
        let cx = HookCx {
            tick_start: self.tick_start,
            dry_run: true,
        };
        self.opts
            .hooks
            .before(at, &cx, dir.as_fd(), name, path, events)
            .map_err(|source| OpError::Hook {
                path: path.clone(),
                source,
            })
    }
}

/// The hook call an operation makes, if any (`ReplicaOps` makes the same).
fn hook_at(op: &Op) -> Option<HookAt> {
    match op {
        Op::Copy { .. } | Op::Update { .. } | Op::Symlink { .. } | Op::Link { .. } => {
            Some(HookAt::Replace)
        }
        Op::Delete { .. } => Some(HookAt::Delete),
        _ => None,
    }
}

/// Most files a batch holds, and the bytes past which it ends.
const BATCH_OPS: usize = 256;
const BATCH_BYTES: u64 = 8 << 20;

/// Splits the operations (in plan order, so siblings are together) into
/// runs of one folder's entries, cut at `BATCH_OPS` operations or
/// `BATCH_BYTES` bytes. Workers take whole runs: two threads creating files
/// in one folder mostly wait for each other on the folder's lock (the
/// kernel spins while it waits: a third of the CPU of a 100k-file initial
/// copy), while in two folders they work side by side. Large files still
/// spread over the workers, one or a few per run.
fn batches(ops: &[&Op]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, op) in ops.iter().enumerate() {
        let same_folder = folder_of(op.path()) == folder_of(ops[start].path());
        if i > start && (!same_folder || i - start >= BATCH_OPS || bytes >= BATCH_BYTES) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += planned_bytes(op).unwrap_or(0);
    }
    if start < ops.len() {
        out.push(start..ops.len());
    }
    out
}

/// The bytes of the path's folder, without allocating.
fn folder_of(path: &RelPath) -> &[u8] {
    let bytes = path.as_bytes();
    &bytes[..bytes.len() - path.name().len()]
}

/// Runs `op` on the replica; returns the event to log, if any. The hooks'
/// events go to `before`.
fn execute<R: Replica>(
    replica: &R,
    op: &Op,
    tally: &mut Tally,
    before: &mut Vec<LogEvent>,
    chronic: &HashSet<RelPath>,
) -> Result<Option<LogEvent>, OpError> {
    match op {
        Op::Skip { .. } | Op::Warn { .. } | Op::Refuse { .. } => {}
        Op::RemoveStale { path } => replica.remove_stale(path)?,
        Op::Delete { path } => replica.delete(path, before)?,
        Op::Rmdir { path } => replica.rmdir(path)?,
        Op::Mkdir { path, .. } => replica.mkdir(path)?,
        Op::Move { path, from, meta } => match replica.move_entry(from, path, Some(meta)) {
            Ok(()) => tally.moved.push((from.clone(), path.clone())),
            Err(e) => {
                // The new path must not wait for a move the replica
                // refuses (an immutable file, a busy name): copied
                // instead, the old file left to a later sync.
                before.push(
                    LogEvent::error(Some(path), "move", e).with_fact(Fact::OpDone(OpDone {
                        verb: Verb::Error,
                        write: false,
                        bytes: 0,
                    })),
                );
                let copy = Op::Copy {
                    path: path.clone(),
                    meta: *meta,
                };
                return execute(replica, &copy, tally, before, chronic);
            }
        },
        Op::MoveDir { path, from } => {
            replica.move_entry(from, path, None)?;
            tally.moved.push((from.clone(), path.clone()));
        }
        Op::Copy { path, meta } | Op::Update { path, meta } => {
            let written = match op {
                Op::Update { .. } => replica.update(path, meta, before)?,
                _ => replica.copy(path, meta, before)?,
            };
            // A source that vanished or changed is a skip, not a failure.
            return Ok(match written {
                Copied::Written { bytes, racy } => {
                    // A racy copy is compared again at the next tick, its
                    // folder listed again then even in watch mode.
                    if racy {
                        tally.racy.push(path.clone());
                        tally.retry.extend(path.parent());
                    } else {
                        tally.settled.push(path.clone());
                    }
                    done_event(op, Some(bytes))
                }
                Copied::Skipped { reason } if reason == CHANGED_WHILE_COPIED => {
                    tally.changing.push(path.clone());
                    Some(match chronic.contains(path) {
                        false => LogEvent::op(Verb::Skip, path).with_str("reason", reason),
                        true => LogEvent::error(
                            Some(path),
                            op_name(op),
                            format!("{reason} at {CHRONIC} syncs in a row: it is always being written (a database, a VM image?), so the replica has an old version or none; it is tried again at each sync"),
                        ),
                    })
                }
                Copied::Skipped { reason } => {
                    Some(LogEvent::op(Verb::Skip, path).with_str("reason", reason))
                }
            });
        }
        Op::Symlink { path, target, meta } => replica.symlink(path, target, meta, before)?,
        Op::Link { path, to, meta } => match replica.link(path, to, meta, before) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                return Ok(Some(
                    LogEvent::op(Verb::Skip, path).with_str("reason", reason),
                ))
            }
            // The replica cannot link these (a filesystem without hard
            // links, a file at its most links): a copy of its own.
            Err(e)
                if matches!(
                    e.errno(),
                    Some(Errno::PERM | Errno::MLINK | Errno::OPNOTSUPP)
                ) =>
            {
                let copy = Op::Update {
                    path: path.clone(),
                    meta: *meta,
                };
                return execute(replica, &copy, tally, before, chronic);
            }
            Err(e) => return Err(e),
        },
        Op::Attrs { path, dir, meta } => {
            if !replica.attrs(path, *dir, meta)? {
                return Ok(None);
            }
        }
        Op::SetMeta { path, link, meta } => replica.set_meta(path, *link, meta)?,
        Op::FinishDir {
            path,
            meta,
            changed,
            created,
        } => {
            // Its attributes changed with its contents (its mtime moved
            // too, so `changed` did not say): that is a `meta` too.
            if replica.finish_dir(path, meta)? && !changed && !created {
                return Ok(Some(LogEvent::op(Verb::Meta, path).with_fact(
                    Fact::OpDone(OpDone {
                        verb: Verb::Meta,
                        write: false,
                        bytes: 0,
                    }),
                )));
            }
        }
    }
    Ok(done_event(op, None))
}

/// What a dry run reports as written: the size the scan saw.
fn planned_bytes(op: &Op) -> Option<u64> {
    match op {
        Op::Copy { meta, .. } | Op::Update { meta, .. } => Some(meta.size),
        _ => None,
    }
}

/// The log entry of `op` once done (`bytes` for copies); `None` for an
/// operation that is not logged.
fn done_event(op: &Op, bytes: Option<u64>) -> Option<LogEvent> {
    let path = op.path();
    let event = match op {
        Op::Skip { reason, .. } => LogEvent::op(Verb::Skip, path).with_str("reason", reason),
        Op::Warn { reason, .. } => LogEvent::op(Verb::Warn, path).with_str("reason", reason),
        Op::Refuse { op, reason, .. } => LogEvent::error(Some(path), op, reason),
        Op::RemoveStale { .. } => LogEvent::op(Verb::Detail("stale"), path),
        Op::Delete { .. } => LogEvent::op(Verb::Delete, path),
        Op::Rmdir { .. } => LogEvent::op(Verb::Rmdir, path),
        Op::Mkdir { .. } => LogEvent::op(Verb::Mkdir, path),
        Op::Move { from, .. } | Op::MoveDir { from, .. } => {
            LogEvent::op(Verb::Move, path).with("from", LogValue::Bytes(from.as_bytes().into()))
        }
        Op::Copy { .. } => LogEvent::op(Verb::Copy, path).with_u64("bytes", bytes.unwrap_or(0)),
        Op::Update { .. } => LogEvent::op(Verb::Update, path).with_u64("bytes", bytes.unwrap_or(0)),
        Op::Symlink { target, .. } => {
            LogEvent::op(Verb::Symlink, path).with("target", LogValue::Bytes(target.clone()))
        }
        Op::Link { to, .. } => {
            LogEvent::op(Verb::Link, path).with("to", LogValue::Bytes(to.as_bytes().into()))
        }
        Op::SetMeta { .. } | Op::Attrs { .. } => LogEvent::op(Verb::Meta, path),
        Op::FinishDir { changed: true, .. } => LogEvent::op(Verb::Meta, path),
        Op::FinishDir { changed: false, .. } => return None,
    };
    let done = OpDone {
        verb: event.verb,
        write: writes(op),
        bytes: bytes.unwrap_or(0),
    };
    Some(event.with_fact(Fact::OpDone(done)))
}

/// The operation writes a file's content.
fn writes(op: &Op) -> bool {
    matches!(op, Op::Copy { .. } | Op::Update { .. })
}

/// The `op` key of an `error` entry: the verb the operation would have
/// logged.
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Skip { .. } => "skip",
        Op::Warn { .. } => "warn",
        Op::Refuse { op, .. } => op,
        Op::RemoveStale { .. } | Op::Delete { .. } => "delete",
        Op::Rmdir { .. } => "rmdir",
        Op::Mkdir { .. } => "mkdir",
        Op::Move { .. } | Op::MoveDir { .. } => "move",
        Op::Copy { .. } => "copy",
        Op::Update { .. } => "update",
        Op::Symlink { .. } => "symlink",
        Op::Link { .. } => "link",
        Op::SetMeta { .. } | Op::FinishDir { .. } | Op::Attrs { .. } => "meta",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::model::{Meta, TEMP_PREFIX};
    use crate::contract::options::MaxDelete;
    use crate::contract::relpath::RelPath;
    use crate::testing::{meta, rel, trees, wait_until, Collector};
    use actix::Actor;
    use filetime::FileTime;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::sync::Mutex;

    /// A source file with content, mode and a nanosecond mtime.
    fn source_file(path: &Path, content: &[u8], perm: u32, mtime: (i64, u32)) -> Meta {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(perm)).unwrap();
        filetime::set_file_mtime(path, FileTime::from_unix_time(mtime.0, mtime.1)).unwrap();
        meta(path)
    }

    fn run(plan: &Plan, opts: &SyncOptions) -> (TickOutcome, Vec<LogEvent>) {
        run_with_stop(plan, opts, &StopFlag::new(), |_| {})
    }

    fn run_with_stop(
        plan: &Plan,
        opts: &SyncOptions,
        stop: &StopFlag,
        also: impl Fn(&LogEvent) + Sync,
    ) -> (TickOutcome, Vec<LogEvent>) {
        let events = Mutex::new(Vec::new());
        let log = |e: LogEvent| {
            also(&e);
            events.lock().unwrap().push(e);
        };
        let outcome = apply(plan, opts, stop, &log);
        (outcome, events.into_inner().unwrap())
    }

    fn plan(ops: Vec<Op>) -> Plan {
        Plan {
            ops,
            guard: None,
            roots: None,
            attrs_sweep: false,
        }
    }

    #[test]
    fn a_file_skipped_as_changing_three_ticks_in_a_row_is_an_error() {
        // A /proc file reports size 0 yet reads as more: it is skipped as
        // changed while being copied every time.
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = SyncOptions::new("/proc/self".into(), tmp.path().to_path_buf());
        opts.jobs = 1;
        let status = rel("status");
        let p = plan(vec![Op::Copy {
            path: status.clone(),
            meta: crate::fs::root::meta_of(&rustix::fs::stat("/proc/self/status").unwrap()),
        }]);
        let mut streak = HashMap::new();
        let mut verbs = Vec::new();
        for _ in 0..4 {
            let chronic = chronic(&streak);
            let at = Tick {
                roots: None,
                start: SystemTime::now(),
                chronic: &chronic,
            };
            let events = Mutex::new(Vec::new());
            let log = |e: LogEvent| events.lock().unwrap().push(e);
            let (outcome, changing) = apply_at(&p, &opts, at, &StopFlag::new(), &log);
            streak = streaks(&streak, changing);
            let verb = events.lock().unwrap()[0].verb;
            verbs.push((verb, outcome.errors));
        }
        let (skip, error) = ((Verb::Skip, 0), (Verb::Error, 1));
        assert_eq!(verbs, [skip, skip, error, error]);
        // Copied at last (or gone): the count starts over.
        assert!(chronic(&streaks(&streak, Vec::new())).is_empty());
    }

    fn verbs(events: &[LogEvent]) -> Vec<(&'static str, String)> {
        events
            .iter()
            .map(|e| {
                let path = e.path.as_ref().map(|p| p.to_string()).unwrap_or_default();
                (e.verb.as_str(), path)
            })
            .collect()
    }

    fn mtime_of(path: &Path) -> (i64, i64) {
        let m = fs::symlink_metadata(path).unwrap();
        (m.mtime(), m.mtime_nsec())
    }

    fn no_temporaries(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .as_encoded_bytes()
                .starts_with(TEMP_PREFIX)
        })
    }

    #[test]
    fn batches_hold_one_folder_and_end_at_a_size() {
        let copy = |path: &str, size: u64| Op::Copy {
            path: RelPath::from_str_lossy(path),
            meta: Meta {
                size,
                ..Meta::default()
            },
        };
        let mut ops = vec![
            copy("a/1", 1),
            copy("a/2", 1),
            copy("a/sub/3", 1),
            copy("b", 1),
            copy("c", 1),
            copy("d/big1", BATCH_BYTES),
            copy("d/big2", BATCH_BYTES),
        ];
        ops.extend((0..300).map(|i| copy(&format!("e/{i:03}"), 1)));
        let refs: Vec<&Op> = ops.iter().collect();
        let got: Vec<_> = batches(&refs)
            .into_iter()
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(
            got,
            [(0, 2), (2, 3), (3, 5), (5, 6), (6, 7), (7, 263), (263, 307)]
        );
    }

    #[test]
    fn applier_copies_content_times_and_mode_then_finishes_the_folder() {
        let t = trees();
        fs::create_dir(t.src.join("a")).unwrap();
        let fm = source_file(
            &t.src.join("a/f.txt"),
            b"hello",
            0o640,
            (1_600_000_000, 123_456_789),
        );
        fs::set_permissions(t.src.join("a"), fs::Permissions::from_mode(0o750)).unwrap();
        filetime::set_file_mtime(t.src.join("a"), FileTime::from_unix_time(1_500_000_000, 42))
            .unwrap();
        let dm = meta(&t.src.join("a"));
        let p = plan(vec![
            Op::Mkdir {
                path: rel("a"),
                meta: dm,
            },
            Op::Copy {
                path: rel("a/f.txt"),
                meta: fm,
            },
            Op::FinishDir {
                path: rel("a"),
                meta: dm,
                changed: false,
                created: true,
            },
        ]);
        let (out, events) = run(&p, &t.opts);
        assert_eq!(
            verbs(&events),
            [("mkdir", "a".into()), ("copy", "a/f.txt".into())]
        );
        assert_eq!(events[1].field("bytes"), Some(&LogValue::U64(5)));
        assert_eq!(
            (out.counts.mkdir, out.counts.copy, out.bytes, out.errors),
            (1, 1, 5, 0)
        );
        assert!(!out.interrupted && !out.guard_tripped);
        let f = t.dst.join("a/f.txt");
        assert_eq!(fs::read(&f).unwrap(), b"hello");
        assert_eq!(mtime_of(&f), (1_600_000_000, 123_456_789));
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
        let d = t.dst.join("a");
        assert_eq!(mtime_of(&d), (1_500_000_000, 42));
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o750);
        assert!(no_temporaries(&d));
    }

    #[test]
    fn applier_update_replaces_content_and_leaves_no_temporary() {
        let t = trees();
        let m = source_file(&t.src.join("f"), b"new content", 0o644, (1_700_000_000, 1));
        fs::write(t.dst.join("f"), b"old").unwrap();
        let old_ino = fs::metadata(t.dst.join("f")).unwrap().ino();
        let (out, events) = run(
            &plan(vec![Op::Update {
                path: rel("f"),
                meta: m,
            }]),
            &t.opts,
        );
        assert_eq!(verbs(&events), [("update", "f".into())]);
        assert_eq!(events[0].field("bytes"), Some(&LogValue::U64(11)));
        assert_eq!((out.counts.update, out.bytes), (1, 11));
        assert_eq!(fs::read(t.dst.join("f")).unwrap(), b"new content");
        assert_ne!(fs::metadata(t.dst.join("f")).unwrap().ino(), old_ino);
        assert!(no_temporaries(&t.dst));
    }

    #[test]
    fn applier_set_meta_keeps_the_inode() {
        let t = trees();
        let m = source_file(
            &t.src.join("f"),
            b"same",
            0o604,
            (1_650_000_000, 999_999_999),
        );
        fs::write(t.dst.join("f"), b"same").unwrap();
        let ino = fs::metadata(t.dst.join("f")).unwrap().ino();
        let op = Op::SetMeta {
            path: rel("f"),
            link: false,
            meta: m,
        };
        let (out, events) = run(&plan(vec![op]), &t.opts);
        assert_eq!(verbs(&events), [("meta", "f".into())]);
        assert_eq!(out.counts.meta, 1);
        let rm = fs::metadata(t.dst.join("f")).unwrap();
        assert_eq!((rm.ino(), rm.mode() & 0o7777), (ino, 0o604));
        assert_eq!(mtime_of(&t.dst.join("f")), (1_650_000_000, 999_999_999));
    }

    #[test]
    fn applier_set_meta_on_a_link_sets_its_own_times() {
        let t = trees();
        symlink("t", t.src.join("l")).unwrap();
        let when = FileTime::from_unix_time(1_400_000_000, 7);
        filetime::set_symlink_file_times(t.src.join("l"), when, when).unwrap();
        symlink("t", t.dst.join("l")).unwrap();
        let op = Op::SetMeta {
            path: rel("l"),
            link: true,
            meta: meta(&t.src.join("l")),
        };
        let (out, _) = run(&plan(vec![op]), &t.opts);
        assert_eq!((out.counts.meta, out.errors), (1, 0));
        assert_eq!(mtime_of(&t.dst.join("l")), (1_400_000_000, 7));
    }

    #[test]
    fn applier_creates_and_retargets_symlinks() {
        let t = trees();
        let m = Meta {
            mtime: crate::contract::model::Timestamp::new(1_300_000_000, 5),
            ..Meta::default()
        };
        let make = |target: &str| Op::Symlink {
            path: rel("l"),
            target: target.as_bytes().into(),
            meta: m,
        };
        let (out, events) = run(&plan(vec![make("nowhere/at/all")]), &t.opts);
        assert_eq!((out.counts.symlink, out.errors), (1, 0));
        assert_eq!(
            events[0].field("target"),
            Some(&LogValue::Bytes(b"nowhere/at/all".to_vec().into()))
        );
        assert_eq!(
            fs::read_link(t.dst.join("l")).unwrap(),
            Path::new("nowhere/at/all")
        );
        assert_eq!(mtime_of(&t.dst.join("l")), (1_300_000_000, 5));
        let (out, _) = run(&plan(vec![make("../outside")]), &t.opts);
        assert_eq!((out.counts.symlink, out.errors), (1, 0));
        assert_eq!(
            fs::read_link(t.dst.join("l")).unwrap(),
            Path::new("../outside")
        );
        assert!(no_temporaries(&t.dst));
    }

    #[test]
    fn applier_deletes_children_then_folders() {
        let t = trees();
        fs::create_dir(t.dst.join("d")).unwrap();
        fs::write(t.dst.join("d/f"), b"x").unwrap();
        symlink("f", t.dst.join("d/l")).unwrap();
        let p = plan(vec![
            Op::Delete { path: rel("d/f") },
            Op::Delete { path: rel("d/l") },
            Op::Delete {
                path: rel("d/already-gone"),
            },
            Op::Rmdir { path: rel("d") },
        ]);
        let (out, events) = run(&p, &t.opts);
        assert_eq!(events.len(), 4);
        assert_eq!((out.counts.delete, out.counts.rmdir, out.errors), (3, 1, 0));
        assert!(!t.dst.join("d").exists());
    }

    #[test]
    fn removals_run_in_parallel_and_each_folder_goes_after_its_contents() {
        let t = trees();
        let mut opts = t.opts.clone();
        opts.jobs = 4;
        let mut ops = Vec::new();
        // Deepest first, as the Differ plans them: a/b's files, a/b,
        // a's files, a, then c's files and c.
        for (folder, files) in [("a/b", 30), ("a", 30), ("c", 300)] {
            fs::create_dir_all(t.dst.join(folder)).unwrap();
            for i in 0..files {
                let path = format!("{folder}/f{i}");
                fs::write(t.dst.join(&path), b"x").unwrap();
                ops.push(Op::Delete { path: rel(&path) });
            }
            ops.push(Op::Rmdir { path: rel(folder) });
        }
        let (out, events) = run(&plan(ops), &opts);
        assert_eq!(
            (out.counts.delete, out.counts.rmdir, out.errors),
            (360, 3, 0)
        );
        assert!(fs::read_dir(&t.dst).unwrap().next().is_none());
        let paths: Vec<String> = events
            .iter()
            .filter_map(|e| e.path.as_ref().map(|p| p.to_string()))
            .collect();
        for folder in ["a/b", "a", "c"] {
            let at = paths.iter().position(|p| p == folder).unwrap();
            let inside = format!("{folder}/");
            assert!(
                paths[at..].iter().all(|p| !p.starts_with(&inside)),
                "{folder} logged before all its contents"
            );
        }
    }

    #[test]
    fn applier_skips_a_source_that_vanished_or_changed() {
        let t = trees();
        let other = source_file(&t.src.join("other"), b"x", 0o644, (1, 0));
        let m = source_file(&t.src.join("f"), b"x", 0o644, (1, 0));
        fs::create_dir(t.src.join("now-a-folder")).unwrap();
        let p = plan(vec![
            Op::Copy {
                path: rel("gone"),
                meta: m,
            },
            Op::Copy {
                path: rel("gone-folder/f"),
                meta: m,
            },
            Op::Copy {
                path: rel("f"),
                meta: Meta { id: other.id, ..m },
            },
            Op::Update {
                path: rel("now-a-folder"),
                meta: m,
            },
        ]);
        let (out, events) = run(&p, &t.opts);
        assert_eq!((out.counts.skip, out.counts.copy, out.errors), (4, 0, 0));
        // Files run in parallel: find each reason by its path.
        let reason = |path: &str| {
            let e = events.iter().find(|e| e.path == Some(rel(path))).unwrap();
            assert_eq!(e.verb, Verb::Skip);
            e.field("reason").unwrap().to_string()
        };
        assert_eq!(reason("gone"), "vanished");
        assert_eq!(reason("gone-folder/f"), "vanished");
        assert_eq!(reason("f"), "replaced by another file since the scan");
        assert_eq!(reason("now-a-folder"), "changed type: now a folder");
        assert_eq!(fs::read_dir(&t.dst).unwrap().count(), 0);
        // Each skip's folder is to be listed again at the next tick.
        let mut retry: Vec<String> = out.retry.iter().map(|r| r.to_string()).collect();
        retry.sort();
        assert_eq!(retry, [".", ".", ".", "gone-folder"]);
    }

    #[test]
    fn applier_never_writes_through_a_replica_folder_swapped_for_a_link() {
        let t = trees();
        let m = source_file(&t.src.join("f"), b"x", 0o644, (1, 0));
        fs::create_dir(t.src.join("a")).unwrap();
        fs::copy(t.src.join("f"), t.src.join("a/f")).unwrap();
        let am = meta(&t.src.join("a/f"));
        fs::write(t.outside.join("victim"), b"keep").unwrap();
        symlink(&t.outside, t.dst.join("a")).unwrap();
        let p = plan(vec![
            Op::Delete {
                path: rel("a/victim"),
            },
            Op::Mkdir {
                path: rel("a/sub"),
                meta: m,
            },
            Op::Copy {
                path: rel("a/f"),
                meta: am,
            },
            Op::Symlink {
                path: rel("a/l"),
                target: b"x".to_vec().into(),
                meta: m,
            },
            Op::SetMeta {
                path: rel("a/victim"),
                link: false,
                meta: m,
            },
        ]);
        let (out, events) = run(&p, &t.opts);
        assert_eq!(out.errors, 5);
        assert_eq!(out.counts.changes(), 0);
        let mut ops: Vec<String> = events
            .iter()
            .map(|e| e.field("op").unwrap().to_string())
            .collect();
        // The last three run in parallel, in any order.
        ops[2..].sort();
        assert_eq!(ops, ["delete", "mkdir", "copy", "meta", "symlink"]);
        let names: Vec<_> = fs::read_dir(&t.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"]);
        assert_eq!(fs::read(t.outside.join("victim")).unwrap(), b"keep");
    }

    #[test]
    fn applier_failing_copy_leaves_no_temporary() {
        let t = trees();
        let m = source_file(&t.src.join("f"), b"x", 0o644, (1, 0));
        // A non-empty folder at the final name makes the rename fail.
        fs::create_dir(t.dst.join("f")).unwrap();
        fs::write(t.dst.join("f/inner"), b"").unwrap();
        let (out, events) = run(
            &plan(vec![Op::Update {
                path: rel("f"),
                meta: m,
            }]),
            &t.opts,
        );
        assert_eq!((out.errors, out.counts.update), (1, 0));
        assert_eq!(events[0].field("op"), Some(&LogValue::Str("update".into())));
        assert!(no_temporaries(&t.dst));
    }

    #[test]
    fn applier_unreadable_source_is_an_error() {
        if rustix::process::geteuid().is_root() {
            return; // permission bits do not deny root
        }
        let t = trees();
        let m = source_file(&t.src.join("f"), b"x", 0o000, (1, 0));
        let (out, events) = run(
            &plan(vec![Op::Copy {
                path: rel("f"),
                meta: m,
            }]),
            &t.opts,
        );
        assert_eq!(out.errors, 1);
        assert_eq!(events[0].field("op"), Some(&LogValue::Str("copy".into())));
        assert!(no_temporaries(&t.dst));
    }

    #[test]
    fn applier_removes_stale_temporaries_as_detail_only() {
        let t = trees();
        let stale = ".treesync-tmp-00000000000000aa-2";
        fs::write(t.dst.join(stale), b"partial").unwrap();
        let p = plan(vec![Op::RemoveStale { path: rel(stale) }]);
        let (out, events) = run(&p, &t.opts);
        assert_eq!(verbs(&events), [("stale", stale.into())]);
        assert_eq!((out.counts.changes(), out.errors), (0, 0));
        assert!(!t.dst.join(stale).exists());
    }

    #[test]
    fn a_replica_root_other_than_the_one_scanned_gets_nothing() {
        let t = trees();
        let m = source_file(&t.src.join("f"), b"data", 0o644, (1, 0));
        let mut p = plan(vec![Op::Copy {
            path: rel("f"),
            meta: m,
        }]);
        let id = |path: &std::path::Path| {
            let st = std::fs::metadata(path).unwrap();
            crate::contract::model::FileId {
                dev: std::os::unix::fs::MetadataExt::dev(&st),
                ino: std::os::unix::fs::MetadataExt::ino(&st),
            }
        };
        // Scanned: another folder than the one now at the replica's path.
        p.roots = Some(RootIds {
            source: id(&t.src),
            replica: id(&t.src),
        });
        let (out, events) = run(&p, &t.opts);
        assert_eq!((out.counts.copy, out.errors), (0, 1));
        assert!(out.unapplied, "the next tick must walk everything");
        assert_eq!(events[0].field("op"), Some(&LogValue::Str("apply".into())));
        assert!(!t.dst.join("f").exists());
        // Twin: the very roots scanned.
        p.roots = Some(RootIds {
            source: id(&t.src),
            replica: id(&t.dst),
        });
        let (out, _) = run(&p, &t.opts);
        assert_eq!((out.counts.copy, out.errors), (1, 0));
        assert!(!out.unapplied);
    }

    #[test]
    fn applier_logs_the_guard_first_and_reports() {
        let t = trees();
        let p = Plan {
            ops: vec![
                Op::Warn {
                    path: rel("w"),
                    reason: "kept".into(),
                },
                Op::Skip {
                    path: rel("s"),
                    reason: "fifo".into(),
                },
                Op::Refuse {
                    path: rel("r"),
                    op: "delete",
                    reason: "no".into(),
                },
            ],
            guard: Some(GuardTrip {
                would_delete: 30,
                managed: 40,
                limit: MaxDelete::Percent(50),
            }),
            roots: None,
            attrs_sweep: false,
        };
        let (out, events) = run(&p, &t.opts);
        assert_eq!(events[0].verb, Verb::Error);
        assert_eq!(events[0].path, None);
        assert_eq!(events[0].field("op"), Some(&LogValue::Str("guard".into())));
        assert_eq!(
            events[0].field("error"),
            Some(&LogValue::Str(
                "would delete 30 of 40 entries (limit 50%): deletions withheld".into()
            ))
        );
        assert_eq!(
            verbs(&events[1..]),
            [
                ("warn", "w".into()),
                ("skip", "s".into()),
                ("error", "r".into())
            ]
        );
        assert_eq!(events[3].field("op"), Some(&LogValue::Str("delete".into())));
        assert!(out.guard_tripped);
        // The guard's entry and the refusal: two errors.
        assert_eq!((out.counts.warn, out.counts.skip, out.errors), (1, 1, 2));
    }

    #[test]
    fn applier_dry_run_touches_nothing_and_logs_dry_run() {
        let t = trees();
        let m = source_file(&t.src.join("f"), b"12345678", 0o644, (1, 0));
        let mut opts = t.opts.clone();
        opts.dry_run = true;
        opts.replica = t.dst.join("missing");
        let p = plan(vec![
            Op::RemoveStale {
                path: rel(".treesync-tmp-9"),
            },
            Op::Delete { path: rel("old") },
            Op::Mkdir {
                path: rel("d"),
                meta: m,
            },
            Op::Copy {
                path: rel("d/f"),
                meta: m,
            },
            Op::Symlink {
                path: rel("l"),
                target: b"f".to_vec().into(),
                meta: m,
            },
            Op::FinishDir {
                path: rel("d"),
                meta: m,
                changed: true,
                created: false,
            },
        ]);
        let (out, events) = run(&p, &opts);
        assert!(events.iter().all(|e| e.dry_run));
        assert_eq!(
            verbs(&events).iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            ["stale", "delete", "mkdir", "copy", "symlink", "meta"]
        );
        assert_eq!(out.bytes, 8);
        assert_eq!(out.counts.changes(), 5);
        assert!(!opts.replica.exists());
        assert_eq!(fs::read_dir(&t.dst).unwrap().count(), 0);
    }

    #[test]
    fn applier_stop_flag_starts_nothing_new() {
        let t = trees();
        for n in ["a", "b", "c"] {
            fs::write(t.dst.join(n), b"").unwrap();
        }
        let p = plan(vec![
            Op::Delete { path: rel("a") },
            Op::Delete { path: rel("b") },
            Op::Mkdir {
                path: rel("c2"),
                meta: Meta::default(),
            },
        ]);
        let stop = StopFlag::new();
        let (out, events) = run_with_stop(&p, &t.opts, &stop, |_| stop.request());
        assert_eq!(verbs(&events), [("delete", "a".into())]);
        assert!(out.interrupted);
        assert!(t.dst.join("b").exists() && !t.dst.join("c2").exists());

        // In the parallel phase too: nothing starts once the flag is up.
        let stop = StopFlag::new();
        stop.request();
        let m = source_file(&t.src.join("f"), b"x", 0o644, (1, 0));
        let p = plan(vec![
            Op::Copy {
                path: rel("f"),
                meta: m
            };
            4
        ]);
        let (out, events) = run_with_stop(&p, &t.opts, &stop, |_| {});
        assert!(events.is_empty() && out.interrupted);
        assert!(!t.dst.join("f").exists());
    }

    #[test]
    fn applier_copies_many_files_in_parallel() {
        let t = trees();
        let mut opts = t.opts.clone();
        opts.jobs = 4;
        let ops = (0..40)
            .map(|i| {
                let name = format!("f{i}");
                let m = source_file(&t.src.join(&name), name.as_bytes(), 0o644, (i, 0));
                Op::Copy {
                    path: rel(&name),
                    meta: m,
                }
            })
            .collect();
        let (out, _) = run(&plan(ops), &opts);
        assert_eq!((out.counts.copy, out.errors), (40, 0));
        for i in 0..40 {
            let name = format!("f{i}");
            assert_eq!(fs::read(t.dst.join(&name)).unwrap(), name.as_bytes());
        }
        assert!(no_temporaries(&t.dst));
    }

    #[test]
    fn applier_keeps_setuid_only_with_the_owner() {
        let t = trees();
        let m = source_file(&t.src.join("f"), b"x", 0o4755, (1, 0));
        let (out, _) = run(
            &plan(vec![Op::Copy {
                path: rel("f"),
                meta: m,
            }]),
            &t.opts,
        );
        assert_eq!(out.errors, 0);
        assert_eq!(
            fs::metadata(t.dst.join("f")).unwrap().mode() & 0o7777,
            0o755
        );
        if !rustix::process::geteuid().is_root() {
            return; // only root may give files away
        }
        rustix::fs::chown(
            t.src.join("f").as_path(),
            Some(rustix::fs::Uid::from_raw(4321)),
            Some(rustix::fs::Gid::from_raw(4322)),
        )
        .unwrap();
        fs::set_permissions(t.src.join("f"), fs::Permissions::from_mode(0o4755)).unwrap();
        let m = meta(&t.src.join("f"));
        let mut opts = t.opts.clone();
        opts.preserve_owner = true;
        let (out, _) = run(
            &plan(vec![Op::Update {
                path: rel("f"),
                meta: m,
            }]),
            &opts,
        );
        assert_eq!(out.errors, 0);
        let rm = fs::metadata(t.dst.join("f")).unwrap();
        assert_eq!(
            (rm.uid(), rm.gid(), rm.mode() & 0o7777),
            (4321, 4322, 0o4755)
        );
    }

    #[test]
    fn applier_reports_a_missing_replica_root_once() {
        let t = trees();
        let mut opts = t.opts.clone();
        opts.replica = t.dst.join("missing");
        let p = plan(vec![
            Op::Skip {
                path: rel("s"),
                reason: "socket".into(),
            },
            Op::Delete { path: rel("x") },
        ]);
        let (out, events) = run(&p, &opts);
        assert_eq!(
            verbs(&events),
            [("error", String::new()), ("skip", "s".into())]
        );
        assert_eq!(out.errors, 1);
        assert!(!opts.replica.exists());
    }

    #[actix_rt::test]
    async fn applier_actor_applies_and_reports_the_tick() {
        let t = trees();
        let m = source_file(&t.src.join("f"), b"abc", 0o644, (1, 0));
        let (log, logged) = Collector::<LogEvent>::start();
        let applier = Applier::new(Arc::new(t.opts.clone()), log.clone().recipient());
        let (done, finished) = Collector::<crate::contract::messages::TickFinished>::start();
        let applier = crate::contract::stage::StageActor::new(
            applier,
            None,
            done.recipient(),
            log.recipient(),
            StopFlag::new(),
        )
        .start();
        let mut cx = TickCx::new(7);
        cx.errors = 2;
        let p = plan(vec![Op::Copy {
            path: rel("f"),
            meta: m,
        }]);
        applier.do_send(crate::contract::messages::Batch::whole(
            cx,
            PlanMade {
                plan: p,
                roots: crate::testing::roots(&t.src, &t.dst),
            },
        ));
        wait_until(|| !finished.lock().unwrap().is_empty()).await;
        let got = finished.lock().unwrap().remove(0);
        assert_eq!(got.cx.seq, 7);
        assert_eq!(
            (
                got.outcome.counts.copy,
                got.outcome.bytes,
                got.outcome.errors
            ),
            (1, 3, 2)
        );
        wait_until(|| !logged.lock().unwrap().is_empty()).await;
        assert_eq!(logged.lock().unwrap()[0].verb, Verb::Copy);
        assert_eq!(fs::read(t.dst.join("f")).unwrap(), b"abc");
    }
    /// Copies a file twice with `caps`; the events of each apply.
    fn copy_twice_on(
        caps: crate::fs::replica_fs::FsCaps,
    ) -> (tempfile::TempDir, Vec<Vec<LogEvent>>) {
        use crate::contract::plan::{Op, Plan};
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        let mut opts = SyncOptions::new(src.clone(), dst);
        opts.replica_fs = crate::fs::replica_fs::ReplicaFs::new(caps);
        let mut runs = Vec::new();
        for name in ["a", "b"] {
            let path = src.join(name);
            std::fs::write(&path, b"content").unwrap();
            let st = rustix::fs::stat(&path).unwrap();
            let plan = Plan {
                ops: vec![Op::Copy {
                    path: RelPath::from_str_lossy(name),
                    meta: crate::fs::root::meta_of(&st),
                }],
                ..Plan::default()
            };
            let events = std::sync::Mutex::new(Vec::new());
            let log = |e: LogEvent| events.lock().unwrap().push(e);
            crate::stages::applier::apply(
                &plan,
                &opts,
                &crate::contract::stop::StopFlag::new(),
                &log,
            );
            runs.push(events.into_inner().unwrap());
        }
        (tmp, runs)
    }

    #[test]
    fn modes_the_replica_cannot_keep_are_one_warn_a_run_and_the_copy_stays() {
        let caps = crate::fs::replica_fs::FsCaps {
            keeps_perms: false,
            ..crate::fs::replica_fs::FsCaps::default()
        };
        let (tmp, runs) = copy_twice_on(caps);
        let verbs =
            |events: &[LogEvent]| -> Vec<&str> { events.iter().map(|e| e.verb.as_str()).collect() };
        assert_eq!(verbs(&runs[0]), ["copy", "warn"]);
        assert!(runs[0][1]
            .field("reason")
            .is_some_and(|r| r.to_string().contains("permission bits")));
        assert_eq!(verbs(&runs[1]), ["copy"]);
        for name in ["a", "b"] {
            assert_eq!(
                std::fs::read(tmp.path().join("dst").join(name)).unwrap(),
                b"content"
            );
        }
        // Where modes stick, nothing is said.
        let (_tmp, runs) = copy_twice_on(crate::fs::replica_fs::FsCaps::default());
        assert_eq!(verbs(&runs[0]), ["copy"]);
    }

    /// A hook that notes every call, and refuses the paths it is told to.
    struct Probe {
        refuse: &'static str,
    }

    impl crate::contract::hooks::OpHook for Probe {
        fn before_replace(
            &self,
            cx: &HookCx,
            _dir: rustix::fd::BorrowedFd<'_>,
            name: &[u8],
            path: &RelPath,
        ) -> crate::contract::hooks::HookResult {
            self.call("replace", cx, name, path)
        }

        fn before_delete(
            &self,
            cx: &HookCx,
            _dir: rustix::fd::BorrowedFd<'_>,
            name: &[u8],
            path: &RelPath,
        ) -> crate::contract::hooks::HookResult {
            self.call("delete", cx, name, path)
        }
    }

    impl Probe {
        fn call(
            &self,
            what: &'static str,
            cx: &HookCx,
            name: &[u8],
            path: &RelPath,
        ) -> crate::contract::hooks::HookResult {
            assert_eq!(name, path.name());
            if path.to_string() == self.refuse {
                let e = std::io::Error::other("refused by the probe");
                return Err(crate::contract::hooks::HookError::new("probe", e));
            }
            let event =
                LogEvent::op(Verb::Detail(what), path).with("dry", LogValue::Bool(cx.dry_run));
            Ok(Some(event))
        }
    }

    fn with_probe(opts: &SyncOptions, refuse: &'static str) -> SyncOptions {
        let mut opts = opts.clone();
        opts.hooks.push(Arc::new(Probe { refuse }));
        opts
    }

    #[test]
    fn applier_hooks_run_before_replacements_and_deletions_and_log_first() {
        let t = trees();
        fs::create_dir(t.dst.join("d")).unwrap();
        let m = source_file(&t.src.join("f"), b"new", 0o644, (1_700_000_000, 1));
        fs::write(t.dst.join("f"), b"old").unwrap();
        fs::write(t.dst.join("gone"), b"x").unwrap();
        let lm = meta(&t.dst.join("d"));
        let p = plan(vec![
            Op::Delete { path: rel("gone") },
            Op::Rmdir { path: rel("d") },
            Op::Update {
                path: rel("f"),
                meta: m,
            },
            Op::Symlink {
                path: rel("l"),
                target: (*b"f").into(),
                meta: lm,
            },
        ]);
        let opts = with_probe(&t.opts, "");
        let (out, events) = run(&p, &opts);
        assert_eq!(
            verbs(&events),
            [
                ("delete", "gone".into()),
                ("delete", "gone".into()),
                ("rmdir", "d".into()),
                ("replace", "f".into()),
                ("update", "f".into()),
                ("replace", "l".into()),
                ("symlink", "l".into()),
            ]
        );
        assert_eq!(out.errors, 0);
        // A dry run asks the hooks too, and says so.
        let mut dry = opts.clone();
        dry.dry_run = true;
        fs::write(t.dst.join("gone"), b"x").unwrap();
        let (_, events) = run(&p, &dry);
        assert_eq!(events[0].field("dry"), Some(&LogValue::Bool(true)));
        assert!(events.iter().all(|e| e.dry_run));
    }

    #[test]
    fn applier_a_hook_error_withholds_the_operation_and_retries_its_folder() {
        let t = trees();
        fs::create_dir(t.src.join("a")).unwrap();
        fs::create_dir(t.dst.join("a")).unwrap();
        let m = source_file(&t.src.join("a/f"), b"new", 0o644, (1_700_000_000, 1));
        fs::write(t.dst.join("a/f"), b"old").unwrap();
        fs::write(t.dst.join("a/gone"), b"keep me").unwrap();
        let p = plan(vec![
            Op::Delete {
                path: rel("a/gone"),
            },
            Op::Update {
                path: rel("a/f"),
                meta: m,
            },
        ]);
        for refused in ["a/f", "a/gone"] {
            fs::write(t.dst.join("a/f"), b"old").unwrap();
            fs::write(t.dst.join("a/gone"), b"keep me").unwrap();
            let (out, events) = run(&p, &with_probe(&t.opts, refused));
            let failed: Vec<_> = events.iter().filter(|e| e.verb == Verb::Error).collect();
            assert_eq!(failed.len(), 1, "{events:?}");
            assert_eq!(failed[0].path, Some(rel(refused)));
            let error = failed[0].field("error").unwrap().to_string();
            assert_eq!(error, "probe: refused by the probe");
            assert_eq!(out.errors, 1);
            assert!(out.retry.contains(&rel("a")), "{:?}", out.retry);
            // The refused one is as it was, the other one done.
            let (f, gone) = (t.dst.join("a/f"), t.dst.join("a/gone"));
            if refused == "a/f" {
                assert_eq!(fs::read(&f).unwrap(), b"old");
                assert!(!gone.exists());
            } else {
                assert_eq!(fs::read(&f).unwrap(), b"new");
                assert_eq!(fs::read(&gone).unwrap(), b"keep me");
            }
            assert!(no_temporaries(&t.dst.join("a")));
        }
    }

    /// What a registered hook costs each operation, against none: 20,000
    /// updates of small files each way, best of three. By hand:
    /// `cargo test --release -p treesync-stages --lib hook_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn applier_hook_cost_per_operation() {
        const N: usize = 20_000;
        struct Nothing;
        impl crate::contract::hooks::OpHook for Nothing {
            fn before_replace(
                &self,
                _: &HookCx,
                _: rustix::fd::BorrowedFd<'_>,
                _: &[u8],
                _: &RelPath,
            ) -> crate::contract::hooks::HookResult {
                Ok(None)
            }
            fn before_delete(
                &self,
                _: &HookCx,
                _: rustix::fd::BorrowedFd<'_>,
                _: &[u8],
                _: &RelPath,
            ) -> crate::contract::hooks::HookResult {
                Ok(None)
            }
        }
        let t = trees();
        let mut ops = Vec::with_capacity(N);
        for i in 0..N {
            let (dir, name) = (
                format!("d{:02}", i / 1000),
                format!("d{:02}/f{i}", i / 1000),
            );
            if i % 1000 == 0 {
                fs::create_dir(t.src.join(&dir)).unwrap();
                fs::create_dir(t.dst.join(&dir)).unwrap();
            }
            let m = source_file(&t.src.join(&name), b"new", 0o644, (1_700_000_000, 1));
            fs::write(t.dst.join(&name), b"old").unwrap();
            ops.push(Op::Update {
                path: rel(&name),
                meta: m,
            });
        }
        let p = plan(ops);
        let mut nothing = t.opts.clone();
        nothing.hooks.push(Arc::new(Nothing));
        let mut best = [f64::MAX; 2];
        for _ in 0..3 {
            for (i, opts) in [&t.opts, &nothing].into_iter().enumerate() {
                let start = std::time::Instant::now();
                let (out, _) = run(&p, opts);
                assert_eq!(out.errors, 0);
                let per_op = start.elapsed().as_secs_f64() * 1e6 / N as f64;
                best[i] = best[i].min(per_op);
            }
        }
        eprintln!(
            "per update: no hook {:.2} us, one no-op hook {:.2} us",
            best[0], best[1]
        );
    }
}
