//! The shared model: what a scan sees of an entry, and listings of trees.

use crate::contract::relpath::RelPath;
use std::fmt;

/// A point in time with nanoseconds, as the filesystem stores it. Packed
/// to 12 bytes: every entry of a listing holds two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C, packed(4))]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn new(secs: i64, nanos: u32) -> Self {
        Timestamp { secs, nanos }
    }
}

/// What kind of entry a path holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// The link's target, verbatim bytes; links are never followed.
    Symlink {
        target: LinkTarget,
    },
    /// A fifo, socket or device: never mirrored.
    Special {
        what: SpecialKind,
    },
}

/// A link's target, verbatim bytes. Boxed twice so that `EntryKind` (and
/// so every listed entry) stays 8 bytes smaller: links are few, entries many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkTarget(Box<Box<[u8]>>);

impl LinkTarget {
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        LinkTarget(Box::new(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl SpecialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialKind::Fifo => "fifo",
            SpecialKind::Socket => "socket",
            SpecialKind::CharDevice => "character device",
            SpecialKind::BlockDevice => "block device",
            SpecialKind::Unknown => "unknown file type",
        }
    }
}

impl EntryKind {
    /// Short name for log reasons and listings.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "folder",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::Special { what } => what.as_str(),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, EntryKind::Dir)
    }

    /// Same kind, ignoring a link's target.
    pub fn same_type(&self, other: &EntryKind) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// A file's identity on its filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Metadata of one entry as `lstat` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Names the inode has (hard links); a file's group of links is found
    /// among the entries with more than one.
    pub nlink: u32,
    pub id: FileId,
}

/// One scanned entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    pub kind: EntryKind,
    pub meta: Meta,
    /// Replica side: the path is excluded by the rules in force for it, so
    /// it is kept unless `--delete-excluded`. Always false on the source
    /// side, where excluded entries are left out of the listing.
    pub excluded: bool,
}

/// The entries of one tree, sorted by path (see `RelPath`'s ordering), the
/// root (empty path) first when the root exists.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// Folders that could not be listed completely: nothing below them may
    /// be deleted on the other side (Safety rule 3).
    pub incomplete: Vec<RelPath>,
}

impl Listing {
    /// Sorts entries and incomplete folders into their canonical order.
    pub fn sort(&mut self) {
        self.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        self.incomplete.sort_unstable();
    }

    pub fn root(&self) -> Option<&Entry> {
        self.entries.first().filter(|e| e.path.is_root())
    }

    /// Binary search by path; the listing must be sorted.
    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// True when `path` lies at or below a folder that was not fully listed.
    pub fn is_incomplete_at(&self, path: &RelPath) -> bool {
        self.incomplete.iter().any(|d| path.starts_with(d))
    }
}

/// A SHA-1 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 20]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a content comparison of a source file and its replica found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Same,
    Differs,
    /// One side could not be read; the Differ treats it as different, so
    /// the copy is attempted and any real failure is logged there.
    Unknown,
}

/// Source files that a content check found equal to their replica, by
/// index in the source listing. A file not marked counts as different:
/// found different, unreadable, or never checked. One bit per source
/// entry, so a `--checksum` tick over every file costs kilobytes, not a
/// map of paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SameContent {
    bits: Vec<u64>,
    /// Files compared although their metadata agree: racy copies of an
    /// earlier tick (`racy.rs`). For these the verdict decides too.
    rechecked: Vec<u64>,
    /// Files and folders whose extended attributes or ACLs the replica
    /// must be given (found different), or whose check must be settled
    /// (found equal though the source's ctime says changed): an
    /// `Op::Attrs` each.
    attrs: Vec<u64>,
}

fn set_bit(bits: &mut Vec<u64>, index: usize) {
    let word = index / 64;
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    bits[word] |= 1 << (index % 64);
}

fn has_bit(bits: &[u64], index: usize) -> bool {
    bits.get(index / 64)
        .is_some_and(|w| w & (1 << (index % 64)) != 0)
}

impl SameContent {
    pub fn mark(&mut self, index: usize) {
        set_bit(&mut self.bits, index);
    }

    pub fn contains(&self, index: usize) -> bool {
        has_bit(&self.bits, index)
    }

    /// The file at `index` was compared by content whatever its metadata.
    pub fn mark_rechecked(&mut self, index: usize) {
        set_bit(&mut self.rechecked, index);
    }

    pub fn rechecked(&self, index: usize) -> bool {
        has_bit(&self.rechecked, index)
    }

    /// The source entry at `index` needs an `Op::Attrs`.
    pub fn mark_attrs(&mut self, index: usize) {
        set_bit(&mut self.attrs, index);
    }

    pub fn attrs(&self, index: usize) -> bool {
        has_bit(&self.attrs, index)
    }

    /// Adds the verdicts of `other`.
    pub fn merge(&mut self, other: &SameContent) {
        for (bits, more) in [
            (&mut self.bits, &other.bits),
            (&mut self.rechecked, &other.rechecked),
            (&mut self.attrs, &other.attrs),
        ] {
            if bits.len() < more.len() {
                bits.resize(more.len(), 0);
            }
            for (w, m) in bits.iter_mut().zip(more) {
                *w |= m;
            }
        }
    }

    /// How many files are marked.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Marks the entries of `listing` at `paths`; paths it lacks are left out.
    pub fn of_paths<'a>(listing: &Listing, paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut same = SameContent::default();
        for p in paths {
            let path = RelPath::from_str_lossy(p);
            if let Ok(i) = listing.entries.binary_search_by(|e| e.path.cmp(&path)) {
                same.mark(i);
            }
        }
        same
    }
}

/// True when metadata alone cannot decide whether two regular files hold
/// the same content: same size with different mtimes, or `--checksum`.
/// (Different sizes always differ; same size and mtime count as equal.)
pub fn needs_content_check(source: &Meta, replica: &Meta, checksum: bool) -> bool {
    source.size == replica.size && (checksum || source.mtime != replica.mtime)
}

/// The tool's own folder at the replica root (state, lock, caches): never
/// mirrored, compared or deleted. A source entry of that name at the source
/// root is skipped.
pub const STATE_DIR: &[u8] = b".treesync";

/// Names of temporaries start with this, then the run's token (16 hex
/// digits), a dash and a sequence number: `.treesync-tmp-<token>-<n>`.
pub const TEMP_PREFIX: &[u8] = b".treesync-tmp-";

/// The token of a temporary's name, if `name` has the temporaries' form.
/// The form alone does not make a file ours: a user may name a file so.
pub fn temp_token(name: &[u8]) -> Option<u64> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let (hex, seq) = (rest.get(..16)?, rest.get(16..)?);
    let seq = seq.strip_prefix(b"-")?;
    if seq.is_empty() || !seq.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !hex
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// This run's token, the same for every temporary the process makes:
/// random, so that no other run and no user's file carries it by chance.
pub fn run_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static TOKEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOKEN.get_or_init(|| {
        // A freshly seeded SipHash key: the standard library's randomness.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// The temporary name `n` of the run whose token is `token`.
pub fn temp_name(token: u64, n: u64) -> Vec<u8> {
    let mut name = TEMP_PREFIX.to_vec();
    name.extend_from_slice(format!("{token:016x}-{n}").as_bytes());
    name
}

/// The tokens of the runs whose temporaries the replica may still hold,
/// as recorded in `REPLICA/.treesync/temps` before each run made its first
/// temporary. Only a name carrying one of them is a stale temporary,
/// removed without a log line; any other name, whatever it looks like, is
/// an ordinary file. The newest `TempTokens::MAX` are kept: an older run's
/// leftovers have long been removed by the runs since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TempTokens {
    tokens: [u64; TempTokens::MAX],
    len: usize,
}

impl TempTokens {
    pub const MAX: usize = 16;

    /// This run's own token only.
    pub fn this_run() -> TempTokens {
        let mut own = TempTokens::default();
        own.insert(run_token());
        own
    }

    pub fn contains(&self, token: u64) -> bool {
        self.tokens[..self.len].contains(&token)
    }

    /// Adds `token` as the newest; the oldest goes when the set is full.
    pub fn insert(&mut self, token: u64) {
        if self.contains(token) {
            return;
        }
        if self.len == Self::MAX {
            self.tokens.copy_within(1.., 0);
            self.len -= 1;
        }
        self.tokens[self.len] = token;
        self.len += 1;
    }

    pub fn union(mut self, other: &TempTokens) -> TempTokens {
        for t in other.iter() {
            self.insert(t);
        }
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.tokens[..self.len].iter().copied()
    }

    /// True when `name` is a temporary of one of these runs.
    pub fn owns(&self, name: &[u8]) -> bool {
        temp_token(name).is_some_and(|t| self.contains(t))
    }

    /// The state file's form: one token a line, oldest first. Lines that
    /// are not tokens are skipped.
    pub fn parse(bytes: &[u8]) -> TempTokens {
        let mut set = TempTokens::default();
        for line in bytes.split(|&b| b == b'\n') {
            let token = std::str::from_utf8(line)
                .ok()
                .filter(|l| l.len() == 16)
                .and_then(|l| u64::from_str_radix(l, 16).ok());
            if let Some(t) = token {
                set.insert(t);
            }
        }
        set
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.iter()
            .map(|t| format!("{t:016x}\n"))
            .collect::<String>()
            .into_bytes()
    }
}

/// The per-folder ignore file.
pub const IGNORE_FILE: &[u8] = b".syncignore";

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing holds two entries per file: their size is the tool's
    /// memory per file.
    #[test]
    fn only_names_of_the_temporaries_form_carry_a_token() {
        let name = temp_name(0xabc, 7);
        assert_eq!(name, b".treesync-tmp-0000000000000abc-7");
        assert_eq!(temp_token(&name), Some(0xabc));
        for other in [
            &b".treesync-tmp-1-1"[..],
            b".treesync-tmp-0000000000000abc-",
            b".treesync-tmp-0000000000000abc-7x",
            b".treesync-tmp-0000000000000ABC-7",
            b"treesync-tmp-0000000000000abc-7",
        ] {
            assert_eq!(
                temp_token(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn temp_tokens_keep_the_newest_and_round_trip() {
        let mut set = TempTokens::default();
        for t in 0..20 {
            set.insert(t);
        }
        assert!(!set.contains(3) && set.contains(4) && set.contains(19));
        assert_eq!(TempTokens::parse(&set.to_bytes()), set);
        assert!(set.owns(&temp_name(19, 0)) && !set.owns(&temp_name(3, 0)));
        let junk = TempTokens::parse(b"zz\n00000000000000ff\n\x00\n");
        assert_eq!(junk.iter().collect::<Vec<_>>(), [255]);
    }

    #[test]
    fn an_entry_takes_104_bytes() {
        assert_eq!(std::mem::size_of::<Timestamp>(), 12);
        assert_eq!(std::mem::size_of::<Meta>(), 64);
        assert_eq!(std::mem::size_of::<EntryKind>(), 16);
        assert_eq!(std::mem::size_of::<Entry>(), 104);
    }
}
