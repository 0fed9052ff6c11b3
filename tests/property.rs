//! The mirror property, end to end through the binary: after any sequence
//! of changes to a small source tree (and now and then to the replica,
//! behind the mirror's back), one `treesync --once` makes the
//! replica equal to the source (kinds, sizes, contents, nanosecond mtimes,
//! permission bits, owners, link targets, the root included), and a second
//! run right after it finds nothing to do and changes nothing.
//!
//! Cases default to 32 (a few seconds); `PROPTEST_CASES=N` runs more.
//! Every write gets a fresh mtime from a clock that only moves forward, so
//! two different contents never share a size and an mtime: the quick
//! check (size and mtime) then decides correctly, as the design intends.

use filetime::FileTime;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The paths changes are made at: 13, over 3 levels, so that changes
/// collide (a rename over a folder, a file where a folder was). Among them
/// a hidden name (mirrored like any other), one with a space and non-ASCII
/// letters, and one that looks like a temporary of ours, which the mirror
/// must treat as an ordinary source entry.
const PATHS: [&str; 13] = [
    "a",
    "b",
    "c",
    "a/x",
    "a/y",
    "b/x",
    "b/.z",
    "c/d",
    "a/x/p",
    "a/x/q",
    "b/x/p",
    "c/d/é e",
    "a/.treesync-tmp-1-1",
];

/// Link targets: relative, some resolving inside the tree, some dangling,
/// some pointing out of it (links are copied, never followed).
const TARGETS: [&str; 7] = [
    "a",
    "x/p",
    "../b",
    "nowhere",
    "../../c/d",
    ".",
    "../../../out",
];

const MODES: [u32; 11] = [
    0o644, 0o600, 0o755, 0o700, 0o444, 0o400, 0o000, 0o555, 0o4755, 0o2750, 0o1777,
];

const OWNERS: [(u32, u32); 3] = [(0, 0), (1000, 1000), (4321, 0)];

/// One change to a tree. A change that does not fit the tree as
/// it is (modify a file that is not there) does nothing; one that needs
/// parent folders makes them, replacing whatever stands in their way.
#[derive(Clone, Debug)]
enum Change {
    /// Create or overwrite a file (a type change when something else is
    /// there).
    Write {
        path: &'static str,
        content: Vec<u8>,
        nanos: u32,
    },
    /// New content for an existing file, of the same size or not.
    Modify {
        path: &'static str,
        same_size: bool,
        content: Vec<u8>,
        nanos: u32,
    },
    /// New mtime, same content (the root included).
    Touch {
        path: &'static str,
        nanos: u32,
    },
    /// New permission bits of a file or folder (the root included).
    Chmod {
        path: &'static str,
        mode: u32,
    },
    /// New owner and group of any entry, links included (run as root, the
    /// mirror keeps owners).
    Chown {
        path: &'static str,
        owner: (u32, u32),
    },
    Delete {
        path: &'static str,
    },
    Rename {
        from: &'static str,
        to: &'static str,
    },
    /// A relative symlink (often dangling) in place of whatever is there.
    Symlink {
        path: &'static str,
        target: &'static str,
        nanos: Option<u32>,
    },
    /// A folder in place of whatever is there (kept if already a folder).
    Mkdir {
        path: &'static str,
    },
    /// Remove an empty folder.
    Rmdir {
        path: &'static str,
    },
}

fn change() -> impl Strategy<Value = Change> {
    let path = || select(&PATHS[..]);
    // The root takes times and modes like any folder.
    let path_or_root = || prop_oneof![1 => Just(""), 6 => select(&PATHS[..])];
    let content = || prop::collection::vec(any::<u8>(), 0..48);
    let nanos = || 0u32..1_000_000_000;
    prop_oneof![
        4 => (path(), content(), nanos())
            .prop_map(|(path, content, nanos)| Change::Write { path, content, nanos }),
        4 => (path(), any::<bool>(), content(), nanos()).prop_map(
            |(path, same_size, content, nanos)| Change::Modify { path, same_size, content, nanos }
        ),
        2 => (path_or_root(), nanos()).prop_map(|(path, nanos)| Change::Touch { path, nanos }),
        2 => (path_or_root(), select(&MODES[..]))
            .prop_map(|(path, mode)| Change::Chmod { path, mode }),
        1 => (path_or_root(), select(&OWNERS[..]))
            .prop_map(|(path, owner)| Change::Chown { path, owner }),
        2 => path().prop_map(|path| Change::Delete { path }),
        2 => (path(), path()).prop_map(|(from, to)| Change::Rename { from, to }),
        2 => (path(), select(&TARGETS[..]), prop::option::of(nanos()))
            .prop_map(|(path, target, nanos)| Change::Symlink { path, target, nanos }),
        2 => path().prop_map(|path| Change::Mkdir { path }),
        1 => path().prop_map(|path| Change::Rmdir { path }),
    ]
}

/// Which tree a change is made in: mostly the source; sometimes the
/// replica, which the next run must put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Source,
    Replica,
}

/// Batches of changes; the mirror runs after each batch.
fn batches() -> impl Strategy<Value = Vec<Vec<(Side, Change)>>> {
    let side = prop_oneof![4 => Just(Side::Source), 1 => Just(Side::Replica)];
    let batch = prop::collection::vec((side, change()), 1..10);
    prop::collection::vec(batch, 1..=4)
}

/// Makes changes to either tree, with the clock their mtimes come from.
struct Changer {
    clock: i64,
}

impl Changer {
    /// A time later than any given before.
    fn next_time(&mut self, nanos: u32) -> FileTime {
        self.clock += 1;
        FileTime::from_unix_time(1_600_000_000 + self.clock, nanos)
    }

    fn apply(&mut self, root: &Path, change: &Change) -> io::Result<()> {
        let at = |rel: &str| {
            if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(rel)
            }
        };
        match change {
            Change::Write {
                path,
                content,
                nanos,
            } => {
                let p = make_parents(root, path)?;
                if !is_file(&p) {
                    clear(&p)?;
                }
                fs::write(&p, content)?;
                let t = self.next_time(*nanos);
                filetime::set_file_mtime(&p, t)?;
            }
            Change::Modify {
                path,
                same_size,
                content,
                nanos,
            } => {
                let p = at(path);
                if !is_file(&p) {
                    return Ok(());
                }
                let old = fs::read(&p)?;
                let new = if *same_size {
                    // Every byte different, the size kept.
                    old.iter().map(|b| !b).collect()
                } else if content.len() == old.len() {
                    [content.as_slice(), b"+"].concat()
                } else {
                    content.clone()
                };
                fs::write(&p, new)?;
                let t = self.next_time(*nanos);
                filetime::set_file_mtime(&p, t)?;
            }
            Change::Touch { path, nanos } => {
                let p = at(path);
                let Some(m) = lstat(&p) else { return Ok(()) };
                let t = self.next_time(*nanos);
                if m.file_type().is_symlink() {
                    filetime::set_symlink_file_times(&p, t, t)?;
                } else {
                    filetime::set_file_mtime(&p, t)?;
                }
            }
            Change::Chmod { path, mode } => {
                let p = at(path);
                if lstat(&p).is_some_and(|m| !m.file_type().is_symlink()) {
                    fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
                }
            }
            Change::Chown { path, owner } => {
                let p = at(path);
                // Only root may give entries away; others keep their own.
                if lstat(&p).is_some() && rustix::process::geteuid().is_root() {
                    std::os::unix::fs::lchown(&p, Some(owner.0), Some(owner.1))?;
                }
            }
            Change::Delete { path } => clear(&at(path))?,
            Change::Rename { from, to } => {
                let related = |a: &str, b: &str| a == b || b.starts_with(&format!("{a}/"));
                if lstat(&at(from)).is_none() || related(from, to) || related(to, from) {
                    return Ok(());
                }
                let dest = make_parents(root, to)?;
                clear(&dest)?;
                fs::rename(at(from), dest)?;
            }
            Change::Symlink {
                path,
                target,
                nanos,
            } => {
                let p = make_parents(root, path)?;
                clear(&p)?;
                symlink(target, &p)?;
                if let Some(n) = nanos {
                    let t = self.next_time(*n);
                    filetime::set_symlink_file_times(&p, t, t)?;
                }
            }
            Change::Mkdir { path } => {
                let p = make_parents(root, path)?;
                if !lstat(&p).is_some_and(|m| m.is_dir()) {
                    clear(&p)?;
                    fs::create_dir(&p)?;
                }
            }
            Change::Rmdir { path } => {
                let p = at(path);
                if lstat(&p).is_some_and(|m| m.is_dir()) && fs::read_dir(&p)?.next().is_none() {
                    fs::remove_dir(&p)?;
                }
            }
        }
        Ok(())
    }
}

/// Makes the folders above `rel`, replacing files and links in the way;
/// returns the full path of `rel`.
fn make_parents(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        p.push(part);
        match lstat(&p) {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                fs::remove_file(&p)?;
                fs::create_dir(&p)?;
            }
            None => fs::create_dir(&p)?,
        }
    }
    Ok(root.join(rel))
}

fn lstat(p: &Path) -> Option<fs::Metadata> {
    fs::symlink_metadata(p).ok()
}

fn is_file(p: &Path) -> bool {
    lstat(p).is_some_and(|m| m.is_file())
}

/// Removes whatever is at `p`, if anything.
fn clear(p: &Path) -> io::Result<()> {
    match lstat(p) {
        Some(m) if m.is_dir() => fs::remove_dir_all(p),
        Some(_) => fs::remove_file(p),
        None => Ok(()),
    }
}

/// What the mirror must reproduce of one entry.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File {
        content: Vec<u8>,
        mtime: (i64, i64),
        perm: u32,
        owner: (u32, u32),
    },
    Dir {
        mtime: (i64, i64),
        perm: u32,
        owner: (u32, u32),
    },
    Link {
        target: PathBuf,
        mtime: (i64, i64),
        owner: (u32, u32),
    },
    Other {
        mode: u32,
    },
}

/// Every entry of a tree, the root as `""`, without the replica's own
/// `.treesync/`. With `identity`, each path also carries its inode and
/// ctime, which any write, even of equal metadata, would change.
type Tree = BTreeMap<String, (Node, Option<(u64, i64, i64)>)>;

fn tree(root: &Path, identity: bool) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let m = fs::symlink_metadata(&p).unwrap();
        let mtime = (m.mtime(), m.mtime_nsec());
        let owner = (m.uid(), m.gid());
        let perm = m.mode() & 0o7777;
        let ft = m.file_type();
        let node = if ft.is_file() {
            Node::File {
                content: fs::read(&p).unwrap(),
                mtime,
                perm,
                owner,
            }
        } else if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                if !(rel.is_empty() && name == ".treesync") {
                    let child = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    todo.push(child);
                }
            }
            Node::Dir { mtime, perm, owner }
        } else if ft.is_symlink() {
            Node::Link {
                target: fs::read_link(&p).unwrap(),
                mtime,
                owner,
            }
        } else {
            Node::Other { mode: m.mode() }
        };
        let id = identity.then(|| (m.ino(), m.ctime(), m.ctime_nsec()));
        out.insert(rel, (node, id));
    }
    out
}

/// The first difference between two trees, for a readable failure.
fn first_difference(expected: &Tree, actual: &Tree) -> Option<String> {
    let keys: std::collections::BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    keys.into_iter()
        .find_map(|k| match (expected.get(k), actual.get(k)) {
            (Some(a), Some(b)) if a == b => None,
            (a, b) => Some(format!("at {k:?}:\n  expected {a:?}\n  actual   {b:?}")),
        })
}

/// One `treesync --once` run; returns the verbs it logged.
fn mirror(src: &Path, dst: &Path, log: &Path) -> Result<Vec<String>, TestCaseError> {
    let out = Command::new(env!("CARGO_BIN_EXE_treesync"))
        .args([
            "--once",
            "--log-format",
            "json",
            "--max-delete",
            "100%",
            "-q",
        ])
        .arg("--log-file")
        .arg(log)
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    let text = fs::read_to_string(log).unwrap_or_default();
    prop_assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        text
    );
    let mut verbs = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        verbs.push(v["msg"].as_str().unwrap_or_default().to_string());
    }
    Ok(verbs)
}

fn check(batches: &[Vec<(Side, Change)>]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let mut changer = Changer { clock: 0 };
    for (i, batch) in batches.iter().enumerate() {
        for (side, change) in batch {
            match side {
                Side::Source => changer.apply(&src, change).unwrap(),
                // The replica exists from the first run on.
                Side::Replica if dst.exists() => changer.apply(&dst, change).unwrap(),
                Side::Replica => {}
            }
        }
        let log = tmp.path().join(format!("run-{i}.json"));
        let verbs = mirror(&src, &dst, &log)?;
        let (expected, actual) = (tree(&src, false), tree(&dst, false));
        if let Some(diff) = first_difference(&expected, &actual) {
            return Err(TestCaseError::fail(format!(
                "after batch {i}, the replica differs {diff}\nlog: {verbs:?}"
            )));
        }

        // A second run right away has nothing to do.
        let before = tree(&dst, true);
        let log = tmp.path().join(format!("run-{i}-again.json"));
        let verbs = mirror(&src, &dst, &log)?;
        prop_assert!(
            verbs.iter().all(|v| v == "tick"),
            "after batch {}, the second run logged {:?}",
            i,
            verbs
        );
        let after = tree(&dst, true);
        if let Some(diff) = first_difference(&before, &after) {
            return Err(TestCaseError::fail(format!(
                "after batch {i}, the second run changed the replica {diff}"
            )));
        }
    }
    Ok(())
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    Config {
        cases,
        // Failing cases are reported, not saved beside the tests.
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_replica_equals_the_source_after_every_batch(batches in batches()) {
        check(&batches)?;
    }
}
