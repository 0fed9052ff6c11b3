//! The replica's state folder, `REPLICA/.treesync/`: the lock, the digest
//! cache and the other files a run keeps between ticks and runs.
//!
//! Nothing in that folder is trusted: it lies inside a tree that others can
//! write to. Every state file is opened without following a link and
//! without blocking (a fifo put in place of a file cannot hang a sync), and
//! must be a regular file; anything else reads as `StateError::NotRegular`,
//! which callers treat as absent and report once. Writes replace a file
//! atomically (a fresh temporary, then a rename), so a crash leaves the old
//! file or the new one.

use crate::contract::model::STATE_DIR;
use crate::contract::relpath::RelPath;
use crate::fs::root::Root;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Write};
use thiserror::Error;

/// A state file that could not be used.
#[derive(Debug, Error)]
pub enum StateError {
    #[error(".treesync/{name} is not a regular file (a {found}); it is ignored")]
    NotRegular { name: String, found: &'static str },
    #[error(".treesync/{name}: {source}")]
    Io { name: String, source: io::Error },
}

impl StateError {
    fn io(name: &str, source: impl Into<io::Error>) -> Self {
        StateError::Io {
            name: name.to_owned(),
            source: source.into(),
        }
    }
}

/// Opens `REPLICA/.treesync` like any replica folder: never through a link.
pub fn open_dir(replica: &Root) -> io::Result<OwnedFd> {
    replica.open_dir(&RelPath::root().join(STATE_DIR))
}

/// Opens the state file `name` for reading. `Ok(None)` when there is none;
/// a link, fifo, folder or device there is `NotRegular`.
pub fn open_read(dir: BorrowedFd<'_>, name: &str) -> Result<Option<(File, u64)>, StateError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rfs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        // O_NOFOLLOW on a link.
        Err(Errno::LOOP) => return Err(not_regular(name, "symlink")),
        // A socket cannot be opened.
        Err(Errno::NXIO) => return Err(not_regular(name, "socket")),
        Err(e) => return Err(StateError::io(name, e)),
    };
    let st = rfs::fstat(&fd).map_err(|e| StateError::io(name, e))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(not_regular(name, kind_name(ft)));
    }
    // Reads of a regular file never block; clear the flag all the same.
    let _ = rfs::fcntl_setfl(&fd, OFlags::empty());
    Ok(Some((File::from(fd), st.st_size as u64)))
}

/// Reads the whole state file `name`, if it is there and at most `limit`
/// bytes (a state file is small; a huge one is not ours).
pub fn read_small(
    dir: BorrowedFd<'_>,
    name: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, StateError> {
    let Some((file, size)) = open_read(dir, name)? else {
        return Ok(None);
    };
    if size > limit {
        return Err(StateError::io(
            name,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{size} bytes, more than a state file holds"),
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    io::Read::read_to_end(&mut io::Read::take(file, limit + 1), &mut bytes)
        .map_err(|e| StateError::io(name, e))?;
    Ok(Some(bytes))
}

/// Replaces the state file `name` with what `write` puts in a fresh
/// temporary: the old file or the new one, never a part. Whatever stood at
/// the temporary's name (left by a crash, or put there) is removed first,
/// and the temporary is created exclusively, never opened through a link.
pub fn write_atomic(
    dir: BorrowedFd<'_>,
    name: &str,
    durable: bool,
    write: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    match rfs::unlinkat(dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        // A folder there: not ours to remove, and the write cannot proceed.
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, tmp.as_str(), flags, Mode::from_raw_mode(0o600))?;
    let mut out = io::BufWriter::with_capacity(1 << 16, File::from(fd));
    let written = write(&mut out).and_then(|()| out.flush()).and_then(|()| {
        if durable {
            out.get_ref().sync_data()
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        let _ = rfs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    drop(out);
    rfs::renameat(dir, tmp.as_str(), dir, name)?;
    Ok(())
}

/// `write_atomic` with the whole content at hand. These files are small
/// and rarely written (the marker, the run tokens, the racy paths, the
/// probe): they are made durable before the rename, so that a power cut
/// leaves the old content or the new one, not an empty file.
pub fn write_bytes(dir: impl AsFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic(dir.as_fd(), name, true, |out| out.write_all(bytes))
}

fn not_regular(name: &str, found: &'static str) -> StateError {
    StateError::NotRegular {
        name: name.to_owned(),
        found,
    }
}

fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Directory => "folder",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Symlink => "symlink",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn state() -> (tempfile::TempDir, OwnedFd) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(".treesync")).unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let dir = open_dir(&root).unwrap();
        (tmp, dir)
    }

    #[test]
    fn state_files_round_trip_and_missing_ones_read_as_none() {
        let (_tmp, dir) = state();
        assert!(read_small(dir.as_fd(), "id", 64).unwrap().is_none());
        write_bytes(&dir, "id", b"abc").unwrap();
        assert_eq!(read_small(dir.as_fd(), "id", 64).unwrap().unwrap(), b"abc");
        write_bytes(&dir, "id", b"de").unwrap();
        assert_eq!(read_small(dir.as_fd(), "id", 64).unwrap().unwrap(), b"de");
    }

    #[test]
    fn a_fifo_a_link_or_a_folder_is_not_read_and_never_hangs() {
        let (tmp, dir) = state();
        let st = tmp.path().join(".treesync");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            st.join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::write(tmp.path().join("secret"), b"x").unwrap();
        symlink(tmp.path().join("secret"), st.join("link")).unwrap();
        std::fs::create_dir(st.join("dir")).unwrap();
        for name in ["fifo", "link", "dir"] {
            let err = open_read(dir.as_fd(), name).unwrap_err();
            assert!(
                matches!(err, StateError::NotRegular { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn writing_never_follows_a_link_at_the_temporary_name() {
        let (tmp, dir) = state();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        symlink(&outside, tmp.path().join(".treesync/id.tmp")).unwrap();
        write_bytes(&dir, "id", b"new").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(read_small(dir.as_fd(), "id", 64).unwrap().unwrap(), b"new");
    }

    #[test]
    fn an_oversized_state_file_is_refused() {
        let (_tmp, dir) = state();
        write_bytes(&dir, "id", &[b'x'; 100]).unwrap();
        assert!(read_small(dir.as_fd(), "id", 64).is_err());
    }
}
