//! The joint walk: lists the source and the replica tree together, folder
//! by folder, in parallel.
//!
//! Each folder is reached from its parent's handle (`openat` with
//! `O_NOFOLLOW | O_DIRECTORY`), so the walk never follows a link and never
//! builds a full path: it reaches any depth, PATH_MAX or not. A folder is
//! one job for both trees at once, because the replica side needs the
//! source side's rules for the same folder. Jobs sit on a shared LIFO stack:
//! depth first keeps the open handles bounded by the depth of the tree (a
//! pending job holds its parent's handle, shared by its siblings, and
//! nothing else).
//!
//! Per entry the walk costs one `getdents` slot, one `lstat` (`fstatat`
//! relative to the folder handle), one `RelPath` allocation, plus a
//! `readlinkat` for links; rules are matched only where some folder on the
//! way down has any, and names to hide are checked only in the folders that
//! hold them. Every error is collected (not sent) so the caller logs them
//! after the walk, off the worker threads.

use crate::contract::messages::LogEvent;
use crate::contract::model::{Entry, EntryKind, Listing, IGNORE_FILE, STATE_DIR};
use crate::contract::relpath::RelPath;
use crate::contract::stop::StopFlag;
use crate::fs::root::{kind_of, meta_of, Root};
use crate::fs::rules::{read_ignore_file, Rules};
use rustix::fd::OwnedFd;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RawDir, ResolveFlags, Stat};
use rustix::io::Errno;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::mem::MaybeUninit;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// What the walk needs besides the two roots.
#[derive(Clone, Copy)]
pub struct WalkOptions<'a> {
    /// Worker threads (at least one is used).
    pub jobs: usize,
    /// Lines added to the source root's `.syncignore`.
    pub excludes: &'a [String],
    /// Paths left out of the source listing and flagged excluded in the
    /// replica listing.
    pub hidden: &'a [RelPath],
    /// List the contents of excluded replica folders (all flagged excluded).
    pub delete_excluded: bool,
    pub stop: &'a StopFlag,
    /// Partial walks: whether a subfolder, as just listed (source side
    /// when the flag is true), is already known and needs no listing.
    /// `None`: descend into every subfolder.
    pub known: Option<&'a KnownFolder<'a>>,
}

/// Whether a folder (source side when the flag is true) needs no listing.
pub type KnownFolder<'a> = dyn Fn(&Entry, bool) -> bool + Sync + 'a;

/// Source folders the walk does not enter: the replica root, or a folder
/// above it, met again below the source (a bind mount), which would mirror
/// the replica into itself. (On the replica side, a folder that is another
/// mount is never entered either: `DirHandle::open_on_its_filesystem`.)
#[derive(Debug, Default)]
struct Fences {
    /// The replica root and each folder above it, as (device, inode).
    replica_and_above: Vec<(u64, u64)>,
}

impl Fences {
    fn around(replica: Option<&Root>) -> Fences {
        let Some(replica) = replica else {
            return Fences::default();
        };
        let id = |st: &Stat| (st.st_dev, st.st_ino);
        let mut replica_and_above: Vec<(u64, u64)> = replica.stat().iter().map(id).collect();
        for above in replica.path().ancestors().skip(1) {
            if let Ok(st) = rfs::stat(above) {
                replica_and_above.push(id(&st));
            }
        }
        Fences { replica_and_above }
    }

    /// A source folder that is the replica or holds it.
    fn holds_replica(&self, st: &Stat) -> bool {
        self.replica_and_above.contains(&(st.st_dev, st.st_ino))
    }
}

/// Both listings, sorted, and the errors met on the way.
#[derive(Debug, Default)]
pub struct WalkResult {
    pub source: Listing,
    /// Empty when there was no replica root to walk.
    pub replica: Listing,
    /// Errors to log (already counted in `errors`), ordered by path.
    pub events: Vec<LogEvent>,
    pub errors: u64,
    /// The stop flag was raised before the walk finished: the listings are
    /// partial.
    pub interrupted: bool,
    /// The folders whose entries each listing holds (what a partial walk
    /// replaces in the last listings).
    pub listed_source: Vec<RelPath>,
    pub listed_replica: Vec<RelPath>,
}

/// Walks `source` and, when given, `replica` with `opts.jobs` threads.
pub fn walk(source: &Root, replica: Option<&Root>, opts: &WalkOptions<'_>) -> WalkResult {
    let mut out = Output::default();
    let root = RelPath::root();
    let job = Job {
        source: open_root(source, Side::Source, &mut out),
        replica: replica.and_then(|r| open_root(r, Side::Replica, &mut out)),
        replica_excluded: false,
        inherited: Rules::none(),
        rel: root,
    };
    run_jobs(vec![job], out, opts, Fences::around(replica))
}

/// Lists the folders `folders` again on both sides, and below them only
/// the subfolders that `opts.known` does not cover. The listings hold the
/// entries of the folders listed and the folders' own entries. `Err` when the rules in force above a folder cannot
/// be read: only a full walk can then tell what they exclude.
pub fn walk_folders(
    source: &Root,
    replica: Option<&Root>,
    folders: &[RelPath],
    replica_excluded: &dyn Fn(&RelPath) -> bool,
    opts: &WalkOptions<'_>,
) -> Result<WalkResult, String> {
    let mut out = Output::default();
    let mut rules = RuleChain::new(source, opts.excludes);
    let mut jobs = Vec::with_capacity(folders.len());
    for rel in folders {
        let job = if rel.is_root() {
            Job {
                source: open_root(source, Side::Source, &mut out),
                replica: replica.and_then(|r| open_root(r, Side::Replica, &mut out)),
                replica_excluded: false,
                inherited: Rules::none(),
                rel: rel.clone(),
            }
        } else {
            let excluded = replica_excluded(rel);
            // The folder's own entry is listed again too: a change inside
            // it moves its mtime, which no event reports to its parent.
            let mut open = |root: &Root, side: Side| {
                let fd = match root.open_dir(rel) {
                    Ok(fd) => fd,
                    Err(e) => {
                        let errno = e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error);
                        // Gone is news for its parent's listing; anything
                        // else keeps what is below it, as a full walk would.
                        if !vanished(errno) {
                            out.folder_failed(side, rel, "cannot open folder", errno);
                        }
                        return None;
                    }
                };
                let stat = rfs::fstat(&fd).ok()?;
                out.listing(side).entries.push(Entry {
                    path: rel.clone(),
                    kind: EntryKind::Dir,
                    meta: meta_of(&stat),
                    excluded: side == Side::Replica && excluded,
                });
                Some(DirHandle::Open(fd))
            };
            let src = open(source, Side::Source);
            let rep = replica.and_then(|r| open(r, Side::Replica));
            if src.is_none() && rep.is_none() {
                // Gone: the listing of its parent, changed too, tells.
                continue;
            }
            let parent = rel.parent().unwrap_or_default();
            Job {
                source: src,
                replica: rep,
                replica_excluded: excluded,
                inherited: rules.in_force(&parent)?,
                rel: rel.clone(),
            }
        };
        jobs.push(job);
    }
    Ok(run_jobs(jobs, out, opts, Fences::around(replica)))
}

/// The rules in force in folders of the source, read from the root down
/// and remembered for the folders that share ancestors.
struct RuleChain<'r> {
    source: &'r Root,
    excludes: &'r [String],
    known: HashMap<RelPath, Rules>,
}

impl<'r> RuleChain<'r> {
    fn new(source: &'r Root, excludes: &'r [String]) -> Self {
        RuleChain {
            source,
            excludes,
            known: HashMap::new(),
        }
    }

    /// The rules in force in `folder`: every `.syncignore` from the root
    /// down to it, the `--exclude` lines at the root.
    fn in_force(&mut self, folder: &RelPath) -> Result<Rules, String> {
        if let Some(rules) = self.known.get(folder) {
            return Ok(rules.clone());
        }
        let inherited = match folder.parent() {
            Some(parent) => self.in_force(&parent)?,
            None => Rules::none(),
        };
        let fd = self
            .source
            .open_dir(folder)
            .map_err(|e| format!("cannot open {folder} for its rules: {e}"))?;
        let text = match read_ignore_file(&fd) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read the rules in {folder}: {e}")),
        };
        let extra: &[String] = if folder.is_root() { self.excludes } else { &[] };
        let (rules, errors) = inherited.with_folder(folder, text.as_deref(), extra);
        if let Some(e) = errors.first() {
            return Err(format!("rules in {folder}: {e}"));
        }
        self.known.insert(folder.clone(), rules.clone());
        Ok(rules)
    }
}

fn run_jobs(jobs: Vec<Job>, mut out: Output, opts: &WalkOptions<'_>, fences: Fences) -> WalkResult {
    let walker = Walker {
        opts,
        fences,
        queue: Mutex::new(Queue {
            jobs,
            busy: 0,
            done: false,
            interrupted: false,
        }),
        ready: Condvar::new(),
    };
    let outputs = walker.run();
    let interrupted = walker.lock().interrupted;
    for o in outputs {
        out.merge(o);
    }
    out.finish(interrupted)
}

/// Opens a root for the walk and lists its own entry.
fn open_root(root: &Root, side: Side, out: &mut Output) -> Option<DirHandle> {
    let rel = RelPath::root();
    let fd = match rfs::openat(root.fd(), c".", DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            out.folder_failed(side, &rel, "cannot open folder", e);
            return None;
        }
    };
    match rfs::fstat(&fd) {
        Ok(stat) => out.listing(side).entries.push(Entry {
            path: rel,
            kind: EntryKind::Dir,
            meta: meta_of(&stat),
            excluded: false,
        }),
        Err(e) => out.folder_failed(side, &rel, "cannot stat folder", e),
    }
    Some(DirHandle::Open(fd))
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NOCTTY);

/// Size of each worker's `getdents` buffer.
const DIRENT_BUF: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Source,
    Replica,
}

/// How a job reaches its folder on one side.
enum DirHandle {
    /// Already open (a root).
    Open(OwnedFd),
    /// The parent's handle, shared with the siblings still pending; the
    /// folder is the job's last path component.
    Under(Arc<OwnedFd>),
}

impl DirHandle {
    /// Opens the folder, releasing the parent's handle as soon as possible.
    fn open(self, rel: &RelPath) -> Result<OwnedFd, Errno> {
        match self {
            DirHandle::Open(fd) => Ok(fd),
            DirHandle::Under(parent) => rfs::openat(&*parent, rel.name(), DIR_FLAGS, Mode::empty()),
        }
    }

    /// `open`, failing with `EXDEV` where the folder is another mount (a
    /// bind mount of the same filesystem included).
    fn open_on_its_filesystem(self, rel: &RelPath) -> Result<OwnedFd, Errno> {
        const SAME_MOUNT: ResolveFlags = ResolveFlags::NO_XDEV
            .union(ResolveFlags::NO_SYMLINKS)
            .union(ResolveFlags::BENEATH);
        match self {
            DirHandle::Open(fd) => Ok(fd),
            DirHandle::Under(parent) => {
                let name = rel.name();
                match rfs::openat2(&*parent, name, DIR_FLAGS, Mode::empty(), SAME_MOUNT) {
                    Err(Errno::NOSYS | Errno::AGAIN | Errno::PERM) => {
                        let fd = rfs::openat(&*parent, name, DIR_FLAGS, Mode::empty())?;
                        if rfs::fstat(&fd)?.st_dev != rfs::fstat(&*parent)?.st_dev {
                            return Err(Errno::XDEV);
                        }
                        Ok(fd)
                    }
                    other => other,
                }
            }
        }
    }
}

/// One folder to list, on either side or both.
struct Job {
    rel: RelPath,
    source: Option<DirHandle>,
    replica: Option<DirHandle>,
    /// The replica folder is excluded (listed for `--delete-excluded`):
    /// everything below it is excluded, no rule needs matching.
    replica_excluded: bool,
    /// The rules in force in the parent folder.
    inherited: Rules,
}

/// An entry as read from its folder, before the rules look at it.
struct Raw {
    path: RelPath,
    stat: Stat,
}

impl Raw {
    fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.stat.st_mode) == FileType::Directory
    }
}

/// The shared work stack.
struct Queue {
    jobs: Vec<Job>,
    /// Jobs taken and not finished: while any runs, more may come.
    busy: usize,
    done: bool,
    interrupted: bool,
}

struct Walker<'a> {
    opts: &'a WalkOptions<'a>,
    fences: Fences,
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl<'a> Walker<'a> {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked leaves the queue consistent (see
        // `DoneOnPanic`), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the workers to completion and returns what each collected.
    fn run(&self) -> Vec<Output> {
        let threads = self.opts.jobs.max(1);
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(threads - 1);
            for i in 1..threads {
                let spawned = std::thread::Builder::new()
                    .name(format!("walk-{i}"))
                    .spawn_scoped(scope, || Worker::new(self).run());
                // Fewer threads only make the walk slower.
                if let Ok(h) = spawned {
                    handles.push(h);
                }
            }
            let mut outputs = vec![Worker::new(self).run()];
            for h in handles {
                match h.join() {
                    Ok(o) => outputs.push(o),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            outputs
        })
    }

    /// The next job, or `None` when the walk is over (all done or stopped).
    fn next_job(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if q.done {
                return None;
            }
            if self.opts.stop.is_requested() {
                q.done = true;
                q.interrupted = true;
                self.ready.notify_all();
                return None;
            }
            if let Some(job) = q.jobs.pop() {
                q.busy += 1;
                return Some(job);
            }
            if q.busy == 0 {
                q.done = true;
                self.ready.notify_all();
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn finish_job(&self, children: Vec<Job>) {
        let mut q = self.lock();
        q.busy -= 1;
        let woke = !children.is_empty() || q.busy == 0;
        q.jobs.extend(children);
        if woke {
            self.ready.notify_all();
        }
    }
}

/// Ends the walk for everyone if a worker panics, so the others do not wait
/// forever for the job it held.
struct DoneOnPanic<'w, 'a>(&'w Walker<'a>);

impl Drop for DoneOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().done = true;
            self.0.ready.notify_all();
        }
    }
}

/// What one worker collected.
#[derive(Default)]
struct Output {
    /// The roots' own entries and the incomplete folders.
    source: Listing,
    replica: Listing,
    /// The entries of every folder listed, one after the other, and where
    /// each folder's run is: one large vector rather than one per folder,
    /// so that putting them in order moves them in place (`stitch`) and the
    /// tree is never held twice.
    source_pool: Vec<Entry>,
    replica_pool: Vec<Entry>,
    source_chunks: Vec<Chunk>,
    replica_chunks: Vec<Chunk>,
    events: Vec<LogEvent>,
    errors: u64,
}

impl Output {
    fn listing(&mut self, side: Side) -> &mut Listing {
        match side {
            Side::Source => &mut self.source,
            Side::Replica => &mut self.replica,
        }
    }

    fn log_error(&mut self, side: Side, path: &RelPath, op: &str, what: impl fmt::Display) {
        let msg = match side {
            Side::Source => what.to_string(),
            Side::Replica => format!("in the replica: {what}"),
        };
        self.events.push(LogEvent::error(Some(path), op, msg));
        self.errors += 1;
    }

    /// A folder that could not be opened or read to the end: nothing below
    /// it may be deleted. One that vanished meanwhile is no error.
    fn folder_failed(&mut self, side: Side, rel: &RelPath, what: &str, err: Errno) {
        if !vanished(err) {
            self.log_error(side, rel, "scan", format_args!("{what}: {}", io_error(err)));
        }
        self.listing(side).incomplete.push(rel.clone());
    }

    /// An entry that could not be read: left out, and its folder counts as
    /// incomplete so that the other side's copy is kept.
    fn entry_failed(&mut self, side: Side, folder: &RelPath, name: &[u8], what: &str, err: Errno) {
        if err == Errno::NOENT {
            return;
        }
        let path = folder.join(name);
        self.log_error(
            side,
            &path,
            "scan",
            format_args!("{what}: {}", io_error(err)),
        );
        self.listing(side).incomplete.push(folder.clone());
    }

    fn merge(&mut self, other: Output) {
        self.source.entries.extend(other.source.entries);
        self.source.incomplete.extend(other.source.incomplete);
        absorb(
            (&mut self.source_pool, &mut self.source_chunks),
            (other.source_pool, other.source_chunks),
        );
        self.replica.entries.extend(other.replica.entries);
        self.replica.incomplete.extend(other.replica.incomplete);
        absorb(
            (&mut self.replica_pool, &mut self.replica_chunks),
            (other.replica_pool, other.replica_chunks),
        );
        self.events.extend(other.events);
        self.errors += other.errors;
    }

    /// Adds a folder's entries, ordered by name: siblings share their
    /// parent's path, so byte order is name order, which is `RelPath`
    /// order among siblings.
    fn add_chunk(&mut self, side: Side, folder: &RelPath, entries: &mut Vec<Entry>) {
        entries.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let (pool, chunks) = match side {
            Side::Source => (&mut self.source_pool, &mut self.source_chunks),
            Side::Replica => (&mut self.replica_pool, &mut self.replica_chunks),
        };
        chunks.push(Chunk {
            folder: folder.clone(),
            start: pool.len(),
            len: entries.len(),
        });
        pool.append(entries);
    }

    fn finish(mut self, interrupted: bool) -> WalkResult {
        let folders = |chunks: &[Chunk]| chunks.iter().map(|c| c.folder.clone()).collect();
        let listed_source = folders(&self.source_chunks);
        let listed_replica = folders(&self.replica_chunks);
        stitch(&mut self.source, self.source_pool, self.source_chunks);
        stitch(&mut self.replica, self.replica_pool, self.replica_chunks);
        self.events.sort_by(|a, b| a.path.cmp(&b.path));
        WalkResult {
            source: self.source,
            replica: self.replica,
            events: self.events,
            errors: self.errors,
            interrupted,
            listed_source,
            listed_replica,
        }
    }
}

/// Where one folder's entries lie in a pool.
struct Chunk {
    folder: RelPath,
    start: usize,
    len: usize,
}

/// Appends another worker's pool to ours. The larger pool is kept and the
/// smaller copied onto its end: large vectors grow in place (the
/// allocator remaps them), so only the smaller is ever held twice.
fn absorb(
    (pool, chunks): (&mut Vec<Entry>, &mut Vec<Chunk>),
    (mut other_pool, mut other_chunks): (Vec<Entry>, Vec<Chunk>),
) {
    if other_pool.len() > pool.len() {
        std::mem::swap(pool, &mut other_pool);
        std::mem::swap(chunks, &mut other_chunks);
    }
    let base = pool.len();
    pool.append(&mut other_pool);
    chunks.extend(other_chunks.into_iter().map(|c| Chunk {
        start: c.start + base,
        ..c
    }));
}

/// Puts the folders' chunks into `listing` in the canonical order (what
/// `Listing::sort` gives) without sorting the whole tree: each folder's
/// chunk goes right after the folder's own entry, depth first. Sorting
/// small sorted chunks by name is far cheaper than sorting every path by
/// components. The order is worked out as indices, then the pool is
/// permuted in place.
fn stitch(listing: &mut Listing, mut pool: Vec<Entry>, chunks: Vec<Chunk>) {
    // The entries listed outside any chunk (the roots') come first.
    let head = pool.len()..pool.len() + listing.entries.len();
    pool.append(&mut listing.entries);
    let mut by_folder: HashMap<&RelPath, std::ops::Range<usize>> = HashMap::new();
    for c in &chunks {
        by_folder.insert(&c.folder, c.start..c.start + c.len);
    }
    let mut order = Vec::with_capacity(pool.len());
    order.extend(head);
    // An explicit stack: trees deeper than PATH_MAX would overflow recursion.
    let mut stack = Vec::new();
    stack.extend(by_folder.remove(&RelPath::root()));
    while let Some(top) = stack.last_mut() {
        let Some(i) = top.next() else {
            stack.pop();
            continue;
        };
        order.push(i);
        if pool[i].kind.is_dir() {
            stack.extend(by_folder.remove(&pool[i].path));
        }
    }
    // A folder listed without its own entry (it changed between the two
    // reads), or listed twice: keep its entries, in order all the same.
    let mut placed = vec![false; pool.len()];
    for &i in &order {
        placed[i] = true;
    }
    let stray = order.len() != pool.len();
    order.extend((0..pool.len()).filter(|&i| !placed[i]));
    drop(by_folder);
    permute(&mut pool, &order);
    listing.entries = pool;
    if stray {
        listing.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    }
    listing.incomplete.sort_unstable();
    listing.incomplete.dedup();
    if !listing.entries.windows(2).all(|w| w[0].path < w[1].path) {
        // A partial walk lists folders' own entries beside their parents'
        // listings: the same folder may come twice, out of place.
        listing.entries.sort_by(|a, b| a.path.cmp(&b.path));
        listing.entries.dedup_by(|a, b| a.path == b.path);
    }
}

/// Reorders `items` so that the entry at `k` becomes the one that was at
/// `order[k]`; `order` must hold every index once. Follows each cycle of
/// the permutation with swaps: no second copy of the items.
fn permute<T>(items: &mut [T], order: &[usize]) {
    debug_assert_eq!(items.len(), order.len());
    let mut done = vec![false; items.len()];
    for start in 0..items.len() {
        let mut at = start;
        while !done[at] {
            done[at] = true;
            let from = order[at];
            if from == start {
                break;
            }
            items.swap(at, from);
            at = from;
        }
    }
}

/// The folder or entry went away (or was swapped for something that is not
/// a folder) between its listing and its use: the next tick will see it.
fn vanished(err: Errno) -> bool {
    matches!(err, Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
}

fn io_error(err: Errno) -> std::io::Error {
    err.into()
}

/// One walking thread.
struct Worker<'w, 'a> {
    walker: &'w Walker<'a>,
    buf: Vec<MaybeUninit<u8>>,
    /// The current folder's entries, reused from folder to folder.
    scratch: Vec<Raw>,
    out: Output,
}

/// One side of a folder once listed: its subfolders to descend into and the
/// rules in force there.
struct Listed {
    /// The folder's handle, kept only when it has subfolders to open.
    fd: Option<OwnedFd>,
    /// Subfolders, with whether each is excluded (replica side) and
    /// whether a partial walk already knows it.
    dirs: Vec<(RelPath, bool, bool)>,
    rules: Rules,
}

impl Listed {
    fn nothing(rules: &Rules) -> Self {
        Listed {
            fd: None,
            dirs: Vec::new(),
            rules: rules.clone(),
        }
    }
}

/// Which rules decide what is excluded in a replica folder.
enum ReplicaRules {
    /// The source has this folder: its rules apply.
    Source(Rules),
    /// A replica-only folder: the inherited rules plus the replica's own
    /// `.syncignore` there (the mirrored copy of the rules that applied).
    Own(Rules),
    /// Below an excluded folder: everything is excluded.
    Excluded,
}

impl<'w, 'a> Worker<'w, 'a> {
    fn new(walker: &'w Walker<'a>) -> Self {
        let mut buf = Vec::with_capacity(DIRENT_BUF);
        buf.resize(DIRENT_BUF, MaybeUninit::uninit());
        Worker {
            walker,
            buf,
            scratch: Vec::new(),
            out: Output::default(),
        }
    }

    fn run(mut self) -> Output {
        let guard = DoneOnPanic(self.walker);
        while let Some(job) = self.walker.next_job() {
            let children = self.visit(job);
            self.walker.finish_job(children);
        }
        drop(guard);
        self.out
    }

    fn opts(&self) -> &'a WalkOptions<'a> {
        self.walker.opts
    }

    /// Lists one folder on both sides; returns the jobs for its subfolders.
    fn visit(&mut self, job: Job) -> Vec<Job> {
        let Job {
            rel,
            source,
            replica,
            replica_excluded,
            inherited,
        } = job;
        let hidden = hidden_in(self.opts().hidden, &rel);
        let mut src = Listed::nothing(&inherited);
        let mut source_rules = None;
        if let Some(handle) = source {
            match handle.open(&rel) {
                Ok(fd) => {
                    src = self.list_source(fd, &rel, &inherited, &hidden);
                    source_rules = Some(src.rules.clone());
                }
                Err(e) => self
                    .out
                    .folder_failed(Side::Source, &rel, "cannot open folder", e),
            }
        }
        let mut rep = Listed::nothing(&inherited);
        if let Some(handle) = replica {
            let rules = match (replica_excluded, source_rules) {
                (true, _) => ReplicaRules::Excluded,
                (false, Some(rules)) => ReplicaRules::Source(rules),
                (false, None) => ReplicaRules::Own(inherited.clone()),
            };
            match handle.open_on_its_filesystem(&rel) {
                Ok(fd) => rep = self.list_replica(fd, &rel, rules, &hidden),
                // Listed by its parent, never entered: nothing below it is
                // deleted, and the Applier's paths stop at it too.
                Err(Errno::XDEV) => {
                    self.out.log_error(
                        Side::Replica,
                        &rel,
                        "scan",
                        "another filesystem is mounted here: nothing below it is written or deleted",
                    );
                    self.out.listing(Side::Replica).incomplete.push(rel.clone());
                }
                Err(e) => self
                    .out
                    .folder_failed(Side::Replica, &rel, "cannot open folder", e),
            }
        }
        subfolder_jobs(src, rep)
    }

    /// Whether a partial walk already knows the folder `entry`.
    fn is_known(&self, entry: &Entry, source_side: bool) -> bool {
        self.opts()
            .known
            .is_some_and(|known| known(entry, source_side))
    }

    /// Lists a source folder: entries the rules exclude or that are hidden
    /// are left out, and so is everything below them.
    fn list_source(
        &mut self,
        fd: OwnedFd,
        rel: &RelPath,
        inherited: &Rules,
        hidden: &[&RelPath],
    ) -> Listed {
        let has_ignore_file = self.read_raw(&fd, rel, Side::Source);
        let (rules, understood) =
            self.folder_rules(&fd, rel, Side::Source, inherited, has_ignore_file);
        let mut dirs = Vec::new();
        let mut raws = std::mem::take(&mut self.scratch);
        if !understood {
            // Rules that could not be read or understood may be the ones
            // that keep a secret out of the replica: nothing here or below
            // is listed, so nothing is copied, and the folder stays
            // incomplete, so nothing is deleted.
            raws.clear();
        }
        let mut entries = Vec::with_capacity(raws.len());
        for raw in raws.drain(..) {
            let is_dir = raw.is_dir();
            if is_hidden(hidden, &raw.path) || rules.is_excluded(&raw.path, is_dir) {
                continue;
            }
            if is_dir && self.walker.fences.holds_replica(&raw.stat) {
                // Left out, and its folder incomplete: the replica's copy of
                // what was mirrored here is kept.
                self.out.log_error(
                    Side::Source,
                    &raw.path,
                    "scan",
                    "this folder is the replica, or holds it (a mount): left out, or the replica would be mirrored into itself",
                );
                self.out.listing(Side::Source).incomplete.push(rel.clone());
                continue;
            }
            let Some(entry) = self.entry(&fd, rel, raw, false, Side::Source) else {
                continue;
            };
            // The state folder's namesake at the source root is listed (the
            // plan skips it) but never entered.
            if is_dir && !(rel.is_root() && entry.path.name() == STATE_DIR) {
                let known = self.is_known(&entry, true);
                dirs.push((entry.path.clone(), false, known));
            }
            entries.push(entry);
        }
        self.scratch = raws;
        self.out.add_chunk(Side::Source, rel, &mut entries);
        Listed {
            fd: (!dirs.is_empty()).then_some(fd),
            dirs,
            rules,
        }
    }

    /// Lists a replica folder: every entry is listed, flagged when the rules
    /// in force exclude it; excluded folders are entered only for
    /// `--delete-excluded`. The state folder at the root is never listed.
    fn list_replica(
        &mut self,
        fd: OwnedFd,
        rel: &RelPath,
        rules: ReplicaRules,
        hidden: &[&RelPath],
    ) -> Listed {
        let has_ignore_file = self.read_raw(&fd, rel, Side::Replica);
        let (rules, all_excluded) = match rules {
            ReplicaRules::Source(rules) => (rules, false),
            ReplicaRules::Own(inherited) => (
                self.folder_rules(&fd, rel, Side::Replica, &inherited, has_ignore_file)
                    .0,
                false,
            ),
            ReplicaRules::Excluded => (Rules::none(), true),
        };
        let descend_excluded = self.opts().delete_excluded;
        let mut dirs = Vec::new();
        let mut raws = std::mem::take(&mut self.scratch);
        let mut entries = Vec::with_capacity(raws.len());
        for raw in raws.drain(..) {
            if rel.is_root() && raw.path.name() == STATE_DIR {
                continue;
            }
            let is_dir = raw.is_dir();
            let excluded = all_excluded
                || is_hidden(hidden, &raw.path)
                || rules.is_excluded(&raw.path, is_dir);
            let Some(entry) = self.entry(&fd, rel, raw, excluded, Side::Replica) else {
                continue;
            };
            if is_dir && (!excluded || descend_excluded) {
                let known = self.is_known(&entry, false);
                dirs.push((entry.path.clone(), excluded, known));
            }
            entries.push(entry);
        }
        self.scratch = raws;
        self.out.add_chunk(Side::Replica, rel, &mut entries);
        Listed {
            fd: (!dirs.is_empty()).then_some(fd),
            dirs,
            rules,
        }
    }

    /// Reads the folder's entries into `scratch`, one `lstat` each; returns
    /// whether it holds a `.syncignore`. A read that fails midway keeps
    /// what was read and marks the folder incomplete.
    fn read_raw(&mut self, fd: &OwnedFd, rel: &RelPath, side: Side) -> bool {
        self.scratch.clear();
        let mut has_ignore_file = false;
        let mut dir = RawDir::new(fd, &mut self.buf);
        while let Some(item) = dir.next() {
            let entry = match item {
                Ok(entry) => entry,
                Err(e) => {
                    self.out.folder_failed(side, rel, "cannot read folder", e);
                    break;
                }
            };
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            match rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => {
                    has_ignore_file |= bytes == IGNORE_FILE;
                    self.scratch.push(Raw {
                        path: rel.join(bytes),
                        stat,
                    });
                }
                Err(e) => self.out.entry_failed(side, rel, bytes, "cannot stat", e),
            }
        }
        has_ignore_file
    }

    /// The model's entry for `raw`; `None` when it vanished or its link
    /// could not be read (then logged).
    fn entry(
        &mut self,
        fd: &OwnedFd,
        rel: &RelPath,
        raw: Raw,
        excluded: bool,
        side: Side,
    ) -> Option<Entry> {
        match kind_of(&raw.stat, fd, raw.path.name()) {
            Ok(kind) => Some(Entry {
                meta: meta_of(&raw.stat),
                path: raw.path,
                kind,
                excluded,
            }),
            Err(e) => {
                let errno = e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error);
                self.out
                    .entry_failed(side, rel, raw.path.name(), "cannot read link", errno);
                None
            }
        }
    }

    /// The rules in force in the folder `rel`: the inherited ones plus the
    /// folder's `.syncignore` (and, at the root, the `--exclude` lines).
    /// Rules that cannot be read or parsed are logged and the folder counts
    /// as incomplete, since what they would have kept is unknown; the flag
    /// returned is false then.
    fn folder_rules(
        &mut self,
        fd: &OwnedFd,
        rel: &RelPath,
        side: Side,
        inherited: &Rules,
        has_ignore_file: bool,
    ) -> (Rules, bool) {
        let extra: &[String] = if rel.is_root() {
            self.opts().excludes
        } else {
            &[]
        };
        if !has_ignore_file && extra.is_empty() {
            return (inherited.clone(), true);
        }
        let path = rel.join(IGNORE_FILE);
        let mut failed = false;
        let text = if has_ignore_file {
            match read_ignore_file(fd) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    self.out
                        .log_error(side, &path, "rules", format_args!("cannot read: {e}"));
                    failed = true;
                    None
                }
            }
        } else {
            None
        };
        let (rules, errors) = inherited.with_folder(rel, text.as_deref(), extra);
        for e in &errors {
            let at = e.in_file.then_some(&path);
            self.out.events.push(LogEvent::error(at, "rules", e));
            self.out.errors += 1;
            failed = true;
        }
        if failed {
            self.out.listing(side).incomplete.push(rel.clone());
        }
        (rules, !failed)
    }
}

/// The jobs for the subfolders of one folder: a folder on both sides is one
/// job, so its replica side gets the source side's rules; partial walks
/// leave out what they know (a folder on both sides only when both sides
/// are known, again for the rules).
fn subfolder_jobs(src: Listed, rep: Listed) -> Vec<Job> {
    let Listed {
        fd: src_fd,
        dirs: mut src_dirs,
        rules: src_rules,
    } = src;
    let Listed {
        fd: rep_fd,
        dirs: mut rep_dirs,
        rules: rep_rules,
    } = rep;
    let src_fd = src_fd.map(Arc::new);
    let rep_fd = rep_fd.map(Arc::new);
    let under = |fd: &Option<Arc<OwnedFd>>| fd.as_ref().map(|fd| DirHandle::Under(fd.clone()));
    // Same parent, so ordering by bytes orders by name.
    src_dirs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    rep_dirs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut jobs = Vec::with_capacity(src_dirs.len().max(rep_dirs.len()));
    let mut src_iter = src_dirs.into_iter().peekable();
    let mut rep_iter = rep_dirs.into_iter().peekable();
    loop {
        let order = match (src_iter.peek(), rep_iter.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(s), Some(r)) => s.0.as_bytes().cmp(r.0.as_bytes()),
        };
        let job = match order {
            Ordering::Less => src_iter.next().filter(|d| !d.2).map(|(rel, ..)| Job {
                rel,
                source: under(&src_fd),
                replica: None,
                replica_excluded: false,
                inherited: src_rules.clone(),
            }),
            Ordering::Greater => rep_iter
                .next()
                .filter(|d| !d.2)
                .map(|(rel, excluded, _)| Job {
                    rel,
                    source: None,
                    replica: under(&rep_fd),
                    replica_excluded: excluded,
                    inherited: rep_rules.clone(),
                }),
            Ordering::Equal => {
                let (_, excluded, rep_known) = rep_iter.next().unwrap_or_default();
                src_iter
                    .next()
                    .filter(|d| !(d.2 && rep_known))
                    .map(|(rel, ..)| Job {
                        rel,
                        source: under(&src_fd),
                        replica: under(&rep_fd),
                        replica_excluded: excluded,
                        inherited: src_rules.clone(),
                    })
            }
        };
        jobs.extend(job);
    }
    jobs
}

/// The hidden paths that lie directly in the folder `rel`: computed once per
/// folder so that most folders check none.
fn hidden_in<'h>(hidden: &'h [RelPath], rel: &RelPath) -> Vec<&'h RelPath> {
    if hidden.is_empty() {
        return Vec::new();
    }
    hidden.iter().filter(|h| lies_in(h, rel)).collect()
}

/// True when `path` is an entry of the folder `folder` (without allocating,
/// unlike comparing `path.parent()`).
fn lies_in(path: &RelPath, folder: &RelPath) -> bool {
    let (p, f) = (path.as_bytes(), folder.as_bytes());
    let name = if f.is_empty() {
        p
    } else {
        match p.strip_prefix(f).and_then(|rest| rest.strip_prefix(b"/")) {
            Some(name) => name,
            None => return false,
        }
    };
    !name.is_empty() && !name.contains(&b'/')
}

fn is_hidden(hidden: &[&RelPath], path: &RelPath) -> bool {
    !hidden.is_empty() && hidden.contains(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::model::SpecialKind;
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// Options for a test walk, owned.
    #[derive(Default)]
    struct Opts {
        jobs: usize,
        excludes: Vec<String>,
        hidden: Vec<RelPath>,
        delete_excluded: bool,
        stop: StopFlag,
    }

    fn run(source: &Path, replica: Option<&Path>, o: &Opts) -> WalkResult {
        let opts = WalkOptions {
            jobs: if o.jobs == 0 { 2 } else { o.jobs },
            excludes: &o.excludes,
            hidden: &o.hidden,
            delete_excluded: o.delete_excluded,
            stop: &o.stop,
            known: None,
        };
        let source = Root::open(source).unwrap();
        let replica = replica.map(|r| Root::open(r).unwrap());
        walk(&source, replica.as_ref(), &opts)
    }

    /// `path kind`, with `!` after excluded entries; the root is `.`.
    fn show(listing: &Listing) -> Vec<String> {
        listing
            .entries
            .iter()
            .map(|e| {
                let mark = if e.excluded { "!" } else { "" };
                format!("{} {}{mark}", e.path, e.kind.as_str())
            })
            .collect()
    }

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, rel).unwrap();
    }

    fn mkdirs(root: &Path, rels: &[&str]) {
        for rel in rels {
            fs::create_dir_all(root.join(rel)).unwrap();
        }
    }

    fn assert_sorted(listing: &Listing) {
        let mut sorted = listing.entries.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(sorted, listing.entries);
    }

    #[test]
    fn permute_puts_each_item_where_the_order_says() {
        let cases: [&[usize]; 5] = [&[], &[0], &[2, 0, 1], &[1, 0, 3, 2, 4], &[4, 3, 2, 1, 0]];
        for order in cases {
            let mut items: Vec<usize> = (0..order.len()).map(|i| i * 10).collect();
            permute(&mut items, order);
            let expected: Vec<usize> = order.iter().map(|&i| i * 10).collect();
            assert_eq!(items, expected, "order {order:?}");
        }
    }

    #[test]
    fn lists_every_kind_with_the_root_first_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        touch(s, "b/file");
        touch(s, ".hidden");
        mkdirs(s, &["empty", "b/c"]);
        symlink("b/file", s.join("link")).unwrap();
        symlink("../nowhere", s.join("b/dangling")).unwrap();
        let dir = rfs::open(s, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        rfs::mknodat(&dir, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
        fs::write(s.join(OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();

        let r = run(s, None, &Opts::default());
        assert_eq!(
            show(&r.source),
            [
                ". folder",
                ".hidden file",
                "b folder",
                "b/c folder",
                "b/dangling symlink",
                "b/file file",
                "caf\\xE9 file",
                "empty folder",
                "fifo fifo",
                "link symlink",
                "sock socket",
            ]
        );
        assert_sorted(&r.source);
        assert!(r.replica.entries.is_empty());
        assert_eq!((r.errors, r.interrupted), (0, false));
        let get = |p: &str| r.source.get(&RelPath::from_str_lossy(p)).unwrap().clone();
        let target = |p: &str| match get(p).kind {
            EntryKind::Symlink { target } => target.as_bytes().to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(target("link"), b"b/file");
        assert_eq!(target("b/dangling"), b"../nowhere");
        assert_eq!(
            get("fifo").kind,
            EntryKind::Special {
                what: SpecialKind::Fifo
            }
        );
        assert_eq!(get("b/file").meta.size, 6);
        let root = r.source.root().unwrap();
        assert_eq!(root.kind, EntryKind::Dir);
        assert_eq!(
            root.meta.id.ino,
            fs::metadata(s)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap()
        );
    }

    #[test]
    fn walks_both_sides_and_any_number_of_threads_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        for i in 0..20 {
            touch(&s, &format!("x{i}/y/z/f{i}"));
            touch(&d, &format!("x{}/only{i}", i * 2));
        }
        let one = run(
            &s,
            Some(&d),
            &Opts {
                jobs: 1,
                ..Opts::default()
            },
        );
        let many = run(
            &s,
            Some(&d),
            &Opts {
                jobs: 4,
                ..Opts::default()
            },
        );
        assert_eq!(show(&one.source), show(&many.source));
        assert_eq!(show(&one.replica), show(&many.replica));
        assert_eq!(one.source.entries.len(), 1 + 20 * 4);
        assert_eq!(one.replica.entries.len(), 1 + 20 * 2);
        assert_sorted(&many.replica);
    }

    #[test]
    fn source_rules_leave_entries_out_at_every_level() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        fs::write(s.join(".syncignore"), "*.tmp\nbuild/\n/top.txt\nsecret\n").unwrap();
        touch(s, "top.txt");
        touch(s, "a/top.txt");
        touch(s, "a/x.tmp");
        touch(s, "a/keep.tmp");
        touch(s, "a/build/out");
        touch(s, "a/b/secret");
        touch(s, "a/b/y.txt");
        touch(s, "build");
        fs::write(s.join("a/.syncignore"), "!keep.tmp\n").unwrap();
        fs::write(s.join("a/b/.syncignore"), "y.txt\n!secret\n").unwrap();
        let r = run(s, None, &Opts::default());
        assert_eq!(
            show(&r.source),
            [
                ". folder",
                ".syncignore file",
                "a folder",
                "a/.syncignore file",
                "a/b folder",
                "a/b/.syncignore file",
                "a/b/secret file",
                "a/keep.tmp file",
                "a/top.txt file",
                "build file",
            ]
        );
        assert_eq!(r.errors, 0);
    }

    #[test]
    fn excludes_come_after_the_root_file() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        fs::write(s.join(".syncignore"), "!*.o\n").unwrap();
        touch(s, "a.o");
        touch(s, "d/b.o");
        touch(s, "d/c.log");
        let o = Opts {
            excludes: vec!["*.o".into(), "/d/c.log".into()],
            ..Opts::default()
        };
        let r = run(s, None, &o);
        assert_eq!(
            show(&r.source),
            [". folder", ".syncignore file", "d folder"]
        );
    }

    /// A source with rules, and a replica holding excluded entries.
    fn excluded_replica(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (s, d) = (tmp.join("s"), tmp.join("d"));
        fs::create_dir_all(&s).unwrap();
        fs::write(s.join(".syncignore"), "*.log\ncache/\n").unwrap();
        touch(&s, "a/f");
        touch(&d, "a/f");
        touch(&d, "a/x.log");
        touch(&d, "cache/deep/obj");
        touch(&d, "cache/top");
        (s, d)
    }

    #[test]
    fn excluded_replica_entries_are_flagged_and_not_entered() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = excluded_replica(tmp.path());
        let r = run(&s, Some(&d), &Opts::default());
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "a folder",
                "a/f file",
                "a/x.log file!",
                "cache folder!"
            ]
        );
    }

    #[test]
    fn delete_excluded_lists_their_contents_all_excluded() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = excluded_replica(tmp.path());
        let o = Opts {
            delete_excluded: true,
            ..Opts::default()
        };
        let r = run(&s, Some(&d), &o);
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "a folder",
                "a/f file",
                "a/x.log file!",
                "cache folder!",
                "cache/deep folder!",
                "cache/deep/obj file!",
                "cache/top file!",
            ]
        );
    }

    #[test]
    fn a_replica_only_folder_uses_its_own_syncignore() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        fs::create_dir_all(&s).unwrap();
        fs::write(s.join(".syncignore"), "*.log\n").unwrap();
        // The source's own folder wins over the replica's copy of its rules.
        touch(&s, "both/f");
        fs::write(s.join("both/.syncignore"), "a\n").unwrap();
        touch(&d, "both/a");
        touch(&d, "both/b");
        fs::write(d.join("both/.syncignore"), "b\n").unwrap();
        // A folder gone from the source keeps the rules its copy carries.
        touch(&d, "gone/keep.o");
        touch(&d, "gone/x.log");
        touch(&d, "gone/plain");
        fs::write(d.join("gone/.syncignore"), "*.o\n").unwrap();
        let r = run(&s, Some(&d), &Opts::default());
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "both folder",
                "both/.syncignore file",
                "both/a file!",
                "both/b file",
                "gone folder",
                "gone/.syncignore file",
                "gone/keep.o file!",
                "gone/plain file",
                "gone/x.log file!",
            ]
        );
    }

    #[test]
    fn hidden_paths_are_omitted_from_the_source_and_flagged_in_the_replica() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        touch(&s, "logs/treesync.log");
        touch(&s, "logs/other");
        touch(&d, "logs/treesync.log");
        let o = Opts {
            hidden: vec![RelPath::from_str_lossy("logs/treesync.log")],
            ..Opts::default()
        };
        let r = run(&s, Some(&d), &o);
        assert_eq!(
            show(&r.source),
            [". folder", "logs folder", "logs/other file"]
        );
        assert_eq!(
            show(&r.replica),
            [". folder", "logs folder", "logs/treesync.log file!"]
        );
    }

    #[test]
    fn the_state_folder_is_never_listed_in_the_replica_nor_entered_in_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        touch(&s, ".treesync/inner");
        touch(&s, "a/.treesync/inner");
        touch(&d, ".treesync/lock");
        touch(&d, "a/.treesync/x");
        let r = run(&s, Some(&d), &Opts::default());
        assert_eq!(
            show(&r.source),
            [
                ". folder",
                ".treesync folder",
                "a folder",
                "a/.treesync folder",
                "a/.treesync/inner file",
            ]
        );
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "a folder",
                "a/.treesync folder",
                "a/.treesync/x file"
            ]
        );
    }

    #[test]
    fn walks_trees_deeper_than_path_max() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = rfs::open(
            tmp.path(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        let name = "twenty-byte-name-000";
        assert_eq!(name.len(), 20);
        let depth = 300;
        for _ in 0..depth {
            rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)).unwrap();
            dir = rfs::openat(&dir, name, DIR_FLAGS, Mode::empty()).unwrap();
        }
        let file = rfs::openat(
            &dir,
            "leaf",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(file);
        drop(dir);
        let r = run(tmp.path(), Some(tmp.path()), &Opts::default());
        assert_eq!(r.errors, 0, "{:?}", r.events);
        assert_eq!(r.source.entries.len(), 1 + depth + 1);
        assert_eq!(r.replica.entries.len(), 1 + depth + 1);
        let last = r.source.entries.last().unwrap();
        assert_eq!(last.path.name(), b"leaf");
        assert_eq!(last.path.depth(), depth + 1);
        assert!(last.path.as_bytes().len() > 4096);
    }

    #[test]
    fn unreadable_rules_are_errors_and_withhold_their_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        mkdirs(s, &["a/.syncignore"]);
        touch(s, "b/x");
        touch(s, "b/sub/y");
        symlink("elsewhere", s.join("b/.syncignore")).unwrap();
        touch(s, "c/secret.key");
        fs::write(s.join("c/.syncignore"), "*.key\n[z-a]\n").unwrap();
        touch(s, "d/x");
        fs::write(s.join("d/.syncignore"), "*.key\n").unwrap();
        let r = run(s, None, &Opts::default());
        assert_eq!(r.errors, 3, "{:?}", r.events);
        let paths: Vec<String> = r.events.iter().map(|e| format!("{:?}", e.path)).collect();
        assert_eq!(
            paths,
            [
                "Some(\"a/.syncignore\")",
                "Some(\"b/.syncignore\")",
                "Some(\"c/.syncignore\")"
            ]
        );
        assert!(r
            .events
            .iter()
            .all(|e| e.field("op")
                == Some(&crate::contract::messages::LogValue::Str("rules".into()))));
        let incomplete: Vec<String> = r.source.incomplete.iter().map(|p| p.to_string()).collect();
        assert_eq!(incomplete, ["a", "b", "c"]);
        // Nothing below rules that could not be honoured is listed (it
        // would be copied); folders with readable rules are as usual.
        let listed = show(&r.source);
        for withheld in ["b/x", "b/sub", "b/sub/y", "c/secret.key", "c/.syncignore"] {
            assert!(
                !listed
                    .iter()
                    .any(|l| l.starts_with(&format!("{withheld} "))),
                "{listed:?}"
            );
        }
        assert!(listed.contains(&"d/x file".to_string()), "{listed:?}");
        assert!(listed.contains(&"b folder".to_string()), "{listed:?}");
    }

    #[test]
    fn unreadable_folders_are_errors_and_incomplete() {
        if rustix::process::geteuid().is_root() {
            return; // root reads any folder
        }
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        touch(s, "locked/x");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(s.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let r = run(s, None, &Opts::default());
        fs::set_permissions(s.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(r.errors, 1);
        assert_eq!(r.source.incomplete, [RelPath::from_str_lossy("locked")]);
        assert_eq!(show(&r.source), [". folder", "locked folder"]);
    }

    #[test]
    fn orders_like_listing_sort_where_bytes_and_components_disagree() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        for rel in ["a/b", "a/c/d", "a.b", "a0", "a-", "b/a.b/x", "b/a/y"] {
            touch(&s, rel);
            touch(&d, rel);
        }
        let r = run(&s, Some(&d), &Opts::default());
        for listing in [&r.source, &r.replica] {
            assert_sorted(listing);
            let mut sorted = listing.clone();
            sorted.sort();
            assert_eq!(show(&sorted), show(listing));
        }
        assert_eq!(
            show(&r.source)[..5],
            [
                ". folder",
                "a folder",
                "a/b file",
                "a/c folder",
                "a/c/d file"
            ]
        );
    }

    #[test]
    fn vanished_entries_and_folders_are_no_errors() {
        let mut out = Output::default();
        let dir = RelPath::from_str_lossy("d");
        out.folder_failed(Side::Source, &dir, "cannot open folder", Errno::NOENT);
        out.entry_failed(Side::Source, &dir, b"f", "cannot stat", Errno::NOENT);
        assert_eq!((out.errors, out.events.len()), (0, 0));
        assert_eq!(out.source.incomplete, std::slice::from_ref(&dir));
        out.entry_failed(Side::Replica, &dir, b"f", "cannot stat", Errno::IO);
        assert_eq!(out.errors, 1);
        assert_eq!(out.events[0].path, Some(RelPath::from_str_lossy("d/f")));
        assert_eq!(out.replica.incomplete, [dir]);
        let msg = out.events[0].field("error").unwrap().to_string();
        assert!(msg.starts_with("in the replica: cannot stat"), "{msg}");
    }

    #[test]
    fn a_raised_stop_flag_interrupts_the_walk() {
        let tmp = tempfile::tempdir().unwrap();
        touch(tmp.path(), "a/b");
        let o = Opts::default();
        o.stop.request();
        let r = run(tmp.path(), None, &o);
        assert!(r.interrupted);
    }

    /// Times the walk over two existing trees:
    /// `WALK_BENCH=SRC:DST cargo test --release -p treesync-stages -- --ignored walk_bench --nocapture`
    #[test]
    #[ignore]
    fn walk_bench() {
        let Ok(spec) = std::env::var("WALK_BENCH") else {
            return;
        };
        let (s, d) = spec.split_once(':').unwrap();
        let jobs: usize = std::env::var("WALK_JOBS").map_or(2, |j| j.parse().unwrap());
        for _ in 0..5 {
            let o = Opts {
                jobs,
                ..Opts::default()
            };
            let (t, cpu) = (std::time::Instant::now(), cpu_secs());
            let r = run(Path::new(s), Some(Path::new(d)), &o);
            let n = (r.source.entries.len() + r.replica.entries.len()) as f64;
            let (el, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
            println!(
                "{jobs} jobs: {n} entries, {el:.3} s wall, {cpu:.2} s cpu: {:.2} us wall, {:.2} us cpu per entry",
                el * 1e6 / n,
                cpu * 1e6 / n
            );
        }
    }

    /// User + system CPU seconds of this process so far.
    fn cpu_secs() -> f64 {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // utime and stime are fields 14 and 15, in clock ticks (100 Hz).
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    }
}
