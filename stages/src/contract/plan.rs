//! The Plan: what the Differ decides and the Applier carries out.

use crate::contract::model::{FileId, Listing, Meta, TempTokens};
use crate::contract::relpath::RelPath;
use std::fmt;
use std::str::FromStr;

/// One operation on the replica. The Applier matches exhaustively, so a new
/// operation cannot be forgotten there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Report a source entry that is not mirrored (`skip` in the log).
    Skip { path: RelPath, reason: String },
    /// Report something to know that is not a failure (`warn`).
    Warn { path: RelPath, reason: String },
    /// An operation refused while planning (`error` with this `op`).
    Refuse {
        path: RelPath,
        op: &'static str,
        reason: String,
    },
    /// Remove a temporary left by an interrupted run (not a mirror change).
    RemoveStale { path: RelPath },
    /// Remove a file, link or special entry from the replica.
    Delete { path: RelPath },
    /// Remove a folder whose contents the plan has already removed (or
    /// moved, when it comes after the moves).
    Rmdir { path: RelPath },
    /// Create a folder; its permissions and times come with `FinishDir`.
    Mkdir { path: RelPath, meta: Meta },
    /// Write a file that the replica does not have. `meta` is the source's,
    /// as scanned: the Applier checks the file still matches it.
    Copy { path: RelPath, meta: Meta },
    /// Replace the content of a replica file.
    Update { path: RelPath, meta: Meta },
    /// Rename the replica's file at `from` to `path`, where the replica has
    /// no entry (nothing is overwritten), then give it `meta` (the
    /// source's) where it differs: the source's file at `path` has the
    /// size and mtime of the replica's at `from`, which the source lacks.
    Move {
        path: RelPath,
        from: RelPath,
        meta: Meta,
    },
    /// Rename the replica's folder at `from`, with all it holds, to `path`,
    /// where the replica has no entry. Its own metadata comes with
    /// `FinishDir`; what differs inside it is planned at its new place.
    MoveDir { path: RelPath, from: RelPath },
    /// Make `path` another name (a hard link) of the replica's file at
    /// `to`, replacing what the replica has at `path`: in the source the
    /// two are one file. Planned after the file at `to` is written or
    /// found equal; `meta` is the source's, which the file at `to` must
    /// have (else the link is skipped: it would give `path` old content).
    Link {
        path: RelPath,
        to: RelPath,
        meta: Meta,
    },
    /// Create or retarget a symbolic link.
    Symlink {
        path: RelPath,
        target: Box<[u8]>,
        meta: Meta,
    },
    /// Set times, permissions (and owner) of a file or link whose content
    /// is already equal (`meta` in the log).
    SetMeta {
        path: RelPath,
        link: bool,
        meta: Meta,
    },
    /// Compare the extended attributes and ACLs of a file or folder whose
    /// source's ctime is newer than the replica's (or every entry's, at a
    /// sweep) with the source's, and set those that differ. Logged as
    /// `meta` only when something was set. `meta` is the source's.
    Attrs {
        path: RelPath,
        dir: bool,
        meta: Meta,
    },
    /// Set a folder's permissions and times once its contents are done.
    /// Logged as `meta` only when `changed` (the source folder's own
    /// metadata changed); otherwise it restores what the other operations
    /// disturbed and is not logged.
    FinishDir {
        path: RelPath,
        meta: Meta,
        changed: bool,
        /// Made by this plan: its attributes are set as part of making it,
        /// never logged as a change.
        created: bool,
    },
}

/// What kind of work an operation is. The Applier runs a plan in its
/// order, one operation at a time, except that consecutive `Files` and
/// `Links` operations (independent of each other) run in parallel, and
/// so do the `Clean` removals between two folder removals: the Differ
/// orders the plan so that each operation finds what it needs done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Report,
    Clean,
    Mkdir,
    Move,
    Files,
    /// Hard links to files the `Files` operations wrote.
    Links,
    FinishDirs,
}

impl Op {
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Skip { path, .. }
            | Op::Warn { path, .. }
            | Op::Refuse { path, .. }
            | Op::RemoveStale { path }
            | Op::Delete { path }
            | Op::Rmdir { path }
            | Op::Mkdir { path, .. }
            | Op::Copy { path, .. }
            | Op::Update { path, .. }
            | Op::Move { path, .. }
            | Op::MoveDir { path, .. }
            | Op::Link { path, .. }
            | Op::Symlink { path, .. }
            | Op::SetMeta { path, .. }
            | Op::Attrs { path, .. }
            | Op::FinishDir { path, .. } => path,
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Op::Skip { .. } | Op::Warn { .. } | Op::Refuse { .. } => Phase::Report,
            Op::RemoveStale { .. } | Op::Delete { .. } | Op::Rmdir { .. } => Phase::Clean,
            Op::Mkdir { .. } => Phase::Mkdir,
            Op::Move { .. } | Op::MoveDir { .. } => Phase::Move,
            Op::Copy { .. }
            | Op::Update { .. }
            | Op::Symlink { .. }
            | Op::SetMeta { .. }
            | Op::Attrs { .. } => Phase::Files,
            Op::Link { .. } => Phase::Links,
            Op::FinishDir { .. } => Phase::FinishDirs,
        }
    }
}

/// The deletion guard tripped: the plan holds no deletions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardTrip {
    pub would_delete: u64,
    pub managed: u64,
    pub limit: MaxDelete,
}

/// The ordered operations of one tick, run in this order (see `Phase`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub guard: Option<GuardTrip>,
    /// The roots the plan was made for, as scanned: the Applier writes
    /// nothing if the folders it opens are others (a disk unmounted or
    /// swapped meanwhile). `None` where no root was listed (dry runs).
    pub roots: Option<RootIds>,
    /// The plan compares every entry's attributes (`SyncOptions::
    /// attrs_sweep`): once it ran without an error, the replica's state
    /// records that.
    pub attrs_sweep: bool,
}

/// Identities of the two roots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootIds {
    pub source: FileId,
    pub replica: FileId,
}
/// The most one tick may delete (Safety rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxDelete {
    Count(u64),
    /// Whole percent, 0 to 100.
    Percent(u32),
}

impl Default for MaxDelete {
    fn default() -> Self {
        MaxDelete::Percent(50)
    }
}

impl MaxDelete {
    /// True when deleting `deletions` of the `managed` non-folder entries
    /// must be withheld. The percentage form ignores small deletions (ten or
    /// fewer) so that pruning a tiny replica is not blocked.
    pub fn trips(self, deletions: u64, managed: u64) -> bool {
        match self {
            MaxDelete::Count(n) => deletions > n,
            MaxDelete::Percent(p) => {
                deletions > 10 && deletions.saturating_mul(100) > u64::from(p) * managed
            }
        }
    }
}

impl FromStr for MaxDelete {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("expected a count (e.g. 1000) or a percentage from 0% to 100% (e.g. 50%), got {s:?}")
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(bad());
            }
            Ok(MaxDelete::Percent(p))
        } else {
            s.parse().map(MaxDelete::Count).map_err(|_| bad())
        }
    }
}

impl fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxDelete::Count(n) => write!(f, "{n}"),
            MaxDelete::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The `--max-delete` guard's base: the replica's non-folder entries that
/// the mirror manages. Excluded entries count only with
/// `--delete-excluded`; a temporary of ours (`temps`) that the source lacks
/// never does. Computed over whole listings, also when a tick plans only
/// over the parts that changed.
pub fn guard_base(
    replica: &Listing,
    source: &Listing,
    delete_excluded: bool,
    temps: &TempTokens,
) -> u64 {
    replica
        .entries
        .iter()
        .filter(|e| !e.kind.is_dir() && !e.path.is_root())
        .filter(|e| delete_excluded || !e.excluded)
        .filter(|e| !(temps.owns(e.path.name()) && source.get(&e.path).is_none()))
        .count() as u64
}
