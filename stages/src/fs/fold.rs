//! Names as a replica that ignores case stores them.
//!
//! On such a replica (`FsCaps::folds_names`, probed at start), source names
//! that differ only in case would land on one replica entry. The Hasher
//! pairs a tick's listings by their folded names before anything is
//! compared (`pair_scanned`): the first source name in byte order wins
//! every run, each other is an `error` (op `collision`) and left out, and a
//! replica entry whose stored case differs from its source entry takes the
//! source's spelling, so the Differ pairs them by path (no delete and copy
//! again when only the case changed).

use crate::contract::messages::{LogEvent, TreesScanned};
use crate::contract::model::{Entry, Listing, STATE_DIR};
use crate::contract::options::SyncOptions;
use crate::contract::relpath::RelPath;
use actix::Recipient;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A name as a case-insensitive replica sees it, when it is valid UTF-8
/// (its bytes as they are otherwise): each letter taken to its capital and
/// back to its small form, where each is one letter, as simple case
/// folding does. exFAT, FAT and NTFS compare names through a table of
/// capitals, so letters with one capital and two small forms (σ and ς:
/// both Σ) are one name there; lowercasing alone would keep them apart.
/// Folding more than a filesystem does gives an `error` for a pair it
/// would have kept apart; folding less would let one file replace the
/// other unseen, which `ReplicaOps` refuses as a last resort.
pub fn fold_name(name: &[u8]) -> Cow<'_, [u8]> {
    let Ok(s) = std::str::from_utf8(name) else {
        return Cow::Borrowed(name);
    };
    let folded: String = s.chars().map(fold_char).collect();
    if folded == s {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(folded.into_bytes())
    }
}

fn fold_char(c: char) -> char {
    fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }
    let upper = single(c.to_uppercase()).unwrap_or(c);
    single(upper.to_lowercase()).unwrap_or(upper)
}

/// A whole relative path folded component by component.
fn fold_path(path: &RelPath) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.as_bytes().len());
    for (i, c) in path.components().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(&fold_name(c));
    }
    out
}

/// Two source names that would be one replica entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collision {
    /// The source entry left out.
    pub loser: RelPath,
    /// The source entry mirrored there (first in byte order).
    pub winner: RelPath,
}

/// The listings as the replica's names pair them.
#[derive(Debug)]
pub struct Folded {
    pub source: Listing,
    pub replica: Listing,
    pub collisions: Vec<Collision>,
    /// Replica files stored under another spelling than the source file
    /// they now pair with (by the source's spelling). Size and mtime say
    /// nothing there: the file may be what another name held (a collision
    /// winner since deleted), so its content must be compared.
    pub respelled: Vec<RelPath>,
}

/// On a replica that ignores case: leaves out of the source each entry
/// whose folded path another (first in byte order, in the same folder)
/// already has, with everything below it (and any spelling of the state
/// folder `.treesync` at the root but that one, which the Differ skips: it
/// would write into the replica's state), and renames each replica entry
/// whose stored case differs from the source entry it is to the source's
/// spelling, so both listings pair by path. `None` when nothing changes.
pub fn fold_names(source: &Listing, replica: &Listing) -> Option<Folded> {
    let mut winners: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut dropped: Vec<usize> = Vec::new();
    let mut dropped_dirs: HashSet<RelPath> = HashSet::new();
    let mut collisions = Vec::new();
    let state_dir = RelPath::root().join(STATE_DIR);
    for (i, e) in source.entries.iter().enumerate() {
        if e.path.is_root() {
            continue;
        }
        if e.path.parent().is_some_and(|p| dropped_dirs.contains(&p)) {
            dropped.push(i);
            if e.kind.is_dir() {
                dropped_dirs.insert(e.path.clone());
            }
            continue;
        }
        let key = fold_path(&e.path);
        if e.path.depth() == 1 && key == STATE_DIR && e.path != state_dir {
            collisions.push(Collision {
                loser: e.path.clone(),
                winner: state_dir.clone(),
            });
            dropped.push(i);
            if e.kind.is_dir() {
                dropped_dirs.insert(e.path.clone());
            }
            continue;
        }
        match winners.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                collisions.push(Collision {
                    loser: e.path.clone(),
                    winner: source.entries[*o.get()].path.clone(),
                });
                dropped.push(i);
                if e.kind.is_dir() {
                    dropped_dirs.insert(e.path.clone());
                }
            }
        }
    }
    let mut renamed: Vec<(usize, RelPath)> = Vec::new();
    // A folder that takes the source's spelling takes its contents along,
    // listed by the source or not: below a source folder that could not be
    // listed, the replica's entries must still be found under its name
    // (nothing is deleted there). Folders come before their contents.
    let mut moved_dirs: HashMap<RelPath, RelPath> = HashMap::new();
    let mut respelled = Vec::new();
    for (j, r) in replica.entries.iter().enumerate() {
        if r.path.is_root() || r.path.starts_with(&state_dir) {
            continue;
        }
        let here = match r.path.parent().and_then(|p| moved_dirs.get(&p)) {
            Some(parent) => parent.join(r.path.name()),
            None => r.path.clone(),
        };
        let target = match winners.get(&fold_path(&here)) {
            // An entry of exactly that name pairs by itself.
            Some(&w)
                if source.entries[w].path != here
                    && replica.get(&source.entries[w].path).is_none() =>
            {
                source.entries[w].path.clone()
            }
            _ => here,
        };
        if target != r.path {
            if r.kind.is_dir() {
                moved_dirs.insert(r.path.clone(), target.clone());
            } else if target.name() != r.path.name() {
                // Its own name differs (not only a folder above it).
                respelled.push(target.clone());
            }
            renamed.push((j, target));
        }
    }
    if dropped.is_empty() && renamed.is_empty() {
        return None;
    }
    let dropped: HashSet<usize> = dropped.into_iter().collect();
    let source = Listing {
        entries: keep_entries(&source.entries, |i| !dropped.contains(&i)),
        incomplete: source.incomplete.clone(),
    };
    let mut replica = replica.clone();
    // Two stored spellings of one name cannot both exist on such a
    // replica; if they do (a wrong probe), only the first is paired.
    let mut taken = HashSet::new();
    for (j, to) in renamed {
        if taken.insert(to.clone()) {
            replica.entries[j].path = to;
        }
    }
    replica.sort();
    Some(Folded {
        source,
        replica,
        collisions,
        respelled,
    })
}

fn keep_entries(entries: &[Entry], keep: impl Fn(usize) -> bool) -> Vec<Entry> {
    entries
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, e)| e.clone())
        .collect()
}

/// `fold_names` applied to a tick's listings where the replica folds
/// names: each collision is logged as an `error` (op `collision`) and
/// counted in the tick's errors. Also returns the respelled files, whose
/// content must be compared whatever their metadata say.
pub fn pair_scanned(
    mut msg: TreesScanned,
    opts: &SyncOptions,
    log: &Recipient<LogEvent>,
    errors: &mut u64,
) -> (TreesScanned, Vec<RelPath>) {
    if !opts.replica_fs.caps.folds_names() {
        return (msg, Vec::new());
    }
    let Some(folded) = fold_names(&msg.source, &msg.replica) else {
        return (msg, Vec::new());
    };
    for c in &folded.collisions {
        log.do_send(collision_event(c).dry_run(opts.dry_run));
    }
    *errors += folded.collisions.len() as u64;
    msg.source = Arc::new(folded.source);
    msg.replica = Arc::new(folded.replica);
    (msg, folded.respelled)
}

fn collision_event(c: &Collision) -> LogEvent {
    if c.winner.as_bytes() == STATE_DIR {
        return LogEvent::error(
            Some(&c.loser),
            "collision",
            "the replica's filesystem ignores case: this name is treesync's state folder .treesync there; it is not mirrored",
        );
    }
    LogEvent::error(
        Some(&c.loser),
        "collision",
        format!(
            "the replica's filesystem ignores case: this name and {} would be one entry there; {} is mirrored (first in byte order), this one is not",
            c.winner, c.winner
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::model::{EntryKind, Meta};

    #[test]
    fn folding_lowercases_utf8_and_keeps_other_bytes() {
        assert_eq!(&*fold_name(b"A.TXT"), b"a.txt");
        assert_eq!(&*fold_name("ÉTÉ".as_bytes()), "été".as_bytes());
        assert_eq!(&*fold_name(b"X\xff"), b"X\xff");
        // One capital, two small forms: one name on exFAT.
        assert_eq!(fold_name("ς.txt".as_bytes()), fold_name("σ.txt".as_bytes()));
        // The Kelvin and Ohm signs are K and Ω there.
        assert_eq!(fold_name("\u{212A}".as_bytes()), fold_name(b"k"));
        assert_eq!(fold_name("\u{2126}".as_bytes()), fold_name("ω".as_bytes()));
        // A letter whose capital is two letters stays itself.
        assert_eq!(&*fold_name("ß".as_bytes()), "ß".as_bytes());
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: RelPath::from_str_lossy(path),
            kind,
            meta: Meta::default(),
            excluded: false,
        }
    }

    fn listing(paths: &[&str]) -> Listing {
        let mut l = Listing::default();
        l.entries.push(entry("", EntryKind::Dir));
        for p in paths {
            let kind = if p.ends_with('/') {
                EntryKind::Dir
            } else {
                EntryKind::File
            };
            l.entries.push(entry(p.trim_end_matches('/'), kind));
        }
        l.sort();
        l
    }

    fn paths(l: &Listing) -> Vec<String> {
        l.entries.iter().map(|e| e.path.to_string()).collect()
    }

    #[test]
    fn first_name_in_byte_order_wins_and_the_replica_pairs_by_folded_name() {
        let s = listing(&[
            "a.txt",
            "A.txt",
            "Docs/",
            "docs/",
            "docs/x",
            "Docs/y",
            "b",
            ".TreeSync/",
            ".TreeSync/lock",
        ]);
        let r = listing(&[
            "A.TXT",
            "DOCS/",
            "DOCS/Y",
            "gone",
            ".treesync/",
            ".treesync/lock",
        ]);
        let f = fold_names(&s, &r).unwrap();
        assert_eq!(
            f.collisions,
            vec![
                Collision {
                    loser: RelPath::from_str_lossy(".TreeSync"),
                    winner: RelPath::from_str_lossy(".treesync"),
                },
                Collision {
                    loser: RelPath::from_str_lossy("a.txt"),
                    winner: RelPath::from_str_lossy("A.txt"),
                },
                Collision {
                    loser: RelPath::from_str_lossy("docs"),
                    winner: RelPath::from_str_lossy("Docs"),
                },
            ]
        );
        assert_eq!(paths(&f.source), [".", "A.txt", "Docs", "Docs/y", "b"]);
        assert_eq!(
            paths(&f.replica),
            [
                ".",
                ".treesync",
                ".treesync/lock",
                "A.txt",
                "Docs",
                "Docs/y",
                "gone"
            ]
        );
    }

    #[test]
    fn a_folder_that_takes_the_source_spelling_takes_its_contents_along() {
        // The source could not list "Photos" (its entries are unknown): the
        // replica's files below must still be found under "Photos", where
        // the source's incomplete folder protects them.
        let mut s = listing(&["Photos/"]);
        s.incomplete.push(RelPath::from_str_lossy("Photos"));
        let r = listing(&["PHOTOS/", "PHOTOS/a.jpg", "PHOTOS/Sub/", "PHOTOS/Sub/b"]);
        let f = fold_names(&s, &r).unwrap();
        assert_eq!(
            paths(&f.replica),
            [".", "Photos", "Photos/Sub", "Photos/Sub/b", "Photos/a.jpg"]
        );
        assert!(f
            .source
            .is_incomplete_at(&RelPath::from_str_lossy("Photos/a.jpg")));
    }

    #[test]
    fn nothing_changes_without_folded_names() {
        let s = listing(&["a", "b/"]);
        assert!(fold_names(&s, &s.clone()).is_none());
    }
}
