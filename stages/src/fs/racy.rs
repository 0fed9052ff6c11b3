//! Racy copies: files whose source may have been written while they were
//! copied, checked again by content at the next tick.
//!
//! A `write()` sets the file's mtime and ctime when it starts, not when its
//! bytes have landed, so a copy taken while one write is in flight sees the
//! same stamps before and after, and the ticks after it see equal size and
//! mtime: the mixed copy would stand for good. This is git's racy-clean
//! problem, and the same rule answers it. The Applier notes the wall-clock
//! time at which each copy starts; when the source's mtime or ctime (read
//! after the copy) is not older than that start less a slack, the copy is
//! racy. Its path is recorded in `REPLICA/.treesync/racy` at the end of the
//! tick, and its folder is listed again at the next tick (`retry`), where
//! the Hasher compares it by content as `--checksum` would; a difference is
//! an `update`. A path leaves the set once a comparison found it equal (the
//! source itself no longer racy) or a copy of it was not racy.
//!
//! The limit: a writer that keeps the size and puts the old mtime back
//! after the recheck is caught only by `--checksum`.

use crate::contract::model::Timestamp;
use crate::contract::relpath::RelPath;
use crate::fs::root::Root;
use crate::fs::state::{self, StateError};
use rustix::fd::AsFd;
use std::collections::BTreeSet;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The state file of racy paths: the paths' bytes, each ended by a NUL
/// (the one byte no name holds).
pub const RACY_FILE: &str = "racy";

/// Most bytes the state file may hold (a larger one is refused as not
/// ours); paths past it are not recorded.
const LIMIT: u64 = 16 << 20;

/// The slack added to a copy's window. A source whose mtime has no
/// nanoseconds is on a filesystem with coarse stamps (FAT: 2 s; ext4 with
/// small inodes: 1 s): two seconds. Otherwise the kernel's coarse clock
/// (stamps lag the wall clock by up to a tick, 10 ms at HZ=100) plus the
/// time one large write may take to land in the page cache: 100 ms.
pub fn slack(mtime: Timestamp) -> Duration {
    if mtime.nanos == 0 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(100)
    }
}

/// True when a copy that started at `started` may hold part of a write:
/// the source's mtime or ctime is not older than `started` less the slack.
/// `replica_step` is the replica's timestamp granularity: where it keeps
/// whole seconds, a write later in the same second as the copy leaves the
/// source's mtime within a step of the copy's, and only content tells them
/// apart, so the window is at least that wide.
pub fn is_racy(
    started: SystemTime,
    mtime: Timestamp,
    ctime: Timestamp,
    replica_step: Duration,
) -> bool {
    let since = started
        .checked_sub(slack(mtime).max(replica_step))
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_or(i128::MIN, |d| d.as_nanos() as i128);
    let ns = |t: Timestamp| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
    ns(mtime) >= since || ns(ctime) >= since
}

/// Reads the recorded racy paths. A missing file is an empty set; an
/// unusable one (not a regular file, too large) is empty too, with the
/// reason to report.
pub fn load(replica: &Root) -> (BTreeSet<RelPath>, Option<StateError>) {
    let Ok(dir) = state::open_dir(replica) else {
        return (BTreeSet::new(), None);
    };
    match state::read_small(dir.as_fd(), RACY_FILE, LIMIT) {
        Ok(Some(bytes)) => (parse(&bytes), None),
        Ok(None) => (BTreeSet::new(), None),
        Err(e) => (BTreeSet::new(), Some(e)),
    }
}

/// Replaces the recorded set with `paths`; an empty set removes the file.
/// Without a state folder (only tests apply plans without the lock that
/// makes it) there is nowhere to record, and nothing is.
pub fn save(replica: &Root, paths: &BTreeSet<RelPath>) -> io::Result<()> {
    let dir = match state::open_dir(replica) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if paths.is_empty() {
        return match rustix::fs::unlinkat(&dir, RACY_FILE, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let mut bytes = Vec::new();
    for p in paths {
        if (bytes.len() + p.as_bytes().len()) as u64 >= LIMIT {
            break;
        }
        bytes.extend_from_slice(p.as_bytes());
        bytes.push(0);
    }
    state::write_bytes(&dir, RACY_FILE, &bytes)
}

fn parse(bytes: &[u8]) -> BTreeSet<RelPath> {
    bytes
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .filter_map(RelPath::new)
        .collect()
}

/// Adds one racy path to the record at once, before its copy takes the
/// final name, so that a process killed in the same tick still leaves it
/// to be rechecked: one append (`O_APPEND`, a single write of the path and
/// its NUL), made durable with `durable` (`--fsync`). `record` folds the
/// appended paths into the set at the end of the tick.
pub fn append(replica: &Root, path: &RelPath, durable: bool) -> io::Result<()> {
    use std::io::Write as _;
    let dir = match state::open_dir(replica) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let flags = rustix::fs::OFlags::WRONLY
        | rustix::fs::OFlags::APPEND
        | rustix::fs::OFlags::CREATE
        | rustix::fs::OFlags::NOFOLLOW
        | rustix::fs::OFlags::NONBLOCK
        | rustix::fs::OFlags::CLOEXEC;
    let fd = rustix::fs::openat(
        &dir,
        RACY_FILE,
        flags,
        rustix::fs::Mode::from_raw_mode(0o600),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if st.st_size as u64 + path.as_bytes().len() as u64 >= LIMIT {
        return Ok(());
    }
    let mut line = Vec::with_capacity(path.as_bytes().len() + 1);
    line.extend_from_slice(path.as_bytes());
    line.push(0);
    let mut file = std::fs::File::from(fd);
    file.write_all(&line)?;
    if durable {
        file.sync_data()?;
    }
    Ok(())
}

/// Adds `racy` to the recorded set and removes `settled` (files written
/// this tick by a copy that was not racy); a recorded file that was moved
/// (`moved`: old and new path, of files or folders) stays recorded under
/// its new path. Writes
/// only on a change.
pub fn record(
    replica: &Root,
    racy: &[RelPath],
    settled: &[RelPath],
    moved: &[(RelPath, RelPath)],
) -> io::Result<()> {
    if racy.is_empty() && settled.is_empty() && moved.is_empty() {
        return Ok(());
    }
    let (mut set, _) = load(replica);
    let mut changed = false;
    // In the order of the moves; a folder's move takes its files along.
    for (from, to) in moved {
        let below: Vec<RelPath> = set
            .iter()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for p in below {
            set.remove(&p);
            set.extend(crate::contract::moves::rebase(&p, from, to));
            changed = true;
        }
    }
    for p in settled {
        changed |= set.remove(p);
    }
    for p in racy {
        changed |= set.insert(p.clone());
    }
    if changed {
        save(replica, &set)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: SystemTime, back: Duration, nanos: bool) -> Timestamp {
        let d = (t - back).duration_since(UNIX_EPOCH).unwrap();
        let n = if nanos { d.subsec_nanos().max(1) } else { 0 };
        Timestamp::new(d.as_secs() as i64, n)
    }

    #[test]
    fn a_source_stamped_inside_the_window_is_racy() {
        let start = SystemTime::now();
        let old = at(start, Duration::from_secs(10), true);
        let ms = Duration::from_millis;
        assert!(!is_racy(start, old, old, Duration::ZERO));
        assert!(is_racy(start, at(start, ms(50), true), old, Duration::ZERO));
        assert!(is_racy(start, old, at(start, ms(50), true), Duration::ZERO));
        assert!(!is_racy(
            start,
            at(start, ms(300), true),
            old,
            Duration::ZERO
        ));
        // Whole seconds only: a coarse filesystem, two seconds of slack.
        assert!(is_racy(
            start,
            at(start, ms(1000), false),
            old,
            Duration::ZERO
        ));
        assert!(!is_racy(
            start,
            at(start, ms(3000), false),
            old,
            Duration::ZERO
        ));
        // A replica that keeps whole seconds: a source stamped within a
        // second of the copy could change again unseen.
        let second = Duration::from_secs(1);
        assert!(is_racy(start, at(start, ms(400), true), old, second));
        assert!(!is_racy(start, at(start, ms(1500), true), old, second));
    }

    #[test]
    fn the_set_round_trips_and_record_adds_and_settles() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(".treesync")).unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let p = |s: &str| RelPath::from_str_lossy(s);
        record(&root, &[p("a"), p("d/b\nc")], &[], &[]).unwrap();
        let (set, err) = load(&root);
        assert!(err.is_none());
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [p("a"), p("d/b\nc")]);
        // A recorded file moved is recorded under its new name.
        let moves = [(p("a"), p("e/a")), (p("x"), p("y")), (p("d"), p("f"))];
        record(&root, &[], &[], &moves).unwrap();
        let (set, _) = load(&root);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [p("e/a"), p("f/b\nc")]);
        record(&root, &[], &[p("e/a"), p("f/b\nc")], &[]).unwrap();
        assert!(load(&root).0.is_empty());
        assert!(!tmp.path().join(".treesync/racy").exists());
    }
}
