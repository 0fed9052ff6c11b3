//! The shared model: what a scan sees of an entry, and listings of trees.

use crate::relpath::RelPath;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
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

    /// Adds the verdicts of `other`.
    pub fn merge(&mut self, other: &SameContent) {
        for (bits, more) in [
            (&mut self.bits, &other.bits),
            (&mut self.rechecked, &other.rechecked),
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

/// Names of temporaries start with this; one left by an interrupted run is
/// removed by the next (unless the source has a file of that very name).
pub const TEMP_PREFIX: &[u8] = b".treesync-tmp-";

pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// The per-folder ignore file.
pub const IGNORE_FILE: &[u8] = b".syncignore";

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing holds two entries per file: their size is the tool's
    /// memory per file.
    #[test]
    fn an_entry_takes_104_bytes() {
        assert_eq!(std::mem::size_of::<Timestamp>(), 12);
        assert_eq!(std::mem::size_of::<Meta>(), 64);
        assert_eq!(std::mem::size_of::<EntryKind>(), 16);
        assert_eq!(std::mem::size_of::<Entry>(), 104);
    }
}
