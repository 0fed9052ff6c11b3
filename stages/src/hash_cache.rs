//! The digest cache: SHA-1 of file versions already read, kept between
//! ticks and across restarts in `REPLICA/.treesync/hashes`.
//!
//! A version is its identity and metadata: device, inode, size, mtime and
//! ctime to the nanosecond. Any write through the filesystem moves ctime,
//! so a digest is only ever reused for the very bytes it was computed from.
//! The file is replaced atomically (temporary, then rename) and ends with a
//! SHA-1 of everything before it: a torn, truncated or foreign file fails
//! the check and is ignored (the cache starts empty), never trusted.

use crate::model::{Digest, Meta, Timestamp, STATE_DIR};
use crate::relpath::RelPath;
use crate::root::Root;
use rustix::fs::{Mode, OFlags};
use sha1::{Digest as _, Sha1};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"TSHASH01";
const FILE_NAME: &str = "hashes";
const RECORD: usize = 8 * 3 + 12 * 2 + 20 + 8;

/// What identifies one version of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: Timestamp,
    ctime: Timestamp,
}

impl From<&Meta> for CacheKey {
    fn from(m: &Meta) -> Self {
        CacheKey {
            dev: m.id.dev,
            ino: m.id.ino,
            size: m.size,
            mtime: m.mtime,
            ctime: m.ctime,
        }
    }
}

/// Hashes a `CacheKey`: a few integers that the filesystem chose (inode
/// numbers, times), so a multiply-rotate mix serves, far cheaper than the
/// default SipHash on the hundreds of thousands of look-ups of a
/// `--checksum` tick.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// Digests with the tick each was last used in, so entries of files that
/// are gone can be dropped.
#[derive(Default, Debug)]
pub struct HashCache {
    map: HashMap<CacheKey, (Digest, u64), BuildHasherDefault<KeyHasher>>,
    /// Changed since it was loaded or saved.
    dirty: bool,
}

impl HashCache {
    pub fn get(&mut self, key: &CacheKey, tick: u64) -> Option<Digest> {
        self.map.get_mut(key).map(|(d, used)| {
            if *used != tick {
                *used = tick;
            }
            *d
        })
    }

    pub fn insert(&mut self, key: CacheKey, digest: Digest, tick: u64) {
        self.map.insert(key, (digest, tick));
        self.dirty = true;
    }

    /// Forgets digests not used since tick `oldest`.
    pub fn prune(&mut self, oldest: u64) {
        let before = self.map.len();
        self.map.retain(|_, (_, used)| *used >= oldest);
        self.dirty |= self.map.len() != before;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Reads the saved cache; entries count as used in tick `tick`. A
    /// missing or damaged file gives an empty cache.
    pub fn load(replica: &Root, tick: u64) -> HashCache {
        let bytes = match read_state_file(replica) {
            Ok(b) => b,
            Err(_) => return HashCache::default(),
        };
        decode(&bytes, tick).unwrap_or_default()
    }

    /// Replaces the saved cache atomically.
    pub fn save(&mut self, replica: &Root) -> io::Result<()> {
        let state = open_state_dir(replica)?;
        // One process per replica (the lock): a fixed name, so a crash
        // leaves at most one stale temporary, replaced next time.
        let tmp = format!("{FILE_NAME}.tmp");
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&state, tmp.as_str(), flags, Mode::from_raw_mode(0o600))?;
        let mut file = std::fs::File::from(fd);
        let written = file.write_all(&self.encode());
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&state, tmp.as_str(), rustix::fs::AtFlags::empty());
            return Err(e);
        }
        rustix::fs::renameat(&state, tmp.as_str(), &state, FILE_NAME)?;
        self.dirty = false;
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.map.len() * RECORD + 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, (d, _)) in &self.map {
            for n in [k.dev, k.ino, k.size] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            for t in [k.mtime, k.ctime] {
                out.extend_from_slice(&t.secs.to_le_bytes());
                out.extend_from_slice(&t.nanos.to_le_bytes());
            }
            out.extend_from_slice(&d.0);
            out.extend_from_slice(&[0; 8]);
        }
        let sum: [u8; 20] = Sha1::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }
}

/// `REPLICA/.treesync`, reached like any replica folder (never via a link).
fn open_state_dir(replica: &Root) -> io::Result<rustix::fd::OwnedFd> {
    let state = RelPath::root().join(STATE_DIR);
    replica.open_dir(&state)
}

fn read_state_file(replica: &Root) -> io::Result<Vec<u8>> {
    let state = open_state_dir(replica)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&state, FILE_NAME, flags, Mode::empty())?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn decode(bytes: &[u8], tick: u64) -> Option<HashCache> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(20)?)?;
    if Sha1::digest(body).as_slice() != sum || !body.starts_with(MAGIC) {
        return None;
    }
    let count = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?) as usize;
    let records = body.get(16..)?;
    if records.len() != count.checked_mul(RECORD)? {
        return None;
    }
    let mut map = HashMap::with_capacity_and_hasher(count, Default::default());
    for r in records.chunks_exact(RECORD) {
        let u = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default());
        let t = |i: usize| {
            Timestamp::new(
                i64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default()),
                u32::from_le_bytes(r[i + 8..i + 12].try_into().unwrap_or_default()),
            )
        };
        let key = CacheKey {
            dev: u(0),
            ino: u(8),
            size: u(16),
            mtime: t(24),
            ctime: t(36),
        };
        let digest = Digest(r[48..68].try_into().ok()?);
        map.insert(key, (digest, tick));
    }
    Some(HashCache { map, dirty: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> CacheKey {
        CacheKey {
            dev: 1,
            ino: n,
            size: n * 10,
            mtime: Timestamp::new(n as i64, 5),
            ctime: Timestamp::new(n as i64 + 1, 7),
        }
    }

    fn replica_with_state() -> (tempfile::TempDir, Root) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(".treesync")).unwrap();
        let root = Root::open(tmp.path()).unwrap();
        (tmp, root)
    }

    #[test]
    fn saves_and_loads_every_entry() {
        let (_tmp, root) = replica_with_state();
        let mut c = HashCache::default();
        for n in 0..100 {
            c.insert(key(n), Digest([n as u8; 20]), 1);
        }
        assert!(c.is_dirty());
        c.save(&root).unwrap();
        assert!(!c.is_dirty());
        let mut loaded = HashCache::load(&root, 3);
        assert_eq!(loaded.len(), 100);
        assert_eq!(loaded.get(&key(42), 3), Some(Digest([42; 20])));
        assert_eq!(loaded.get(&key(1000), 3), None);
    }

    #[test]
    fn a_torn_or_foreign_file_is_ignored() {
        let (tmp, root) = replica_with_state();
        let mut c = HashCache::default();
        c.insert(key(1), Digest([1; 20]), 1);
        c.save(&root).unwrap();
        let path = tmp.path().join(".treesync/hashes");
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 7]).unwrap();
        assert!(HashCache::load(&root, 1).is_empty());
        let mut flipped = full.clone();
        flipped[30] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(HashCache::load(&root, 1).is_empty());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(HashCache::load(&root, 1).is_empty());
        std::fs::write(&path, &full).unwrap();
        assert_eq!(HashCache::load(&root, 1).len(), 1);
    }

    #[test]
    fn prune_drops_what_was_not_used() {
        let mut c = HashCache::default();
        c.insert(key(1), Digest([1; 20]), 1);
        c.insert(key(2), Digest([2; 20]), 2);
        c.prune(2);
        assert_eq!(c.len(), 1);
        assert!(c.get(&key(2), 3).is_some());
    }
}
