//! What the parts of the walk share: the two sides, a folder's handle
//! and how it is opened, an entry as read before the rules look at it,
//! the fences the walk does not cross, and how errors read.

use super::WalkOptions;
use crate::contract::relpath::RelPath;
use crate::fs::root::Root;
use crate::fs::unlock::{open_held, HeldDir, Unlocks, PATH_FLAGS};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::sync::Arc;

/// Source folders the walk does not enter: the replica root, or a folder
/// above it, met again below the source (a bind mount), which would mirror
/// the replica into itself. (On the replica side, a folder that is another
/// mount is never entered either: `DirHandle::open_on_its_filesystem`.)
#[derive(Debug, Default)]
pub(super) struct Fences {
    /// The replica root and each folder above it, as (device, inode).
    replica_and_above: Vec<(u64, u64)>,
    /// `-x`: the source root's device; a source folder on another is
    /// listed, never entered.
    source_device: Option<u64>,
}

impl Fences {
    pub(super) fn around(source: &Root, replica: Option<&Root>, opts: &WalkOptions) -> Fences {
        let source_device = opts
            .one_file_system
            .then(|| source.stat().ok().map(|st| st.st_dev))
            .flatten();
        let Some(replica) = replica else {
            return Fences {
                source_device,
                ..Fences::default()
            };
        };
        let id = |st: &Stat| (st.st_dev, st.st_ino);
        let mut replica_and_above: Vec<(u64, u64)> = replica.stat().iter().map(id).collect();
        for above in replica.path().ancestors().skip(1) {
            if let Ok(st) = rfs::stat(above) {
                replica_and_above.push(id(&st));
            }
        }
        Fences {
            replica_and_above,
            source_device,
        }
    }

    /// With `-x`, a source folder on another filesystem than the root's.
    pub(super) fn other_filesystem(&self, st: &Stat) -> bool {
        self.source_device.is_some_and(|dev| st.st_dev != dev)
    }

    /// A source folder that is the replica or holds it.
    pub(super) fn holds_replica(&self, st: &Stat) -> bool {
        self.replica_and_above.contains(&(st.st_dev, st.st_ino))
    }
}

pub(super) const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NOCTTY);

/// Size of each worker's `getdents` buffer.
pub(super) const DIRENT_BUF: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Source,
    Replica,
}

/// How a job reaches its folder on one side.
pub(super) enum DirHandle {
    /// Already open (a root, or a folder a partial walk starts from).
    Open(HeldDir),
    /// The parent's handle, shared with the siblings still pending; the
    /// folder is the job's last path component.
    Under(Arc<HeldDir>),
}

impl DirHandle {
    /// Opens the folder, releasing the parent's handle as soon as possible.
    pub(super) fn open(self, rel: &RelPath) -> Result<HeldDir, Errno> {
        match self {
            DirHandle::Open(dir) => Ok(dir),
            DirHandle::Under(parent) => {
                rfs::openat(&*parent, rel.name(), DIR_FLAGS, Mode::empty()).map(HeldDir::new)
            }
        }
    }

    /// `open`, failing with `EXDEV` where the folder is another mount (a
    /// bind mount of the same filesystem included). A folder of ours that
    /// we may not read is unlocked to be listed (`unlock.rs`), and gets
    /// its mode back when its handle, shared with its pending subfolders,
    /// is dropped.
    pub(super) fn open_on_its_filesystem(
        self,
        rel: &RelPath,
        unlocks: &Unlocks,
    ) -> Result<HeldDir, Errno> {
        let parent = match self {
            DirHandle::Open(dir) => return Ok(dir),
            DirHandle::Under(parent) => parent,
        };
        match open_beneath(&parent, rel.name(), DIR_FLAGS) {
            Err(Errno::ACCESS) => {
                let path = open_beneath(&parent, rel.name(), PATH_FLAGS)?;
                open_held(path.as_fd(), DIR_FLAGS, unlocks)
            }
            other => other.map(HeldDir::new),
        }
    }
}

/// The folder `name` of `parent`, opened with `flags` without following a
/// link or entering another mount.
fn open_beneath(parent: &HeldDir, name: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    const SAME_MOUNT: ResolveFlags = ResolveFlags::NO_XDEV
        .union(ResolveFlags::NO_SYMLINKS)
        .union(ResolveFlags::BENEATH);
    match rfs::openat2(parent, name, flags, Mode::empty(), SAME_MOUNT) {
        Err(Errno::NOSYS | Errno::AGAIN | Errno::PERM) => {
            let fd = rfs::openat(parent, name, flags, Mode::empty())?;
            if rfs::fstat(&fd)?.st_dev != rfs::fstat(parent)?.st_dev {
                return Err(Errno::XDEV);
            }
            Ok(fd)
        }
        other => other,
    }
}

/// An entry as read from its folder, before the rules look at it.
pub(super) struct Raw {
    pub(super) path: RelPath,
    pub(super) stat: Stat,
}

impl Raw {
    pub(super) fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.stat.st_mode) == FileType::Directory
    }
}

/// The folder or entry went away (or was swapped for something that is not
/// a folder) between its listing and its use: the next tick will see it.
pub(super) fn vanished(err: Errno) -> bool {
    matches!(err, Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
}

pub(super) fn io_error(err: Errno) -> std::io::Error {
    err.into()
}
