//! Settings the stages need, validated by the binary before they start.

use crate::contract::hooks::Hooks;
use crate::contract::relpath::RelPath;
use crate::fs::identity::RootIdentity;
use crate::fs::replica_fs::{self, FsCaps, ReplicaFs};
use crate::fs::xattrs::{self, Policy};
use crate::remote::Remote;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use crate::contract::plan::MaxDelete;

/// Everything the stages need to know about one mirror.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Canonical absolute source root.
    pub source: PathBuf,
    /// Canonical absolute replica root (it exists unless `dry_run`).
    pub replica: PathBuf,
    /// Compare content by SHA-1 even where size and mtime agree.
    pub checksum: bool,
    /// Plan and log only; write nothing under the replica.
    pub dry_run: bool,
    /// `--verify`: a dry run (with `checksum`) whose every planned change
    /// is an `error` (`op=verify`): the replica differs from the source
    /// there. Digests proved are saved to the cache.
    pub verify: bool,
    /// Also delete replica entries that the rules exclude.
    pub delete_excluded: bool,
    /// `-x`: a folder of the source on another filesystem (a mount point)
    /// is mirrored as an empty folder, nothing below it walked.
    pub one_file_system: bool,
    pub max_delete: MaxDelete,
    /// Detect files moved or renamed in the source and rename them in the
    /// replica rather than copy them again (off: `--no-renames`).
    pub renames: bool,
    /// Source files that are one inode (hard links) are one inode in the
    /// replica (off: `--no-hard-links`: each name is a copy).
    pub hard_links: bool,
    /// Extended attributes are mirrored: `user.*`, and `trusted.*` and
    /// `security.*` as root (off: `--no-xattrs`).
    pub xattrs: bool,
    /// POSIX ACLs (access, and default on folders) are mirrored (off:
    /// `--no-acls`).
    pub acls: bool,
    /// The replica's attributes were not all compared under this run's
    /// policy before (no record in its state folder says so): the first
    /// sync compares every entry's, not only those whose ctime moved.
    pub attrs_sweep: bool,
    /// Workers for walking, hashing and copying (at least 1).
    pub jobs: usize,
    /// Gitignore lines applied as if in a `.syncignore` at the source root,
    /// after that file's own lines.
    pub excludes: Vec<String>,
    /// Source paths left out silently (the log file when it is inside
    /// the source): neither copied nor deleted nor reported.
    pub hidden: Vec<RelPath>,
    /// Set owner and group from the source (running as root).
    pub preserve_owner: bool,
    /// Not as root: the groups whose ids we may give our files. A source
    /// entry's group among them is mirrored (`rsync -g`), and a folder's
    /// setgid bit with it. Empty as root and in tests unless set.
    pub groups: Groups,
    /// Make each file and its folder durable before reporting it.
    pub fsync: bool,
    /// Filesystem events narrow the ticks: the Scanner keeps its listings
    /// between ticks to update them.
    pub watch: bool,
    /// `-v`: stages send their detail events (what was compared, why);
    /// otherwise they spare the Logger events it would drop.
    pub verbose: bool,
    /// The replica root was created by this run: the first sync gives it
    /// the source root's metadata as part of making it, not as `meta`.
    pub fresh_replica: bool,
    /// The roots as recorded at start: every tick checks that the root
    /// paths still name them. `None` (tests): taken from the first tick.
    pub identity: Option<RootIdentity>,
    /// `--modify-window`: mtimes this close count as equal, overriding
    /// the replica's probed timestamp granularity.
    pub modify_window: Option<Duration>,
    /// What the replica's filesystem keeps (`settle_replica_fs`).
    pub replica_fs: ReplicaFs,
    /// Called before each replacement or deletion in the replica
    /// (`hooks.rs`; `--backup-dir`).
    pub hooks: Hooks,
    /// A remote replica (`s3://...`): `replica` is then its address, not
    /// a folder, and every replica operation goes to the store.
    pub remote: Option<Arc<Remote>>,
}

impl SyncOptions {
    /// Finds what the replica's filesystem keeps for this run (probed, or
    /// in a dry run as an earlier run saved it) and applies it, with
    /// `--modify-window`; owners are no longer preserved where they cannot
    /// be kept. Returns the reason for a `warn` when the probe could not
    /// run.
    pub fn settle_replica_fs(&mut self) -> Option<String> {
        if let Some(remote) = &self.remote {
            // Nothing to probe: an object store's rules are known.
            self.replica_fs = ReplicaFs::new(remote.caps());
            self.preserve_owner = false;
            return None;
        }
        let as_root = self.preserve_owner;
        let (caps, failed) = if self.dry_run {
            (
                replica_fs::load_saved(&self.replica).unwrap_or_default(),
                None,
            )
        } else {
            match replica_fs::probe_replica(&self.replica, as_root) {
                Ok(caps) => (caps, None),
                Err(e) => (FsCaps::default(), Some(e)),
            }
        };
        let mut caps = caps.with_window(self.modify_window);
        caps.owners_lost = as_root && !caps.keeps_owners;
        if caps.owners_lost {
            self.preserve_owner = false;
        }
        self.replica_fs = ReplicaFs::new(caps);
        self.attrs_sweep = xattrs::settle_marker(&self.replica, self.attrs_policy(), self.dry_run);
        failed.map(|e| {
            format!("cannot probe the replica's filesystem ({e}): assuming it keeps names, modes, owners, links and nanosecond mtimes")
        })
    }

    /// Which extended attributes and ACLs this run mirrors.
    pub fn attrs_policy(&self) -> Policy {
        Policy::new(self.xattrs, self.acls, rustix::process::geteuid().is_root())
    }

    /// Defaults for tests: roots as given, everything else off.
    pub fn new(source: PathBuf, replica: PathBuf) -> Self {
        SyncOptions {
            source,
            replica,
            checksum: false,
            dry_run: false,
            verify: false,
            delete_excluded: false,
            one_file_system: false,
            max_delete: MaxDelete::default(),
            renames: true,
            hard_links: true,
            xattrs: true,
            acls: true,
            attrs_sweep: false,
            jobs: 2,
            excludes: Vec::new(),
            hidden: Vec::new(),
            preserve_owner: false,
            groups: Groups::default(),
            fsync: false,
            watch: false,
            fresh_replica: false,
            verbose: false,
            identity: None,
            modify_window: None,
            replica_fs: ReplicaFs::default(),
            hooks: Hooks::default(),
            remote: None,
        }
    }
}

/// Group ids the running user belongs to (the effective one and the
/// supplementary ones), sorted: those an ordinary user may give its files.
/// A copyable view of a set fixed for the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Groups(&'static [u32]);

impl Groups {
    /// This process's groups, read at the first call: they do not change
    /// while it runs.
    pub fn of_this_process() -> Groups {
        static IDS: OnceLock<Vec<u32>> = OnceLock::new();
        Groups(IDS.get_or_init(|| {
            let mut ids: Vec<u32> = rustix::process::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw())
                .collect();
            ids.push(rustix::process::getegid().as_raw());
            ids.sort_unstable();
            ids.dedup();
            ids
        }))
    }

    /// Given ids, for tests; they must be sorted.
    pub const fn from_sorted(ids: &'static [u32]) -> Groups {
        Groups(ids)
    }

    pub fn contains(&self, gid: u32) -> bool {
        self.0.binary_search(&gid).is_ok()
    }

    /// Whether replica entries get the source's group `gid` though not
    /// its owner: it is one of these, and the replica keeps modes (one that
    /// does not, such as FAT, keeps no groups either).
    pub fn keeps(&self, gid: u32, caps: &FsCaps) -> bool {
        caps.keeps_perms && self.contains(gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_hold_the_effective_group_and_keep_only_where_modes_are_kept() {
        let ours = Groups::of_this_process();
        let egid = rustix::process::getegid().as_raw();
        assert!(ours.contains(egid));
        assert_eq!(ours, Groups::of_this_process());
        let some = Groups::from_sorted(&[10, 100, 1000]);
        assert!(some.contains(100) && !some.contains(99));
        assert!(!Groups::default().contains(egid));
        let posix = FsCaps::default();
        let fat = FsCaps {
            keeps_perms: false,
            ..posix
        };
        assert!(some.keeps(1000, &posix));
        assert!(!some.keeps(1000, &fat));
        assert!(!some.keeps(1001, &posix));
    }

    #[test]
    fn parses_counts_and_percentages() {
        assert_eq!("0".parse(), Ok(MaxDelete::Count(0)));
        assert_eq!("50%".parse(), Ok(MaxDelete::Percent(50)));
        assert_eq!("100%".parse(), Ok(MaxDelete::Percent(100)));
        assert!("101%".parse::<MaxDelete>().is_err());
        assert!("-1".parse::<MaxDelete>().is_err());
        assert!("half".parse::<MaxDelete>().is_err());
    }

    #[test]
    fn percentage_trips_only_above_ten_deletions() {
        let p = MaxDelete::Percent(50);
        assert!(!p.trips(10, 10));
        assert!(p.trips(11, 20));
        assert!(!p.trips(11, 22));
        assert!(!MaxDelete::Percent(100).trips(1000, 1000));
        assert!(MaxDelete::Count(0).trips(1, 1000));
        assert!(!MaxDelete::Count(0).trips(0, 1000));
    }
}
