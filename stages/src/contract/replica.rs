//! The replica backend seam: what the Applier asks of a replica, one call
//! per planned operation.
//!
//! The local confined filesystem layer (`fs::replica_ops::ReplicaOps`) is
//! the first implementation; a remote store (`remote::ops::RemoteOps`:
//! S3-compatible object stores, SFTP servers) is the second. The Applier
//! is generic over the trait, so the local path is compiled as before (no
//! dynamic call per operation).
//!
//! What a backend cannot store is decided before the plan (`FsCaps`: links,
//! hard links, permissions, owners, attributes), so the Differ never plans
//! those operations there; a backend that gets one anyway answers with an
//! error for that operation, never a silent success.

use crate::contract::hooks::HookError;
use crate::contract::messages::LogEvent;
use crate::contract::model::Meta;
use crate::contract::relpath::RelPath;
use rustix::io::Errno;
use std::io;

/// The operations of a plan, carried out on one replica. `events`
/// receives the entries the operation's hooks log before its own.
pub trait Replica: Sync {
    /// Writes the source file at `path` where the replica has no entry.
    /// `meta` is the source's as scanned: a file that no longer matches it
    /// is `Copied::Skipped`.
    fn copy(
        &self,
        path: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError>;
    /// Replaces the content of the replica's file at `path`.
    fn update(
        &self,
        path: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError>;
    /// Creates or retargets a symbolic link.
    fn symlink(
        &self,
        path: &RelPath,
        target: &[u8],
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<(), OpError>;
    /// Makes `path` another name of the replica's file at `to`; a reason
    /// when it was skipped.
    fn link(
        &self,
        path: &RelPath,
        to: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Option<String>, OpError>;
    /// Sets times (and permissions, owner) of an entry whose content is
    /// already equal.
    fn set_meta(&self, path: &RelPath, link: bool, meta: &Meta) -> Result<(), OpError>;
    /// Sets the attributes that differ; true if any was set.
    fn attrs(&self, path: &RelPath, dir: bool, meta: &Meta) -> Result<bool, OpError>;
    /// Renames the replica's entry at `from` to `to`, where there is none.
    fn move_entry(&self, from: &RelPath, to: &RelPath, meta: Option<&Meta>) -> Result<(), OpError>;
    /// Creates a folder.
    fn mkdir(&self, path: &RelPath) -> Result<(), OpError>;
    /// Sets a folder's own metadata once its contents are done; true if
    /// its attributes were set.
    fn finish_dir(&self, path: &RelPath, meta: &Meta) -> Result<bool, OpError>;
    /// Removes a file or link; one already gone counts as done.
    fn delete(&self, path: &RelPath, events: &mut Vec<LogEvent>) -> Result<(), OpError>;
    /// Removes an empty folder; one already gone counts as done.
    fn rmdir(&self, path: &RelPath) -> Result<(), OpError>;
    /// Removes a temporary an interrupted run left.
    fn remove_stale(&self, path: &RelPath) -> Result<(), OpError>;
    /// How many operations of a parallel phase run at once: a local disk
    /// gains nothing past the cores, a store across a network needs many
    /// requests in flight to hide their latency.
    fn workers(&self, jobs: usize) -> usize {
        jobs
    }
}

/// Why a copy is skipped when its source changed while it was read.
pub const CHANGED_WHILE_COPIED: &str = "changed while being copied";

/// Why an operation on the replica failed; the path is the operation's.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A root could not be opened: nothing in that tree can be done.
    #[error("open the {which} root: {source}")]
    Root {
        which: &'static str,
        source: io::Error,
    },
    /// A system call failed; `step` says which part of the operation.
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        path: RelPath,
        source: io::Error,
    },
    /// The replica entry is not of the kind the plan expects.
    #[error("expected a {expected} in the replica, found a {found}")]
    Kind {
        path: RelPath,
        expected: &'static str,
        found: &'static str,
    },
    /// A new file's name is taken in the replica though the listing had no
    /// entry there: the replica's filesystem takes it for another name
    /// (case or Unicode folding the probe did not foresee), or something
    /// made it meanwhile. Nothing is overwritten.
    #[error("the replica already has an entry at this name (its filesystem may take it for another name); nothing was overwritten")]
    Taken { path: RelPath },
    /// A hook withheld the operation (`hooks.rs`); the old entry stays.
    #[error("{source}")]
    Hook { path: RelPath, source: HookError },
    /// A request to a remote replica failed (after the retries of
    /// transient errors); `step` says which part of the operation.
    #[error("{step}: {message}")]
    Remote {
        step: &'static str,
        path: RelPath,
        message: String,
    },
}

impl OpError {
    /// True when the whole tick must stop, not only this operation.
    pub fn is_fatal(&self) -> bool {
        matches!(self, OpError::Root { .. })
    }

    /// The operating system's error code, when a system call failed.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            OpError::Root { source, .. } | OpError::Io { source, .. } => {
                Errno::from_io_error(source)
            }
            OpError::Hook { source, .. } => source.errno(),
            OpError::Kind { .. } | OpError::Taken { .. } | OpError::Remote { .. } => None,
        }
    }
}

/// What a copy or update of one file came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Copied {
    /// The replica holds the new content under its final name. `racy`:
    /// the source's stamps fall inside the copy's window, so a write may
    /// have been in flight during it (`racy.rs`).
    Written { bytes: u64, racy: bool },
    /// The source vanished or changed: nothing was written (a `skip`).
    Skipped { reason: String },
}
