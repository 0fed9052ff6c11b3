//! The walk's result: what each worker collected (`Output`), merged and put
//! in the canonical listing order. Takes the workers' outputs, each a pool
//! of per-folder runs already sorted by name; gives back a `WalkResult`.
//! The runs are stitched and permuted in place, not sorted as a whole,
//! because sorting a million paths by components was most of a walk's CPU
//! and holding the tree twice most of its memory.

use super::base::{io_error, vanished, Side};
use super::WalkResult;
use crate::contract::messages::LogEvent;
use crate::contract::model::{Entry, Listing};
use crate::contract::relpath::RelPath;
use rustix::io::Errno;
use std::collections::HashMap;
use std::fmt;

/// What one worker collected.
#[derive(Default)]
pub(super) struct Output {
    /// The roots' own entries and the incomplete folders.
    pub(super) source: Listing,
    pub(super) replica: Listing,
    /// The entries of every folder listed, one after the other, and where
    /// each folder's run is: one large vector rather than one per folder,
    /// so that putting them in order moves them in place (`stitch`) and the
    /// tree is never held twice.
    source_pool: Vec<Entry>,
    replica_pool: Vec<Entry>,
    source_chunks: Vec<Chunk>,
    replica_chunks: Vec<Chunk>,
    pub(super) events: Vec<LogEvent>,
    pub(super) errors: u64,
}

impl Output {
    pub(super) fn listing(&mut self, side: Side) -> &mut Listing {
        match side {
            Side::Source => &mut self.source,
            Side::Replica => &mut self.replica,
        }
    }

    pub(super) fn log_error(
        &mut self,
        side: Side,
        path: &RelPath,
        op: &str,
        what: impl fmt::Display,
    ) {
        let msg = match side {
            Side::Source => what.to_string(),
            Side::Replica => format!("in the replica: {what}"),
        };
        self.events.push(LogEvent::error(Some(path), op, msg));
        self.errors += 1;
    }

    /// A folder that could not be opened or read to the end: nothing below
    /// it may be deleted. One that vanished meanwhile is no error.
    pub(super) fn folder_failed(&mut self, side: Side, rel: &RelPath, what: &str, err: Errno) {
        if !vanished(err) {
            self.log_error(side, rel, "scan", format_args!("{what}: {}", io_error(err)));
        }
        self.listing(side).incomplete.push(rel.clone());
    }

    /// An entry that could not be read: left out, and its folder counts as
    /// incomplete so that the other side's copy is kept.
    pub(super) fn entry_failed(
        &mut self,
        side: Side,
        folder: &RelPath,
        name: &[u8],
        what: &str,
        err: Errno,
    ) {
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

    pub(super) fn merge(&mut self, other: Output) {
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
    pub(super) fn add_chunk(&mut self, side: Side, folder: &RelPath, entries: &mut Vec<Entry>) {
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

    pub(super) fn finish(mut self, interrupted: bool) -> WalkResult {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
