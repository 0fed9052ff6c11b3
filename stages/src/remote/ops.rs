//! The plan's operations on a remote replica (the `Replica` trait).
//!
//! A file is read from the source through the source root (never by a
//! path that a rename could redirect), hashed, and uploaded with its mtime
//! and SHA-1 in metadata: small files in one PUT from memory, large ones
//! as a multipart upload of `PART`-sized parts, `PARTS_IN_FLIGHT` at once,
//! so memory stays bounded whatever the size. The source is checked
//! against the scan before and after reading: a file that changed is a
//! `skip` and the upload is aborted, so the store never holds a torn copy.
//! Nothing is visible in the store until its upload completes.

use super::state::Record;
#[cfg(test)]
use super::MAX_PARTS;
use super::{bare_etag, object_metadata, part_size, Remote, Store, PART, PARTS_IN_FLIGHT};
use crate::contract::messages::LogEvent;
use crate::contract::model::{Digest, Meta, Timestamp};
use crate::contract::relpath::RelPath;
use crate::contract::replica::Replica;
use crate::contract::replica::{Copied, OpError, CHANGED_WHILE_COPIED};
use crate::fs::root::{meta_of, Root};
use opendal::Operator;
use rustix::fs::{Mode, OFlags};
use sha1::{Digest as _, Sha1};
use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// One tick's operations on a remote replica.
pub struct RemoteOps {
    remote: Arc<Remote>,
    source: Root,
    /// Folders this tick created, and folders that got an object below
    /// them: a created folder left without one gets a marker object.
    made: Mutex<HashSet<RelPath>>,
    filled: Mutex<HashSet<RelPath>>,
    /// Folders where this tick deleted an object: one left with nothing
    /// below it would vanish from the store, so it gets a marker.
    emptied: Mutex<HashSet<RelPath>>,
    /// The memory the uploads in flight may hold (`UPLOAD_MEMORY`).
    budget: Budget,
    /// Why the store is taken as down for the rest of the tick.
    down: Mutex<Option<String>>,
    /// `--fsync`: each file made durable before it is renamed into place.
    fsync: bool,
}

impl RemoteOps {
    pub fn new(remote: Arc<Remote>, source: Root, fsync: bool) -> Self {
        RemoteOps {
            remote,
            source,
            made: Mutex::new(HashSet::new()),
            filled: Mutex::new(HashSet::new()),
            emptied: Mutex::new(HashSet::new()),
            down: Mutex::new(None),
            budget: Budget::new(super::UPLOAD_MEMORY),
            fsync,
        }
    }

    fn key(path: &RelPath) -> Result<&str, OpError> {
        std::str::from_utf8(path.as_bytes()).map_err(|_| OpError::Remote {
            step: "name the object",
            path: path.clone(),
            message: "the name is not UTF-8, which object keys must be".into(),
        })
    }

    /// A failed request as the operation's error. One that failed for a
    /// reason that may pass (a connection refused, a timeout, a store that
    /// asks to slow down), after the retries, marks the store down for the
    /// rest of the tick: the operations after it fail at once rather than
    /// each waiting out its retries. The next tick tries again.
    fn fail<'p>(
        &'p self,
        step: &'static str,
        path: &'p RelPath,
    ) -> impl Fn(opendal::Error) -> OpError + 'p {
        move |e| {
            let message = super::describe(&e);
            // Retried and still failing: persistent (temporary before).
            if e.is_temporary() || e.is_persistent() {
                lock(&self.down).get_or_insert_with(|| message.clone());
            }
            OpError::Remote {
                step,
                path: path.clone(),
                message,
            }
        }
    }

    /// Fails at once while the store is down (see `fail`).
    fn check_up(&self, path: &RelPath) -> Result<(), OpError> {
        match &*lock(&self.down) {
            None => Ok(()),
            Some(why) => Err(OpError::Remote {
                step: "not tried",
                path: path.clone(),
                message: format!("the store stopped answering earlier in this sync ({why})"),
            }),
        }
    }

    fn io_fail<'p>(
        step: &'static str,
        path: &'p RelPath,
    ) -> impl Fn(std::io::Error) -> OpError + 'p {
        move |e| OpError::Io {
            step,
            path: path.clone(),
            source: e,
        }
    }

    /// Uploads the source file at `path`; see the module's comment.
    fn upload(&self, path: &RelPath, meta: &Meta) -> Result<Copied, OpError> {
        self.check_up(path)?;
        let mut file = match self.open_source(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Copied::Skipped {
                    reason: "vanished from the source".into(),
                })
            }
            Err(e) => return Err(Self::io_fail("open the source file", path)(e)),
        };
        let same = |f: &std::fs::File| -> std::io::Result<bool> {
            let now = meta_of(&rustix::fs::fstat(f)?);
            Ok(now.size == meta.size && now.mtime == meta.mtime)
        };
        let changed = || Copied::Skipped {
            reason: CHANGED_WHILE_COPIED.into(),
        };
        if !same(&file).map_err(Self::io_fail("read the source file", path))? {
            return Ok(changed());
        }
        let op = match &self.remote.store {
            Store::S3(op) => op,
            Store::Sftp(s) => {
                let sent = self
                    .remote
                    .block_on(s.upload(path, &mut file, meta, &same, self.fsync))?;
                if let Copied::Written { .. } = sent {
                    self.note_filled(path);
                }
                return Ok(sent);
            }
        };
        let key = Self::key(path)?;
        let read_err = Self::io_fail("read the source file", path);
        // Many workers, each holding what it sends: the bytes in memory
        // are bounded together, whatever the files' sizes.
        let part = part_size(meta.size);
        let _held = self
            .budget
            .take((part * (PARTS_IN_FLIGHT + 2)) as u64, meta.size);
        let written = if meta.size <= PART as u64 {
            let mut buf = Vec::with_capacity(meta.size as usize);
            (&mut file)
                .take(meta.size + 1)
                .read_to_end(&mut buf)
                .map_err(&read_err)?;
            if buf.len() as u64 != meta.size || !same(&file).map_err(&read_err)? {
                return Ok(changed());
            }
            let sha1 = Digest(Sha1::digest(&buf).into());
            let user = object_metadata(meta.mtime, Some(sha1));
            let put = self
                .remote
                .block_on(op.write_with(key, buf).user_metadata(user))
                .map_err(self.fail("upload", path))?;
            (bare_etag(put.etag()), sha1)
        } else {
            // The digest goes in the metadata, which comes first: one
            // pass to hash, one to upload.
            let sha1 = match digest(&mut file).map_err(&read_err)? {
                (d, n) if n == meta.size && same(&file).map_err(&read_err)? => d,
                _ => return Ok(changed()),
            };
            let user = object_metadata(meta.mtime, Some(sha1));
            let up = self.remote.block_on(async {
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| Err(read_err(e)))?;
                let mut w = op
                    .writer_with(key)
                    .chunk(part)
                    .concurrent(PARTS_IN_FLIGHT)
                    .user_metadata(user)
                    .await
                    .map_err(|e| Err(self.fail("start the upload", path)(e)))?;
                let mut sent = 0u64;
                loop {
                    let mut chunk = Vec::with_capacity(part);
                    let n = match (&mut file).take(part as u64).read_to_end(&mut chunk) {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = w.abort().await;
                            return Err(Err(read_err(e)));
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    sent += n as u64;
                    if let Err(e) = w.write(chunk).await {
                        let _ = w.abort().await;
                        return Err(Err(self.fail("upload a part", path)(e)));
                    }
                }
                // Changed while read: the parts are dropped, the old
                // object stays.
                if sent != meta.size || !same(&file).unwrap_or(false) {
                    let _ = w.abort().await;
                    return Err(Ok(changed()));
                }
                w.close()
                    .await
                    .map_err(|e| Err(self.fail("complete the upload", path)(e)))
            });
            match up {
                Ok(done) => (bare_etag(done.etag()), sha1),
                Err(Ok(skip)) => return Ok(skip),
                Err(Err(e)) => return Err(e),
            }
        };
        let (etag, sha1) = written;
        self.remote.records().insert(
            key.to_string(),
            Record {
                size: meta.size,
                etag,
                mtime: meta.mtime,
                sha1: Some(sha1),
            },
        );
        self.note_filled(path);
        Ok(Copied::Written {
            bytes: meta.size,
            racy: false,
        })
    }

    fn open_source(&self, path: &RelPath) -> std::io::Result<std::fs::File> {
        let (dir, name) = self.source.open_parent(path)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, name, flags, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(std::io::Error::other("no longer a regular file"));
        }
        Ok(std::fs::File::from(fd))
    }

    fn note_filled(&self, path: &RelPath) {
        let mut filled = lock(&self.filled);
        let mut at = path.parent();
        while let Some(folder) = at {
            if !filled.insert(folder.clone()) {
                break;
            }
            at = folder.parent();
        }
    }

    fn delete_key(&self, op: &Operator, key: &str, path: &RelPath) -> Result<(), OpError> {
        self.remote
            .block_on(op.delete(key))
            .map_err(self.fail("delete", path))?;
        self.remote.records().remove(key);
        if let Some(parent) = path.parent() {
            lock(&self.emptied).insert(parent);
        }
        Ok(())
    }

    /// Whether any object is left below the folder `key/`.
    fn holds_objects(&self, op: &Operator, key: &str, path: &RelPath) -> Result<bool, OpError> {
        let prefix = format!("{key}/");
        let found = self.remote.block_on(async {
            use futures::TryStreamExt as _;
            let mut lister = op.lister_with(&prefix).limit(2).await?;
            while let Some(entry) = lister.try_next().await? {
                if entry.path() != prefix {
                    return Ok(true);
                }
            }
            Ok(false)
        });
        found.map_err(self.fail("list the folder", path))
    }

    fn unsupported(path: &RelPath, what: &str) -> OpError {
        OpError::Remote {
            step: "plan",
            path: path.clone(),
            message: format!("an object store cannot hold {what}"),
        }
    }
}

fn sftp_fail<'p>(step: &'static str, path: &'p RelPath) -> impl Fn(String) -> OpError + 'p {
    move |message| OpError::Remote {
        step,
        path: path.clone(),
        message,
    }
}

/// A count of bytes that uploads take before reading a file and give back
/// when done: a worker waits while the others hold too much.
struct Budget {
    left: Mutex<u64>,
    freed: std::sync::Condvar,
    total: u64,
}

/// Bytes taken from a `Budget`, given back when dropped.
struct Held<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    fn new(total: u64) -> Budget {
        Budget {
            left: Mutex::new(total),
            freed: std::sync::Condvar::new(),
            total,
        }
    }

    /// Takes `size` bytes, at most `cap` (what an upload of any size
    /// holds at once) and never more than the whole budget.
    fn take(&self, cap: u64, size: u64) -> Held<'_> {
        let bytes = size.min(cap).min(self.total);
        let mut left = lock(&self.left);
        while *left < bytes {
            left = self.freed.wait(left).unwrap_or_else(|p| p.into_inner());
        }
        *left -= bytes;
        Held {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *lock(&self.budget.left) += self.bytes;
        self.budget.freed.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// SHA-1 and length of what `file` holds from where it is.
fn digest(file: &mut std::fs::File) -> std::io::Result<(Digest, u64)> {
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok((Digest(h.finalize().into()), n)),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Replica for RemoteOps {
    fn copy(&self, path: &RelPath, meta: &Meta, _: &mut Vec<LogEvent>) -> Result<Copied, OpError> {
        self.upload(path, meta)
    }

    fn update(
        &self,
        path: &RelPath,
        meta: &Meta,
        _: &mut Vec<LogEvent>,
    ) -> Result<Copied, OpError> {
        self.upload(path, meta)
    }

    fn symlink(
        &self,
        path: &RelPath,
        _: &[u8],
        _: &Meta,
        _: &mut Vec<LogEvent>,
    ) -> Result<(), OpError> {
        Err(Self::unsupported(path, "symbolic links"))
    }

    fn link(
        &self,
        path: &RelPath,
        _: &RelPath,
        _: &Meta,
        _: &mut Vec<LogEvent>,
    ) -> Result<Option<String>, OpError> {
        Err(Self::unsupported(path, "hard links"))
    }

    /// A new mtime is new metadata, which an object only gets with its
    /// content: the file is uploaded again.
    /// On SFTP, the times and permissions are set (`setstat`).
    fn set_meta(&self, path: &RelPath, _link: bool, meta: &Meta) -> Result<(), OpError> {
        if let Store::Sftp(s) = &self.remote.store {
            return self
                .remote
                .block_on(s.set_meta(path, meta))
                .map_err(sftp_fail("set the times and permissions", path));
        }
        match self.upload(path, meta)? {
            Copied::Written { .. } => Ok(()),
            Copied::Skipped { reason } => Err(OpError::Remote {
                step: "set the mtime",
                path: path.clone(),
                message: reason,
            }),
        }
    }

    fn attrs(&self, _: &RelPath, _: bool, _: &Meta) -> Result<bool, OpError> {
        Ok(false)
    }

    fn move_entry(&self, _: &RelPath, to: &RelPath, _: Option<&Meta>) -> Result<(), OpError> {
        Err(Self::unsupported(to, "renames"))
    }

    fn mkdir(&self, path: &RelPath) -> Result<(), OpError> {
        if let Store::Sftp(s) = &self.remote.store {
            return self
                .remote
                .block_on(s.mkdir(path))
                .map_err(sftp_fail("create the folder", path));
        }
        Self::key(path)?;
        lock(&self.made).insert(path.clone());
        Ok(())
    }

    /// A folder made by this tick with nothing written below it is kept
    /// as a marker object; one with objects exists by them. On SFTP, the
    /// folder's times and permissions are set.
    fn finish_dir(&self, path: &RelPath, meta: &Meta) -> Result<bool, OpError> {
        self.check_up(path)?;
        let op = match &self.remote.store {
            Store::S3(op) => op,
            Store::Sftp(s) => {
                self.remote
                    .block_on(s.set_meta(path, meta))
                    .map_err(sftp_fail("set the times and permissions", path))?;
                return Ok(false);
            }
        };
        if path.is_root() || lock(&self.filled).contains(path) {
            return Ok(false);
        }
        let key = Self::key(path)?;
        let made = lock(&self.made).contains(path);
        let emptied = lock(&self.emptied).contains(path);
        if made || (emptied && !self.holds_objects(op, key, path)?) {
            let marker = format!("{key}/");
            self.remote
                .block_on(op.create_dir(&marker))
                .map_err(self.fail("create the folder marker", path))?;
            self.note_filled(path);
        }
        Ok(false)
    }

    fn delete(&self, path: &RelPath, _: &mut Vec<LogEvent>) -> Result<(), OpError> {
        self.check_up(path)?;
        match &self.remote.store {
            Store::S3(op) => self.delete_key(op, Self::key(path)?, path),
            Store::Sftp(s) => self
                .remote
                .block_on(s.delete(path, false))
                .map_err(sftp_fail("delete", path)),
        }
    }

    /// The folder's marker, if it has one; its objects are gone already.
    fn rmdir(&self, path: &RelPath) -> Result<(), OpError> {
        self.check_up(path)?;
        match &self.remote.store {
            Store::S3(op) => self.delete_key(op, &format!("{}/", Self::key(path)?), path),
            Store::Sftp(s) => self
                .remote
                .block_on(s.delete(path, true))
                .map_err(sftp_fail("remove the folder", path)),
        }
    }

    fn remove_stale(&self, _: &RelPath) -> Result<(), OpError> {
        Ok(())
    }

    fn workers(&self, _jobs: usize) -> usize {
        self.remote.requests_in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::MAX_PARTS;
    use std::sync::atomic::Ordering;

    #[test]
    fn parts_are_the_smallest_s3_takes_until_a_file_needs_more_than_the_part_limit() {
        const GIB: u64 = 1 << 30;
        assert_eq!(part_size(0), PART);
        assert_eq!(part_size(8 * GIB), PART);
        assert_eq!(part_size(PART as u64 * MAX_PARTS), PART);
        for size in [PART as u64 * MAX_PARTS + 1, 100 * GIB, 5 << 40] {
            let part = part_size(size) as u64;
            assert!(size.div_ceil(part) <= MAX_PARTS, "{size}: {part}");
            assert_eq!(part % (1 << 20), 0, "{size}: {part}");
            assert!(
                size.div_ceil(part - (1 << 20)) > MAX_PARTS,
                "{size}: {part}"
            );
        }
    }

    #[test]
    fn the_upload_budget_makes_a_worker_wait_until_another_gives_back() {
        let budget = Budget::new(100);
        let big = budget.take(1000, 5000);
        assert_eq!(big.bytes, 100, "never more than the whole budget");
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let small = budget.take(1000, 10);
                assert!(
                    done.load(Ordering::SeqCst),
                    "took before the other gave back"
                );
                small.bytes
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            done.store(true, Ordering::SeqCst);
            drop(big);
            assert_eq!(waiter.join().unwrap(), 10);
        });
        assert_eq!(*lock(&budget.left), 100);
    }
}

/// The mtime recorded for a key (tests).
pub fn recorded_mtime(remote: &Remote, key: &str) -> Option<Timestamp> {
    remote.records().get(key).map(|r| r.mtime)
}
