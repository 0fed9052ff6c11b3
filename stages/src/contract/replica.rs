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

use crate::contract::messages::LogEvent;
use crate::contract::model::Meta;
use crate::contract::relpath::RelPath;
use crate::fs::replica_ops::{Copied, OpError};

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
