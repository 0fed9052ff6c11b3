//! Moves: which file the source has under a new name is which file the
//! replica has under the old one. Shared by the Hasher, which confirms
//! doubtful pairs by content, and the Differ, which plans the renames.
//!
//! A pair is a replica file the source lacks and a source file the replica
//! lacks, both regular files of the same size and mtime (within the
//! replica's window). Metadata alone decides when no other file on either
//! side has that size and mtime (so names shifted with equal metadata, or
//! a copy kept beside, are doubtful), the source's mtime has a sub-second
//! part and the replica keeps it: a clock-made timestamp to the nanosecond
//! and a size that agree are what the quick check trusts for a file at the
//! same path. Anything weaker is confirmed by SHA-1 before it counts:
//! whole-second mtimes (archives, reproducible builds, FAT sources give
//! many files the same), a coarse replica, several candidates (copies made
//! with `cp -p`), a replica file recorded as copied while written (racy),
//! and every pair under `--checksum`.
//!
//! Renames the Watcher saw (inotify's move cookies pair the two halves)
//! are sure whatever the times: a file whose old path only the replica
//! has and new path only the source has, with its size and mtime
//! unchanged, or a folder (with its files at the same inner paths). A
//! later creation, removal or rename over a path undoes what an earlier
//! rename said of it (`compose`).
//!
//! Folders (`folder_moves`): where the pairs say that the files of a
//! replica folder the source lacks are, under the same inner paths, in a
//! source folder the replica lacks, the folder moves as a whole (one
//! rename), and what differs inside it is then compared as for any folder.

use crate::contract::model::{Entry, EntryKind, Listing, TempTokens, Timestamp};
use crate::contract::model::{IGNORE_FILE, STATE_DIR};
use crate::contract::relpath::RelPath;
use crate::fs::replica_fs::FsCaps;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Most source files one replica file is compared with by content: beyond
/// that (thousands of empty or generated files alike) it is a copy.
const MAX_CANDIDATES: usize = 256;

/// A source file and the replica file it may be: places in the listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MovePair {
    pub source: usize,
    pub replica: usize,
}

/// What `search` found: pairs sure by metadata, and replica files with the
/// source files they may be, to be confirmed by content.
#[derive(Debug, Default)]
pub struct MoveSearch {
    pub sure: Vec<MovePair>,
    pub doubtful: Vec<(usize, Vec<usize>)>,
    /// Folders renamed in the source as the Watcher saw it, where the
    /// replica still has the old one and the source only the new one.
    pub folders: Vec<MovePair>,
}

impl MoveSearch {
    /// Every pair to compare by content.
    pub fn to_confirm(&self) -> impl Iterator<Item = MovePair> + '_ {
        self.doubtful.iter().flat_map(|(replica, sources)| {
            sources.iter().map(|&source| MovePair {
                source,
                replica: *replica,
            })
        })
    }

    /// The pairs that count: the sure ones, and of each doubtful replica
    /// file the first candidate found equal that no other file took.
    pub fn resolve(self, equal: impl Fn(MovePair) -> bool) -> MovePairs {
        let mut taken: HashSet<usize> = self.sure.iter().map(|p| p.source).collect();
        let mut pairs = self.sure;
        for (replica, sources) in self.doubtful {
            let found = sources
                .into_iter()
                .find(|&source| !taken.contains(&source) && equal(MovePair { source, replica }));
            if let Some(source) = found {
                taken.insert(source);
                pairs.push(MovePair { source, replica });
            }
        }
        pairs.sort_unstable();
        MovePairs {
            files: pairs,
            folders: self.folders,
            failed: HashSet::new(),
        }
    }
}

/// The moves of one tick: each source and replica file in one pair at
/// most, sorted by source place; the folders known to be renamed; and
/// the moves that did not happen when last planned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MovePairs {
    pub files: Vec<MovePair>,
    pub folders: Vec<MovePair>,
    /// Moves (old path, new path) planned by the last tick and found
    /// again: they failed (a folder the replica will not let go, an
    /// immutable file), so they are planned as copies and deletions.
    pub failed: HashSet<(RelPath, RelPath)>,
}

impl MovePairs {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.folders.is_empty()
    }
}

/// What the Watcher saw on the source, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A rename whose two halves inotify paired (its move cookie).
    Renamed { from: RelPath, to: RelPath },
    /// The entry at `path` was created, removed or renamed over: what an
    /// earlier rename said of this path, or of anything below it, no
    /// longer holds.
    Replaced { path: RelPath },
}

/// What the search may use of the seen renames.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Composed {
    /// Renames as they add up (`a -> b` then `b -> c` is `a -> c`), none
    /// undone by a later replacement.
    pub renamed: Vec<(RelPath, RelPath)>,
    /// Paths below a renamed folder that were replaced since: not the
    /// folder's own entries any more.
    pub replaced: Vec<RelPath>,
}

/// Adds up what was seen; see `Composed`.
pub fn compose(seen: &[Seen]) -> Composed {
    let mut out = Composed::default();
    let inside_renamed = |renamed: &[(RelPath, RelPath)], p: &RelPath| {
        renamed
            .iter()
            .any(|(_, now)| p.starts_with(now) && p != now)
    };
    for event in seen {
        match event {
            Seen::Replaced { path } => {
                out.renamed.retain(|(_, now)| !now.starts_with(path));
                if inside_renamed(&out.renamed, path) {
                    out.replaced.push(path.clone());
                }
            }
            Seen::Renamed { from, to } => {
                // Whatever was at `to` is gone: renamed over.
                out.renamed.retain(|(_, now)| !now.starts_with(to));
                out.replaced.retain(|p| !p.starts_with(to));
                let mut merged = false;
                for (_, now) in out.renamed.iter_mut() {
                    if let Some(p) = rebase(now, from, to) {
                        merged |= now == from;
                        *now = p;
                    }
                }
                for p in out.replaced.iter_mut() {
                    if let Some(moved) = rebase(p, from, to) {
                        *p = moved;
                    }
                }
                // Moved into a renamed folder: not one of its own entries.
                if inside_renamed(&out.renamed, to) {
                    out.replaced.push(to.clone());
                }
                if !merged {
                    out.renamed.push((from.clone(), to.clone()));
                }
            }
        }
    }
    out
}

/// What limits the search.
#[derive(Clone, Copy, Debug)]
pub struct SearchOptions<'a> {
    pub fs: &'a FsCaps,
    pub temps: &'a TempTokens,
    /// `--checksum`: no pair is sure by metadata.
    pub checksum: bool,
    /// What the Watcher saw of the source since the last tick.
    pub seen: &'a [Seen],
    /// Replica files recorded as copied while being written: their
    /// metadata may not tell their content, so no pair with one is sure.
    pub racy: &'a BTreeSet<RelPath>,
}

/// Pairs the files that moved: see the module's doc.
pub fn search(source: &Listing, replica: &Listing, opts: SearchOptions) -> MoveSearch {
    let mut found = MoveSearch::default();
    let (src, rep) = (&source.entries, &replica.entries);
    let reserved = |p: &RelPath| {
        p.is_root()
            || (p.components().next() == Some(STATE_DIR))
            || p.name() == IGNORE_FILE
            || opts.temps.owns(p.name())
    };
    let listed = |e: &Entry| {
        !e.excluded
            && !reserved(&e.path)
            && !source.is_incomplete_at(&e.path)
            && !replica.is_incomplete_at(&e.path)
    };
    let movable = |e: &Entry| e.kind == EntryKind::File && listed(e);
    let same_meta = |s: &Entry, r: &Entry| {
        s.meta.size == r.meta.size && opts.fs.same_mtime(s.meta.mtime, r.meta.mtime)
    };
    // Renames the Watcher saw: an entry whose old path only the replica
    // has and whose new path only the source has is that entry, moved (a
    // file with its size and mtime unchanged on the way): sure, whatever
    // its times, and so are the files of a renamed folder that nothing
    // replaced since.
    let (mut taken_src, mut taken_rep) = (HashSet::new(), HashSet::new());
    let mut take = |found: &mut MoveSearch, source: usize, replica: usize| {
        if taken_src.insert(source) && taken_rep.insert(replica) {
            found.sure.push(MovePair { source, replica });
        }
    };
    let seen = compose(opts.seen);
    let trusted = |s: &Entry, r: &Entry| {
        movable(s) && movable(r) && same_meta(s, r) && !opts.racy.contains(&r.path)
    };
    for (from, to) in &seen.renamed {
        let (Some(j), Some(i)) = (place(replica, from), place(source, to)) else {
            continue;
        };
        if source.get(from).is_some() || replica.get(to).is_some() {
            continue;
        }
        let (s, r) = (&src[i], &rep[j]);
        match (&s.kind, &r.kind) {
            (EntryKind::File, EntryKind::File) if trusted(s, r) => take(&mut found, i, j),
            (EntryKind::Dir, EntryKind::Dir) if listed(s) && listed(r) => {
                found.folders.push(MovePair {
                    source: i,
                    replica: j,
                });
                let inside = rep[j + 1..]
                    .iter()
                    .enumerate()
                    .take_while(|(_, e)| e.path.starts_with(from));
                for (k, e) in inside {
                    let Some(p) = rebase(&e.path, from, to) else {
                        continue;
                    };
                    if seen.replaced.iter().any(|gone| p.starts_with(gone)) {
                        continue;
                    }
                    if let Some(ii) = place(source, &p).filter(|&ii| trusted(&src[ii], e)) {
                        take(&mut found, ii, j + 1 + k);
                    }
                }
            }
            _ => {}
        }
    }
    // (size, mtime in ns, place) of each side's files without a partner
    // at their own path, sorted.
    let key = |e: &Entry, i: usize| (e.meta.size, ns(e.meta.mtime), i);
    // Looked for above each replica file only where the source has any.
    let specials = src
        .iter()
        .any(|e| matches!(e.kind, EntryKind::Special { .. }));
    let (mut news, mut olds) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < src.len() || j < rep.len() {
        match (src.get(i), rep.get(j)) {
            (Some(s), Some(r)) if s.path == r.path => {
                i += 1;
                j += 1;
            }
            (_, Some(r)) if src.get(i).is_none_or(|s| r.path < s.path) => {
                if movable(r)
                    && !taken_rep.contains(&j)
                    && !(specials && under_special(source, &r.path))
                {
                    olds.push(key(r, j));
                }
                j += 1;
            }
            (Some(s), _) => {
                if movable(s) && !taken_src.contains(&i) {
                    news.push(key(s, i));
                }
                i += 1;
            }
            (None, _) => unreachable!(),
        }
    }
    if news.is_empty() || olds.is_empty() {
        return found;
    }
    news.sort_unstable();
    olds.sort_unstable();
    // Every file of each side by (size, mtime): a file the other side also
    // has under its old name, with the same metadata (names shifted, a
    // copy kept), makes a pair as doubtful as two candidates would.
    let everything = |l: &Listing| {
        let mut keys: Vec<(u64, i128)> = l
            .entries
            .iter()
            .filter(|e| movable(e))
            .map(|e| (e.meta.size, ns(e.meta.mtime)))
            .collect();
        keys.sort_unstable();
        keys
    };
    // Built at the first pair that may be sure: a tick whose new and gone
    // files match nothing (most ticks) never sorts every file.
    let all = std::cell::OnceCell::new();
    let all = || all.get_or_init(|| (everything(source), everything(replica)));
    let window = i128::from(opts.fs.mtime_window_ns);
    // Mtimes the replica cannot tell apart lie within `window`: a range.
    let alike = |keys: &[(u64, i128)], e: &Entry| {
        let (size, t) = (e.meta.size, ns(e.meta.mtime));
        let start = keys.partition_point(|k| *k < (size, t - window));
        let end = keys.partition_point(|k| *k <= (size, t + window));
        end - start
    };
    // The places on `side` that `e` may be, up to one more than the most
    // compared.
    let fits = |side: &[(u64, i128, usize)], e: &Entry| {
        let (size, t) = (e.meta.size, ns(e.meta.mtime));
        let start = side.partition_point(|k| (k.0, k.1) < (size, t - window));
        side[start..]
            .iter()
            .take_while(|k| (k.0, k.1) <= (size, t + window))
            .map(|k| k.2)
            .take(MAX_CANDIDATES + 1)
            .collect::<Vec<_>>()
    };
    // A coarse replica or a whole-second source time: many files share it.
    let weak_times = opts.checksum || opts.fs.mtime_window_ns >= 1_000;
    for &(_, _, j) in &olds {
        let r = &rep[j];
        let candidates = fits(&news, r);
        match candidates.as_slice() {
            [] => {}
            &[i] if !weak_times
                && src[i].meta.mtime.nanos != 0
                && !opts.racy.contains(&r.path)
                && alike(&all().0, r) == 1
                && alike(&all().1, &src[i]) == 1 =>
            {
                found.sure.push(MovePair {
                    source: i,
                    replica: j,
                });
            }
            more if more.len() <= MAX_CANDIDATES => {
                let mut sources = more.to_vec();
                sources.sort_unstable();
                found.doubtful.push((j, sources));
            }
            _ => {}
        }
    }
    found.doubtful.sort_unstable();
    found
}

/// The place of `path` in a sorted listing.
fn place(listing: &Listing, path: &RelPath) -> Option<usize> {
    listing.entries.binary_search_by(|e| e.path.cmp(path)).ok()
}

/// True when the nearest ancestor the source has is a special file: what
/// the replica has there is left alone, never moved.
pub fn under_special(source: &Listing, path: &RelPath) -> bool {
    let mut p = path.parent();
    while let Some(dir) = p {
        if let Some(s) = source.get(&dir) {
            return matches!(s.kind, EntryKind::Special { .. });
        }
        p = dir.parent();
    }
    false
}

fn ns(t: Timestamp) -> i128 {
    i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos)
}

/// A replica folder the source lacks that moves, as a whole, to a source
/// folder the replica lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderMove {
    pub from: RelPath,
    pub to: RelPath,
}

/// The folders that moved as a whole, outermost only, none inside
/// another: see the module's doc.
///
/// Each file pair votes for the outermost folder pair whose inner paths
/// agree (`old/x/f` and `new/x/f` vote for `old` -> `new`, if `old` is a
/// folder only the replica has and `new` one only the source has). The
/// most voted pairs are taken first, none inside another, each with two
/// votes at least (or all its folder holds). Moving a folder costs no more
/// than moving its files one by one: what did not move with it is then
/// compared in its new place (deleted, updated or moved on from there) as
/// it would have been in the old one.
pub fn folder_moves(source: &Listing, replica: &Listing, pairs: &MovePairs) -> Vec<FolderMove> {
    let only_dir = |here: &Listing, there: &Listing, p: &RelPath| {
        !p.is_root()
            && here
                .get(p)
                .is_some_and(|e| e.kind == EntryKind::Dir && !e.excluded)
            && there.get(p).is_none()
            && !here.is_incomplete_at(p)
            && !there.is_incomplete_at(p)
    };
    let mut chosen: Vec<FolderMove> = Vec::new();
    let nested = |chosen: &[FolderMove], from: &RelPath, to: &RelPath| {
        chosen.iter().any(|m| {
            from.starts_with(&m.from)
                || m.from.starts_with(from)
                || to.starts_with(&m.to)
                || m.to.starts_with(to)
        })
    };
    // Seen renamed: taken first, outermost first.
    let mut seen: Vec<FolderMove> = pairs
        .folders
        .iter()
        .map(|p| FolderMove {
            from: replica.entries[p.replica].path.clone(),
            to: source.entries[p.source].path.clone(),
        })
        .filter(|m| only_dir(replica, source, &m.from) && only_dir(source, replica, &m.to))
        .filter(|m| !pairs.failed.contains(&(m.from.clone(), m.to.clone())))
        .collect();
    seen.sort_by_key(|m| m.from.depth());
    for m in seen {
        if !nested(&chosen, &m.from, &m.to) {
            chosen.push(m);
        }
    }
    // The outermost folder pair above two folders whose inner paths agree;
    // the files of one folder share it, so it is found once per folder.
    let outermost = |a: RelPath, b: RelPath| {
        let (mut a, mut b, mut best) = (a, b, None);
        while !a.is_root() && !b.is_root() {
            if only_dir(replica, source, &a) && only_dir(source, replica, &b) {
                best = Some((a.clone(), b.clone()));
            }
            if a.name() != b.name() {
                break;
            }
            let (Some(pa), Some(pb)) = (a.parent(), b.parent()) else {
                break;
            };
            (a, b) = (pa, pb);
        }
        best
    };
    let mut above: HashMap<(RelPath, RelPath), Option<(RelPath, RelPath)>> = HashMap::new();
    let mut votes: HashMap<(RelPath, RelPath), usize> = HashMap::new();
    for p in &pairs.files {
        let (s, r) = (
            &source.entries[p.source].path,
            &replica.entries[p.replica].path,
        );
        let (Some(pr), Some(ps)) = (r.parent(), s.parent()) else {
            continue;
        };
        if r.name() != s.name() {
            continue;
        }
        let best = above
            .entry((pr, ps))
            .or_insert_with_key(|(a, b)| outermost(a.clone(), b.clone()));
        if let Some(key) = best {
            *votes.entry(key.clone()).or_default() += 1;
        }
    }

    // The most voted first; among equals the outermost.
    let mut ranked: Vec<_> = votes.into_iter().collect();
    ranked.sort_by(|((fa, ta), va), ((fb, tb), vb)| {
        (std::cmp::Reverse(*va), fa.depth(), fa, ta).cmp(&(
            std::cmp::Reverse(*vb),
            fb.depth(),
            fb,
            tb,
        ))
    });
    for ((from, to), n) in ranked {
        // One file alone moves a folder only if it is all the folder holds.
        let failed = pairs.failed.contains(&(from.clone(), to.clone()));
        if failed || nested(&chosen, &from, &to) || (n < 2 && n < files_below(replica, &from)) {
            continue;
        }
        chosen.push(FolderMove { from, to });
    }
    chosen.sort_by(|a, b| a.to.cmp(&b.to));
    chosen
}

/// Files (anything but folders) below `dir` in a listing.
fn files_below(listing: &Listing, dir: &RelPath) -> usize {
    let start = listing.entries.partition_point(|e| e.path <= *dir);
    listing.entries[start..]
        .iter()
        .take_while(|e| e.path.starts_with(dir))
        .filter(|e| !e.kind.is_dir())
        .count()
}

/// `path` with its leading `from` replaced by `to`, if it lies there.
pub fn rebase(path: &RelPath, from: &RelPath, to: &RelPath) -> Option<RelPath> {
    if !path.starts_with(from) {
        return None;
    }
    let rest = &path.as_bytes()[from.as_bytes().len()..];
    let rest = rest.strip_prefix(b"/").unwrap_or(rest);
    let mut out = to.clone();
    if !rest.is_empty() {
        for name in rest.split(|&b| b == b'/') {
            out = out.join(name);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::model::Meta;

    fn entry(path: &str, kind: EntryKind, size: u64, secs: i64, nanos: u32) -> Entry {
        Entry {
            path: RelPath::from_str_lossy(path),
            kind,
            meta: Meta {
                size,
                mtime: Timestamp::new(secs, nanos),
                ..Meta::default()
            },
            excluded: false,
        }
    }
    fn file(path: &str, size: u64, secs: i64) -> Entry {
        entry(path, EntryKind::File, size, secs, 7)
    }
    fn dir(path: &str) -> Entry {
        entry(path, EntryKind::Dir, 0, 1, 0)
    }
    fn listing(mut entries: Vec<Entry>) -> Listing {
        entries.insert(0, dir(""));
        let mut l = Listing {
            entries,
            incomplete: Vec::new(),
        };
        l.sort();
        l
    }
    fn opts(fs: &FsCaps, temps: &TempTokens) -> SearchOptions<'static> {
        // Leaked: the tests' options live as long as the test.
        let fs: &'static FsCaps = Box::leak(Box::new(*fs));
        let temps: &'static TempTokens = Box::leak(Box::new(*temps));
        SearchOptions {
            fs,
            temps,
            checksum: false,
            seen: &[],
            racy: Box::leak(Box::default()),
        }
    }
    fn paths(s: &Listing, r: &Listing, p: &MovePairs) -> Vec<String> {
        p.files
            .iter()
            .map(|p| {
                format!(
                    "{} -> {}",
                    r.entries[p.replica].path, s.entries[p.source].path
                )
            })
            .collect()
    }

    #[test]
    fn a_unique_pair_with_clock_made_times_is_sure_and_others_are_doubtful() {
        let fs = FsCaps::default();
        let o = opts(&fs, &TempTokens::default());
        let s = listing(vec![
            file("new", 5, 10),
            entry("whole", EntryKind::File, 6, 10, 0),
            file("p", 7, 10),
            file("q", 7, 10),
        ]);
        let r = listing(vec![
            file("old", 5, 10),
            entry("whole-old", EntryKind::File, 6, 10, 0),
            file("x", 7, 10),
        ]);
        let found = search(&s, &r, o);
        assert_eq!(found.sure.len(), 1);
        assert_eq!(found.doubtful.len(), 2);
        // Content decides the doubtful: `x` is `q`, not `p`.
        let q = s
            .entries
            .iter()
            .position(|e| e.path.name() == b"q")
            .unwrap();
        let pairs = found.resolve(|p| p.source == q || s.entries[p.source].path.name() == b"whole");
        assert_eq!(
            paths(&s, &r, &pairs),
            ["old -> new", "x -> q", "whole-old -> whole"]
        );
    }

    #[test]
    fn checksum_or_a_coarse_replica_confirms_every_pair() {
        let s = listing(vec![file("new", 5, 10)]);
        let r = listing(vec![file("old", 5, 10)]);
        let coarse = FsCaps {
            granularity_ns: 1_000_000_000,
            ..FsCaps::default()
        }
        .with_window(None);
        let found = search(&s, &r, opts(&coarse, &TempTokens::default()));
        assert!(found.sure.is_empty());
        assert_eq!(found.doubtful.len(), 1);
        let fs = FsCaps::default();
        let o = SearchOptions {
            checksum: true,
            ..opts(&fs, &TempTokens::default())
        };
        let found = search(&s, &r, o);
        assert!(found.sure.is_empty());
        // Found different: no move.
        assert!(found.resolve(|_| false).is_empty());
    }

    #[test]
    fn a_folder_moves_whole_when_most_of_its_files_went_to_the_same_place() {
        let fs = FsCaps::default();
        let o = opts(&fs, &TempTokens::default());
        let s = listing(vec![
            dir("archive"),
            dir("archive/photos"),
            dir("archive/photos/x"),
            file("archive/photos/x/1", 1, 1),
            file("archive/photos/x/2", 2, 1),
            file("archive/photos/3", 3, 1),
            file("archive/photos/changed", 9, 9),
            file("elsewhere", 4, 1),
        ]);
        let r = listing(vec![
            dir("photos"),
            dir("photos/x"),
            file("photos/x/1", 1, 1),
            file("photos/x/2", 2, 1),
            file("photos/3", 3, 1),
            file("photos/4", 4, 1),
            file("photos/changed", 9, 8),
        ]);
        let pairs = search(&s, &r, o).resolve(|_| false);
        assert_eq!(pairs.files.len(), 4);
        let moves = folder_moves(&s, &r, &pairs);
        assert_eq!(
            moves,
            [FolderMove {
                from: RelPath::from_str_lossy("photos"),
                to: RelPath::from_str_lossy("archive/photos"),
            }]
        );
        // One file of five: no folder move.
        let few = MovePairs {
            files: pairs.files[..1].to_vec(),
            ..MovePairs::default()
        };
        assert!(folder_moves(&s, &r, &few).is_empty());
    }

    #[test]
    fn renames_the_watcher_saw_are_sure_whatever_the_times() {
        let fs = FsCaps::default();
        let whole = |p: &str, size| entry(p, EntryKind::File, size, 10, 0);
        let s = listing(vec![
            whole("b", 1),
            dir("new"),
            whole("new/1", 1),
            whole("new/2", 2),
            whole("edited", 3),
        ]);
        let r = listing(vec![
            whole("a", 1),
            dir("old"),
            whole("old/1", 1),
            whole("old/2", 2),
            whole("e", 4),
        ]);
        let p = |s: &str| RelPath::from_str_lossy(s);
        // a -> x -> b, old -> new, e -> edited (its size changed since).
        let mv = |a: &str, b: &str| Seen::Renamed {
            from: p(a),
            to: p(b),
        };
        let seen = [
            mv("a", "x"),
            mv("x", "b"),
            mv("old", "new"),
            mv("e", "edited"),
        ];
        let o = SearchOptions {
            seen: &seen,
            ..opts(&fs, &TempTokens::default())
        };
        let found = search(&s, &r, o);
        // Without the hints all three files would be doubtful.
        assert_eq!(found.sure.len(), 3);
        assert_eq!(found.folders.len(), 1);
        assert!(found.doubtful.is_empty());
        let pairs = found.resolve(|_| false);
        assert_eq!(
            paths(&s, &r, &pairs),
            ["a -> b", "old/1 -> new/1", "old/2 -> new/2"]
        );
        assert_eq!(
            folder_moves(&s, &r, &pairs),
            [FolderMove {
                from: p("old"),
                to: p("new")
            }]
        );
    }

    #[test]
    fn renames_add_up_and_replacements_undo_them() {
        let p = |s: &str| RelPath::from_str_lossy(s);
        let mv = |a: &str, b: &str| Seen::Renamed {
            from: p(a),
            to: p(b),
        };
        let gone = |a: &str| Seen::Replaced { path: p(a) };
        let seen = [mv("a", "b"), mv("f", "d/f"), mv("b", "c"), mv("d", "e")];
        assert_eq!(
            compose(&seen).renamed,
            [(p("a"), p("c")), (p("f"), p("e/f")), (p("d"), p("e"))]
        );
        // Renamed, then removed and made again; renamed, then another file
        // renamed over it; a folder renamed, then a file in it replaced and
        // one moved into it.
        let seen = [
            mv("x", "y"),
            gone("y"),
            mv("a", "b"),
            mv(".b.tmp", "b"),
            mv("old", "new"),
            gone("new/f"),
            mv("elsewhere/g", "new/g"),
        ];
        let c = compose(&seen);
        assert_eq!(
            c.renamed,
            [
                (p(".b.tmp"), p("b")),
                (p("old"), p("new")),
                (p("elsewhere/g"), p("new/g"))
            ]
        );
        assert_eq!(c.replaced, [p("new/f"), p("new/g")]);
    }

    #[test]
    fn rebase_replaces_the_leading_folder_only() {
        let p = |s: &str| RelPath::from_str_lossy(s);
        assert_eq!(rebase(&p("a/b/c"), &p("a"), &p("x/y")), Some(p("x/y/b/c")));
        assert_eq!(rebase(&p("a"), &p("a"), &p("x")), Some(p("x")));
        assert_eq!(rebase(&p("ab/c"), &p("a"), &p("x")), None);
    }
}
