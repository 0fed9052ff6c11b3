//! One treesync at a time per replica: an exclusive `flock` on
//! `REPLICA/.treesync/lock`, which holds the owner's process id so that a
//! second process can name it. The kernel drops the lock when the process
//! ends, however it ends, so a crash never leaves a stale lock.

use rustix::fs::{flock, mkdirat, openat, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;
use treesync_stages::contract::model::STATE_DIR;
use treesync_stages::fs::root::Root;

/// Held for the life of the process.
#[derive(Debug)]
pub struct ReplicaLock {
    _file: File,
    /// The state folder was made just now (its creation moved the replica
    /// root's mtime).
    pub made_state_dir: bool,
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error("another treesync (pid {pid}) is already syncing into {replica}")]
    Held { pid: String, replica: PathBuf },
    #[error("cannot lock {replica}/.treesync/lock: {source}")]
    Io { replica: PathBuf, source: io::Error },
}

pub fn acquire(replica: &Path) -> Result<ReplicaLock, LockError> {
    let io_err = |source: io::Error| LockError::Io {
        replica: replica.to_path_buf(),
        source,
    };
    let root = Root::open(replica).map_err(io_err)?;
    let made_state_dir = match mkdirat(root.fd(), STATE_DIR, Mode::from_raw_mode(0o755)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(io_err(e.into())),
    };
    // Never through a link: the replica's content is not ours to trust.
    let dir_flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let dir =
        openat(root.fd(), STATE_DIR, dir_flags, Mode::empty()).map_err(|e| io_err(e.into()))?;
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd =
        openat(&dir, "lock", flags, Mode::from_raw_mode(0o644)).map_err(|e| io_err(e.into()))?;
    let mut file = File::from(fd);
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
                replica: replica.to_path_buf(),
            });
        }
        Err(e) => return Err(io_err(e.into())),
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(ReplicaLock {
        _file: file,
        made_state_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let held = acquire(tmp.path()).unwrap();
        // flock is per open file description: a second open conflicts even
        // within one process, like a second process would.
        match acquire(tmp.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(acquire(tmp.path()).is_ok());
    }
}
