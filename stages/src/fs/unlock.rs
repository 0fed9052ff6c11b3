//! Replica folders of ours that deny us what an operation needs.
//!
//! Run as an ordinary user, a replica folder we own may lack owner read,
//! write or search permission (mode `000`, or `555` mirrored from the
//! source). Its owner may change its mode, and rsync does: such a folder
//! is given the owner bits an operation needs for as long as it needs
//! them, then gets its own mode back, in the same run. A mirrored folder
//! gets the source's mode later anyway (`FinishDir`); one that is not
//! mirrored (excluded, kept) ends as it was.
//!
//! Only folders owned by the effective user are changed, never another
//! user's (those stay errors), and only through a handle on the folder
//! itself: `fchmod`, or for an `O_PATH` handle its `/proc/self/fd/N` name,
//! which names that very inode and cannot be redirected by a rename or a
//! link. The handles are opened one component at a time without following
//! links (`Root::open_dir_unlocking`, the walk's `DirHandle`).
//!
//! Several operations may need one folder at once (the walk and the
//! Applier work in parallel): `Unlocks` counts who holds each folder, the
//! last one gives the mode back, and a mode set meanwhile (`set_mode`, by
//! `FinishDir`) is the one given back. A dry run unlocks nothing
//! (`Unlocks::off`).

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Owner search permission: to look up names in a folder on the way down.
pub const SEARCH: u32 = 0o100;
/// Owner read and search: to list a folder, or to open it for an operation.
pub const LIST: u32 = 0o500;
/// Owner write and search: to add or remove entries.
pub const WRITE: u32 = 0o300;

/// A folder reached as a handle that never follows a link and needs no
/// permission on the folder itself (`O_PATH`).
pub(crate) const PATH_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The folders unlocked and not yet given back, shared by the clones.
#[derive(Clone, Debug, Default)]
pub struct Unlocks {
    held: Arc<Mutex<HashMap<(u64, u64), Held>>>,
    /// Nothing is ever unlocked (a dry run writes nothing).
    off: bool,
}

/// One unlocked folder.
#[derive(Debug)]
struct Held {
    /// The mode it gets back.
    mode: u32,
    /// The owner bits added for its holders.
    bits: u32,
    holders: usize,
}

impl Unlocks {
    /// Unlocks that never change anything.
    pub fn off() -> Self {
        Unlocks {
            off: true,
            ..Unlocks::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(u64, u64), Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the owner `bits` on the folder `dir` (any handle on it,
    /// `O_PATH` included) until the returned guard is dropped. `None` when
    /// nothing was done: the folder is not ours, not a folder, already has
    /// the bits and nobody holds it, or its mode cannot be changed.
    pub fn unlock(&self, dir: BorrowedFd<'_>, bits: u32) -> Option<Unlocked> {
        if self.off {
            return None;
        }
        let mut held = self.lock();
        let st = rfs::fstat(dir).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory
            || st.st_uid != rustix::process::geteuid().as_raw()
        {
            return None;
        }
        let id = (st.st_dev, st.st_ino);
        let now = st.st_mode & 0o7777;
        let fd = rustix::io::fcntl_dupfd_cloexec(dir, 0).ok()?;
        let widen = || chmod_handle(dir, Mode::from_raw_mode(now | bits)).ok();
        match held.get_mut(&id) {
            Some(h) => {
                if now & bits != bits {
                    widen()?;
                }
                h.bits |= bits;
                h.holders += 1;
            }
            None => {
                if now & bits == bits {
                    return None;
                }
                widen()?;
                held.insert(
                    id,
                    Held {
                        mode: now,
                        bits,
                        holders: 1,
                    },
                );
            }
        }
        Some(Unlocked {
            unlocks: self.clone(),
            id,
            fd,
        })
    }

    /// Sets the mode of the folder `dir` through `chmod`. A folder that is
    /// held keeps its holders' bits until the last is done, and then gets
    /// `mode`, not the mode it had before it was unlocked.
    pub fn set_mode(
        &self,
        dir: BorrowedFd<'_>,
        mode: Mode,
        chmod: impl FnOnce(Mode) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let mut held = self.lock();
        if held.is_empty() {
            return chmod(mode);
        }
        let Some(h) = rfs::fstat(dir)
            .ok()
            .and_then(|st| held.get_mut(&(st.st_dev, st.st_ino)))
        else {
            return chmod(mode);
        };
        chmod(Mode::from_raw_mode(mode.as_raw_mode() | h.bits))?;
        h.mode = mode.as_raw_mode();
        Ok(())
    }

    /// The mode a folder has as the scan saw it: the one it gets back when
    /// it is held unlocked, else its mode now.
    pub fn mode_seen(&self, st: &rfs::Stat) -> u32 {
        let held = self.lock();
        held.get(&(st.st_dev, st.st_ino))
            .map_or(st.st_mode & 0o7777, |h| h.mode)
    }
}

/// A folder held unlocked: its mode comes back when the last holder drops
/// its guard.
#[derive(Debug)]
#[must_use = "the folder is locked again when the guard is dropped"]
pub struct Unlocked {
    unlocks: Unlocks,
    id: (u64, u64),
    /// A handle on the folder, to give the mode back through.
    fd: OwnedFd,
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        let mut held = self.unlocks.lock();
        let Some(h) = held.get_mut(&self.id) else {
            return;
        };
        h.holders -= 1;
        if h.holders == 0 {
            let mode = h.mode;
            held.remove(&self.id);
            // Under the lock, so no one unlocks it meanwhile. A folder
            // removed since then takes no chmod: nothing is lost.
            let _ = chmod_handle(self.fd.as_fd(), Mode::from_raw_mode(mode));
        }
    }
}

/// An open folder with the folders unlocked to reach and use it, which get
/// their modes back when it is dropped.
#[derive(Debug)]
pub struct HeldDir {
    fd: OwnedFd,
    held: Mutex<Vec<Unlocked>>,
}

impl HeldDir {
    /// A folder that holds nothing unlocked.
    pub fn new(fd: OwnedFd) -> Self {
        HeldDir {
            fd,
            held: Mutex::default(),
        }
    }

    /// Keeps `unlocked` for as long as this handle lives.
    pub fn hold(&self, unlocked: impl IntoIterator<Item = Unlocked>) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(unlocked);
    }

    /// Gives the owner `bits` on this folder for as long as this handle
    /// lives (`Unlocks::unlock`); true when it did, or holds them already.
    pub fn unlock(&self, unlocks: &Unlocks, bits: u32) -> bool {
        match unlocks.unlock(self.fd.as_fd(), bits) {
            Some(unlocked) => {
                self.hold([unlocked]);
                true
            }
            None => false,
        }
    }
}

impl AsFd for HeldDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens with `flags` the folder that the handle `path` (`O_PATH` or not)
/// stands for, by its `.` entry; where that is refused, it is unlocked for
/// reading and search first (when it is ours), and held so.
pub fn open_held(path: BorrowedFd<'_>, flags: OFlags, unlocks: &Unlocks) -> Result<HeldDir, Errno> {
    match rfs::openat(path, c".", flags, Mode::empty()) {
        Err(Errno::ACCESS) => {
            let unlocked = unlocks.unlock(path, LIST).ok_or(Errno::ACCESS)?;
            let dir = HeldDir::new(rfs::openat(path, c".", flags, Mode::empty())?);
            dir.hold([unlocked]);
            Ok(dir)
        }
        other => other.map(HeldDir::new),
    }
}

/// `chmod` through a handle: `fchmod`, or for an `O_PATH` handle (which
/// takes none) its `/proc/self/fd/N` name.
pub fn chmod_handle(fd: BorrowedFd<'_>, mode: Mode) -> Result<(), Errno> {
    match rfs::fchmod(fd, mode) {
        Err(Errno::BADF) => rfs::chmod(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(), mode),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn set(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    fn path_fd(p: &Path) -> OwnedFd {
        rfs::open(p, PATH_FLAGS, Mode::empty()).unwrap()
    }

    #[test]
    fn unlock_adds_the_bits_and_the_last_holder_gives_the_mode_back() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        set(&d, 0o000);
        let unlocks = Unlocks::default();
        let fd = path_fd(&d);
        let a = unlocks.unlock(fd.as_fd(), SEARCH).unwrap();
        assert_eq!(mode(&d), 0o100);
        // A second holder that needs more widens it; the first to go
        // leaves it as the other needs it.
        let b = unlocks.unlock(fd.as_fd(), WRITE).unwrap();
        assert_eq!(mode(&d), 0o300);
        drop(a);
        assert_eq!(mode(&d), 0o300);
        // A holder that needs what is there already still holds it.
        let c = unlocks.unlock(fd.as_fd(), SEARCH).unwrap();
        drop(b);
        assert_eq!(mode(&d), 0o300);
        drop(c);
        assert_eq!(mode(&d), 0o000);
        // Nothing to do for a folder that has the bits.
        set(&d, 0o755);
        assert!(unlocks.unlock(fd.as_fd(), LIST).is_none());
        assert_eq!(mode(&d), 0o755);
        assert!(unlocks.lock().is_empty());
    }

    #[test]
    fn a_mode_set_while_held_is_the_one_given_back() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        set(&d, 0o000);
        let unlocks = Unlocks::default();
        let fd = path_fd(&d);
        let held = unlocks.unlock(fd.as_fd(), LIST).unwrap();
        let seen = rfs::stat(&d).unwrap();
        assert_eq!(unlocks.mode_seen(&seen), 0o000);
        unlocks
            .set_mode(fd.as_fd(), Mode::from_raw_mode(0o2010), |m| {
                chmod_handle(fd.as_fd(), m)
            })
            .unwrap();
        assert_eq!(mode(&d), 0o2510);
        drop(held);
        assert_eq!(mode(&d), 0o2010);
        // Not held: set as asked.
        unlocks
            .set_mode(fd.as_fd(), Mode::from_raw_mode(0o700), |m| {
                chmod_handle(fd.as_fd(), m)
            })
            .unwrap();
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn open_held_unlocks_only_what_it_must_and_never_when_off() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
        let fd = path_fd(&d);
        let unlocks = Unlocks::default();
        // Readable: opened as it is, nothing held.
        let dir = open_held(fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY, &unlocks).unwrap();
        assert!(dir.held.lock().unwrap().is_empty());
        drop(dir);
        set(&d, 0o000);
        if rustix::process::geteuid().is_root() {
            // Root reads any folder: nothing to unlock.
            let dir = open_held(fd.as_fd(), OFlags::RDONLY, &unlocks).unwrap();
            assert!(dir.held.lock().unwrap().is_empty());
            return;
        }
        let err = open_held(fd.as_fd(), OFlags::RDONLY, &Unlocks::off()).unwrap_err();
        assert_eq!(err, Errno::ACCESS);
        assert_eq!(mode(&d), 0o000);
        let dir = open_held(fd.as_fd(), OFlags::RDONLY, &unlocks).unwrap();
        assert_eq!(mode(&d), 0o500);
        assert!(rfs::statat(&dir, "f", rfs::AtFlags::empty()).is_ok());
        drop(dir);
        assert_eq!(mode(&d), 0o000);
        set(&d, 0o755);
    }

    #[test]
    fn only_our_own_folders_are_unlocked() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        set(&d, 0o000);
        let unlocks = Unlocks::default();
        let fd = path_fd(&d);
        if rustix::process::geteuid().is_root() {
            // Given to someone else: root could change it, and must not.
            rfs::chown(&d, Some(rfs::Uid::from_raw_unchecked(65534)), None).unwrap();
            assert!(unlocks.unlock(fd.as_fd(), LIST).is_none());
            assert_eq!(mode(&d), 0o000);
        }
        // A file is never unlocked.
        let f = tmp.path().join("f");
        fs::write(&f, b"x").unwrap();
        set(&f, 0o000);
        let ffd = rfs::open(&f, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).unwrap();
        assert!(unlocks.unlock(ffd.as_fd(), LIST).is_none());
        assert_eq!(mode(&f), 0o000);
        assert!(Unlocks::off().unlock(fd.as_fd(), LIST).is_none());
    }
}
