//! Confined access below a sync root.
//!
//! Every entry of either tree is reached from a handle on its root, one
//! component at a time, never through a symbolic link (Safety rule 2): a
//! folder that was swapped for a link makes the open fail with `ELOOP` or
//! `ENOTDIR` instead of leading outside the root. On Linux `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` does the walk in one call; where
//! the kernel lacks it, or the path is longer than `PATH_MAX`, each
//! component is opened with `O_NOFOLLOW | O_DIRECTORY`.

use crate::contract::model::{EntryKind, FileId, LinkTarget, Meta, SpecialKind, Timestamp};
use crate::contract::relpath::RelPath;
use crate::fs::unlock::{open_held, HeldDir, Unlocks, PATH_FLAGS, SEARCH};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::io;
use std::path::{Path, PathBuf};

/// An open handle on a root folder.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Paths below stay on the root's own filesystem (the replica's: a
    /// folder there that is another filesystem's mount point is not ours
    /// to write into).
    one_fs: bool,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

impl Root {
    /// Opens the root itself. The root path was chosen by the user and may
    /// pass through links; nothing below it may.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            one_fs: false,
        })
    }

    /// Opens the root at the absolute `path` without following a link in
    /// any of its components, so that a link put at the path, or above
    /// it, is refused rather than followed (root identity, Safety rule 3).
    /// `path` is canonical: it holds no link when the run starts.
    pub fn open_no_links(path: &Path) -> io::Result<Root> {
        const NO_LINKS: ResolveFlags = ResolveFlags::NO_SYMLINKS.union(ResolveFlags::NO_MAGICLINKS);
        let fd = match rfs::openat2(rfs::CWD, path, DIR_FLAGS, Mode::empty(), NO_LINKS) {
            Ok(fd) => fd,
            Err(Errno::NOSYS | Errno::AGAIN | Errno::PERM | Errno::NAMETOOLONG) => {
                Self::open_no_links_stepwise(path)?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            one_fs: false,
        })
    }

    /// The same root, whose folders are opened only on its own filesystem:
    /// a path through a mount point below it fails with `EXDEV`.
    pub fn on_its_filesystem(mut self) -> Root {
        self.one_fs = true;
        self
    }

    /// Whether folders below are opened only on the root's filesystem.
    pub fn one_fs(&self) -> bool {
        self.one_fs
    }

    fn open_no_links_stepwise(path: &Path) -> io::Result<OwnedFd> {
        use std::path::Component;
        let mut fd = rfs::open("/", DIR_FLAGS, Mode::empty())?;
        for part in path.components() {
            match part {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    fd = rfs::openat(&fd, name, DIR_FLAGS, Mode::empty())?;
                }
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a root path must be canonical",
                    ))
                }
            }
        }
        Ok(fd)
    }

    /// A second handle on the same open folder.
    pub fn try_clone(&self) -> io::Result<Root> {
        Ok(Root {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
            one_fs: self.one_fs,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata of the root folder itself.
    pub fn stat(&self) -> io::Result<rfs::Stat> {
        Ok(rfs::fstat(&self.fd)?)
    }

    /// Opens the folder `rel` below the root without following any link.
    pub fn open_dir(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        if rel.is_root() {
            return Ok(rfs::openat(&self.fd, c".", DIR_FLAGS, Mode::empty())?);
        }
        match rfs::openat2(
            &self.fd,
            rel.as_bytes(),
            DIR_FLAGS,
            Mode::empty(),
            self.resolve(),
        ) {
            Ok(fd) => Ok(fd),
            // Longer than PATH_MAX: a few calls, each a piece that fits.
            Err(Errno::NAMETOOLONG) => match self.open_dir_in_pieces(rel) {
                Err(Errno::NOSYS | Errno::AGAIN | Errno::PERM) => self.open_dir_stepwise(rel),
                other => Ok(other?),
            },
            // No openat2, or a concurrent rename that openat2 refuses to
            // resolve: walk one component at a time.
            Err(Errno::NOSYS | Errno::AGAIN | Errno::PERM) => self.open_dir_stepwise(rel),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a folder deeper than PATH_MAX: pieces of the path that fit are
    /// opened one after the other, each confined like a whole path, so the
    /// cost grows with the path's length, not with its square.
    fn open_dir_in_pieces(&self, rel: &RelPath) -> Result<OwnedFd, Errno> {
        const PIECE: usize = 2048;
        let mut fd = rfs::openat(&self.fd, c".", DIR_FLAGS, Mode::empty())?;
        let mut piece: Vec<u8> = Vec::with_capacity(PIECE + 256);
        let mut names = rel.components().peekable();
        while let Some(name) = names.next() {
            if !piece.is_empty() {
                piece.push(b'/');
            }
            piece.extend_from_slice(name);
            if names
                .peek()
                .is_none_or(|next| piece.len() + 1 + next.len() > PIECE)
            {
                fd = rfs::openat2(
                    &fd,
                    piece.as_slice(),
                    DIR_FLAGS,
                    Mode::empty(),
                    self.resolve(),
                )?;
                piece.clear();
            }
        }
        Ok(fd)
    }

    fn open_dir_stepwise(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        let mut fd = rfs::openat(&self.fd, c".", DIR_FLAGS, Mode::empty())?;
        let dev = rfs::fstat(&fd)?.st_dev;
        for name in rel.components() {
            fd = rfs::openat(&fd, name, DIR_FLAGS, Mode::empty())?;
            if self.one_fs && rfs::fstat(&fd)?.st_dev != dev {
                return Err(Errno::XDEV.into());
            }
        }
        Ok(fd)
    }

    fn resolve(&self) -> ResolveFlags {
        if self.one_fs {
            RESOLVE | ResolveFlags::NO_XDEV
        } else {
            RESOLVE
        }
    }

    /// Opens the folder holding `rel` and returns it with `rel`'s last
    /// component; `rel` must not be the root.
    pub fn open_parent<'a>(&self, rel: &'a RelPath) -> io::Result<(OwnedFd, &'a [u8])> {
        Ok((self.open_dir(&parent_of(rel)?)?, rel.name()))
    }

    /// Opens the folder `rel` to work in it, as `open_dir` does, and makes
    /// sure it can be searched too (its entries looked up). Where that is
    /// denied, and only then, the folders on the way that are ours are
    /// unlocked (`unlock.rs`): each component is opened in turn as an
    /// `O_PATH` handle, never through a link, the folder it is in given
    /// owner search permission when the lookup is refused, and the last
    /// one read and search permission when opening it is. They get their
    /// modes back when the returned handle is dropped.
    pub fn open_dir_unlocking(&self, rel: &RelPath, unlocks: &Unlocks) -> io::Result<HeldDir> {
        match self.open_dir_searchable(rel) {
            Ok(fd) => Ok(HeldDir::new(fd)),
            Err(Errno::ACCESS) => Ok(self.open_dir_unlocking_stepwise(rel, unlocks)?),
            Err(e) => Err(e.into()),
        }
    }

    /// `open_parent` through `open_dir_unlocking`.
    pub fn open_parent_unlocking<'a>(
        &self,
        rel: &'a RelPath,
        unlocks: &Unlocks,
    ) -> io::Result<(HeldDir, &'a [u8])> {
        Ok((
            self.open_dir_unlocking(&parent_of(rel)?, unlocks)?,
            rel.name(),
        ))
    }

    /// The folder `rel` through its `.` entry, whose lookup needs search
    /// permission on it: one call, like `open_dir`.
    fn open_dir_searchable(&self, rel: &RelPath) -> Result<OwnedFd, Errno> {
        if rel.is_root() {
            return rfs::openat(&self.fd, c".", DIR_FLAGS, Mode::empty());
        }
        let mut path = Vec::with_capacity(rel.as_bytes().len() + 2);
        path.extend_from_slice(rel.as_bytes());
        path.extend_from_slice(b"/.");
        match rfs::openat2(
            &self.fd,
            path.as_slice(),
            DIR_FLAGS,
            Mode::empty(),
            self.resolve(),
        ) {
            Err(Errno::NAMETOOLONG | Errno::NOSYS | Errno::AGAIN | Errno::PERM) => {
                let fd = self
                    .open_dir(rel)
                    .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
                rfs::openat(&fd, c".", DIR_FLAGS, Mode::empty())
            }
            other => other,
        }
    }

    fn open_dir_unlocking_stepwise(
        &self,
        rel: &RelPath,
        unlocks: &Unlocks,
    ) -> Result<HeldDir, Errno> {
        let mut dir = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)?;
        let dev = rfs::fstat(&dir)?.st_dev;
        let mut held = Vec::new();
        for name in rel.components() {
            dir = match self.open_step(&dir, name, dev) {
                Err(Errno::ACCESS) => {
                    held.push(unlocks.unlock(dir.as_fd(), SEARCH).ok_or(Errno::ACCESS)?);
                    self.open_step(&dir, name, dev)?
                }
                other => other?,
            };
        }
        let opened = open_held(dir.as_fd(), DIR_FLAGS, unlocks)?;
        opened.hold(held);
        Ok(opened)
    }

    /// The folder `name` of `dir` as an `O_PATH` handle, confined like a
    /// whole path: never a link, and on the root's filesystem when it
    /// keeps to it.
    fn open_step(&self, dir: &OwnedFd, name: &[u8], dev: u64) -> Result<OwnedFd, Errno> {
        let fd = match rfs::openat2(dir, name, PATH_FLAGS, Mode::empty(), self.resolve()) {
            Err(Errno::NOSYS | Errno::AGAIN | Errno::PERM) => {
                rfs::openat(dir, name, PATH_FLAGS, Mode::empty())?
            }
            other => other?,
        };
        let st = rfs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        if self.one_fs && st.st_dev != dev {
            return Err(Errno::XDEV);
        }
        Ok(fd)
    }
}

fn parent_of(rel: &RelPath) -> io::Result<RelPath> {
    rel.parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the root has no parent"))
}

/// `lstat` of `name` in the folder `dir`.
pub fn stat_at(dir: impl AsFd, name: &[u8]) -> io::Result<rfs::Stat> {
    Ok(rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The kind of entry a `stat` describes; reads a link's target through `dir`.
pub fn kind_of(stat: &rfs::Stat, dir: impl AsFd, name: &[u8]) -> io::Result<EntryKind> {
    Ok(match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => {
            let target = rfs::readlinkat(dir, name, Vec::new())?;
            EntryKind::Symlink {
                target: LinkTarget::new(target.into_bytes()),
            }
        }
        FileType::Fifo => EntryKind::Special {
            what: SpecialKind::Fifo,
        },
        FileType::Socket => EntryKind::Special {
            what: SpecialKind::Socket,
        },
        FileType::CharacterDevice => EntryKind::Special {
            what: SpecialKind::CharDevice,
        },
        FileType::BlockDevice => EntryKind::Special {
            what: SpecialKind::BlockDevice,
        },
        FileType::Unknown => EntryKind::Special {
            what: SpecialKind::Unknown,
        },
    })
}

/// The model's view of a `stat`.
pub fn meta_of(stat: &rfs::Stat) -> Meta {
    Meta {
        size: stat.st_size as u64,
        mtime: Timestamp::new(stat.st_mtime as _, stat.st_mtime_nsec as u32),
        ctime: Timestamp::new(stat.st_ctime as _, stat.st_ctime_nsec as u32),
        perm: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        nlink: u32::try_from(stat.st_nlink).unwrap_or(u32::MAX),
        id: FileId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn opens_nested_folders_but_never_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, root.join("a/link")).unwrap();
        let r = Root::open(&root).unwrap();
        assert!(r.open_dir(&RelPath::from_str_lossy("a/b")).is_ok());
        assert!(r.open_dir(&RelPath::root()).is_ok());
        assert!(r.open_dir(&RelPath::from_str_lossy("a/link")).is_err());
        assert!(r
            .open_dir_stepwise(&RelPath::from_str_lossy("a/link"))
            .is_err());
        assert!(r.open_dir_stepwise(&RelPath::from_str_lossy("a/b")).is_ok());
        let ab = RelPath::from_str_lossy("a/b");
        let (_, name) = r.open_parent(&ab).unwrap();
        assert_eq!(name, b"b");
    }

    #[test]
    fn opens_folders_deeper_than_path_max_in_pieces_and_never_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let name = [b'd'; 200];
        let mut fd = rfs::openat(rfs::CWD, tmp.path(), DIR_FLAGS, Mode::empty()).unwrap();
        let mut rel = RelPath::root();
        for _ in 0..40 {
            rfs::mkdirat(&fd, &name[..], Mode::from_raw_mode(0o755)).unwrap();
            fd = rfs::openat(&fd, &name[..], DIR_FLAGS, Mode::empty()).unwrap();
            rel = rel.join(&name);
        }
        assert!(rel.as_bytes().len() > 4096);
        rfs::mkdirat(&fd, "leaf", Mode::from_raw_mode(0o755)).unwrap();
        rfs::symlinkat("/", &fd, "link").unwrap();
        let r = Root::open(tmp.path()).unwrap();
        let leaf = r.open_dir(&rel.join(b"leaf")).unwrap();
        let ino = rfs::fstat(&leaf).unwrap().st_ino;
        assert_eq!(
            ino,
            rfs::statat(&fd, "leaf", AtFlags::empty()).unwrap().st_ino
        );
        assert!(r.open_dir(&rel.join(b"link")).is_err());
    }

    #[test]
    fn opens_a_root_only_through_a_path_without_links() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap().join("real");
        std::fs::create_dir_all(real.join("inner")).unwrap();
        symlink(&real, real.with_file_name("link")).unwrap();
        let opened = Root::open_no_links(&real.join("inner")).unwrap();
        assert_eq!(
            opened.stat().unwrap().st_ino,
            std::fs::metadata(real.join("inner"))
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap()
        );
        let via_link = real.with_file_name("link");
        assert!(Root::open_no_links(&via_link).is_err());
        assert!(Root::open_no_links(&via_link.join("inner")).is_err());
        assert!(Root::open_no_links_stepwise(&via_link).is_err());
        assert!(Root::open_no_links_stepwise(&via_link.join("inner")).is_err());
        assert!(Root::open_no_links_stepwise(&real.join("inner")).is_ok());
    }

    #[test]
    fn opens_folders_to_work_in_stepwise_never_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        symlink(tmp.path(), root.join("a/link")).unwrap();
        std::fs::write(root.join("a/file"), b"x").unwrap();
        let r = Root::open(&root).unwrap().on_its_filesystem();
        let unlocks = Unlocks::default();
        let ab = RelPath::from_str_lossy("a/b");
        for dir in [
            r.open_dir_unlocking(&ab, &unlocks).unwrap(),
            r.open_dir_unlocking_stepwise(&ab, &unlocks).unwrap(),
        ] {
            assert!(stat_at(&dir, b"f").is_ok());
        }
        let root_dir = r.open_dir_unlocking_stepwise(&RelPath::root(), &unlocks);
        assert!(stat_at(root_dir.unwrap(), b"a").is_ok());
        for bad in ["a/link", "a/link/x", "a/file", "a/file/x", "a/none"] {
            let bad = RelPath::from_str_lossy(bad);
            assert!(r.open_dir_unlocking(&bad, &unlocks).is_err(), "{bad}");
            assert!(
                r.open_dir_unlocking_stepwise(&bad, &unlocks).is_err(),
                "{bad}"
            );
        }
        let abf = RelPath::from_str_lossy("a/b/f");
        let (dir, name) = r.open_parent_unlocking(&abf, &unlocks).unwrap();
        assert_eq!(name, b"f");
        assert!(stat_at(&dir, name).is_ok());
    }

    #[test]
    fn unlocks_our_folders_that_deny_search_or_read_and_gives_their_modes_back() {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            eprintln!("skipped: root is never denied (tests/unprivileged.rs runs this as a user)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
        let mode = |p: &str| {
            std::fs::symlink_metadata(tmp.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let set = |p: &str, m: u32| {
            std::fs::set_permissions(tmp.path().join(p), std::fs::Permissions::from_mode(m))
                .unwrap()
        };
        // No search (read only), then nothing at all, then no read.
        set("a/b/c", 0o100);
        set("a/b", 0o000);
        set("a", 0o600);
        let r = Root::open(tmp.path()).unwrap();
        let abc = RelPath::from_str_lossy("a/b/c");
        assert!(r.open_dir(&abc).is_err());
        let unlocks = Unlocks::default();
        let dir = r.open_dir_unlocking(&abc, &unlocks).unwrap();
        assert_eq!(
            (mode("a"), mode("a/b"), mode("a/b/c")),
            (0o700, 0o100, 0o500)
        );
        rfs::mkdirat(&dir, "x", Mode::from_raw_mode(0o700)).unwrap_err();
        drop(dir);
        // Off: denied as before.
        assert!(r.open_dir_unlocking(&abc, &Unlocks::off()).is_err());
        // Each mode is back (seen from above, opened in turn).
        assert_eq!(mode("a"), 0o600);
        set("a", 0o755);
        assert_eq!(mode("a/b"), 0o000);
        set("a/b", 0o755);
        assert_eq!(mode("a/b/c"), 0o100);
        set("a/b/c", 0o755);
    }

    #[test]
    fn reads_kinds_and_link_targets() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"hello").unwrap();
        symlink("../nowhere", tmp.path().join("l")).unwrap();
        let r = Root::open(tmp.path()).unwrap();
        let st = stat_at(r.fd(), b"f").unwrap();
        assert_eq!(kind_of(&st, r.fd(), b"f").unwrap(), EntryKind::File);
        assert_eq!(meta_of(&st).size, 5);
        let st = stat_at(r.fd(), b"l").unwrap();
        assert_eq!(
            kind_of(&st, r.fd(), b"l").unwrap(),
            EntryKind::Symlink {
                target: LinkTarget::new(&b"../nowhere"[..])
            }
        );
    }
}
