//! Hooks: features that act on each replica operation, where it happens.
//!
//! `ReplicaOps` calls every registered hook with the folder handle it
//! already holds, just before it replaces an entry (a file's update, a
//! link's retarget, a copy over whatever stands at the name) or deletes one
//! (a file, a link, a type change's removal). Folders are never handed to a
//! hook. A hook may return an event to log before the operation's own line
//! (`backup`, say); its error withholds the operation: the old entry stays
//! in place, the operation is an `error` and its folder is listed again at
//! the next tick.
//!
//! In a dry run the hooks are called too, with `HookCx::dry_run` set, on a
//! handle of the replica folder as it is: they must change nothing then and
//! only say what they would do.

use crate::contract::messages::LogEvent;
use crate::contract::relpath::RelPath;
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

/// What a hook knows about the tick it runs in.
#[derive(Clone, Copy, Debug)]
pub struct HookCx {
    /// The tick's wall-clock start, the same for all its operations.
    pub tick_start: SystemTime,
    /// Change nothing: report what would be done.
    pub dry_run: bool,
}

/// Why a hook withheld an operation; `step` says what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct HookError {
    pub step: &'static str,
    pub source: io::Error,
}

impl HookError {
    pub fn new(step: &'static str, source: impl Into<io::Error>) -> Self {
        HookError {
            step,
            source: source.into(),
        }
    }

    /// The operating system's error code, when a system call failed.
    pub fn errno(&self) -> Option<Errno> {
        Errno::from_io_error(&self.source)
    }
}

/// What a hook returns: an event to log before the operation's line.
pub type HookResult = Result<Option<LogEvent>, HookError>;

/// A feature called on each replacement or deletion of a replica entry.
/// `dir` is the replica folder holding the entry, `name` the entry's name
/// in it and `path` its path from the replica root. The entry may be
/// missing (a copy to a free name, a file deleted meanwhile): a hook finds
/// out itself, with `*at` calls on `dir` that never follow a link.
pub trait OpHook: Send + Sync {
    /// Just before the entry at `name` is replaced by a new one in one
    /// rename.
    fn before_replace(
        &self,
        cx: &HookCx,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &RelPath,
    ) -> HookResult;

    /// Just before the file, link or special entry at `name` is removed.
    fn before_delete(
        &self,
        cx: &HookCx,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &RelPath,
    ) -> HookResult;

    /// Once at the start of each tick that applies a plan: housekeeping.
    /// Returns what it did and what it could not, as log events (counted
    /// in the tick by their verbs).
    fn tick_started(&self, _cx: &HookCx) -> Vec<LogEvent> {
        Vec::new()
    }
}

/// Which of the hook calls an operation makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAt {
    Replace,
    Delete,
}

/// The registered hooks, in the order they are called.
#[derive(Clone, Default)]
pub struct Hooks(Vec<Arc<dyn OpHook>>);

impl Hooks {
    pub fn push(&mut self, hook: Arc<dyn OpHook>) {
        self.0.push(hook);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Calls every hook for one operation, pushing their events to
    /// `events`; the first error stops there.
    pub fn before(
        &self,
        at: HookAt,
        cx: &HookCx,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &RelPath,
        events: &mut Vec<LogEvent>,
    ) -> Result<(), HookError> {
        for hook in &self.0 {
            let event = match at {
                HookAt::Replace => hook.before_replace(cx, dir, name, path)?,
                HookAt::Delete => hook.before_delete(cx, dir, name, path)?,
            };
            events.extend(event);
        }
        Ok(())
    }

    /// Every hook's start-of-tick housekeeping; the reasons for `warn`s.
    pub fn tick_started(&self, cx: &HookCx) -> Vec<LogEvent> {
        self.0.iter().flat_map(|h| h.tick_started(cx)).collect()
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hooks({})", self.0.len())
    }
}
