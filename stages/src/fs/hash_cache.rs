//! The digest cache: SHA-1 of file versions already read, kept between
//! ticks and across restarts in `REPLICA/.treesync/hashes`.
//!
//! A version is its identity and metadata: device, inode, size, mtime and
//! ctime to the nanosecond. Any write through the filesystem moves ctime,
//! so a digest is only ever reused for the very bytes it was computed from.
//! The file is replaced atomically (temporary, then rename) and ends with a
//! SHA-1 of everything before it: a torn, truncated or foreign file fails
//! the check and is ignored (the cache starts empty), never trusted.

use crate::contract::model::{Digest, Meta};
use crate::fs::root::Root;
use crate::fs::state::{self, StateError};
use rustix::fd::AsFd;
use sha1::{Digest as _, Sha1};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"TSHASH01";
const FILE_NAME: &str = "hashes";
const RECORD: usize = 8 * 3 + 12 * 2 + 20 + 8;

/// What identifies one version of one file. Seconds and nanoseconds are
/// kept apart so the key packs into 48 bytes (no padding): the cache holds
/// two keys per file on a `--checksum` tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_secs: i64,
    ctime_secs: i64,
    mtime_nanos: u32,
    ctime_nanos: u32,
}

impl From<&Meta> for CacheKey {
    fn from(m: &Meta) -> Self {
        CacheKey {
            dev: m.id.dev,
            ino: m.id.ino,
            size: m.size,
            mtime_secs: m.mtime.secs,
            ctime_secs: m.ctime.secs,
            mtime_nanos: m.mtime.nanos,
            ctime_nanos: m.ctime.nanos,
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
/// are gone can be dropped. Ticks are stored in 32 bits (136 years of
/// one-second ticks) to keep an entry at 72 bytes.
#[derive(Default, Debug)]
pub struct HashCache {
    map: HashMap<CacheKey, (Digest, u32), BuildHasherDefault<KeyHasher>>,
    /// Changed since it was loaded or saved.
    dirty: bool,
}

impl HashCache {
    pub fn get(&mut self, key: &CacheKey, tick: u64) -> Option<Digest> {
        let tick = stored_tick(tick);
        self.map.get_mut(key).map(|(d, used)| {
            *used = tick;
            *d
        })
    }

    pub fn insert(&mut self, key: CacheKey, digest: Digest, tick: u64) {
        self.map.insert(key, (digest, stored_tick(tick)));
        self.dirty = true;
    }

    /// Forgets digests not used since tick `oldest`.
    pub fn prune(&mut self, oldest: u64) {
        let oldest = stored_tick(oldest);
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
    /// missing or damaged file gives an empty cache; one that is not a
    /// regular file (a fifo, a link put there) also gives an error to
    /// report, and is never opened for reading.
    pub fn load(replica: &Root, tick: u64) -> (HashCache, Option<StateError>) {
        let Ok(dir) = state::open_dir(replica) else {
            return (HashCache::default(), None);
        };
        match state::open_read(dir.as_fd(), FILE_NAME) {
            Ok(Some((file, size))) => {
                let cache = decode(file, size, tick).ok().flatten();
                (cache.unwrap_or_default(), None)
            }
            Ok(None) => (HashCache::default(), None),
            Err(e) => (HashCache::default(), Some(e)),
        }
    }

    /// Replaces the saved cache atomically.
    pub fn save(&mut self, replica: &Root) -> io::Result<()> {
        let dir = state::open_dir(replica)?;
        // Only saves work: a cache lost to a power cut is rebuilt, so it is not
        // made durable (it is as large as the tree's list of files).
        state::write_atomic(dir.as_fd(), FILE_NAME, false, |out| self.encode(out))?;
        self.dirty = false;
        Ok(())
    }

    /// Writes the records as they are encoded, never the whole file in
    /// memory: it is as large as the cache.
    fn encode(&self, out: &mut impl Write) -> io::Result<()> {
        let mut out = Summed::new(out);
        out.write_all(MAGIC)?;
        out.write_all(&(self.map.len() as u64).to_le_bytes())?;
        let mut record = [0u8; RECORD];
        for (k, (d, _)) in &self.map {
            encode_record(k, d, &mut record);
            out.write_all(&record)?;
        }
        let (inner, sum) = out.finish();
        inner.write_all(&sum)
    }
}

fn stored_tick(tick: u64) -> u32 {
    u32::try_from(tick).unwrap_or(u32::MAX)
}

/// A record: dev, ino, size, mtime (secs, nanos), ctime (secs, nanos),
/// digest, 8 reserved bytes; little-endian.
fn encode_record(k: &CacheKey, d: &Digest, out: &mut [u8; RECORD]) {
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&k.dev.to_le_bytes());
    put(&k.ino.to_le_bytes());
    put(&k.size.to_le_bytes());
    put(&k.mtime_secs.to_le_bytes());
    put(&k.mtime_nanos.to_le_bytes());
    put(&k.ctime_secs.to_le_bytes());
    put(&k.ctime_nanos.to_le_bytes());
    put(&d.0);
    put(&[0; 8]);
}

fn decode_record(r: &[u8; RECORD]) -> (CacheKey, Digest) {
    let u = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default());
    let n = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().unwrap_or_default());
    let key = CacheKey {
        dev: u(0),
        ino: u(8),
        size: u(16),
        mtime_secs: u(24) as i64,
        mtime_nanos: n(32),
        ctime_secs: u(36) as i64,
        ctime_nanos: n(44),
    };
    let mut digest = [0u8; 20];
    digest.copy_from_slice(&r[48..68]);
    (key, Digest(digest))
}

/// A writer or reader that keeps the SHA-1 of the bytes through it.
struct Summed<T> {
    inner: T,
    sum: Sha1,
}

impl<T> Summed<T> {
    fn new(inner: T) -> Self {
        Summed {
            inner,
            sum: Sha1::new(),
        }
    }

    fn finish(self) -> (T, [u8; 20]) {
        (self.inner, self.sum.finalize().into())
    }
}

impl<W: Write> Summed<W> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sum.update(bytes);
        self.inner.write_all(bytes)
    }
}

impl<R: Read> Summed<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.sum.update(&*buf);
        Ok(())
    }
}

/// Reads a saved cache of `size` bytes record by record, checking the
/// trailing SHA-1 as it goes; `None` when anything is off. The file's
/// size must match the count in its header before anything is allocated
/// for it, so a foreign file cannot make us reserve memory it claims.
fn decode(file: std::fs::File, size: u64, tick: u64) -> io::Result<Option<HashCache>> {
    let mut input = Summed::new(io::BufReader::with_capacity(1 << 16, file));
    let mut header = [0u8; 16];
    input.read_exact(&mut header)?;
    let count = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let expected = count
        .checked_mul(RECORD as u64)
        .and_then(|n| n.checked_add(16 + 20));
    if &header[..8] != MAGIC || expected != Some(size) {
        return Ok(None);
    }
    let count = usize::try_from(count).map_err(io::Error::other)?;
    let mut map = HashMap::with_capacity_and_hasher(count, Default::default());
    let mut record = [0u8; RECORD];
    for _ in 0..count {
        input.read_exact(&mut record)?;
        let (key, digest) = decode_record(&record);
        map.insert(key, (digest, stored_tick(tick)));
    }
    let (mut rest, sum) = input.finish();
    let mut trailer = [0u8; 20];
    rest.read_exact(&mut trailer)?;
    if trailer != sum || rest.read(&mut [0u8; 1])? != 0 {
        return Ok(None);
    }
    Ok(Some(HashCache { map, dirty: false }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::model::Timestamp;

    fn key(n: u64) -> CacheKey {
        let mut m = Meta {
            size: n * 10,
            mtime: Timestamp::new(n as i64, 5),
            ctime: Timestamp::new(n as i64 + 1, 7),
            ..Meta::default()
        };
        m.id.dev = 1;
        m.id.ino = n;
        CacheKey::from(&m)
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
        let mut loaded = HashCache::load(&root, 3).0;
        assert_eq!(loaded.len(), 100);
        assert_eq!(loaded.get(&key(42), 3), Some(Digest([42; 20])));
        assert_eq!(loaded.get(&key(1000), 3), None);
    }

    #[test]
    fn a_fifo_in_place_of_the_cache_is_reported_and_never_read() {
        let (tmp, root) = replica_with_state();
        let path = tmp.path().join(".treesync/hashes");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path.as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Opening a fifo for reading would block until a writer came.
        let (cache, unusable) = HashCache::load(&root, 1);
        assert!(cache.is_empty());
        assert!(unusable.unwrap().to_string().contains("fifo"));
        let mut c = HashCache::default();
        c.insert(key(1), Digest([1; 20]), 1);
        c.save(&root).unwrap();
        assert_eq!(HashCache::load(&root, 1).0.len(), 1);
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
        assert!(HashCache::load(&root, 1).0.is_empty());
        let mut flipped = full.clone();
        flipped[30] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(HashCache::load(&root, 1).0.is_empty());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(HashCache::load(&root, 1).0.is_empty());
        // A header claiming more records than the file holds is refused
        // before anything is reserved for them.
        let mut huge = full.clone();
        huge[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(HashCache::load(&root, 1).0.is_empty());
        let mut longer = full.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(HashCache::load(&root, 1).0.is_empty());
        std::fs::write(&path, &full).unwrap();
        assert_eq!(HashCache::load(&root, 1).0.len(), 1);
    }

    #[test]
    fn an_entry_takes_72_bytes() {
        assert_eq!(std::mem::size_of::<(CacheKey, (Digest, u32))>(), 72);
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
