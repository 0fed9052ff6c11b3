//! Paths relative to the sync roots.
//!
//! Every entry of a listing, every operation of a plan and every log line
//! names its file by a `RelPath`: raw bytes (names need not be UTF-8), `/`
//! between components, never absolute, never `.` or `..`. The empty path is
//! the root itself. Ordering is component-wise, so a sorted listing is a
//! depth-first pre-order walk: a folder comes right before its contents and
//! its contents are contiguous.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath(Box<[u8]>);

impl RelPath {
    /// The root of the tree.
    pub fn root() -> Self {
        RelPath(Box::default())
    }

    /// Builds a path from `/`-separated bytes, refusing anything that could
    /// leave the root (absolute, `.`, `..`, empty components, NUL).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() {
            return Some(Self::root());
        }
        let ok = bytes.split(|&b| b == b'/').all(is_valid_name) && !bytes.contains(&0);
        ok.then(|| RelPath(bytes.into()))
    }

    /// Convenience for tests and literals.
    pub fn from_str_lossy(s: &str) -> Self {
        Self::new(s.as_bytes()).unwrap_or_else(|| panic!("invalid relative path {s:?}"))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The child `name` of this folder; `name` must be one valid component.
    pub fn join(&self, name: &[u8]) -> Self {
        debug_assert!(is_valid_name(name), "bad component {name:?}");
        if self.0.is_empty() {
            return RelPath(name.into());
        }
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(name);
        RelPath(v.into_boxed_slice())
    }

    /// The containing folder, `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => RelPath(self.0[..i].into()),
            None => RelPath::root(),
        })
    }

    /// The last component (empty for the root).
    pub fn name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        let empty = self.0.is_empty();
        self.0.split(|&b| b == b'/').filter(move |_| !empty)
    }

    /// Number of components (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|&&b| b == b'/').count() + 1
        }
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || (self.0.starts_with(&other.0)
                && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// The path below `root`, for messages and tests; file operations go
    /// through folder handles instead (see `root.rs`).
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() {
            root.to_path_buf()
        } else {
            root.join(self.as_os_str())
        }
    }

    /// The log form: valid UTF-8 as it is, every invalid byte as `\xNN`;
    /// the root itself is `.`.
    pub fn escaped(&self) -> String {
        if self.0.is_empty() {
            return ".".to_string();
        }
        escape_bytes(&self.0)
    }
}

fn is_valid_name(c: &[u8]) -> bool {
    !c.is_empty() && c != b"." && c != b".." && !c.contains(&b'/') && !c.contains(&0)
}

/// Valid UTF-8 runs are kept, each invalid byte becomes `\xNN`, so names
/// that differ only in invalid bytes stay distinct in the log.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

impl Ord for RelPath {
    /// Component-wise order, computed on the bytes: names hold neither `/`
    /// nor NUL, so ranking `/` below every other byte at the first
    /// difference gives the same order as comparing components, without
    /// splitting (this comparison is on the hot path of every tick).
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&self.0, &other.0);
        let common = a.len().min(b.len());
        // Eight bytes at a time as words (a slice comparison of eight
        // bytes is a call to `memcmp`), then byte by byte.
        let mut i = 0;
        while let (Some(x), Some(y)) = (
            a[i..common].first_chunk::<8>(),
            b[i..common].first_chunk::<8>(),
        ) {
            let diff = u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y);
            if diff != 0 {
                i += (diff.trailing_zeros() / 8) as usize;
                return rank(a[i]).cmp(&rank(b[i]));
            }
            i += 8;
        }
        match (i..common).find(|&k| a[k] != b[k]) {
            None => a.len().cmp(&b.len()),
            Some(k) => rank(a[k]).cmp(&rank(b[k])),
        }
    }
}

/// `/` sorts before any byte of a name.
fn rank(byte: u8) -> u16 {
    if byte == b'/' {
        0
    } else {
        u16::from(byte) + 1
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.escaped())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.escaped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_leave_the_root() {
        for bad in [
            &b"/a"[..],
            b"a/../b",
            b"..",
            b"a//b",
            b"a/",
            b"./a",
            b"a\0b",
        ] {
            assert!(RelPath::new(bad).is_none(), "{bad:?}");
        }
        assert!(RelPath::new(b"a/b c/\xff").is_some());
    }

    #[test]
    fn orders_folders_before_their_contents() {
        let mut v: Vec<RelPath> = ["a.b", "a/b", "a", "a/b/c", "a0", ""]
            .iter()
            .map(|s| RelPath::from_str_lossy(s))
            .collect();
        v.sort();
        let s: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        assert_eq!(s, [".", "a", "a/b", "a/b/c", "a.b", "a0"]);
    }

    #[test]
    fn byte_order_matches_component_order() {
        let names = [
            "",
            "a",
            "a/b",
            "a.b",
            "a-",
            "a0",
            "ab",
            "a/b/c",
            "a/bc",
            "a/b.c",
            "b",
            "\u{e9}",
            "a/\u{e9}/x",
            "aaaaaaaaaaaaaaaa/b",
            "aaaaaaaaaaaaaaaa.b",
            "aaaaaaaaaaaaaaaab",
        ];
        let paths: Vec<RelPath> = names.iter().map(|s| RelPath::from_str_lossy(s)).collect();
        for a in &paths {
            for b in &paths {
                assert_eq!(a.cmp(b), a.components().cmp(b.components()), "{a} vs {b}");
            }
        }
    }

    proptest::proptest! {
        /// Paths of names from a few bytes (`.`, `-` and `0` sort below
        /// `/` as bytes, `\xff` above everything), long enough to differ
        /// inside and across the eight-byte words compared at once.
        #[test]
        fn byte_order_matches_component_order_for_any_paths(
            a in proptest::collection::vec(proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'b', b'.', b'-', b'0', 0xff]), 1..12), 0..4),
            b in proptest::collection::vec(proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'b', b'.', b'-', b'0', 0xff]), 1..12), 0..4),
        ) {
            let path = |names: &[Vec<u8>]| RelPath::new(&names.join(&b'/'));
            // `.` and `..` are no names.
            let (Some(pa), Some(pb)) = (path(&a), path(&b)) else {
                return Ok(());
            };
            proptest::prop_assert_eq!(pa.cmp(&pb), a.cmp(&b), "{} vs {}", pa, pb);
        }
    }

    #[test]
    fn parent_name_join_depth() {
        let p = RelPath::from_str_lossy("x/y/z");
        assert_eq!(p.parent().unwrap().to_string(), "x/y");
        assert_eq!(p.name(), b"z");
        assert_eq!(p.depth(), 3);
        assert_eq!(RelPath::root().join(b"x").join(b"y").join(b"z"), p);
        assert!(p.starts_with(&RelPath::from_str_lossy("x/y")));
        assert!(!RelPath::from_str_lossy("x/yz").starts_with(&RelPath::from_str_lossy("x/y")));
        assert_eq!(RelPath::from_str_lossy("x").parent(), Some(RelPath::root()));
        assert_eq!(RelPath::root().parent(), None);
    }

    #[test]
    fn escapes_invalid_bytes_distinctly() {
        let a = RelPath::new(b"caf\xe9").unwrap();
        let b = RelPath::new(b"caf\xe8").unwrap();
        assert_eq!(a.escaped(), "caf\\xE9");
        assert_ne!(a.escaped(), b.escaped());
        assert_eq!(RelPath::from_str_lossy("café").escaped(), "café");
    }
}
