//! Hasher: takes `TreesScanned`, sends `TreesHashed`.
//!
//! Only where metadata cannot decide (same size, different mtime, or
//! `--checksum`) are the two files read and compared by SHA-1. The work runs
//! on a blocking task with `jobs` threads, never on the async thread.
//! Digests are cached between ticks and across restarts (`hash_cache.rs`),
//! so an unchanged file is never read twice. A file that cannot be read
//! yields `Content::Unknown`; the Applier then attempts the copy and logs
//! any real failure there.
//!
//! Moves (`contract::moves`) are searched here too, since confirming a
//! doubtful pair means reading both files: each file of such a pair is
//! hashed once (or its digest taken from the cache), and a pair counts
//! only where the digests agree. Renames the Watcher saw are sure without
//! a read.
//!
//! Copies recorded as racy (`racy.rs`) are compared too, whatever their
//! metadata, and never from cached digests; their pairs are marked as
//! rechecked so that the Differ follows the verdict. The same blocking task
//! reads the replica's record of the runs' temporaries for the Differ.

use crate::contract::messages::{LogEvent, TickCx, TreesHashed, TreesScanned, Verb};
use crate::contract::model::{
    Content, Digest, Entry, EntryKind, Listing, Meta, SameContent, TempTokens,
};
use crate::contract::moves::{self, MovePairs, MoveSearch, SearchOptions};
use crate::contract::options::SyncOptions;
use crate::contract::relpath::RelPath;
use crate::contract::stage::{Flow, Stage};
use crate::contract::stop::StopFlag;
use crate::fs::fold;
use crate::fs::fs_kind;
use crate::fs::hash_cache::{CacheKey, HashCache};
use crate::fs::racy;
use crate::fs::replica_fs::FsCaps;
use crate::fs::root::Root;
use crate::fs::xattrs;
use actix::Recipient;
use rustix::fd::{AsFd, AsRawFd};
use rustix::fs::{Mode, OFlags};
use sha1::{Digest as _, Sha1};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A file present on both sides whose content needs comparing: its
/// places in the source and replica listings. Indices, not copies: a
/// `--checksum` tick has a pair for every file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub source: usize,
    pub replica: usize,
}

/// The files present on both sides whose content needs comparing.
pub fn candidates(source: &Listing, replica: &Listing, checksum: bool) -> Vec<Pair> {
    candidates_on(source, replica, checksum, &FsCaps::default())
}

/// `candidates` with mtimes compared within the replica's granularity.
pub fn candidates_on(
    source: &Listing,
    replica: &Listing,
    checksum: bool,
    fs: &FsCaps,
) -> Vec<Pair> {
    let (src, rep) = (&source.entries, &replica.entries);
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < src.len() && j < rep.len() {
        match src[i].path.cmp(&rep[j].path) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                let (s, r) = (&src[i], &rep[j]);
                if s.kind == EntryKind::File
                    && r.kind == EntryKind::File
                    && fs.needs_content_check(&s.meta, &r.meta, checksum)
                {
                    out.push(Pair {
                        source: i,
                        replica: j,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Both trees as scanned and opened, for the comparisons of one tick.
pub struct Sides<'a> {
    pub source: &'a Listing,
    pub replica: &'a Listing,
    pub source_root: &'a Root,
    pub replica_root: &'a Root,
}

/// Why a comparison found what it found (the `-v` detail).
type Why = Cow<'static, str>;

/// Compares the candidates; returns the files found equal and, when
/// `explain`, a detail event per comparison.
///
/// Pairs whose digests are both cached are decided first, under one lock
/// of the cache: on a `--checksum` tick of an unchanged tree that is every
/// pair, and nothing is read. The rest are read on `jobs` threads.
pub fn compare_all(
    pairs: &[Pair],
    sides: &Sides,
    cache: &Mutex<HashCache>,
    tick: u64,
    jobs: usize,
    explain: bool,
    stop: &StopFlag,
) -> (SameContent, Vec<LogEvent>) {
    let mut same = SameContent::default();
    let mut events = Vec::new();
    let mut explain_pair = |p: &Pair, why: Why| {
        let path = &sides.source.entries[p.source].path;
        events.push(LogEvent::op(Verb::Detail("compare"), path).with_str("content", why));
    };
    let mut misses = Vec::new();
    let trusted = (
        ctime_moves_on_write(sides.source_root),
        ctime_moves_on_write(sides.replica_root),
    );
    {
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        for p in pairs {
            let (s, r) = sides.pair(p);
            let mut lookup =
                |meta, trust: bool| trust.then(|| c.get(&CacheKey::from(meta), tick)).flatten();
            match (lookup(&s.meta, trusted.0), lookup(&r.meta, trusted.1)) {
                (Some(a), Some(b)) => {
                    if a == b {
                        same.mark(p.source);
                    }
                    // The reason is text for `-v` only: not built for
                    // every pair of a `--checksum` tick without it.
                    if explain {
                        explain_pair(p, judge(a == b, "cached digests").1);
                    }
                }
                halves => misses.push((*p, halves)),
            }
        }
    }
    let found = on_workers(&misses, jobs, stop, |(p, halves), found| {
        let (verdict, why) = compare_pair(sides, p, *halves, cache, tick);
        found.push((*p, verdict, why));
    });
    for (p, verdict, why) in found {
        if verdict == Content::Same {
            same.mark(p.source);
        }
        if explain {
            explain_pair(&p, why);
        }
    }
    (same, events)
}

/// Whether a root's filesystem moves a file's ctime at every write
/// (`fs_kind::ctime_moves_on_write`); where not, files are always read.
fn ctime_moves_on_write(root: &Root) -> bool {
    rustix::fs::fstatfs(root.fd()).is_ok_and(|fs| fs_kind::ctime_moves_on_write(fs.f_type as u64))
}

impl Sides<'_> {
    fn pair(&self, p: &Pair) -> (&Entry, &Entry) {
        (
            &self.source.entries[p.source],
            &self.replica.entries[p.replica],
        )
    }
}

fn judge(equal: bool, how: &str) -> (Content, Why) {
    if equal {
        (Content::Same, format!("same ({how})").into())
    } else {
        (Content::Differs, format!("differs ({how})").into())
    }
}

/// Decides whether a source file and its replica hold the same bytes;
/// `cached` holds the digests the cache already had for either side.
///
/// With one side cached, the other is hashed. With none, both files are
/// read side by side and the first differing block ends the comparison: a
/// large file with a small change costs a short read before its copy, and
/// equal files cost one read of each plus one SHA-1 (kept for both, so the
/// next comparison reads nothing).
fn compare_pair(
    sides: &Sides,
    p: &Pair,
    cached: (Option<Digest>, Option<Digest>),
    cache: &Mutex<HashCache>,
    tick: u64,
) -> (Content, Why) {
    let (s, r) = sides.pair(p);
    let (source, replica) = (sides.source_root, sides.replica_root);
    let (s_key, r_key) = (CacheKey::from(&s.meta), CacheKey::from(&r.meta));
    let unknown =
        |side: &str, e: io::Error| (Content::Unknown, format!("{side} unreadable: {e}").into());
    match cached {
        (Some(a), Some(b)) => judge(a == b, "cached digests"),
        (Some(a), None) => match digest_cached(replica, r, cache, tick) {
            Ok(b) => judge(a == b, "replica hashed"),
            Err(e) => unknown("replica", e),
        },
        (None, Some(b)) => match digest_cached(source, s, cache, tick) {
            Ok(a) => judge(a == b, "source hashed"),
            Err(e) => unknown("source", e),
        },
        (None, None) => match compare_contents(source, &s.path, replica, &r.path, s.meta.size) {
            Ok(Compared::Differ { at }) => judge(false, &format!("first difference at byte {at}")),
            Ok(Compared::Equal {
                digest,
                source_after,
                replica_after,
            }) => {
                // Equal bytes of versions other than the ones scanned say
                // nothing about those: let the copy decide (and re-check).
                let (s_same, r_same) = (
                    CacheKey::from(&source_after) == s_key,
                    CacheKey::from(&replica_after) == r_key,
                );
                if !(s_same && r_same) {
                    return (Content::Unknown, "changed while being compared".into());
                }
                let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                c.insert(s_key, digest, tick);
                c.insert(r_key, digest, tick);
                judge(true, "compared")
            }
            Err((side, e)) => unknown(side, e),
        },
    }
}

fn digest_cached(
    root: &Root,
    e: &Entry,
    cache: &Mutex<HashCache>,
    tick: u64,
) -> io::Result<Digest> {
    let (digest, seen) = digest_file(root, &e.path)?;
    let key = CacheKey::from(&e.meta);
    // Cache only what was read from the very version that was scanned.
    if CacheKey::from(&seen) == key {
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, digest, tick);
    }
    Ok(digest)
}

/// What reading two files side by side found.
enum Compared {
    Differ {
        at: u64,
    },
    Equal {
        digest: Digest,
        source_after: Meta,
        replica_after: Meta,
    },
}

const BLOCK: usize = 1 << 20;

/// Reads both files block by block until they differ or both end.
fn compare_contents(
    source: &Root,
    s_path: &RelPath,
    replica: &Root,
    r_path: &RelPath,
    size: u64,
) -> Result<Compared, (&'static str, io::Error)> {
    let mut a = open_regular(source, s_path).map_err(|e| ("source", e))?;
    let mut b = open_regular(replica, r_path).map_err(|e| ("replica", e))?;
    let (mut buf_a, mut buf_b) = (buffer(size), buffer(size));
    let mut hasher = Sha1::new();
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut a, &mut buf_a).map_err(|e| ("source", e))?;
        let m = read_full(&mut b, &mut buf_b).map_err(|e| ("replica", e))?;
        // One memcmp per block; the offset is looked for only once found.
        if buf_a[..n] != buf_b[..m] {
            let (a, b) = (&buf_a[..n], &buf_b[..m]);
            let i = a
                .iter()
                .zip(b)
                .position(|(x, y)| x != y)
                .unwrap_or(n.min(m));
            return Ok(Compared::Differ {
                at: offset + i as u64,
            });
        }
        if n == 0 {
            break;
        }
        hasher.update(&buf_a[..n]);
        offset += n as u64;
    }
    let after = |f: &std::fs::File| rustix::fs::fstat(f).map(|st| crate::fs::root::meta_of(&st));
    Ok(Compared::Equal {
        digest: Digest(hasher.finalize().into()),
        source_after: after(&a).map_err(|e| ("source", e.into()))?,
        replica_after: after(&b).map_err(|e| ("replica", e.into()))?,
    })
}

/// A read buffer for a file of `size` bytes: small files (most of them)
/// must not pay for zeroing a large block each.
fn buffer(size: u64) -> Vec<u8> {
    let len = usize::try_from(size).unwrap_or(BLOCK).saturating_add(1);
    vec![0u8; len.clamp(4096, BLOCK)]
}

/// Fills `buf` as far as the file allows; 0 at the end.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Opens a regular file below the root without following links; refuses
/// anything that is no longer a regular file (a fifo would block).
fn open_regular(root: &Root, path: &RelPath) -> io::Result<std::fs::File> {
    let (dir, name) = root.open_parent(path)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, name, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other("no longer a regular file"));
    }
    crate::fs::replica_ops::fail_point!("hasher::before_read");
    Ok(std::fs::File::from(fd))
}

/// SHA-1 of a regular file reached through the root without following
/// links; returns the digest with the file's metadata after reading.
pub fn digest_file(root: &Root, path: &RelPath) -> io::Result<(Digest, Meta)> {
    let mut file = open_regular(root, path)?;
    let size = file.metadata().map_or(BLOCK as u64, |m| m.len());
    let mut hasher = Sha1::new();
    let mut buf = buffer(size);
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let after = crate::fs::root::meta_of(&rustix::fs::fstat(&file)?);
    Ok((Digest(hasher.finalize().into()), after))
}

/// The Hasher stage; holds the digest cache between ticks.
pub struct Hasher {
    opts: Arc<SyncOptions>,
    log: Recipient<LogEvent>,
    cache: Arc<Mutex<HashCache>>,
    /// The saved cache was read (it is read once, at the first comparison).
    loaded: bool,
    /// No tick ran yet: the first compares every entry's attributes when
    /// the run must (`SyncOptions::attrs_sweep`).
    first: bool,
}

impl Hasher {
    pub fn new(opts: Arc<SyncOptions>, log: Recipient<LogEvent>) -> Self {
        Hasher {
            opts,
            log,
            cache: Arc::default(),
            loaded: false,
            first: true,
        }
    }
}

impl Stage for Hasher {
    type In = TreesScanned;
    type Out = TreesHashed;

    fn name(&self) -> &'static str {
        "compare"
    }

    // Every tick comes here: besides the comparisons, the replica's state
    // (racy copies, temporaries' tokens) is read here, off the async
    // thread.
    fn run(&mut self, msg: TreesScanned, cx: &mut TickCx) -> Flow<TreesHashed> {
        let (msg, respelled) = fold::pair_scanned(msg, &self.opts, &self.log, &mut cx.errors);
        let caps = &self.opts.replica_fs.caps;
        let mut pairs = candidates_on(&msg.source, &msg.replica, self.opts.checksum, caps);
        // Files the replica stores under another spelling are compared by
        // content too: their metadata may be another file's.
        let respelled = file_pairs(&msg.source, &msg.replica, respelled.iter());
        for p in &respelled {
            if !pairs.iter().any(|q| q.source == p.source) {
                pairs.push(*p);
            }
        }
        let (opts, cache, stop, log) = (&self.opts, &self.cache, cx.stop(), &self.log);
        let tick = cx.seq;
        // The roots the Scanner checked and walked, never opened again
        // by path: a root swapped since then is not read.
        let roots = match &msg.roots.replica {
            Some(replica) => Ok((&msg.roots.source, replica)),
            None => Err(()),
        };
        let (temps, racy_paths) = match &roots {
            Ok((_, replica)) => {
                let (paths, unusable) = racy::load(replica);
                if let (Some(e), 1) = (unusable, tick) {
                    log.do_send(LogEvent::new(Verb::Warn, None).with_str("reason", e.to_string()));
                }
                (crate::fs::replica_ops::recorded_tokens(replica), paths)
            }
            Err(()) => Default::default(),
        };
        let rechecks = racy_pairs(&msg.source, &msg.replica, &racy_paths);
        let rechecked: std::collections::HashSet<usize> =
            rechecks.iter().map(|p| p.source).collect();
        let pairs: Vec<Pair> = pairs
            .into_iter()
            .filter(|p| !rechecked.contains(&p.source))
            .collect();
        let search = match opts.renames {
            true => moves::search(
                &msg.source,
                &msg.replica,
                SearchOptions {
                    fs: caps,
                    temps: &TempTokens::this_run().union(&temps),
                    checksum: opts.checksum,
                    seen: &msg.seen,
                    racy: &racy_paths,
                },
            ),
            false => MoveSearch::default(),
        };
        let reads = !pairs.is_empty() || !search.doubtful.is_empty();
        let load = reads && !std::mem::replace(&mut self.loaded, true) && !opts.dry_run;
        if let (true, Ok((_, replica))) = (load, &roots) {
            let (loaded, unusable) = HashCache::load(replica, tick);
            *cache.lock().unwrap_or_else(|p| p.into_inner()) = loaded;
            // Once a run: the cache is loaded once.
            if let Some(e) = unusable {
                log.do_send(LogEvent::new(Verb::Warn, None).with_str("reason", e.to_string()));
            }
        }
        let (jobs, verbose) = (opts.jobs, opts.verbose);
        let (mut contents, mut events) = match (&roots, &opts.remote) {
            (_, Some(remote)) if !pairs.is_empty() => {
                let (s, r) = (&msg.source, &msg.replica);
                let same = compare_remote(
                    &pairs,
                    s,
                    r,
                    &msg.roots.source,
                    remote,
                    cache,
                    tick,
                    jobs,
                    stop,
                );
                (same, Vec::new())
            }
            (roots, _) => match roots {
                Ok((s, r)) if !pairs.is_empty() => {
                    let sides = Sides {
                        source: &msg.source,
                        replica: &msg.replica,
                        source_root: s,
                        replica_root: r,
                    };
                    compare_all(&pairs, &sides, cache, tick, jobs, verbose, stop)
                }
                // No replica (a dry run into a missing one), or no pairs.
                _ => (SameContent::default(), Vec::new()),
            },
        };
        let moves = match &roots {
            Ok((s, r)) if !search.doubtful.is_empty() => {
                let sides = Sides {
                    source: &msg.source,
                    replica: &msg.replica,
                    source_root: s,
                    replica_root: r,
                };
                confirm_moves(search, &sides, cache, tick, jobs, stop)
            }
            _ => search.resolve(|_| false),
        };
        if reads {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            // Only a tick that saw every pair knows which digests are
            // of files gone; one given the changed parts (`managed`
            // set) does not, and pruning there would empty the cache.
            if msg.managed.is_none() {
                cache.prune(tick);
            }
            // A dry run saves nothing; `--verify` saves the digests it
            // proved, every one read anew (a dry run loads no cache).
            let saves = !opts.dry_run || opts.verify;
            if let (true, true, Ok((_, replica))) = (saves, cache.is_dirty(), &roots) {
                // The cache only saves work: failing to save it is no error.
                if let Err(e) = cache.save(replica) {
                    log.do_send(
                        LogEvent::new(Verb::Detail("cache"), None).with_str("error", e.to_string()),
                    );
                }
            }
        }
        if let (false, Ok((s, r))) = (racy_paths.is_empty(), &roots) {
            let sides = Sides {
                source: &msg.source,
                replica: &msg.replica,
                source_root: s,
                replica_root: r,
            };
            let full = msg.managed.is_none();
            let (found, more) = recheck(&rechecks, &sides, racy_paths, full, opts, stop);
            contents.merge(&found);
            events.extend(more);
        }
        for p in &respelled {
            contents.mark_rechecked(p.source);
        }
        let sweep =
            (std::mem::replace(&mut self.first, false) && opts.attrs_sweep) || opts.checksum;
        let policy = opts.attrs_policy();
        if let (false, Ok((s, r))) = (policy.is_none(), &roots) {
            let sides = Sides {
                source: &msg.source,
                replica: &msg.replica,
                source_root: s,
                replica_root: r,
            };
            for i in attrs_to_set(&sides, policy, sweep, jobs, stop) {
                contents.mark_attrs(i);
            }
        }
        for ev in events {
            log.do_send(ev);
        }
        Flow::Next(TreesHashed {
            source: msg.source,
            replica: msg.replica,
            contents,
            moves,
            managed: msg.managed,
            roots: msg.roots,
            temps,
        })
    }
}

/// The source files and folders whose attributes the Differ plans an
/// `Op::Attrs` for. Those due by their ctime (`xattrs::due`) all are,
/// unread: the Applier compares them, and settles the equal ones. At a
/// sweep the others are read here, on `jobs` threads, and only those that
/// differ (or cannot be read) are: a sweep of an unchanged tree plans
/// nothing.
fn attrs_to_set(
    sides: &Sides,
    policy: xattrs::Policy,
    sweep: bool,
    jobs: usize,
    stop: &StopFlag,
) -> Vec<usize> {
    let (src, rep) = (&sides.source.entries, &sides.replica.entries);
    let (mut i, mut j) = (0, 0);
    let (mut marked, mut to_read) = (Vec::new(), Vec::new());
    while i < src.len() && j < rep.len() {
        match src[i].path.cmp(&rep[j].path) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                let (s, r) = (&src[i], &rep[j]);
                let kinds = matches!(
                    (&s.kind, &r.kind),
                    (EntryKind::File, EntryKind::File) | (EntryKind::Dir, EntryKind::Dir)
                );
                if kinds && xattrs::due(&s.meta, &r.meta, false) {
                    marked.push(i);
                } else if kinds && sweep {
                    to_read.push((i, j));
                }
                i += 1;
                j += 1;
            }
        }
    }
    // Runs of one folder's entries, each folder opened once per side.
    let mut runs: Vec<&[(usize, usize)]> = Vec::new();
    let mut start = 0;
    for k in 1..=to_read.len() {
        let parent = |k: usize| src[to_read[k].0].path.parent();
        if k == to_read.len() || k - start >= 256 || parent(k) != parent(start) {
            runs.push(&to_read[start..k]);
            start = k;
        }
    }
    let differ = on_workers(&runs, jobs, stop, |run, found| {
        found.extend(attrs_differ_in(sides, run, policy));
    });
    marked.extend(differ);
    marked
}

/// The source entries of `run` (pairs in one folder) whose attributes
/// differ from their replica's, or cannot be read.
fn attrs_differ_in(sides: &Sides, run: &[(usize, usize)], policy: xattrs::Policy) -> Vec<usize> {
    // Paired by path: the replica entry has the source entry's path.
    let src = &sides.source.entries;
    let Some(&(first, _)) = run.first() else {
        return Vec::new();
    };
    let Some(parent) = src[first].path.parent() else {
        // The root: through its handles' names.
        let below = |root: &Root| {
            std::path::PathBuf::from(format!("/proc/self/fd/{}", root.fd().as_raw_fd()))
        };
        let (s, r) = (below(sides.source_root), below(sides.replica_root));
        let read = |p: &std::path::Path| xattrs::read(xattrs::On::Below(p), policy);
        return match (read(&s), read(&r)) {
            (Ok(a), Ok(b)) if a == b => Vec::new(),
            _ => vec![first],
        };
    };
    let dirs = (
        sides.source_root.open_dir(&parent),
        sides.replica_root.open_dir(&parent),
    );
    let (Ok(s), Ok(r)) = dirs else {
        return run.iter().map(|&(i, _)| i).collect();
    };
    run.iter()
        .filter(|&&(i, _)| {
            let name = src[i].path.name();
            !xattrs::same_at(s.as_fd(), r.as_fd(), name, policy)
        })
        .map(|&(i, _)| i)
        .collect()
}

/// A remote replica's files are never downloaded to be compared: the
/// source file's SHA-1 is compared with the one stored with the object
/// (as recorded, or read with its metadata). A pair without a stored
/// digest is not marked: the file is uploaded again.
#[allow(clippy::too_many_arguments)]
fn compare_remote(
    pairs: &[Pair],
    source: &Listing,
    replica: &Listing,
    source_root: &Root,
    remote: &crate::remote::Remote,
    cache: &Mutex<HashCache>,
    tick: u64,
    jobs: usize,
    stop: &StopFlag,
) -> SameContent {
    let found = on_workers(pairs, jobs, stop, |p, out| {
        let (s, r) = (&source.entries[p.source], &replica.entries[p.replica]);
        let Some(stored) = std::str::from_utf8(r.path.as_bytes())
            .ok()
            .and_then(|key| remote.stored_sha1(key))
        else {
            return;
        };
        let key = CacheKey::from(&s.meta);
        let cached = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key, tick);
        let digest = match cached {
            Some(d) => Some(d),
            None => digest_cached(source_root, s, cache, tick).ok(),
        };
        if digest == Some(stored) {
            out.push(p.source);
        }
    });
    let mut same = SameContent::default();
    for i in found {
        same.mark(i);
    }
    same
}

/// Runs `each` over `items` on `jobs` threads, each taking the next item
/// not yet taken, until all are done or a stop is asked; what they found,
/// in no particular order.
fn on_workers<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    stop: &StopFlag,
    each: impl Fn(&T, &mut Vec<R>) + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.clamp(1, items.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut found = Vec::new();
                    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if stop.is_requested() {
                            break;
                        }
                        each(item, &mut found);
                    }
                    found
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

/// Settles the doubtful move pairs by content: each file in one is
/// hashed once (or its digest taken from the cache), on `jobs` threads, and
/// a pair counts where both digests are known and equal.
fn confirm_moves(
    search: MoveSearch,
    sides: &Sides,
    cache: &Mutex<HashCache>,
    tick: u64,
    jobs: usize,
    stop: &StopFlag,
) -> MovePairs {
    // (is the source side, place in that side's listing)
    let wanted: BTreeSet<(bool, usize)> = search
        .to_confirm()
        .flat_map(|p| [(true, p.source), (false, p.replica)])
        .collect();
    let wanted: Vec<_> = wanted.into_iter().collect();
    let trusted = (
        ctime_moves_on_write(sides.source_root),
        ctime_moves_on_write(sides.replica_root),
    );
    let digests: HashMap<(bool, usize), Digest> =
        on_workers(&wanted, jobs, stop, |&(is_source, i), found| {
            let (root, listing, trust) = match is_source {
                true => (sides.source_root, sides.source, trusted.0),
                false => (sides.replica_root, sides.replica, trusted.1),
            };
            let e = &listing.entries[i];
            let cached = trust
                .then(|| {
                    cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&CacheKey::from(&e.meta), tick)
                })
                .flatten();
            // An unreadable file pairs with nothing: a copy then.
            if let Some(d) = cached.or_else(|| digest_cached(root, e, cache, tick).ok()) {
                found.push(((is_source, i), d));
            }
        })
        .into_iter()
        .collect();
    search.resolve(|p| {
        matches!(
            (digests.get(&(true, p.source)), digests.get(&(false, p.replica))),
            (Some(a), Some(b)) if a == b
        )
    })
}

/// The recorded racy paths that are a file on both sides: compared by
/// content whatever their metadata say (`racy.rs`).
pub fn racy_pairs(source: &Listing, replica: &Listing, racy: &BTreeSet<RelPath>) -> Vec<Pair> {
    file_pairs(source, replica, racy.iter())
}

/// The `paths` that are a regular file on both sides, as pairs.
fn file_pairs<'p>(
    source: &Listing,
    replica: &Listing,
    paths: impl Iterator<Item = &'p RelPath>,
) -> Vec<Pair> {
    let find = |l: &Listing, p: &RelPath| {
        l.entries
            .binary_search_by(|e| e.path.cmp(p))
            .ok()
            .filter(|&i| l.entries[i].kind == EntryKind::File)
    };
    paths
        .filter_map(|p| {
            Some(Pair {
                source: find(source, p)?,
                replica: find(replica, p)?,
            })
        })
        .collect()
}

/// Compares the racy pairs, never from cached digests (a digest read
/// while the write was in flight would be cached under the final stamps),
/// and updates the recorded set: a path found equal leaves it unless its
/// source is still inside the racy window; on a tick over the whole
/// listings (`full`), so does a path that is no longer a file on both
/// sides. A pair found equal or different is marked as rechecked, so that
/// the verdict decides; one that could not be read stays recorded and is
/// left to its metadata this tick.
pub fn recheck(
    pairs: &[Pair],
    sides: &Sides,
    mut recorded: BTreeSet<RelPath>,
    full: bool,
    opts: &SyncOptions,
    stop: &StopFlag,
) -> (SameContent, Vec<LogEvent>) {
    let started = std::time::SystemTime::now();
    let fresh = Mutex::new(HashCache::default());
    let (mut same, mut events) = (SameContent::default(), Vec::new());
    let before = recorded.clone();
    if full {
        recorded.clear();
        recorded.extend(
            pairs
                .iter()
                .map(|p| sides.source.entries[p.source].path.clone()),
        );
    }
    for p in pairs {
        if stop.is_requested() {
            break;
        }
        let s = &sides.source.entries[p.source];
        let (verdict, why) = compare_pair(sides, p, (None, None), &fresh, 0);
        if opts.verbose {
            let why = format!("{why}, copied while written");
            events.push(LogEvent::op(Verb::Detail("compare"), &s.path).with_str("content", why));
        }
        match verdict {
            Content::Unknown => continue,
            Content::Same => same.mark(p.source),
            Content::Differs => {}
        }
        same.mark_rechecked(p.source);
        let span = opts.replica_fs.caps.blind_span();
        if verdict == Content::Same && !racy::is_racy(started, s.meta.mtime, s.meta.ctime, span) {
            recorded.remove(&s.path);
        }
    }
    // A path found different stays until a copy of it is not racy (the
    // Applier settles it).
    if !opts.dry_run && recorded != before {
        // Failing to forget costs one more comparison next tick.
        let _ = racy::save(sides.replica_root, &recorded);
    }
    (same, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::messages::{Batch, LogValue};
    use crate::contract::model::Timestamp;
    use crate::fs::root::{meta_of, stat_at};
    use crate::testing::{start_stage, wait_until, Collector};

    fn scanned(root: &Root, path: &str) -> Entry {
        let rel = RelPath::from_str_lossy(path);
        let st = stat_at(root.fd(), rel.as_bytes()).unwrap();
        Entry {
            path: rel,
            kind: EntryKind::File,
            meta: meta_of(&st),
            excluded: false,
        }
    }

    fn two_roots(files: &[(&str, &[u8], &[u8])]) -> (tempfile::TempDir, Root, Root) {
        let tmp = tempfile::tempdir().unwrap();
        for side in ["s", "r"] {
            std::fs::create_dir(tmp.path().join(side)).unwrap();
        }
        for (name, s, r) in files {
            std::fs::write(tmp.path().join("s").join(name), s).unwrap();
            std::fs::write(tmp.path().join("r").join(name), r).unwrap();
        }
        let s = Root::open(&tmp.path().join("s")).unwrap();
        let r = Root::open(&tmp.path().join("r")).unwrap();
        (tmp, s, r)
    }

    #[test]
    fn digest_is_sha1() {
        let (_tmp, s, _) = two_roots(&[("a", b"abc", b"")]);
        let (d, meta) = digest_file(&s, &RelPath::from_str_lossy("a")).unwrap();
        assert_eq!(d.to_string(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(meta.size, 3);
    }

    #[test]
    fn only_same_size_files_with_other_mtimes_are_candidates() {
        let mk = |size, secs| {
            let mut l = Listing::default();
            let mut e = Entry {
                path: RelPath::from_str_lossy("f"),
                kind: EntryKind::File,
                meta: Meta::default(),
                excluded: false,
            };
            e.meta.size = size;
            e.meta.mtime = Timestamp::new(secs, 0);
            l.entries.push(e);
            l
        };
        assert_eq!(candidates(&mk(5, 1), &mk(5, 2), false).len(), 1);
        assert_eq!(candidates(&mk(5, 1), &mk(6, 2), false).len(), 0);
        assert_eq!(candidates(&mk(5, 1), &mk(5, 1), false).len(), 0);
        assert_eq!(candidates(&mk(5, 1), &mk(5, 1), true).len(), 1);
        // Within the replica's timestamp granularity mtimes agree.
        let coarse = FsCaps {
            granularity_ns: 2_000_000_000,
            ..FsCaps::default()
        }
        .with_window(None);
        assert_eq!(candidates_on(&mk(5, 1), &mk(5, 2), false, &coarse).len(), 0);
        assert_eq!(candidates_on(&mk(5, 1), &mk(5, 3), false, &coarse).len(), 1);
    }

    /// Listings of `names` (sorted) on both sides, each file paired with
    /// its namesake.
    fn listed(s: &Root, r: &Root, names: &[&str]) -> (Listing, Listing, Vec<Pair>) {
        let mut names = names.to_vec();
        names.sort_unstable();
        let side = |root| Listing {
            entries: names.iter().map(|n| scanned(root, n)).collect(),
            incomplete: Vec::new(),
        };
        let pairs = (0..names.len())
            .map(|i| Pair {
                source: i,
                replica: i,
            })
            .collect();
        (side(s), side(r), pairs)
    }

    /// Runs `compare_all` with every detail explained; returns whether
    /// each pair was found equal, and the reasons, in pair order.
    fn check(
        (source, replica, pairs): &(Listing, Listing, Vec<Pair>),
        roots: (&Root, &Root),
        cache: &Mutex<HashCache>,
        tick: u64,
        jobs: usize,
    ) -> Vec<(bool, String)> {
        let sides = Sides {
            source,
            replica,
            source_root: roots.0,
            replica_root: roots.1,
        };
        let (same, events) = compare_all(pairs, &sides, cache, tick, jobs, true, &StopFlag::new());
        assert_eq!(events.len(), pairs.len());
        pairs
            .iter()
            .map(|p| {
                let path = &source.entries[p.source].path;
                let ev = events
                    .iter()
                    .find(|e| e.path.as_ref() == Some(path))
                    .unwrap();
                let Some(LogValue::Str(why)) = ev.field("content") else {
                    panic!("no reason in {ev:?}");
                };
                (same.contains(p.source), why.clone())
            })
            .collect()
    }

    #[test]
    fn compares_contents_and_reuses_cached_digests() {
        let (_tmp, s, r) = two_roots(&[("same", b"hello", b"hello"), ("diff", b"hello", b"HELLO")]);
        let listed = listed(&s, &r, &["diff", "same"]);
        let cache = Mutex::new(HashCache::default());
        let v = check(&listed, (&s, &r), &cache, 1, 2);
        assert_eq!(v[0], (false, "differs (first difference at byte 0)".into()));
        assert_eq!(v[1], (true, "same (compared)".into()));
        // Equal files leave a digest for each side; files found different
        // at their first block were not read to the end, so none.
        assert_eq!(cache.lock().unwrap().len(), 2);
        let v = check(&listed, (&s, &r), &cache, 2, 2);
        assert_eq!(v[1], (true, "same (cached digests)".into()));
        // A cached digest stands for the file as long as its metadata does:
        // plant a wrong one and the verdict follows it, so no read happened.
        let key = CacheKey::from(&listed.1.entries[1].meta);
        cache.lock().unwrap().insert(key, Digest([0; 20]), 1);
        let v = check(&listed, (&s, &r), &cache, 2, 1);
        assert_eq!(v[1], (false, "differs (cached digests)".into()));
    }

    #[test]
    fn unreadable_side_is_unknown_and_prune_drops_unused_entries() {
        let (tmp, s, r) = two_roots(&[("a", b"x", b"y")]);
        let listed = listed(&s, &r, &["a"]);
        std::fs::remove_file(tmp.path().join("r/a")).unwrap();
        let cache = Mutex::new(HashCache::default());
        let v = check(&listed, (&s, &r), &cache, 7, 1);
        assert!(!v[0].0 && v[0].1.starts_with("replica unreadable"), "{v:?}");
        // With the source's digest cached, only the replica is opened.
        let key = CacheKey::from(&listed.0.entries[0].meta);
        cache.lock().unwrap().insert(key, Digest([1; 20]), 7);
        let v = check(&listed, (&s, &r), &cache, 7, 1);
        assert!(!v[0].0 && v[0].1.starts_with("replica unreadable"), "{v:?}");
        let mut c = cache.into_inner().unwrap();
        assert_eq!(c.len(), 1);
        c.prune(8);
        assert!(c.is_empty());
    }

    #[test]
    fn a_difference_deep_in_a_large_file_is_found_and_equal_files_are_hashed() {
        let mut big = vec![7u8; 3 * BLOCK + 123];
        let (tmp, s, r) = two_roots(&[("big", &big, &big)]);
        big[2 * BLOCK + 5] = 8;
        std::fs::write(tmp.path().join("r/big"), &big).unwrap();
        let cache = Mutex::new(HashCache::default());
        let v = check(&listed(&s, &r, &["big"]), (&s, &r), &cache, 1, 1);
        let at = format!("{}", 2 * BLOCK + 5);
        assert_eq!(
            v[0],
            (false, format!("differs (first difference at byte {at})"))
        );
        // Equal: the digest is SHA-1 of the content, shared by both sides.
        std::fs::write(tmp.path().join("s/big"), &big).unwrap();
        let listed = listed(&s, &r, &["big"]);
        let v = check(&listed, (&s, &r), &cache, 1, 1);
        assert!(v[0].0);
        let expected = Digest(Sha1::digest(&big).into());
        let mut c = cache.lock().unwrap();
        let (src, rep) = (&listed.0.entries[0].meta, &listed.1.entries[0].meta);
        assert_eq!(c.get(&CacheKey::from(src), 1), Some(expected));
        assert_eq!(c.get(&CacheKey::from(rep), 1), Some(expected));
    }

    #[test]
    fn many_pairs_on_several_threads_each_get_their_own_verdict() {
        let files: Vec<(String, Vec<u8>, Vec<u8>)> = (0..200)
            .map(|i| {
                let body = format!("file {i}").into_bytes();
                let other = if i % 3 == 0 {
                    b"x".repeat(body.len())
                } else {
                    body.clone()
                };
                (format!("f{i:03}"), body, other)
            })
            .collect();
        let refs: Vec<(&str, &[u8], &[u8])> = files
            .iter()
            .map(|(n, a, b)| (n.as_str(), a.as_slice(), b.as_slice()))
            .collect();
        let (_tmp, s, r) = two_roots(&refs);
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        let listed = listed(&s, &r, &names);
        let cache = Mutex::new(HashCache::default());
        for tick in [1, 2] {
            let v = check(&listed, (&s, &r), &cache, tick, 2);
            for (i, (same, _)) in v.iter().enumerate() {
                assert_eq!(*same, i % 3 != 0, "f{i:03} at tick {tick}");
            }
        }
    }

    #[actix_rt::test]
    async fn actor_sends_verdicts_downstream() {
        let (tmp, s, r) = two_roots(&[("f", b"one", b"two")]);
        let mut source = Listing::default();
        source.entries.push(scanned(&s, "f"));
        let mut replica = Listing::default();
        let mut e = scanned(&r, "f");
        e.meta.mtime = Timestamp::new(1, 0);
        replica.entries.push(e);
        let (log, _) = Collector::<LogEvent>::start();
        let opts = SyncOptions::new(tmp.path().join("s"), tmp.path().join("r"));
        let hasher = Hasher::new(Arc::new(opts), log.clone().recipient());
        let (hasher, (got, _)) = start_stage(hasher, log.recipient(), StopFlag::new());
        hasher.do_send(Batch::whole(
            TickCx::new(1),
            TreesScanned {
                source: Arc::new(source),
                replica: Arc::new(replica),
                managed: None,
                seen: Vec::new(),
                roots: crate::testing::roots(&tmp.path().join("s"), &tmp.path().join("r")),
            },
        ));
        wait_until(|| !got.lock().unwrap().is_empty()).await;
        let got = got.lock().unwrap();
        // Different content: not found the same. (Its attributes are
        // checked by the Applier: both were written just now.)
        assert_eq!(got[0].body.contents.count(), 0);
    }

    #[actix_rt::test]
    async fn a_recorded_racy_copy_is_compared_by_content_though_metadata_agree() {
        let (tmp, s, r) = two_roots(&[("f", b"torn", b"TORN"), ("g", b"same", b"same")]);
        // The replica files get the source's mtimes on disk, as a copy
        // does (the comparison checks the files are still as listed).
        for name in ["f", "g"] {
            let mtime = std::fs::metadata(tmp.path().join("s").join(name))
                .unwrap()
                .modified()
                .unwrap();
            filetime::set_file_mtime(
                tmp.path().join("r").join(name),
                filetime::FileTime::from_system_time(mtime),
            )
            .unwrap();
        }
        let (source, replica, _) = listed(&s, &r, &["f", "g"]);
        // Without a record, metadata decide: nothing to compare.
        assert!(candidates(&source, &replica, false).is_empty());
        std::fs::create_dir(tmp.path().join("r/.treesync")).unwrap();
        let paths = [RelPath::from_str_lossy("f"), RelPath::from_str_lossy("g")];
        racy::save(&r, &paths.iter().cloned().collect()).unwrap();
        let (log, _) = Collector::<LogEvent>::start();
        let opts = SyncOptions::new(tmp.path().join("s"), tmp.path().join("r"));
        let hasher = Hasher::new(Arc::new(opts), log.clone().recipient());
        let (hasher, (got, _)) = start_stage(hasher, log.recipient(), StopFlag::new());
        hasher.do_send(Batch::whole(
            TickCx::new(1),
            TreesScanned {
                source: Arc::new(source),
                replica: Arc::new(replica),
                managed: None,
                seen: Vec::new(),
                roots: crate::testing::roots(&tmp.path().join("s"), &tmp.path().join("r")),
            },
        ));
        wait_until(|| !got.lock().unwrap().is_empty()).await;
        let contents = &got.lock().unwrap()[0].body.contents;
        // f differs (an update), g is equal; both were compared.
        assert!(contents.rechecked(0) && !contents.contains(0));
        assert!(contents.rechecked(1) && contents.contains(1));
        // g, written just now, is still inside the racy window: it stays
        // recorded, as does f until a copy of it settles.
        assert_eq!(racy::load(&r).0.len(), 2);
    }

    #[actix_rt::test]
    async fn only_a_tick_over_the_whole_listings_prunes_the_cache() {
        let (tmp, s, r) = two_roots(&[("f", b"same", b"same")]);
        let listing = |root: &Root| Listing {
            entries: vec![scanned(root, "f")],
            incomplete: Vec::new(),
        };
        let (log, _) = Collector::<LogEvent>::start();
        let mut opts = SyncOptions::new(tmp.path().join("s"), tmp.path().join("r"));
        opts.checksum = true;
        opts.dry_run = true; // nothing loaded or saved: the cache is this one
        let hasher = Hasher::new(Arc::new(opts), log.clone().recipient());
        let cache = hasher.cache.clone();
        let elsewhere = CacheKey::from(&Meta::default());
        cache.lock().unwrap().insert(elsewhere, Digest([9; 20]), 1);
        let (hasher, (got, _)) = start_stage(hasher, log.recipient(), StopFlag::new());
        let send = |seq, managed| {
            hasher.do_send(Batch::whole(
                TickCx::new(seq),
                TreesScanned {
                    source: Arc::new(listing(&s)),
                    replica: Arc::new(listing(&r)),
                    managed,
                    seen: Vec::new(),
                    roots: crate::testing::roots(&tmp.path().join("s"), &tmp.path().join("r")),
                },
            ))
        };
        // The changed parts only: a digest of a file elsewhere stays.
        send(2, Some(10));
        wait_until(|| got.lock().unwrap().len() == 1).await;
        assert_eq!(
            cache.lock().unwrap().get(&elsewhere, 2),
            Some(Digest([9; 20]))
        );
        // Every pair seen: one not used in this tick goes.
        send(3, None);
        wait_until(|| got.lock().unwrap().len() == 2).await;
        assert_eq!(cache.lock().unwrap().get(&elsewhere, 3), None);
    }
}
