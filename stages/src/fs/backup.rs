//! `--backup-dir DIR`: the old version of every replica file or link that
//! is replaced or deleted is kept under `DIR/<tick stamp>/<path>`, where
//! the stamp is the tick's UTC start (`2026-05-04T093000.123Z`), as
//! rsync's `--backup-dir` and rclone's `--backup-dir` do. A hook
//! (`hooks.rs`), called where the operation happens.
//!
//! The old version never leaves both places at once (Safety rule 1): an
//! entry about to be replaced gets a second name in the backup folder
//! (`linkat`) before the new one is renamed over its name, so its name
//! never disappears; an entry about to be deleted is renamed into the
//! backup folder in one step, and the deletion then finds nothing to do.
//! No content is copied: DIR is on the replica's filesystem (the binary
//! checks it at start). The folders under DIR are made as needed, one at
//! a time from a handle on DIR, never through a link; folders of the
//! replica themselves are not kept (their files are).
//!
//! `--backup-keep DURATION`: at the start of each tick, stamp folders older
//! than that are removed, without following links; names that are not
//! stamps are never touched.

use crate::contract::hooks::{HookCx, HookError, HookResult, OpHook};
use crate::contract::messages::{Level, LogEvent, LogValue, Verb};
use crate::contract::relpath::RelPath;
use crate::fs::root::Root;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The log verb of a kept version (`path`, `to`): a verb of this feature's
/// own, counted in the `tick` entry as `backup=N` where there were some.
pub const BACKUP: Verb = Verb::Other {
    name: "backup",
    level: Level::Info,
};

/// The log verb of a stamp folder removed by `--backup-keep` (`to`: its
/// name under DIR).
pub const PRUNE: Verb = Verb::Other {
    name: "prune",
    level: Level::Info,
};

/// How folders under DIR are opened: never through a link.
const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// Folders made under DIR: private, since they may hold the files of
/// private folders.
const DIR_MODE: u32 = 0o700;

/// The backup folder of one mirror.
#[derive(Debug)]
pub struct BackupDir {
    path: PathBuf,
    /// A handle on DIR, opened at start and kept for the run; `None` in a
    /// dry run where DIR does not exist yet (nothing is moved then).
    root: Option<Root>,
    keep: Option<Duration>,
}

impl BackupDir {
    /// Opens DIR (canonical, without following links). A missing DIR is
    /// accepted only for a dry run.
    pub fn open(path: &Path, keep: Option<Duration>, dry_run: bool) -> io::Result<BackupDir> {
        let root = match Root::open_no_links(path) {
            Ok(root) => Some(root),
            Err(e) if dry_run && e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(BackupDir {
            path: path.to_path_buf(),
            root,
            keep,
        })
    }

    /// Keeps the entry at `name` in `dir` under the tick's stamp folder,
    /// by `keep` (a link or a rename); `None` when there is nothing to
    /// keep (no entry, or a folder).
    fn keep_old(
        &self,
        cx: &HookCx,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &RelPath,
        keep: impl FnOnce(BorrowedFd<'_>, &[u8]) -> rustix::io::Result<()>,
    ) -> HookResult {
        let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(HookError::new("look at the old version", e)),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile | FileType::Symlink => {}
            _ => return Ok(None),
        }
        let stamp = stamp(cx.tick_start);
        let mut to = Vec::with_capacity(stamp.len() + 1 + path.as_bytes().len());
        to.extend_from_slice(stamp.as_bytes());
        to.push(b'/');
        to.extend_from_slice(path.as_bytes());
        let event = LogEvent::op(BACKUP, path).with("to", LogValue::Bytes(to.into()));
        if cx.dry_run {
            return Ok(Some(event));
        }
        let folder = self.folder(&stamp, path)?;
        keep(folder.as_fd(), path.name()).map_err(|e| HookError::new("keep the old version", e))?;
        Ok(Some(event))
    }

    /// Opens `DIR/<stamp>/<path's folder>`, making what is missing.
    fn folder(&self, stamp: &str, path: &RelPath) -> Result<OwnedFd, HookError> {
        let root = self.root.as_ref().ok_or_else(|| {
            HookError::new(
                "open the backup folder",
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is missing", self.path.display()),
                ),
            )
        })?;
        let err = |e| HookError::new("make the backup folder", e);
        let mut fd = open_or_make(root.fd(), stamp.as_bytes()).map_err(err)?;
        if let Some(parent) = path.parent() {
            for part in parent.components() {
                fd = open_or_make(fd.as_fd(), part).map_err(err)?;
            }
        }
        Ok(fd)
    }

    /// Removes the stamp folders older than `--backup-keep` at `now`.
    fn prune(&self, now: SystemTime) -> Vec<LogEvent> {
        let (Some(keep), Some(root)) = (self.keep, &self.root) else {
            return Vec::new();
        };
        let Some(limit) = now.checked_sub(keep) else {
            return Vec::new();
        };
        let warn = |reason: String| LogEvent::new(Verb::Warn, None).with_str("reason", reason);
        let mut events = Vec::new();
        let mut old = Vec::new();
        match read_names(root.fd()) {
            Ok(names) => old.extend(
                names
                    .into_iter()
                    .filter(|n| parse_stamp(n).is_some_and(|t| t < limit))
                    // A link named like a stamp is not ours: left alone.
                    .filter(|n| {
                        rfs::statat(root.fd(), n.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode).is_dir())
                    }),
            ),
            Err(e) => events.push(warn(format!(
                "cannot list the backup folder {}: {e}",
                self.path.display()
            ))),
        }
        for name in old {
            let shown = String::from_utf8_lossy(&name).into_owned();
            match remove_tree(root.fd(), &name) {
                Ok(()) => events.push(LogEvent::new(PRUNE, None).with_str("to", shown)),
                Err(e) => events.push(warn(format!(
                    "cannot remove old backups {}: {}",
                    self.path.join(&shown).display(),
                    match e {
                        Errno::XDEV =>
                            "another filesystem is mounted there; it is left alone".to_string(),
                        e => std::io::Error::from(e).to_string(),
                    }
                ))),
            }
        }
        events
    }
}

impl OpHook for BackupDir {
    /// A second name for the old entry, so that its own name goes from
    /// the old version to the new in the rename that follows.
    fn before_replace(
        &self,
        cx: &HookCx,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &RelPath,
    ) -> HookResult {
        self.keep_old(cx, dir, name, path, |to_dir, to| {
            rfs::linkat(dir, name, to_dir, to, AtFlags::empty())
        })
    }

    /// The old entry moves into the backup in one rename.
    fn before_delete(
        &self,
        cx: &HookCx,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &RelPath,
    ) -> HookResult {
        self.keep_old(cx, dir, name, path, |to_dir, to| {
            match rfs::renameat_with(dir, name, to_dir, to, RenameFlags::NOREPLACE) {
                // A filesystem without RENAME_NOREPLACE: a kept version
                // already there (the clock stepped back onto a used
                // stamp) is never replaced; look first.
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    match rfs::statat(to_dir, to, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(_) => Err(Errno::EXIST),
                        Err(Errno::NOENT) => rfs::renameat(dir, name, to_dir, to),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            }
        })
    }

    fn tick_started(&self, cx: &HookCx) -> Vec<LogEvent> {
        if cx.dry_run {
            return Vec::new();
        }
        self.prune(cx.tick_start)
    }
}

/// The stamp folder's name for a tick that started at `t`:
/// `YYYY-MM-DDTHHMMSS.mmmZ`, UTC (RFC 3339 without its colons, which some
/// filesystems and tools refuse in names).
pub fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t)
        .to_string()
        .replace(':', "")
}

/// The time a stamp folder's name stands for; `None` for any other name.
pub fn parse_stamp(name: &[u8]) -> Option<SystemTime> {
    const FORM: &[u8; 22] = b"0000-00-00T000000.000Z";
    if name.len() != FORM.len() {
        return None;
    }
    let fits = name.iter().zip(FORM).all(|(&c, &f)| {
        if f == b'0' {
            c.is_ascii_digit()
        } else {
            c == f
        }
    });
    if !fits {
        return None;
    }
    let s = std::str::from_utf8(name).ok()?;
    let rfc = format!("{}:{}:{}", &s[..13], &s[13..15], &s[15..]);
    humantime::parse_rfc3339(&rfc).ok()
}

/// Opens the folder `name` in `dir`, making it first if missing; a link
/// or a file there is refused.
fn open_or_make(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    match rfs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Err(Errno::NOENT) => {}
        other => return other,
    }
    match rfs::mkdirat(dir, name, Mode::from_raw_mode(DIR_MODE)) {
        // Another worker made it meanwhile.
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    rfs::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// The names in the folder `dir`, but `.` and `..`.
fn read_names(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<Vec<u8>>> {
    let fd = rfs::openat(dir, c".", DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(&fd)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes the folder `name` of `dir` and all it holds, never following a
/// link: links are removed as entries, and a link where a folder was
/// makes the open fail.
fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    // Never through a link, never across a mount: what another filesystem
    // holds below a stamp folder is not ours (`EXDEV` stops the removal).
    const HERE: ResolveFlags = ResolveFlags::NO_XDEV
        .union(ResolveFlags::NO_SYMLINKS)
        .union(ResolveFlags::BENEATH);
    let fd = match rfs::openat2(dir, name, DIR_FLAGS, Mode::empty(), HERE) {
        Err(Errno::NOSYS | Errno::AGAIN | Errno::PERM) => {
            let fd = rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
            if rfs::fstat(&fd)?.st_dev != rfs::fstat(dir)?.st_dev {
                return Err(Errno::XDEV);
            }
            fd
        }
        other => other?,
    };
    for child in read_names(fd.as_fd())? {
        let st = rfs::statat(&fd, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(fd.as_fd(), &child)?;
        } else {
            rfs::unlinkat(&fd, child.as_slice(), AtFlags::empty())?;
        }
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn stamps_are_utc_milliseconds_without_colons_and_parse_back() {
        let t = at(1_777_887_000, 123);
        assert_eq!(stamp(t), "2026-05-04T093000.123Z");
        assert_eq!(parse_stamp(stamp(t).as_bytes()), Some(t));
        for other in [
            &b"2026-05-04T09:30:00.123Z"[..],
            b"2026-05-04T093000.123",
            b"2026-05-04T093000Z",
            b"notes",
            b"2026-13-04T093000.123Z",
            b"2026-05-04x093000.123Z",
        ] {
            assert_eq!(
                parse_stamp(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        replica: PathBuf,
        dir: PathBuf,
        backup: BackupDir,
    }

    fn setup(keep: Option<Duration>) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let (replica, dir) = (tmp.path().join("r"), tmp.path().join("b"));
        fs::create_dir_all(replica.join("a")).unwrap();
        fs::create_dir(&dir).unwrap();
        let backup = BackupDir::open(&dir, keep, false).unwrap();
        Setup {
            _tmp: tmp,
            replica,
            dir,
            backup,
        }
    }

    fn cx(dry_run: bool) -> HookCx {
        HookCx {
            tick_start: at(1_777_887_000, 5),
            dry_run,
        }
    }

    fn open(dir: &Path) -> OwnedFd {
        rfs::open(dir, DIR_FLAGS, Mode::empty()).unwrap()
    }

    #[test]
    fn backup_replace_links_and_delete_renames_under_the_stamp() {
        let s = setup(None);
        fs::write(s.replica.join("a/f"), b"old").unwrap();
        let ino = fs::metadata(s.replica.join("a/f")).unwrap().ino();
        let dir = open(&s.replica.join("a"));
        let path = RelPath::from_str_lossy("a/f");
        let ev = s
            .backup
            .before_replace(&cx(false), dir.as_fd(), b"f", &path)
            .unwrap()
            .unwrap();
        assert_eq!(ev.verb, BACKUP);
        assert_eq!(
            ev.field("to").unwrap().to_string(),
            "2026-05-04T093000.005Z/a/f"
        );
        let kept = s.dir.join("2026-05-04T093000.005Z/a/f");
        // Both names on the one inode until the rename that follows.
        assert_eq!(fs::metadata(&kept).unwrap().ino(), ino);
        assert_eq!(fs::read(s.replica.join("a/f")).unwrap(), b"old");
        let mode = fs::metadata(s.dir.join("2026-05-04T093000.005Z"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, DIR_MODE);

        symlink("target", s.replica.join("a/l")).unwrap();
        let lpath = RelPath::from_str_lossy("a/l");
        s.backup
            .before_delete(&cx(false), dir.as_fd(), b"l", &lpath)
            .unwrap()
            .unwrap();
        assert!(fs::symlink_metadata(s.replica.join("a/l")).is_err());
        let kept = s.dir.join("2026-05-04T093000.005Z/a/l");
        assert_eq!(fs::read_link(kept).unwrap(), Path::new("target"));

        // Nothing there, or a folder: nothing to keep.
        for name in [&b"none"[..], b"."] {
            let p = RelPath::from_str_lossy("a/none");
            assert!(s
                .backup
                .before_delete(&cx(false), dir.as_fd(), name, &p)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn backup_in_a_dry_run_reports_and_moves_nothing() {
        let s = setup(None);
        fs::write(s.replica.join("a/f"), b"old").unwrap();
        let dir = open(&s.replica.join("a"));
        let path = RelPath::from_str_lossy("a/f");
        let ev = s.backup.before_delete(&cx(true), dir.as_fd(), b"f", &path);
        assert!(ev.unwrap().is_some());
        assert!(s.replica.join("a/f").exists());
        assert_eq!(fs::read_dir(&s.dir).unwrap().count(), 0);
    }

    #[test]
    fn backup_folders_are_never_made_through_a_link() {
        let s = setup(None);
        let outside = s._tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::create_dir(s.dir.join("2026-05-04T093000.005Z")).unwrap();
        symlink(&outside, s.dir.join("2026-05-04T093000.005Z/a")).unwrap();
        fs::write(s.replica.join("a/f"), b"old").unwrap();
        let dir = open(&s.replica.join("a"));
        let path = RelPath::from_str_lossy("a/f");
        let err = s
            .backup
            .before_delete(&cx(false), dir.as_fd(), b"f", &path)
            .unwrap_err();
        assert_eq!(err.step, "make the backup folder");
        assert_eq!(fs::read(s.replica.join("a/f")).unwrap(), b"old");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn backup_keep_removes_old_stamps_only() {
        let s = setup(Some(Duration::from_secs(7 * 86_400)));
        let now = at(1_777_887_000, 0);
        let old = stamp(now - Duration::from_secs(8 * 86_400));
        let young = stamp(now - Duration::from_secs(86_400));
        let outside = s._tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), b"x").unwrap();
        fs::create_dir_all(s.dir.join(&old).join("a/b")).unwrap();
        fs::write(s.dir.join(&old).join("a/b/f"), b"x").unwrap();
        symlink(&outside, s.dir.join(&old).join("a/link")).unwrap();
        fs::create_dir(s.dir.join(&young)).unwrap();
        fs::create_dir(s.dir.join("notes")).unwrap();
        // An old stamp's name on a link: not followed, not removed.
        let linked = stamp(now - Duration::from_secs(9 * 86_400));
        symlink(&outside, s.dir.join(&linked)).unwrap();
        let hook: Arc<dyn OpHook> = Arc::new(s.backup);
        let events = hook.tick_started(&HookCx {
            tick_start: now,
            dry_run: false,
        });
        // One `prune` line for the old stamp, no warning.
        let verbs: Vec<&str> = events.iter().map(|e| e.verb.as_str()).collect();
        assert_eq!(verbs, ["prune"], "{events:?}");
        let mut left: Vec<String> = fs::read_dir(&s.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![young, "notes".to_string(), linked];
        want.sort();
        assert_eq!(left, want);
        assert!(outside.join("precious").exists());
    }
}
