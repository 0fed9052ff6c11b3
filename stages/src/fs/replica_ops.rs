//! The file-system operations the Applier carries out on the replica.
//!
//! Every path is reached as a folder handle plus a name: the folder is
//! opened from its root without following any link (`Root::open_parent`,
//! Safety rule 2) and the operation is an `*at` call on that handle, so a
//! replica folder swapped for a link makes the operation fail instead of
//! writing outside the replica. New content is written to a temporary in
//! the same folder, given its owner, permissions and times, then renamed
//! over the final name (Safety rule 1); a failure at any step removes the
//! temporary. A source file that vanished or changed under us is not an
//! error but a `Copied::Skipped` (Safety rule 4).
//!
//! Run as an ordinary user, a replica folder of ours that denies us what
//! an operation needs (search on the way, read to open it, write to add or
//! remove entries) is unlocked for that operation and gets its mode back
//! after it (`unlock.rs`); `finish_dir` then sets the mode the source
//! gives it. Such a user also gives each entry the source's group where
//! the group is one of theirs, and a folder its setgid bit with it, as
//! `rsync -a` does.
//!
//! Everything here blocks: the Applier calls it from blocking threads.
//!
//! The race-prone steps carry named failpoints (`fail_point!`), through
//! which the fault tests (`tests/faults.rs`) change the world at the worst
//! moment; without the `failpoints` feature they compile to nothing.

use crate::contract::hooks::{HookAt, HookCx, Hooks};
use crate::contract::messages::LogEvent;
use crate::contract::model::{
    run_token, temp_name, temp_token, FileId, Meta, TempTokens, Timestamp,
};
use crate::contract::options::{Groups, SyncOptions};
use crate::contract::plan::RootIds;
use crate::contract::relpath::RelPath;
pub use crate::contract::replica::{Copied, OpError, CHANGED_WHILE_COPIED};
use crate::fs::identity::Roots;
use crate::fs::racy;
use crate::fs::replica_fs::{
    FsCaps, Unkept, UNKEPT_ACLS, UNKEPT_OWNER, UNKEPT_PERMS, UNKEPT_XATTRS,
};
use crate::fs::root::{meta_of, Root};
use crate::fs::state;
use crate::fs::unlock::{HeldDir, Unlocks, WRITE};
use crate::fs::xattrs::{self, Attrs, On, Policy};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Stat, Timespec, Timestamps, Uid,
};
use rustix::io::Errno;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

/// `fail::fail_point!` with the `failpoints` feature, nothing without it
/// (the `fail` crate is then not even a dependency).
macro_rules! fail_point {
    ($($args:tt)*) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($($args)*);
    };
}
pub(crate) use fail_point;

/// How source files are opened: never through a link, never blocking on a
/// fifo that replaced a file.
const SOURCE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// How temporaries are created: a fresh file that nobody else can have
/// opened or linked, readable only by us until its final mode is set.
const TEMP_FLAGS: OFlags = OFlags::WRONLY
    .union(OFlags::CREATE)
    .union(OFlags::EXCL)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Bytes asked of one `copy_file_range` call; the kernel may do fewer.
const RANGE_CHUNK: usize = 1 << 30;

/// Buffer of the user-space copy used where `copy_file_range` cannot work.
const BUFFER_SIZE: usize = 1 << 20;

/// The state file of the runs' tokens (`model::TempTokens`).
pub const TEMPS_FILE: &str = "temps";

/// Attempts at finding a free temporary name before giving up.
const TEMP_ATTEMPTS: u32 = 64;

/// Why a copy stopped early: a skip is normal, a failure is an error.
enum Halt {
    Skip(String),
    Fail(OpError),
}

impl From<OpError> for Halt {
    fn from(e: OpError) -> Self {
        Halt::Fail(e)
    }
}

/// Wraps a failed system call with its step and path.
fn io_err<'p>(step: &'static str, path: &'p RelPath) -> impl FnOnce(Errno) -> OpError + 'p {
    move |e| OpError::Io {
        step,
        path: path.clone(),
        source: e.into(),
    }
}

/// Same for calls that already return `std::io::Error` (the `Root` API).
fn std_err<'p>(step: &'static str, path: &'p RelPath) -> impl FnOnce(io::Error) -> OpError + 'p {
    move |source| OpError::Io {
        step,
        path: path.clone(),
        source,
    }
}

fn errno_of(e: &io::Error) -> Option<Errno> {
    Errno::from_io_error(e)
}

/// Access to both trees for one tick's operations.
#[derive(Debug)]
pub struct ReplicaOps {
    source: Root,
    replica: Root,
    preserve_owner: bool,
    /// The groups an ordinary user gives replica entries (`Groups`).
    groups: Groups,
    fsync: bool,
    /// This run's token, in every temporary's name (`model::temp_name`).
    token: u64,
    temp_seq: AtomicU64,
    /// What the replica's filesystem keeps.
    fs: FsCaps,
    /// Which extended attributes and ACLs are mirrored.
    attrs: Policy,
    /// Setting an entry's attributes failed at this tick (after some of
    /// it may have moved the entry's ctime, which hides it from the next
    /// comparison): see `attrs_failed`.
    attrs_failed: std::sync::atomic::AtomicBool,
    /// Permissions or owners this tick could not keep.
    unkept: Unkept,
    /// The token is in `.treesync/temps` (checked once, at the first
    /// temporary of the tick).
    recorded: OnceLock<()>,
    /// Called before each replacement or deletion (`hooks.rs`).
    hooks: Hooks,
    hook_cx: HookCx,
    /// Replica folders unlocked for the operations in flight.
    unlocks: Unlocks,
}

impl ReplicaOps {
    /// Opens both roots. The replica must exist: it is never created here
    /// (a vanished replica root may be an unmounted disk).
    pub fn open(opts: &SyncOptions) -> Result<Self, OpError> {
        let source = Root::open(&opts.source).map_err(|source| OpError::Root {
            which: "source",
            source,
        })?;
        let replica = Root::open(&opts.replica)
            .map_err(|source| OpError::Root {
                which: "replica",
                source,
            })?
            .on_its_filesystem();
        Ok(Self::over(source, replica, opts))
    }

    /// Works in the roots a tick opened and checked (`Roots`), through
    /// handles of their own on the same folders; the replica must be there.
    pub fn from_roots(roots: &Roots, opts: &SyncOptions) -> Result<Self, OpError> {
        let dup = |root: &Root, which| {
            root.try_clone()
                .map_err(|source| OpError::Root { which, source })
        };
        let missing = || OpError::Root {
            which: "replica",
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let replica = roots.replica.as_ref().ok_or_else(missing)?;
        Ok(Self::over(
            dup(&roots.source, "source")?,
            dup(replica, "replica")?,
            opts,
        ))
    }

    fn over(source: Root, replica: Root, opts: &SyncOptions) -> Self {
        ReplicaOps {
            source,
            replica,
            preserve_owner: opts.preserve_owner,
            groups: opts.groups,
            fsync: opts.fsync,
            token: run_token(),
            temp_seq: AtomicU64::new(0),
            fs: opts.replica_fs.caps,
            attrs: opts.attrs_policy(),
            attrs_failed: Default::default(),
            unkept: Unkept::default(),
            recorded: OnceLock::new(),
            hooks: opts.hooks.clone(),
            hook_cx: HookCx {
                tick_start: SystemTime::now(),
                dry_run: false,
            },
            unlocks: Unlocks::default(),
        }
    }

    /// The operations of the tick that started at `tick_start` (wall
    /// clock), as the hooks see it.
    pub fn at_tick(mut self, tick_start: SystemTime) -> Self {
        self.hook_cx.tick_start = tick_start;
        self
    }

    /// The hooks' start-of-tick housekeeping; reasons for `warn`s.
    pub fn start_hooks(&self) -> Vec<LogEvent> {
        self.hooks.tick_started(&self.hook_cx)
    }

    /// Calls the hooks before an entry of `dir` is replaced or deleted;
    /// their events go to `events`. A hook refused for want of write
    /// permission on a read-only folder of ours runs once more with the
    /// folder made writable, as the operation itself would (`in_writable`).
    fn run_hooks(
        &self,
        at: HookAt,
        dir: &HeldDir,
        name: &[u8],
        path: &RelPath,
        events: &mut Vec<LogEvent>,
    ) -> Result<(), OpError> {
        if self.hooks.is_empty() {
            return Ok(());
        }
        let run = |events: &mut Vec<LogEvent>| {
            self.hooks
                .before(at, &self.hook_cx, dir.as_fd(), name, path, events)
        };
        match run(events) {
            Err(e) if e.errno() == Some(Errno::ACCESS) && dir.unlock(&self.unlocks, WRITE) => {
                run(events)
            }
            other => other,
        }
        .map_err(|source| OpError::Hook {
            path: path.clone(),
            source,
        })
    }

    /// Permissions or owners this tick could not keep.
    pub fn unkept(&self) -> &Unkept {
        &self.unkept
    }

    /// Sets owner (`chown`) then mode (`chmod`) where the replica keeps
    /// them; where it does not (as probed, or as a call now says), that is
    /// noted for the run's one `warn`, never an error, and the content and
    /// times are still set. Not as root, only the group is set, where it
    /// is one of ours (`keeps_group`). `ours`: whether the entry belongs
    /// to us; `dir`: whether it is a folder.
    // The four calls are what differs between an open handle and an
    // `O_PATH` one (`set_fd_meta`, `set_meta_by_handle`).
    #[allow(clippy::too_many_arguments)]
    fn set_owner_and_mode(
        &self,
        meta: &Meta,
        path: &RelPath,
        dir: bool,
        chown: impl FnOnce(Option<Uid>, Option<Gid>) -> Result<(), Errno>,
        chmod: impl FnOnce(Mode) -> Result<(), Errno>,
        ours: impl Fn() -> bool,
        attrs: impl FnOnce() -> Result<(), OpError>,
    ) -> Result<(), OpError> {
        if self.preserve_owner {
            let (uid, gid) = Self::owner(meta);
            self.unkept
                .tolerate(UNKEPT_OWNER, chown(uid, gid), &ours)
                .map_err(io_err("set the owner", path))?;
        } else if self.keeps_group(meta.gid) {
            let gid = Gid::from_raw_unchecked(meta.gid);
            self.unkept
                .tolerate(UNKEPT_OWNER, chown(None, Some(gid)), &ours)
                .map_err(io_err("set the group", path))?;
        } else if self.fs.owners_lost {
            self.unkept.note(UNKEPT_OWNER);
        }
        // After the owner, which clears some (`security.capability`), and
        // before the mode, which may take away the write permission that
        // setting them needs. An ACL sets the group bits from its mask,
        // which the mode set next agrees with.
        attrs()?;
        if self.fs.keeps_perms {
            self.unkept
                .tolerate(UNKEPT_PERMS, chmod(self.mode(meta, dir)), &ours)
                .map_err(io_err("set the permissions", path))?;
        } else {
            self.unkept.note(UNKEPT_PERMS);
        }
        Ok(())
    }

    /// True when the opened roots are the folders `ids` names.
    pub fn roots_are(&self, ids: RootIds) -> bool {
        let id = |root: &Root| {
            root.stat().ok().map(|st| FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            })
        };
        id(&self.source) == Some(ids.source) && id(&self.replica) == Some(ids.replica)
    }

    /// Writes the source file at `path` to the replica, atomically. `meta`
    /// is the source as scanned; the file must still be that file.
    /// A new file: the name must be free (see `place_new`).
    pub fn copy(
        &self,
        path: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError> {
        self.write_file(path, meta, Into::New, events)
    }

    /// Like `copy`, over the replica file that is there (`Update`): the
    /// hooks run first, their events going to `events`.
    pub fn update(
        &self,
        path: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError> {
        self.write_file(path, meta, Into::Existing, events)
    }

    fn write_file(
        &self,
        path: &RelPath,
        meta: &Meta,
        into: Into,
        events: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError> {
        match self.try_copy(path, meta, into, events) {
            Ok((bytes, racy)) => Ok(Copied::Written { bytes, racy }),
            Err(Halt::Skip(reason)) => Ok(Copied::Skipped { reason }),
            Err(Halt::Fail(e)) => Err(e),
        }
    }

    fn try_copy(
        &self,
        path: &RelPath,
        meta: &Meta,
        into: Into,
        events: &mut Vec<LogEvent>,
    ) -> Result<(u64, bool), Halt> {
        let started = SystemTime::now();
        let (src, before) = self.open_source(path, meta.id)?;
        let (dir, name) = self.replica_parent(path)?;
        let (tmp_fd, temp) = self.new_temp(&dir, path, "create the temporary", |n| {
            rfs::openat(dir.as_fd(), n, TEMP_FLAGS, Mode::from_raw_mode(0o600))
        })?;
        let bytes =
            copy_content(&src, &tmp_fd, &before).map_err(std_err("copy the content", path))?;
        // Read before the second fstat: an attribute set meanwhile moves
        // the ctime it compares, and the copy is skipped.
        let attrs = self.read_attrs(On::Fd(src.as_fd()), path)?;
        let after = rfs::fstat(&src).map_err(io_err("stat the source file", path))?;
        let after_meta = meta_of(&after);
        let racy = racy::is_racy(
            started,
            after_meta.mtime,
            after_meta.ctime,
            self.fs.blind_span(),
        );
        if !same_content_stamp(&before, &after) || bytes != after.st_size as u64 {
            // `temp` is dropped here, which removes it.
            return Err(Halt::Skip(CHANGED_WHILE_COPIED.into()));
        }
        // The metadata of the content actually copied, which the second
        // fstat just confirmed; it equals `meta` unless the file changed
        // between the scan and now.
        self.set_fd_meta(tmp_fd.as_fd(), &after_meta, Some(&attrs), path, false)?;
        drop(tmp_fd);
        if racy {
            // Recorded before the copy takes its name: a run killed after
            // the rename still leaves it to be rechecked.
            racy::append(&self.replica, path, self.fsync)
                .map_err(std_err("record the copy for a recheck", path))?;
        }
        fail_point!("replica_ops::copy::before_rename");
        // A plain rename, also over an existing file: ext4 (`auto_da_alloc`)
        // then starts writing the new blocks before the rename can reach
        // the disk, so a power cut leaves the old content or the new one,
        // never an empty file (`tests/crash.rs`). A folder put at the path
        // meanwhile makes the rename fail: an error for this file, nothing
        // lost. A new file never replaces anything.
        match into {
            Into::New => self.place_new(dir.as_fd(), temp, name, path)?,
            Into::Existing => self.replace(&dir, temp, name, path, events)?,
        }
        Ok((bytes, racy))
    }

    /// Opens the source file and checks it is still the regular file the
    /// scan saw; anything else is a skip with the reason.
    fn open_source(&self, path: &RelPath, id: FileId) -> Result<(OwnedFd, Stat), Halt> {
        let (dir, name) = match self.source.open_parent(path) {
            Ok(found) => found,
            Err(e) => return Err(source_parent_failed(e, path)),
        };
        fail_point!("replica_ops::copy::before_open_source");
        let fd = match rfs::openat(&dir, name, SOURCE_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(Halt::Skip("vanished".into())),
            Err(Errno::LOOP) => return Err(Halt::Skip("changed type: now a symlink".into())),
            // Opening a socket fails with ENXIO.
            Err(Errno::NXIO) => return Err(Halt::Skip("changed type: now a socket".into())),
            Err(e) => return Err(io_err("open the source file", path)(e).into()),
        };
        let st = rfs::fstat(&fd).map_err(io_err("stat the source file", path))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::RegularFile {
            return Err(Halt::Skip(format!("changed type: now a {}", type_name(ft))));
        }
        if (st.st_dev, st.st_ino) != (id.dev, id.ino) {
            return Err(Halt::Skip("replaced by another file since the scan".into()));
        }
        fail_point!("replica_ops::copy::after_open_source");
        Ok((fd, st))
    }

    /// Creates or retargets the link at `path`: a new link under a
    /// temporary name, renamed over the old entry in one step (the hooks
    /// run before, their events going to `events`).
    pub fn symlink(
        &self,
        path: &RelPath,
        target: &[u8],
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<(), OpError> {
        let (dir, name) = self.replica_parent(path)?;
        let ((), temp) = self.new_temp(&dir, path, "create the symlink", |n| {
            rfs::symlinkat(target, dir.as_fd(), n)
        })?;
        self.set_link_meta(dir.as_fd(), temp.name(), meta, path)?;
        self.replace(&dir, temp, name, path, events)
    }

    /// Sets owner, permissions and times of the file or link at `path`
    /// without touching its content: the inode stays the same.
    pub fn set_meta(&self, path: &RelPath, link: bool, meta: &Meta) -> Result<(), OpError> {
        let (dir, name) = self.replica_parent(path)?;
        if link {
            let st = root_stat(dir.as_fd(), name, path)?;
            expect_type(&st, FileType::Symlink, path)?;
            return self.set_link_meta(dir.as_fd(), name, meta, path);
        }
        match rfs::openat(&dir, name, SOURCE_FLAGS, Mode::empty()) {
            Ok(fd) => {
                let st = rfs::fstat(&fd).map_err(io_err("stat the replica file", path))?;
                expect_type(&st, FileType::RegularFile, path)?;
                let attrs = self.source_attrs(path, FileType::RegularFile)?;
                self.set_fd_meta(fd.as_fd(), meta, attrs.as_ref(), path, false)
                    .map(drop)
            }
            Err(Errno::LOOP) => Err(OpError::Kind {
                path: path.clone(),
                expected: "file",
                found: "symlink",
            }),
            // A file without read permission for us (we are not root):
            // change it through a handle that needs no permission.
            Err(Errno::ACCESS) => {
                let attrs = self.source_attrs(path, FileType::RegularFile)?;
                self.set_meta_by_handle(
                    dir.as_fd(),
                    name,
                    FileType::RegularFile,
                    meta,
                    attrs.as_ref(),
                    path,
                )
                .map(drop)
            }
            Err(e) => Err(io_err("open the replica file", path)(e)),
        }
    }

    /// Renames the replica's entry at `from` to `path`, from the old
    /// folder's handle to the new one's, never replacing an entry at `path`
    /// (`RENAME_NOREPLACE`: one there is an error and stays as it is). With
    /// `meta` it is a file, given `meta` where its own differs; without, a
    /// folder, moved with all it holds (its metadata comes later). Nothing
    /// is replaced, so no hook runs; the inode, and so the content, stays.
    pub fn move_entry(
        &self,
        from: &RelPath,
        path: &RelPath,
        meta: Option<&Meta>,
    ) -> Result<(), OpError> {
        let (old_dir, old_name) = self.replica_parent(from)?;
        let (new_dir, new_name) = self.replica_parent(path)?;
        // A link, or another type, put there since the scan is not moved.
        let st = root_stat(old_dir.as_fd(), old_name, from)?;
        let kind = match meta {
            Some(_) => FileType::RegularFile,
            None => FileType::Directory,
        };
        expect_type(&st, kind, from)?;
        let taken = || OpError::Taken { path: path.clone() };
        let (old, new) = (old_dir.as_fd(), new_dir.as_fd());
        // A folder that changes parents has its `..` entry rewritten: it
        // must be writable itself, as a read-only source folder's copy is
        // not (it gets its mode back after the move).
        let moved = match (meta, from.parent() == path.parent()) {
            (None, false) => {
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                rfs::openat(old, old_name, flags, Mode::empty())
                    .ok()
                    .map(HeldDir::new)
            }
            _ => None,
        };
        let rename = |flags| {
            self.in_writable(&old_dir, || {
                self.in_writable(&new_dir, || match &moved {
                    Some(dir) => self.in_writable(dir, || {
                        rfs::renameat_with(old, old_name, new, new_name, flags)
                    }),
                    None => rfs::renameat_with(old, old_name, new, new_name, flags),
                })
            })
        };
        match rename(rfs::RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(taken()),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                match rfs::statat(new, new_name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(_) => return Err(taken()),
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err("look up the name", path)(e)),
                }
                rename(rfs::RenameFlags::empty()).map_err(io_err("move", path))?;
            }
            Err(e) => return Err(io_err("move", path)(e)),
        }
        self.sync_dir(new, path)?;
        // Attributes may have changed with the name (a rename moves the
        // ctime, so that change would not be seen later).
        if let Some(meta) = meta.filter(|m| !self.meta_matches(&st, m) || !self.attrs.is_none()) {
            self.set_meta(path, false, meta)?;
        }
        self.sync_dir(old, from)
    }

    /// The file's mtime, permissions and (when kept) owner or group are
    /// `meta`'s.
    fn meta_matches(&self, st: &Stat, meta: &Meta) -> bool {
        let mtime = Timestamp::new(st.st_mtime, st.st_mtime_nsec as u32);
        let perm = st.st_mode & 0o7777;
        mtime == meta.mtime
            && perm == self.mode(meta, false).as_raw_mode()
            && (!self.preserve_owner || (st.st_uid, st.st_gid) == (meta.uid, meta.gid))
            && (!self.keeps_group(meta.gid) || st.st_gid == meta.gid)
    }

    /// Creates the folder `path` readable only by us; its final mode and
    /// times come with `finish_dir`, once its contents are written.
    pub fn mkdir(&self, path: &RelPath) -> Result<(), OpError> {
        let (dir, name) = self.replica_parent(path)?;
        fail_point!("replica_ops::mkdir::before");
        match self.in_writable(&dir, || {
            rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
        }) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = root_stat(dir.as_fd(), name, path)?;
                expect_type(&st, FileType::Directory, path)?;
            }
            Err(e) => return Err(io_err("create the folder", path)(e)),
        }
        self.sync_dir(dir.as_fd(), path)
    }

    /// Sets a folder's owner, permissions and times (the root's too).
    /// True if its attributes were set (the rest is set whatever it was).
    pub fn finish_dir(&self, path: &RelPath, meta: &Meta) -> Result<bool, OpError> {
        let attrs = self.source_attrs(path, FileType::Directory)?;
        match self.replica.open_dir_unlocking(path, &self.unlocks) {
            Ok(dir) => self.set_fd_meta(dir.as_fd(), meta, attrs.as_ref(), path, true),
            Err(e) if errno_of(&e) == Some(Errno::ACCESS) && !path.is_root() => {
                let (dir, name) = self.replica_parent(path)?;
                let kind = FileType::Directory;
                self.set_meta_by_handle(dir.as_fd(), name, kind, meta, attrs.as_ref(), path)
            }
            Err(e) => Err(std_err("open the folder", path)(e)),
        }
    }

    /// Makes `path` a hard link of the replica's file at `to`, replacing
    /// what the replica has at `path` in one rename (the hooks run first,
    /// their events going to `events`). The file at `to` must be the
    /// source's as planned (`meta`'s size and mtime): else linking would
    /// give `path` old content, and it is a skip with the reason.
    pub fn link(
        &self,
        path: &RelPath,
        to: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Option<String>, OpError> {
        let (to_dir, to_name) = self.replica_parent(to)?;
        let target = match rfs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(io_err("look up the file to link to", path)(e)),
        };
        let ready = target.as_ref().is_some_and(|st| {
            FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                && st.st_size as u64 == meta.size
                && self.fs.same_mtime(
                    Timestamp::new(st.st_mtime, st.st_mtime_nsec as u32),
                    meta.mtime,
                )
        });
        let Some(target) = target.filter(|_| ready) else {
            return Ok(Some(format!(
                "not linked: its other name {to} is not the source's file in the replica yet"
            )));
        };
        let (dir, name) = self.replica_parent(path)?;
        let existing = match rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) => return Ok(None),
            Ok(_) => true,
            Err(Errno::NOENT) => false,
            Err(e) => return Err(io_err("look up the name", path)(e)),
        };
        let ((), temp) = self.new_temp(&dir, path, "link", |n| {
            rfs::linkat(&to_dir, to_name, dir.as_fd(), n, AtFlags::empty())
        })?;
        if existing {
            self.replace(&dir, temp, name, path, events)?;
        } else {
            self.place_new(dir.as_fd(), temp, name, path)?;
        }
        Ok(None)
    }

    /// Compares the attributes of the replica's file or folder at `path`
    /// with the source's and sets those that differ; true if it set any.
    /// When none differ and the source is still as scanned (`meta`'s
    /// ctime), the replica entry's ctime is moved to now (a `chmod` to its
    /// own mode), so that it is not compared again at every sync.
    pub fn attrs(&self, path: &RelPath, dir: bool, meta: &Meta) -> Result<bool, OpError> {
        let kind = match dir {
            true => FileType::Directory,
            false => FileType::RegularFile,
        };
        let Some((want, source_ctime)) = self.source_attrs_with_ctime(path, kind)? else {
            return Ok(false);
        };
        let (handle, _parent) = self.replica_handle(path, kind)?;
        let proc = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let st = rfs::fstat(&handle).map_err(io_err("stat the replica entry", path))?;
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        let chmod = |m| rfs::chmod(proc.as_str(), m);
        let unlocked = std::cell::Cell::new(false);
        let result = self.put_attrs_writable(On::Proc(&proc), &want, path, || {
            unlocked.set(add_owner_write(handle.as_fd(), chmod));
            unlocked.get()
        });
        // The mode it had, whether or not it was unlocked for writing: a
        // chmod to it also moves the ctime, so that an entry found equal
        // is not compared again at every sync (unless the source changed
        // meanwhile: then the next sync compares it).
        if unlocked.get() || matches!(result, Ok(false)) && source_ctime == meta.ctime {
            let _ = chmod(mode);
        }
        result
    }

    /// Whether the attributes of the replica's file or folder at `path`
    /// differ from the source's: what a dry run reports. Nothing is
    /// written.
    pub fn attrs_differ(&self, path: &RelPath, dir: bool) -> Result<bool, OpError> {
        let kind = match dir {
            true => FileType::Directory,
            false => FileType::RegularFile,
        };
        let Some(want) = self.source_attrs(path, kind)? else {
            return Ok(false);
        };
        let (handle, _parent) = self.replica_handle(path, kind)?;
        let proc = format!("/proc/self/fd/{}", handle.as_raw_fd());
        Ok(self.read_attrs(On::Proc(&proc), path)? != want)
    }

    /// An `O_PATH` handle on the replica's entry at `path`, of kind
    /// `kind`, with its parent folder's handle (root: none).
    fn replica_handle(
        &self,
        path: &RelPath,
        kind: FileType,
    ) -> Result<(OwnedFd, Option<HeldDir>), OpError> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (fd, parent) = if path.is_root() {
            let fd = self
                .replica
                .open_dir(path)
                .map_err(std_err("open the folder", path))?;
            (fd, None)
        } else {
            let (dir, name) = self.replica_parent(path)?;
            let fd = rfs::openat(&dir, name, flags, Mode::empty())
                .map_err(io_err("open the replica entry", path))?;
            (fd, Some(dir))
        };
        let st = rfs::fstat(&fd).map_err(io_err("stat the replica entry", path))?;
        expect_type(&st, kind, path)?;
        Ok((fd, parent))
    }

    /// The source's attributes of the entry at `path`, when this run
    /// mirrors any and the entry is still of kind `kind` (else `None`:
    /// the next sync sees what it became).
    fn source_attrs(&self, path: &RelPath, kind: FileType) -> Result<Option<Attrs>, OpError> {
        Ok(self
            .source_attrs_with_ctime(path, kind)?
            .map(|(attrs, _)| attrs))
    }

    /// `source_attrs` with the source's ctime when they were read.
    fn source_attrs_with_ctime(
        &self,
        path: &RelPath,
        kind: FileType,
    ) -> Result<Option<(Attrs, Timestamp)>, OpError> {
        if self.attrs.is_none() {
            return Ok(None);
        }
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let opened = if path.is_root() {
            self.source.open_dir(path).map_err(|e| errno_of(&e))
        } else {
            match self.source.open_parent(path) {
                Ok((dir, name)) => rfs::openat(&dir, name, flags, Mode::empty()).map_err(Some),
                Err(e) => Err(errno_of(&e)),
            }
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)) => return Ok(None),
            Err(e) => {
                let e = e.map_or_else(|| io::Error::other("cannot open"), io::Error::from);
                return Err(std_err("open the source entry", path)(e));
            }
        };
        let st = rfs::fstat(&fd).map_err(io_err("stat the source entry", path))?;
        if FileType::from_raw_mode(st.st_mode) != kind {
            return Ok(None);
        }
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let attrs = self.read_attrs(On::Proc(&proc), path)?;
        let ctime = Timestamp::new(st.st_ctime, st.st_ctime_nsec as u32);
        Ok(Some((attrs, ctime)))
    }

    /// The attributes of a source entry that this run mirrors.
    fn read_attrs(&self, on: On<'_>, path: &RelPath) -> Result<Attrs, OpError> {
        xattrs::read(on, self.attrs).map_err(io_err("read the extended attributes", path))
    }

    /// Gives the replica entry `on` the attributes `want` (the source's);
    /// true if it changed any. What the replica cannot store is noted for
    /// the run's one `warn`. A refusal for want of write permission (a
    /// read-only entry of ours, and we are not root) is met by
    /// `make_writable` and one more try (the caller sets the mode after).
    fn put_attrs_writable(
        &self,
        on: On<'_>,
        want: &Attrs,
        path: &RelPath,
        make_writable: impl FnOnce() -> bool,
    ) -> Result<bool, OpError> {
        if self.attrs.is_none() {
            return Ok(false);
        }
        let done = match xattrs::apply(on, want, self.attrs) {
            Err(e) if e.errno == Errno::ACCESS && make_writable() => {
                xattrs::apply(on, want, self.attrs)
            }
            other => other,
        };
        if done.is_err() {
            self.attrs_failed.store(true, Ordering::Relaxed);
        }
        let done = done.map_err(|e| OpError::Io {
            step: "set the extended attributes",
            path: path.clone(),
            source: io::Error::other(format!(
                "{}: {}",
                String::from_utf8_lossy(&e.name),
                io::Error::from(e.errno)
            )),
        })?;
        if done.unkept_xattrs {
            self.unkept.note(UNKEPT_XATTRS);
        }
        if done.unkept_acls {
            self.unkept.note(UNKEPT_ACLS);
        }
        Ok(done.changed)
    }

    /// Records that every entry's attributes now are the source's under
    /// this run's policy (`xattrs::record_marker`).
    pub fn record_attrs_sweep(&self) -> io::Result<()> {
        xattrs::record_marker(&self.replica, self.attrs)
    }

    /// When setting some entry's attributes failed at this tick, removes
    /// the record of a full comparison: the next run compares every
    /// entry's again, the failed one too (its ctime may say otherwise).
    pub fn forget_attrs_sweep_if_failed(&self) -> io::Result<()> {
        if !self.attrs_failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        xattrs::clear_marker(&self.replica)
    }

    /// Records the racy copies of a tick for a recheck, and forgets the
    /// files copied without doubt, and follows the moved ones
    /// (`racy::record`).
    pub fn record_racy(
        &self,
        racy: &[RelPath],
        settled: &[RelPath],
        moved: &[(RelPath, RelPath)],
    ) -> io::Result<()> {
        racy::record(&self.replica, racy, settled, moved)
    }

    /// Removes the file or link at `path`; one already gone counts as done.
    /// The hooks run first, their events going to `events`.
    pub fn delete(&self, path: &RelPath, events: &mut Vec<LogEvent>) -> Result<(), OpError> {
        self.remove(path, AtFlags::empty(), Some(events))
    }

    /// Removes the empty folder at `path`; one already gone counts as done.
    pub fn rmdir(&self, path: &RelPath) -> Result<(), OpError> {
        self.remove(path, AtFlags::REMOVEDIR, None)
    }

    /// Removes a temporary left by an interrupted run. Only names of the
    /// temporaries' form are removed, whatever the plan says (the Differ
    /// plans only those whose token was recorded).
    pub fn remove_stale(&self, path: &RelPath) -> Result<(), OpError> {
        if temp_token(path.name()).is_none() {
            return Err(OpError::Io {
                step: "remove a stale temporary",
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a temporary's name"),
            });
        }
        self.remove(path, AtFlags::empty(), None)
    }

    /// `events`: where the hooks' events go, for removals the hooks see.
    fn remove(
        &self,
        path: &RelPath,
        flags: AtFlags,
        events: Option<&mut Vec<LogEvent>>,
    ) -> Result<(), OpError> {
        let (dir, name) = match self.replica.open_parent_unlocking(path, &self.unlocks) {
            Ok(found) => found,
            // No parent folder, so no entry either.
            Err(e) if matches!(errno_of(&e), Some(Errno::NOENT)) => return Ok(()),
            Err(e) => return Err(std_err("open the replica folder", path)(e)),
        };
        if let Some(events) = events {
            self.run_hooks(HookAt::Delete, &dir, name, path, events)?;
        }
        fail_point!("replica_ops::delete::before_unlink");
        match self.in_writable(&dir, || rfs::unlinkat(&dir, name, flags)) {
            Ok(()) | Err(Errno::NOENT) => self.sync_dir(dir.as_fd(), path),
            Err(e) => Err(io_err("remove", path)(e)),
        }
    }

    /// Runs `op`, which adds or removes an entry of the folder `dir`. When
    /// it is refused because the folder is read-only (a mirrored `0o555`
    /// folder, and we are not root), and the folder is ours, it is made
    /// writable for us and `op` runs once more: the folder stays writable
    /// for as long as `dir` is open, then gets its mode back
    /// (`unlock.rs`); `finish_dir` later sets the source's.
    fn in_writable<T>(
        &self,
        dir: &HeldDir,
        mut op: impl FnMut() -> rustix::io::Result<T>,
    ) -> rustix::io::Result<T> {
        match op() {
            Err(Errno::ACCESS) if dir.unlock(&self.unlocks, WRITE) => op(),
            other => other,
        }
    }

    /// The replica folder holding `path`, the folders of ours in the way
    /// unlocked for as long as it is open.
    fn replica_parent<'p>(&self, path: &'p RelPath) -> Result<(HeldDir, &'p [u8]), OpError> {
        self.replica
            .open_parent_unlocking(path, &self.unlocks)
            .map_err(std_err("open the replica folder", path))
    }

    /// Calls `create` with fresh temporary names until one is free; the
    /// returned guard removes the temporary unless it was renamed.
    fn new_temp<'d, T>(
        &self,
        dir: &'d HeldDir,
        path: &RelPath,
        step: &'static str,
        mut create: impl FnMut(&[u8]) -> rustix::io::Result<T>,
    ) -> Result<(T, Temp<'d>), OpError> {
        self.recorded.get_or_init(|| self.record_token());
        let mut last = Errno::EXIST;
        for _ in 0..TEMP_ATTEMPTS {
            let name = self.temp_name();
            match self.in_writable(dir, || create(&name)) {
                Ok(made) => {
                    let dir = dir.as_fd();
                    return Ok((made, Temp { dir, name }));
                }
                Err(Errno::EXIST) => last = Errno::EXIST,
                Err(e) => return Err(io_err(step, path)(e)),
            }
        }
        Err(io_err(step, path)(last))
    }

    fn temp_name(&self) -> Vec<u8> {
        temp_name(self.token, self.temp_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Adds this run's token to `.treesync/temps` unless it is there: from
    /// then on the next run knows which temporaries are ours to remove. A
    /// failure is not fatal: a temporary the next run does not recognise
    /// is mirrored like any file (deleted with a log line), never lost
    /// silently.
    fn record_token(&self) {
        let Ok(dir) = state::open_dir(&self.replica) else {
            return;
        };
        let mut tokens = read_tokens(dir.as_fd());
        if tokens.contains(self.token) {
            return;
        }
        tokens.insert(self.token);
        let _ = state::write_bytes(&dir, TEMPS_FILE, &tokens.to_bytes());
    }

    /// Runs the hooks, renames the finished temporary over `name`, then
    /// makes the folder durable when asked.
    fn replace(
        &self,
        held: &HeldDir,
        temp: Temp<'_>,
        name: &[u8],
        path: &RelPath,
        events: &mut Vec<LogEvent>,
    ) -> Result<(), OpError> {
        self.run_hooks(HookAt::Replace, held, name, path, events)?;
        fail_point!("replica_ops::replace::before_rename");
        let dir = held.as_fd();
        rfs::renameat(dir, temp.name(), dir, name).map_err(io_err("rename into place", path))?;
        temp.keep();
        self.sync_dir(dir, path)
    }

    /// Renames the finished temporary to `name`, which must be free: the
    /// listing had nothing there. Where the filesystem cannot refuse to
    /// replace (`RENAME_NOREPLACE` unsupported), the name is looked up
    /// first; one writer per replica (the lock) makes that enough.
    fn place_new(
        &self,
        dir: BorrowedFd<'_>,
        temp: Temp<'_>,
        name: &[u8],
        path: &RelPath,
    ) -> Result<(), OpError> {
        let taken = || OpError::Taken { path: path.clone() };
        match rfs::renameat_with(dir, temp.name(), dir, name, rfs::RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(taken()),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(_) => return Err(taken()),
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err("look up the name", path)(e)),
                }
                rfs::renameat(dir, temp.name(), dir, name)
                    .map_err(io_err("rename into place", path))?;
            }
            Err(e) => return Err(io_err("rename into place", path)(e)),
        }
        temp.keep();
        self.sync_dir(dir, path)
    }

    fn sync_dir(&self, dir: BorrowedFd<'_>, path: &RelPath) -> Result<(), OpError> {
        if self.fsync {
            rfs::fsync(dir).map_err(io_err("fsync the folder", path))?;
        }
        Ok(())
    }

    /// The permission bits to set: setuid and setgid only with the owner;
    /// a folder's setgid also with its group (`keeps_group`), which is what
    /// its new entries get.
    fn mode(&self, meta: &Meta, dir: bool) -> Mode {
        let keep = if self.preserve_owner {
            0o7777
        } else if dir && self.keeps_group(meta.gid) {
            0o3777
        } else {
            0o1777
        };
        Mode::from_raw_mode(meta.perm & keep)
    }

    /// Not as root, an entry gets the source's group `gid` where it is one
    /// of ours (`rsync -g`) and the replica keeps modes (one that does not
    /// keeps no groups either); the Differ compares it then.
    fn keeps_group(&self, gid: u32) -> bool {
        !self.preserve_owner && self.groups.keeps(gid, &self.fs)
    }

    fn owner(meta: &Meta) -> (Option<Uid>, Option<Gid>) {
        (
            Some(Uid::from_raw_unchecked(meta.uid)),
            Some(Gid::from_raw_unchecked(meta.gid)),
        )
    }

    /// Owner first (changing it clears setuid and setgid), then the
    /// attributes (`attrs`, the source's), then mode, then times, then
    /// durability, all on an open handle (see `set_owner_and_mode`). A
    /// folder's mode is the one it keeps when it was unlocked for an
    /// operation. True if an attribute was set or removed.
    fn set_fd_meta(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        attrs: Option<&Attrs>,
        path: &RelPath,
        dir: bool,
    ) -> Result<bool, OpError> {
        let changed = std::cell::Cell::new(false);
        self.set_owner_and_mode(
            meta,
            path,
            dir,
            |uid, gid| rfs::fchown(fd, uid, gid),
            |mode| {
                if dir {
                    self.unlocks.set_mode(fd, mode, |m| rfs::fchmod(fd, m))
                } else {
                    rfs::fchmod(fd, mode)
                }
            },
            || rfs::fstat(fd).is_ok_and(|st| st.st_uid == rustix::process::geteuid().as_raw()),
            || match attrs {
                Some(attrs) => self
                    .put_attrs_writable(On::Fd(fd), attrs, path, || {
                        add_owner_write(fd, |m| rfs::fchmod(fd, m))
                    })
                    .map(|c| changed.set(c)),
                None => Ok(()),
            },
        )?;
        rfs::futimens(fd, &timestamps(meta.mtime)).map_err(io_err("set the times", path))?;
        if self.fsync {
            rfs::fsync(fd).map_err(io_err("fsync", path))?;
        }
        Ok(changed.get())
    }

    /// Times and owner of a link itself; links have no mode of their own.
    fn set_link_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        path: &RelPath,
    ) -> Result<(), OpError> {
        if self.preserve_owner {
            let (uid, gid) = Self::owner(meta);
            rfs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err("set the owner", path))?;
        } else if self.keeps_group(meta.gid) {
            let gid = Some(Gid::from_raw_unchecked(meta.gid));
            let ours = || {
                rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| st.st_uid == rustix::process::geteuid().as_raw())
            };
            let set = rfs::chownat(dir, name, None, gid, AtFlags::SYMLINK_NOFOLLOW);
            self.unkept
                .tolerate(UNKEPT_OWNER, set, ours)
                .map_err(io_err("set the group", path))?;
        }
        match rfs::utimensat(
            dir,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            // Link times are kept only where the platform allows.
            Ok(()) | Err(Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(io_err("set the times", path)(e)),
        }
    }

    /// Sets metadata through an `O_PATH` handle, for entries we may not
    /// open for reading. Such a handle takes no `fchmod`, so the calls go
    /// through its `/proc/self/fd` name, which names that very inode and
    /// cannot be redirected by a rename or a link.
    fn set_meta_by_handle(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        expected: FileType,
        meta: &Meta,
        attrs: Option<&Attrs>,
        path: &RelPath,
    ) -> Result<bool, OpError> {
        let changed = std::cell::Cell::new(false);
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(dir, name, flags, Mode::empty())
            .map_err(io_err("open the replica entry", path))?;
        let st = rfs::fstat(&fd).map_err(io_err("stat the replica entry", path))?;
        expect_type(&st, expected, path)?;
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let dir = expected == FileType::Directory;
        self.set_owner_and_mode(
            meta,
            path,
            dir,
            |uid, gid| rfs::chown(proc.as_str(), uid, gid),
            |mode| {
                if dir {
                    let chmod = |m| rfs::chmod(proc.as_str(), m);
                    self.unlocks.set_mode(fd.as_fd(), mode, chmod)
                } else {
                    rfs::chmod(proc.as_str(), mode)
                }
            },
            || st.st_uid == rustix::process::geteuid().as_raw(),
            || match attrs {
                Some(attrs) => self
                    .put_attrs_writable(On::Proc(&proc), attrs, path, || {
                        add_owner_write(fd.as_fd(), |m| rfs::chmod(proc.as_str(), m))
                    })
                    .map(|c| changed.set(c)),
                None => Ok(()),
            },
        )?;
        rfs::utimensat(
            rfs::CWD,
            proc.as_str(),
            &timestamps(meta.mtime),
            AtFlags::empty(),
        )
        .map_err(io_err("set the times", path))?;
        Ok(changed.get())
    }
}

/// The local replica as the Applier's backend: each call is the method of
/// the same name.
impl crate::contract::replica::Replica for ReplicaOps {
    fn copy(
        &self,
        path: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError> {
        ReplicaOps::copy(self, path, meta, events)
    }
    fn update(
        &self,
        path: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError> {
        ReplicaOps::update(self, path, meta, events)
    }
    fn symlink(
        &self,
        path: &RelPath,
        target: &[u8],
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<(), OpError> {
        ReplicaOps::symlink(self, path, target, meta, events)
    }
    fn link(
        &self,
        path: &RelPath,
        to: &RelPath,
        meta: &Meta,
        events: &mut Vec<LogEvent>,
    ) -> Result<Option<String>, OpError> {
        ReplicaOps::link(self, path, to, meta, events)
    }
    fn set_meta(&self, path: &RelPath, link: bool, meta: &Meta) -> Result<(), OpError> {
        ReplicaOps::set_meta(self, path, link, meta)
    }
    fn attrs(&self, path: &RelPath, dir: bool, meta: &Meta) -> Result<bool, OpError> {
        ReplicaOps::attrs(self, path, dir, meta)
    }
    fn move_entry(&self, from: &RelPath, to: &RelPath, meta: Option<&Meta>) -> Result<(), OpError> {
        ReplicaOps::move_entry(self, from, to, meta)
    }
    fn mkdir(&self, path: &RelPath) -> Result<(), OpError> {
        ReplicaOps::mkdir(self, path)
    }
    fn finish_dir(&self, path: &RelPath, meta: &Meta) -> Result<bool, OpError> {
        ReplicaOps::finish_dir(self, path, meta)
    }
    fn delete(&self, path: &RelPath, events: &mut Vec<LogEvent>) -> Result<(), OpError> {
        ReplicaOps::delete(self, path, events)
    }
    fn rmdir(&self, path: &RelPath) -> Result<(), OpError> {
        ReplicaOps::rmdir(self, path)
    }
    fn remove_stale(&self, path: &RelPath) -> Result<(), OpError> {
        ReplicaOps::remove_stale(self, path)
    }
}

/// The tokens of the runs that recorded their temporaries in the replica's
/// state folder; none when there is no usable record.
pub fn recorded_tokens(replica: &Root) -> TempTokens {
    state::open_dir(replica).map_or_else(|_| TempTokens::default(), |dir| read_tokens(dir.as_fd()))
}

fn read_tokens(dir: BorrowedFd<'_>) -> TempTokens {
    match state::read_small(dir, TEMPS_FILE, 4096) {
        Ok(Some(bytes)) => TempTokens::parse(&bytes),
        Ok(None) | Err(_) => TempTokens::default(),
    }
}

/// Where a copy goes: a name the replica does not have, or over its file.
#[derive(Clone, Copy)]
enum Into {
    New,
    Existing,
}

/// A temporary in a replica folder, removed when dropped unless `keep`
/// was called after it was renamed into place. Removal on drop covers
/// every early return; if it fails, the next run removes the stale file.
struct Temp<'d> {
    dir: BorrowedFd<'d>,
    name: Vec<u8>,
}

impl Temp<'_> {
    fn name(&self) -> &[u8] {
        &self.name
    }

    /// The temporary was renamed: there is nothing left to remove.
    fn keep(mut self) {
        self.name.clear();
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = rfs::unlinkat(self.dir, self.name.as_slice(), AtFlags::empty());
        }
    }
}

/// A source parent folder that cannot be opened: gone or no longer a
/// folder is a change in the source during the tick (a skip), anything
/// else an error.
fn source_parent_failed(e: io::Error, path: &RelPath) -> Halt {
    match errno_of(&e) {
        Some(Errno::NOENT | Errno::NOTDIR) => Halt::Skip("vanished".into()),
        Some(Errno::LOOP) => Halt::Skip("a folder above it is now a symlink".into()),
        _ => Halt::Fail(std_err("open the source folder", path)(e)),
    }
}

/// Copies `src` into `dst` in the kernel (`copy_file_range`). `expected`
/// is the size seen when `src` was opened: some filesystems (FUSE,
/// procfs-like) end a kernel copy early, so short of it, reading finds what
/// is really there. The copy goes on to the end, past `expected` if need
/// be: a file whose size under-reports its content (some FUSE
/// filesystems) then differs from its stat and is skipped, never copied
/// cut short.
fn copy_content(src: &OwnedFd, dst: &OwnedFd, seen: &Stat) -> io::Result<u64> {
    let expected = u64::try_from(seen.st_size).unwrap_or(0);
    // Fewer blocks than the size needs: holes (or compression).
    let allocated = u64::try_from(seen.st_blocks)
        .unwrap_or(u64::MAX)
        .saturating_mul(512);
    if allocated < expected {
        if let Some(total) = copy_sparse(src, dst)? {
            return Ok(total);
        }
    }
    let mut total = 0u64;
    loop {
        // An injected write failure (the disk filling up mid-copy).
        fail_point!("replica_ops::copy::write", |_| Err(Errno::NOSPC.into()));
        match rfs::copy_file_range(src, None, dst, None, RANGE_CHUNK) {
            Ok(0) if total < expected => {
                return copy_buffered(src, dst).map(|rest| total + rest);
            }
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(Errno::INTR) => {}
            // Across filesystems on older kernels, or filesystems without
            // support: the positions are where the kernel left them.
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return copy_buffered(src, dst).map(|rest| total + rest);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copies a file with holes (fewer blocks than its size needs) segment by
/// segment of data (`SEEK_DATA`, `SEEK_HOLE`), leaving the holes as holes
/// and setting the length at the end: a 1 GiB file holding 4 KiB of data
/// copies 4 KiB and allocates about that. Returns the length copied, or
/// `None` to copy the whole file: its filesystem cannot say where the
/// holes are.
fn copy_sparse(src: &OwnedFd, dst: &OwnedFd) -> io::Result<Option<u64>> {
    let mut pos = 0u64;
    loop {
        fail_point!("replica_ops::copy::write", |_| Err(Errno::NOSPC.into()));
        let data = match rfs::seek(src, rfs::SeekFrom::Data(pos)) {
            Ok(data) => data,
            // No data after `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == 0 => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let hole = rfs::seek(src, rfs::SeekFrom::Hole(data))?;
        copy_range(src, dst, data, hole)?;
        pos = hole;
    }
    // Up to the size the file has now: the caller compares it with the
    // size seen before, and a file that changed meanwhile is skipped.
    let end = u64::try_from(rfs::fstat(src)?.st_size)
        .unwrap_or(0)
        .max(pos);
    rfs::ftruncate(dst, end)?;
    Ok(Some(end))
}

/// Copies the bytes `start..end` of `src` to the same place in `dst`.
fn copy_range(src: &OwnedFd, dst: &OwnedFd, start: u64, end: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(RANGE_CHUNK)
            .min(RANGE_CHUNK);
        match rfs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            // The source ended early (shrunk): the size check says so.
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return copy_range_buffered(src, dst, off_in, end);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `copy_range` through a buffer, where the kernel cannot copy.
fn copy_range_buffered(src: &OwnedFd, dst: &OwnedFd, start: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut at = start;
    while at < end {
        let want = usize::try_from(end - at)
            .unwrap_or(BUFFER_SIZE)
            .min(BUFFER_SIZE);
        let n = match rustix::io::pread(src, &mut buf[..want], at) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut written = 0;
        while written < n {
            match rustix::io::pwrite(dst, &buf[written..n], at + written as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => written += w,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        at += n as u64;
    }
    Ok(())
}

fn copy_buffered(src: &OwnedFd, dst: &OwnedFd) -> io::Result<u64> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let n = match rustix::io::read(src, &mut buf[..]) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        write_all(dst, &buf[..n])?;
        total += n as u64;
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Size, mtime and ctime agree: no write reached the file in between
/// (any write through the filesystem moves ctime).
fn same_content_stamp(a: &Stat, b: &Stat) -> bool {
    a.st_size == b.st_size
        && (a.st_mtime, a.st_mtime_nsec) == (b.st_mtime, b.st_mtime_nsec)
        && (a.st_ctime, a.st_ctime_nsec) == (b.st_ctime, b.st_ctime_nsec)
}

/// Access and modification time both set to `mtime` (ns precision).
fn timestamps(mtime: Timestamp) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.secs,
        tv_nsec: mtime.nanos.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn root_stat(dir: BorrowedFd<'_>, name: &[u8], path: &RelPath) -> Result<Stat, OpError> {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io_err("stat the replica entry", path))
}

/// Gives the owner write permission on an entry we own that lacks it,
/// through `chmod` (on `fd`'s inode); true if it did.
fn add_owner_write(fd: BorrowedFd<'_>, chmod: impl FnOnce(Mode) -> Result<(), Errno>) -> bool {
    let Ok(st) = rfs::fstat(fd) else {
        return false;
    };
    let ours = st.st_uid == rustix::process::geteuid().as_raw();
    if !ours || st.st_mode & 0o200 != 0 {
        return false;
    }
    chmod(Mode::from_raw_mode((st.st_mode | 0o200) & 0o7777)).is_ok()
}

fn expect_type(st: &Stat, expected: FileType, path: &RelPath) -> Result<(), OpError> {
    let found = FileType::from_raw_mode(st.st_mode);
    if found == expected {
        return Ok(());
    }
    Err(OpError::Kind {
        path: path.clone(),
        expected: type_name(expected),
        found: type_name(found),
    })
}

/// The model's names for entry kinds (`EntryKind::as_str`).
fn type_name(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "file",
        FileType::Directory => "folder",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "unknown file type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::path::Path;

    fn rel(s: &str) -> RelPath {
        RelPath::from_str_lossy(s)
    }

    fn lmeta(path: &Path) -> Meta {
        meta_of(&rfs::statat(rfs::CWD, path, AtFlags::SYMLINK_NOFOLLOW).unwrap())
    }

    fn setup() -> (tempfile::TempDir, ReplicaOps) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("src")).unwrap();
        fs::create_dir(tmp.path().join("dst")).unwrap();
        let opts = SyncOptions::new(tmp.path().join("src"), tmp.path().join("dst"));
        let ops = ReplicaOps::open(&opts).unwrap();
        (tmp, ops)
    }

    #[test]
    fn replica_ops_temp_names_are_unique_and_recognised() {
        let (_tmp, ops) = setup();
        let (a, b) = (ops.temp_name(), ops.temp_name());
        assert_ne!(a, b);
        assert_eq!(temp_token(&a), Some(run_token()));
        assert_eq!(temp_token(&b), Some(run_token()));
        assert!(RelPath::new(&a).is_some());
    }

    /// The replica's names, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replica_ops_update_renames_the_new_file_over_the_old_and_leaves_no_temporary() {
        let (tmp, ops) = setup();
        let (src, dst) = (tmp.path().join("src/f"), tmp.path().join("dst/f"));
        fs::write(&src, b"new content").unwrap();
        fs::write(&dst, b"old content").unwrap();
        let old_ino = fs::metadata(&dst).unwrap().ino();
        let copied = ops
            .update(&rel("f"), &lmeta(&src), &mut Vec::new())
            .unwrap();
        assert!(matches!(copied, Copied::Written { bytes: 11, .. }));
        assert_eq!(fs::read(&dst).unwrap(), b"new content");
        assert_ne!(fs::metadata(&dst).unwrap().ino(), old_ino);
        assert_eq!(names(&tmp.path().join("dst")), ["f"]);
        // Nothing there any more: a plain rename.
        fs::remove_file(&dst).unwrap();
        ops.update(&rel("f"), &lmeta(&src), &mut Vec::new())
            .unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"new content");
        // A folder put there meanwhile stays, as a rename would leave it.
        fs::remove_file(&dst).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(dst.join("inside"), b"x").unwrap();
        let err = ops
            .update(&rel("f"), &lmeta(&src), &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("rename into place"), "{err}");
        assert!(dst.join("inside").exists());
        assert_eq!(names(&tmp.path().join("dst")), ["f"]);
    }

    #[test]
    fn replica_ops_move_renames_across_folders_and_never_replaces() {
        let (tmp, ops) = setup();
        let dst = tmp.path().join("dst");
        fs::create_dir(dst.join("a")).unwrap();
        fs::create_dir(dst.join("b")).unwrap();
        fs::write(dst.join("a/f"), b"content").unwrap();
        let ino = fs::metadata(dst.join("a/f")).unwrap().ino();
        let meta = Meta {
            perm: 0o600,
            mtime: Timestamp::new(1_234_567_890, 42),
            ..Meta::default()
        };
        ops.move_entry(&rel("a/f"), &rel("b/g"), Some(&meta))
            .unwrap();
        let md = fs::metadata(dst.join("b/g")).unwrap();
        assert_eq!((md.ino(), md.mode() & 0o7777), (ino, 0o600));
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567_890, 42));
        assert!(names(&dst.join("a")).is_empty());
        // An entry at the target stays, and so does the one to move.
        fs::write(dst.join("a/f"), b"other").unwrap();
        let err = ops
            .move_entry(&rel("a/f"), &rel("b/g"), Some(&meta))
            .unwrap_err();
        assert!(matches!(err, OpError::Taken { .. }), "{err}");
        assert_eq!(fs::read(dst.join("b/g")).unwrap(), b"content");
        assert_eq!(fs::read(dst.join("a/f")).unwrap(), b"other");
        // A link put where the file was is not moved.
        fs::remove_file(dst.join("a/f")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dst.join("a/f")).unwrap();
        let err = ops
            .move_entry(&rel("a/f"), &rel("b/h"), Some(&meta))
            .unwrap_err();
        assert!(matches!(err, OpError::Kind { .. }), "{err}");
        assert!(fs::symlink_metadata(dst.join("b/h")).is_err());
    }

    #[test]
    fn replica_ops_remove_stale_refuses_other_names() {
        let (tmp, ops) = setup();
        fs::write(tmp.path().join("dst/precious"), b"x").unwrap();
        let err = ops.remove_stale(&rel("precious")).unwrap_err();
        assert!(!err.is_fatal());
        assert!(tmp.path().join("dst/precious").exists());
    }

    #[test]
    fn replica_ops_metadata_through_a_path_handle() {
        // The fallback for entries we cannot open for reading; root can
        // open anything, so it is called directly here.
        let (tmp, ops) = setup();
        let f = tmp.path().join("dst/f");
        fs::write(&f, b"x").unwrap();
        let ino = fs::metadata(&f).unwrap().ino();
        let meta = Meta {
            perm: 0o000,
            mtime: Timestamp::new(1_234_567_890, 123),
            ..Meta::default()
        };
        let dir = ops.replica.open_dir(&RelPath::root()).unwrap();
        ops.set_meta_by_handle(
            dir.as_fd(),
            b"f",
            FileType::RegularFile,
            &meta,
            None,
            &rel("f"),
        )
        .unwrap();
        let m = fs::metadata(&f).unwrap();
        assert_eq!((m.ino(), m.mode() & 0o7777), (ino, 0));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 123));
        // The handle never follows a link, and checks the kind.
        symlink(&f, tmp.path().join("dst/l")).unwrap();
        let err = ops
            .set_meta_by_handle(
                dir.as_fd(),
                b"l",
                FileType::RegularFile,
                &meta,
                None,
                &rel("l"),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                OpError::Kind {
                    found: "symlink",
                    ..
                }
            ),
            "{err}"
        );
        fs::create_dir(tmp.path().join("dst/d")).unwrap();
        let dm = Meta {
            perm: 0o711,
            ..meta
        };
        ops.set_meta_by_handle(dir.as_fd(), b"d", FileType::Directory, &dm, None, &rel("d"))
            .unwrap();
        assert_eq!(
            fs::metadata(tmp.path().join("dst/d")).unwrap().mode() & 0o7777,
            0o711
        );
    }

    #[test]
    fn replica_ops_set_meta_refuses_a_link_where_a_file_was() {
        let (tmp, ops) = setup();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"x").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&outside, tmp.path().join("dst/f")).unwrap();
        let meta = Meta {
            perm: 0o600,
            ..Meta::default()
        };
        let err = ops.set_meta(&rel("f"), false, &meta).unwrap_err();
        assert!(matches!(err, OpError::Kind { .. }), "{err}");
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn replica_ops_update_replaces_a_link_without_following_it() {
        let (tmp, ops) = setup();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        fs::write(tmp.path().join("src/f"), b"new").unwrap();
        symlink(&outside, tmp.path().join("dst/f")).unwrap();
        // A new file's name is never taken over, link or not.
        let err = ops
            .copy(
                &rel("f"),
                &lmeta(&tmp.path().join("src/f")),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(matches!(err, OpError::Taken { .. }), "{err}");
        assert!(fs::symlink_metadata(tmp.path().join("dst/f"))
            .unwrap()
            .is_symlink());
        let got = ops
            .update(
                &rel("f"),
                &lmeta(&tmp.path().join("src/f")),
                &mut Vec::new(),
            )
            .unwrap();
        assert!(matches!(got, Copied::Written { bytes: 3, .. }));
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert!(fs::symlink_metadata(tmp.path().join("dst/f"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn replica_ops_buffered_copy_matches_the_kernel_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * BUFFER_SIZE + 17).map(|i| (i % 251) as u8).collect();
        fs::write(tmp.path().join("a"), &data).unwrap();
        for (name, buffered) in [("b", true), ("c", false)] {
            let src: OwnedFd = fs::File::open(tmp.path().join("a")).unwrap().into();
            let dst: OwnedFd = fs::File::create(tmp.path().join(name)).unwrap().into();
            let n = if buffered {
                copy_buffered(&src, &dst).unwrap()
            } else {
                copy_content(&src, &dst, &rfs::fstat(&src).unwrap()).unwrap()
            };
            assert_eq!(n, data.len() as u64);
            assert_eq!(fs::read(tmp.path().join(name)).unwrap(), data);
        }
    }

    #[test]
    fn replica_ops_a_file_that_changes_while_copied_is_skipped() {
        // A /proc file reports size 0 yet reads as more: exactly what a
        // file written during the copy looks like.
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = SyncOptions::new("/proc/self".into(), tmp.path().to_path_buf());
        opts.jobs = 1;
        let ops = ReplicaOps::open(&opts).unwrap();
        let meta = lmeta(Path::new("/proc/self/status"));
        match ops.copy(&rel("status"), &meta, &mut Vec::new()).unwrap() {
            Copied::Skipped { reason } => assert_eq!(reason, "changed while being copied"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    /// A file of `len` bytes holding data only in `chunks` (offset, bytes).
    fn sparse(path: &Path, len: u64, chunks: &[(u64, &[u8])]) {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(path).unwrap();
        f.set_len(len).unwrap();
        for (at, data) in chunks {
            f.write_all_at(data, *at).unwrap();
        }
    }

    #[test]
    fn replica_ops_sparse_files_stay_sparse_on_copy_and_update() {
        let (tmp, ops) = setup();
        let (src, dst) = (
            tmp.path().join("src/disk.img"),
            tmp.path().join("dst/disk.img"),
        );
        let mib = 1 << 20;
        sparse(
            &src,
            64 * mib,
            &[(mib, &[1u8; 4096]), (64 * mib - 10, b"the end!!!")],
        );
        if fs::metadata(&src).unwrap().blocks() * 512 >= 64 * mib {
            eprintln!("skipped: this filesystem stores no holes");
            return;
        }
        let copied = ops
            .copy(&rel("disk.img"), &lmeta(&src), &mut Vec::new())
            .unwrap();
        assert!(
            matches!(copied, Copied::Written { bytes, .. } if bytes == 64 * mib),
            "{copied:?}"
        );
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        let allocated = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
        assert!(
            allocated(&dst) <= 4 * allocated(&src),
            "{} bytes",
            allocated(&dst)
        );
        // An update too; and a hole at the start, data to the end.
        sparse(&src, 32 * mib, &[(32 * mib - 4096, &[2u8; 4096])]);
        let updated = ops
            .update(&rel("disk.img"), &lmeta(&src), &mut Vec::new())
            .unwrap();
        assert!(matches!(updated, Copied::Written { .. }), "{updated:?}");
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        assert!(
            allocated(&dst) <= 4 * allocated(&src),
            "{} bytes",
            allocated(&dst)
        );
        // Nothing but a hole.
        sparse(&src, 8 * mib, &[]);
        ops.update(&rel("disk.img"), &lmeta(&src), &mut Vec::new())
            .unwrap();
        assert_eq!(fs::metadata(&dst).unwrap().len(), 8 * mib);
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
    }

    #[test]
    fn replica_ops_finish_dir_sets_the_root_too() {
        let (tmp, ops) = setup();
        let meta = Meta {
            perm: 0o751,
            mtime: Timestamp::new(1_111_111_111, 1),
            ..Meta::default()
        };
        ops.finish_dir(&RelPath::root(), &meta).unwrap();
        let m = fs::metadata(tmp.path().join("dst")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.mtime(), m.mtime_nsec()),
            (0o751, 1_111_111_111, 1)
        );
    }

    #[test]
    fn replica_ops_work_in_locked_folders_of_ours_and_give_their_modes_back() {
        if rustix::process::geteuid().is_root() {
            eprintln!("skipped: root is never denied (tests/unprivileged.rs runs this as a user)");
            return;
        }
        let (tmp, ops) = setup();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), b"new").unwrap();
        fs::create_dir_all(dst.join("a/b")).unwrap();
        fs::write(dst.join("a/b/old"), b"old").unwrap();
        let set = |rel: &str, mode: u32| {
            fs::set_permissions(dst.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        };
        let mode = |rel: &str| fs::symlink_metadata(dst.join(rel)).unwrap().mode() & 0o7777;
        set("a/b", 0o000);
        set("a", 0o000);
        let f = lmeta(&src.join("a/b/f"));
        let copied = ops.copy(&rel("a/b/f"), &f, &mut Vec::new()).unwrap();
        assert!(matches!(copied, Copied::Written { bytes: 3, .. }));
        assert_eq!(mode("a"), 0o000);
        ops.delete(&rel("a/b/old"), &mut Vec::new()).unwrap();
        ops.mkdir(&rel("a/b/n")).unwrap();
        ops.set_meta(&rel("a/b/f"), false, &Meta { perm: 0o600, ..f })
            .unwrap();
        let b = Meta {
            perm: 0o750,
            mtime: Timestamp::new(1_111_111_111, 1),
            ..Meta::default()
        };
        ops.finish_dir(&rel("a/b"), &b).unwrap();
        assert_eq!(mode("a"), 0o000);
        set("a", 0o700);
        assert_eq!(mode("a/b"), 0o750);
        assert_eq!(names(&dst.join("a/b")), ["f", "n"]);
        assert_eq!(fs::read(dst.join("a/b/f")).unwrap(), b"new");
        assert_eq!(mode("a/b/f"), 0o600);
        // A folder left locked, not finished: its mode comes back.
        set("a/b", 0o500);
        ops.rmdir(&rel("a/b/n")).unwrap();
        assert_eq!(mode("a/b"), 0o500);
        assert_eq!(names(&dst.join("a/b")), ["f"]);
    }

    #[test]
    fn replica_ops_mkdir_accepts_a_folder_but_not_a_file() {
        let (tmp, ops) = setup();
        ops.mkdir(&rel("d")).unwrap();
        ops.mkdir(&rel("d")).unwrap();
        fs::write(tmp.path().join("dst/f"), b"").unwrap();
        let err = ops.mkdir(&rel("f")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a folder in the replica, found a file"
        );
    }

    #[test]
    fn replica_ops_errors_name_the_step() {
        let (_tmp, ops) = setup();
        let err = ops.mkdir(&rel("no/such/parent")).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::NOENT));
        assert!(
            err.to_string().starts_with("open the replica folder: "),
            "{err}"
        );
    }
}
