//! The trust property, end to end through a running interval mirror: while
//! it runs, random interleavings of source changes, replica tampering
//! (files written or removed behind its back, replica folders swapped for
//! links to a folder outside) and root swaps (the replica root replaced by
//! another folder, the source root by a link to another folder) never
//! write or delete anything outside the two roots, never copy what lies
//! outside the source, and never leave a replica file holding anything but
//! one of the contents written at its path. Once the roots are back, the
//! replica becomes equal to the source.
//!
//! Cases default to 6 (a few seconds each: ticks are awaited); `PROPTEST_CASES=N` runs more.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FILES: [&str; 5] = ["f1", "f2", "d/f3", "d/e/f4", "d2/f5"];
const FOLDERS: [&str; 3] = ["d", "d/e", "d2"];

#[derive(Clone, Debug)]
enum Step {
    SourceWrite {
        file: usize,
        content: u8,
        len: usize,
    },
    SourceRemove {
        file: usize,
    },
    ReplicaWrite {
        file: usize,
        content: u8,
    },
    ReplicaRemove {
        file: usize,
    },
    /// A replica folder replaced by a link to the folder outside.
    ReplicaFolderToLink {
        folder: usize,
    },
    /// The replica root's path comes to name another folder (or goes back).
    SwapReplicaRoot,
    /// The source root's path comes to name a link to the folder outside
    /// (or goes back).
    SwapSourceRoot,
    Pause {
        ms: u64,
    },
    /// Let the mirror run a tick over the state as it is now.
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..FILES.len(), any::<u8>(), 0usize..3000)
            .prop_map(|(file, content, len)| Step::SourceWrite { file, content, len }),
        1 => (0..FILES.len()).prop_map(|file| Step::SourceRemove { file }),
        1 => (0..FILES.len(), any::<u8>())
            .prop_map(|(file, content)| Step::ReplicaWrite { file, content }),
        1 => (0..FILES.len()).prop_map(|file| Step::ReplicaRemove { file }),
        1 => (0..FOLDERS.len()).prop_map(|folder| Step::ReplicaFolderToLink { folder }),
        1 => Just(Step::SwapReplicaRoot),
        1 => Just(Step::SwapSourceRoot),
        2 => (0u64..400).prop_map(|ms| Step::Pause { ms }),
        2 => Just(Step::Tick),
    ]
}

/// Everything below `root` (links not followed): path, kind and content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    walk(root)
        .into_iter()
        .map(|(p, md)| {
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let what = if md.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&p).unwrap())
            } else if md.is_dir() {
                "folder".to_string()
            } else {
                format!(
                    "file {:?} mtime {:?}",
                    fs::read(&p).unwrap(),
                    md.modified().ok()
                )
            };
            (rel, what)
        })
        .collect()
}

fn content(byte: u8, len: usize) -> Vec<u8> {
    // Never empty: an empty replica file then always means a lost one.
    vec![byte; len.max(1)]
}

struct World {
    sb: Sandbox,
    other: PathBuf,
    outside: PathBuf,
    replica_away: PathBuf,
    source_away: PathBuf,
    replica_swapped: bool,
    source_swapped: bool,
    /// Every content ever written at a path, in the source or into the
    /// replica: what a replica file may hold.
    written: BTreeMap<&'static str, BTreeSet<Vec<u8>>>,
}

impl World {
    fn new() -> World {
        let sb = Sandbox::new();
        let other = sb.path("other");
        let outside = sb.path("outside");
        file(&other, "their-own.txt", "not a replica of anything\n");
        file(&other, "sub/more.txt", "theirs\n");
        file(&outside, "outside-secret", "must never be copied\n");
        file(&outside, "f1", "outside f1\n");
        World {
            replica_away: sb.path("dst.away"),
            source_away: sb.path("src.away"),
            other,
            outside,
            sb,
            replica_swapped: false,
            source_swapped: false,
            written: BTreeMap::new(),
        }
    }

    /// Where the real source is now.
    fn source(&self) -> PathBuf {
        if self.source_swapped {
            self.source_away.clone()
        } else {
            self.sb.src.clone()
        }
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::SourceWrite {
                file,
                content: c,
                len,
            } => {
                let bytes = content(c, len);
                self.written
                    .entry(FILES[file])
                    .or_default()
                    .insert(bytes.clone());
                let path = self.source().join(FILES[file]);
                make_room(&self.source(), FILES[file]);
                // Through a temporary and a rename, so the mirror never sees a
                // half-written source file (torn copies are another test's).
                let tmp = path.with_extension("part");
                fs::write(&tmp, &bytes).unwrap();
                fs::rename(&tmp, &path).unwrap();
            }
            Step::SourceRemove { file } => {
                let _ = fs::remove_file(self.source().join(FILES[file]));
            }
            Step::ReplicaWrite { file, content: c } if !self.replica_swapped => {
                let bytes = content(c, 7);
                self.written
                    .entry(FILES[file])
                    .or_default()
                    .insert(bytes.clone());
                let dst = self.sb.dst.clone();
                let real_root = fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir());
                if real_root && make_room(&dst, FILES[file]) {
                    fs::write(dst.join(FILES[file]), &bytes).unwrap();
                }
            }
            // Never through a link an earlier step put in the replica.
            Step::ReplicaRemove { file }
                if !self.replica_swapped && no_link_above(&self.sb.dst, FILES[file]) =>
            {
                let _ = fs::remove_file(self.sb.dst.join(FILES[file]));
            }
            Step::ReplicaFolderToLink { folder } if !self.replica_swapped => {
                let at = self.sb.dst.join(FOLDERS[folder]);
                // The parent must be a real folder of the replica, not a
                // link put there by an earlier step: the test itself must
                // not write through it.
                let real_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
                if real_dir(&self.sb.dst) && at.parent().is_some_and(real_dir) {
                    if fs::symlink_metadata(&at).is_ok() {
                        remove(&at);
                    }
                    std::os::unix::fs::symlink(&self.outside, &at).unwrap();
                }
            }
            Step::SwapReplicaRoot if self.sb.dst.exists() || self.replica_swapped => {
                let (dst, away, other) = (&self.sb.dst, &self.replica_away, &self.other);
                if self.replica_swapped {
                    fs::rename(dst, other).unwrap();
                    fs::rename(away, dst).unwrap();
                } else {
                    fs::rename(dst, away).unwrap();
                    fs::rename(other, dst).unwrap();
                }
                self.replica_swapped = !self.replica_swapped;
            }
            Step::SwapSourceRoot => {
                let (src, away) = (&self.sb.src, &self.source_away);
                if self.source_swapped {
                    fs::remove_file(src).unwrap();
                    fs::rename(away, src).unwrap();
                } else {
                    fs::rename(src, away).unwrap();
                    std::os::unix::fs::symlink(&self.outside, src).unwrap();
                }
                self.source_swapped = !self.source_swapped;
            }
            Step::Pause { ms } => std::thread::sleep(Duration::from_millis(ms)),
            _ => {}
        }
    }

    fn restore_roots(&mut self) {
        if self.replica_swapped {
            self.apply(&Step::SwapReplicaRoot);
        }
        if self.source_swapped {
            self.apply(&Step::SwapSourceRoot);
        }
    }
}

/// Whether every folder from `root` down to `rel`'s parent is a real
/// folder (no link).
fn no_link_above(root: &Path, rel: &str) -> bool {
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    std::iter::once(None)
        .chain(parts[..parts.len() - 1].iter().map(Some))
        .all(|part| {
            if let Some(part) = part {
                at.push(part);
            }
            fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir())
        })
}

/// Makes the parent folders of `rel` below `root`, replacing a file or
/// link in the way; false when that is not possible.
fn make_room(root: &Path, rel: &str) -> bool {
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                remove(&at);
                fs::create_dir(&at).unwrap();
            }
            Err(_) => fs::create_dir(&at).unwrap(),
        }
    }
    at.push(parts[parts.len() - 1]);
    if fs::symlink_metadata(&at).is_ok_and(|md| md.is_dir()) {
        remove(&at);
    }
    true
}

fn check(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut w = World::new();
    file(&w.sb.src, "f1", "first\n");
    w.written
        .entry("f1")
        .or_default()
        .insert(b"first\n".to_vec());
    let other_before = snapshot(&w.other);
    let outside_before = snapshot(&w.outside);
    let mut run = w.sb.spawn_interval("1", &["--max-delete", "100%"]);
    run.wait_ticks(1);
    for step in steps {
        match step {
            Step::Tick => run.wait_fresh_tick(),
            other => w.apply(other),
        }
    }
    w.restore_roots();
    // The roots are back: the mirror catches up.
    file(&w.sb.src, "last", "marker\n");
    w.written
        .entry("last")
        .or_default()
        .insert(b"marker\n".to_vec());
    run.wait_fresh_tick();
    run.wait_fresh_tick();
    let done = run.stop("TERM");

    for (name, before, dir) in [
        ("the other folder", &other_before, &w.other),
        ("the folder outside", &outside_before, &w.outside),
    ] {
        let after = snapshot(dir);
        let changed: Vec<_> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| (k, before.get(k), after.get(k)))
            .collect();
        prop_assert!(
            changed.is_empty(),
            "{} was touched: {:?}\n{}",
            name,
            changed,
            done.dump()
        );
    }
    for entry in &done.log {
        let path = entry.path.as_deref().unwrap_or("");
        prop_assert!(
            !path.contains("outside-secret")
                && !path.contains("their-own")
                && !path.contains("more.txt"),
            "a foreign entry was handled: {:?}",
            entry
        );
    }
    for (p, md) in walk(&w.sb.dst) {
        let rel = p
            .strip_prefix(&w.sb.dst)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if md.is_file() && !rel.starts_with(".treesync") && !rel.ends_with(".syncignore") {
            let bytes = fs::read(&p).unwrap();
            let allowed = w.written.get(rel.as_str());
            prop_assert!(
                allowed.is_some_and(|set| set.contains(&bytes)),
                "replica {} holds {} bytes never written there",
                rel,
                bytes.len()
            );
        }
    }
    let (expected, actual) = (listing(&w.sb.src), listing(&w.sb.dst));
    let files = |nodes: &[Node]| -> Vec<String> {
        nodes
            .iter()
            .map(Node::line)
            .filter(|l| !l.contains(".treesync"))
            .collect()
    };
    prop_assert_eq!(
        files(&expected),
        files(&actual),
        "the replica is not the source once the roots are back\n{}",
        done.dump()
    );
    Ok(())
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_changes_never_escape_the_roots_nor_lose_content(
        steps in prop::collection::vec(step(), 4..12)
    ) {
        check(&steps)?;
    }
}
