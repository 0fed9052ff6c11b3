//! The incremental merge of a partial scan: which changed folders are worth
//! listing again, whether the fresh listings can be trusted to update the
//! last ones (no `.syncignore` changed, no source folder went where the
//! replica still has it), the update itself, and the parts of the updated
//! listings a plan needs. Takes the last tick's listings and the fresh
//! ones of the folders listed again; gives back whole listings, or their
//! parts. Only listings are read here, never the filesystem, so a partial
//! tick's cost is what changed: the walk and its roots stay in the Scanner.

use crate::contract::model::{Entry, EntryKind, Listing, IGNORE_FILE, STATE_DIR};
use crate::contract::relpath::RelPath;
use std::collections::HashSet;

/// The changed folders worth listing again: the root, and folders the last
/// listings hold as folders that were entered (excluded replica folders are
/// entered only for `--delete-excluded`). Others are new (their parent
/// changed too and lists them) or gone.
pub(super) fn relistable(
    folders: &[RelPath],
    src: &Listing,
    rep: &Listing,
    delete_excluded: bool,
) -> Vec<RelPath> {
    let mut seeds: Vec<RelPath> = folders
        .iter()
        // The tool's own folder is never listed, whatever happens in it
        // (the source's namesake is skipped, the replica's is ours).
        .filter(|f| f.components().next() != Some(STATE_DIR))
        .filter(|f| {
            f.is_root()
                || src.get(f).is_some_and(|e| e.kind.is_dir())
                || rep
                    .get(f)
                    .is_some_and(|e| e.kind.is_dir() && (!e.excluded || delete_excluded))
        })
        .cloned()
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
}

/// `seeds` with the folders that hold other names of the files with
/// several names in the seeds (hard links), on either side: a write
/// through one name is a change event in its own folder only, while every
/// name of the file changed. A tree without hard links costs a look at the
/// seeds' entries.
pub(super) fn with_link_partners(
    seeds: Vec<RelPath>,
    src: &Listing,
    rep: &Listing,
) -> Vec<RelPath> {
    let seeds = link_partners(seeds, src);
    link_partners(seeds, rep)
}

fn link_partners(mut seeds: Vec<RelPath>, src: &Listing) -> Vec<RelPath> {
    let mut linked = HashSet::new();
    for seed in &seeds {
        let inside = &src.entries[subtree(&src.entries, seed)];
        let children = inside.iter().filter(|e| e.path.depth() == seed.depth() + 1);
        for e in children {
            if e.kind == EntryKind::File && e.meta.nlink > 1 {
                linked.insert(e.meta.id);
            }
        }
    }
    if linked.is_empty() {
        return seeds;
    }
    let partners: Vec<RelPath> = src
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && linked.contains(&e.meta.id))
        .filter_map(|e| e.path.parent())
        .collect();
    seeds.extend(partners);
    seeds.sort_unstable();
    seeds.dedup();
    seeds
}

/// True when a folder of the source went (or became something else) while
/// the replica still has it: the rules deciding there were the source's and
/// now are the replica's own, for the whole subtree.
pub(super) fn source_folder_went(
    relisted: &HashSet<RelPath>,
    old_src: &Listing,
    fresh_src: &Listing,
    old_rep: &Listing,
) -> bool {
    relisted.iter().any(|folder| {
        old_src.entries[subtree(&old_src.entries, folder)]
            .iter()
            .filter(|e| e.kind.is_dir() && e.path.parent().as_ref() == Some(folder))
            .any(|e| {
                !fresh_src.get(&e.path).is_some_and(|f| f.kind.is_dir())
                    && old_rep.get(&e.path).is_some_and(|r| r.kind.is_dir())
            })
    })
}

/// True when a `.syncignore` in a listed folder appeared, went or changed.
pub(super) fn rules_changed(seeds: &[RelPath], old: &Listing, fresh: &Listing) -> bool {
    seeds.iter().any(|folder| {
        let path = folder.join(IGNORE_FILE);
        let (a, b) = (old.get(&path), fresh.get(&path));
        match (a, b) {
            (None, None) => false,
            (Some(a), Some(b)) => a.meta != b.meta || a.kind != b.kind,
            _ => true,
        }
    })
}

/// The previous listing with the entries of the `relisted` folders replaced
/// by the fresh ones. An old folder that is no longer a folder takes its
/// whole subtree with it; one still there keeps its subtree (whatever
/// changed inside it was listed again).
pub fn merge(old: Listing, mut fresh: Listing, relisted: &HashSet<RelPath>) -> Listing {
    let mut entries = old.entries;
    // Only the subtrees of the folders listed again change: each is one
    // contiguous run of the sorted listing, replaced in place. The rest of
    // the listing (all of it but what changed, usually) is not touched.
    let mut tops: Vec<&RelPath> = relisted
        .iter()
        .filter(|f| !ancestors(f).any(|a| relisted.contains(&a)))
        .collect();
    tops.sort_unstable();
    for top in tops.into_iter().rev() {
        let old_run = subtree(&entries, top);
        let fresh_run = subtree(&fresh.entries, top);
        let fresh_part: Vec<Entry> = fresh.entries.drain(fresh_run).collect();
        let old_part: Vec<Entry> = entries.drain(old_run.clone()).collect();
        let merged = merge_run(old_part, fresh_part, relisted);
        entries.splice(old_run.start..old_run.start, merged);
    }
    let mut merged = Listing {
        entries,
        incomplete: old.incomplete,
    };
    merged.incomplete.retain(|d| !relisted.contains(d));
    merged.incomplete.extend(fresh.incomplete);
    merged.incomplete.sort_unstable();
    merged.incomplete.dedup();
    let entries = &merged.entries;
    merged
        .incomplete
        .retain(|d| entries.binary_search_by(|e| e.path.cmp(d)).is_ok());
    merged
}

/// The folders above `path`, nearest first.
fn ancestors(path: &RelPath) -> impl Iterator<Item = RelPath> {
    std::iter::successors(path.parent(), RelPath::parent)
}

/// The parts of the listings a plan needs after a partial scan, `None`
/// where the whole is needed. Outside the folders listed again, the last
/// tick left the replica equal to the source (what failed is listed again
/// as a retried folder; an incomplete tick is followed by a full walk), so
/// a plan there finds nothing; at a million files that plan over the whole
/// listings was most of a tick's work. A part holds, for each folder listed
/// again: the folder, its entries, the whole subtree of an entry that is a
/// folder on one side only (created, removed or replaced), and the
/// folder's ancestors up to one listed again, whose times the plan
/// restores. Everything else
/// stands as it was. `None` too when the parts would be most of the tree,
/// or when an ancestor is not a folder on both sides.
pub fn narrowed<'a>(
    source: &Listing,
    replica: &Listing,
    listed: impl Iterator<Item = &'a RelPath>,
) -> Option<(Listing, Listing)> {
    let (s, r) = parts(source, replica, listed)?;
    let whole = source.entries.len() + replica.entries.len();
    (2 * (s.entries.len() + r.entries.len()) < whole).then_some((s, r))
}

/// The parts themselves (see `narrowed`), however large.
fn parts<'a>(
    source: &Listing,
    replica: &Listing,
    listed: impl Iterator<Item = &'a RelPath>,
) -> Option<(Listing, Listing)> {
    let folders: HashSet<&RelPath> = listed.collect();
    if folders.is_empty() {
        // Nothing listed: no part holds the roots the plan is checked by.
        return None;
    }
    let is_dir = |l: &Listing, p: &RelPath| l.get(p).is_some_and(|e| e.kind.is_dir());
    let mut context: HashSet<RelPath> = HashSet::new();
    for f in &folders {
        // Above a folder that is listed again too, that one's part holds
        // what is needed (a new folder is walked with its parent).
        for a in ancestors(f).take_while(|a| !folders.contains(a)) {
            if !(is_dir(source, &a) && is_dir(replica, &a)) {
                return None;
            }
            context.insert(a);
        }
    }
    let part = |this: &Listing, other: &Listing| {
        let mut picked = Vec::new();
        picked.extend(
            context
                .iter()
                .filter_map(|a| this.entries.binary_search_by(|e| e.path.cmp(a)).ok()),
        );
        // The rules files of the folders above: whether one the source
        // lacks is deleted depends on what is kept anywhere below its
        // folder, which a folder listed again can change (one whose rules
        // could not be read last tick and can now).
        // Only a regular file holds rules: a folder of that name is decided
        // like any other, by what is below it, which is not picked here.
        let at = |p: RelPath| {
            let i = this.entries.binary_search_by(|e| e.path.cmp(&p)).ok()?;
            (this.entries[i].kind == EntryKind::File).then_some(i)
        };
        picked.extend(context.iter().filter_map(|a| at(a.join(IGNORE_FILE))));
        for f in &folders {
            let range = subtree(&this.entries, f);
            let mut i = range.start;
            while i < range.end {
                let e = &this.entries[i];
                let child = e.path.parent().as_ref() == Some(*f);
                if e.path == **f || child {
                    picked.push(i);
                }
                if child && e.kind.is_dir() && !is_dir(other, &e.path) {
                    let below = subtree(&this.entries[i..range.end], &e.path);
                    picked.extend(i + 1..i + below.end);
                    i += below.end;
                    continue;
                }
                if child && e.kind.is_dir() {
                    // A folder on both sides: what is below it stands.
                    i += subtree(&this.entries[i..range.end], &e.path).end;
                    continue;
                }
                i += 1;
            }
        }
        picked.sort_unstable();
        picked.dedup();
        Listing {
            entries: picked
                .into_iter()
                .map(|i| this.entries[i].clone())
                .collect(),
            incomplete: this.incomplete.clone(),
        }
    };
    Some((part(source, replica), part(replica, source)))
}

/// The index range of `folder` and everything below it in a sorted listing.
fn subtree(entries: &[Entry], folder: &RelPath) -> std::ops::Range<usize> {
    let start = entries.partition_point(|e| e.path < *folder);
    let len = entries[start..].partition_point(|e| e.path.starts_with(folder));
    start..start + len
}

/// One subtree of the previous listing with the entries of the folders
/// listed again replaced by the fresh ones. An old folder that is no longer
/// a folder takes its whole subtree with it; one still there keeps its
/// subtree (whatever changed inside it was listed again).
fn merge_run(old: Vec<Entry>, fresh: Vec<Entry>, relisted: &HashSet<RelPath>) -> Vec<Entry> {
    let in_fresh = |path: &RelPath| {
        fresh
            .binary_search_by(|e| e.path.cmp(path))
            .ok()
            .map(|i| &fresh[i])
    };
    let mut kept: Vec<Entry> = Vec::with_capacity(old.len());
    let mut gone: Option<RelPath> = None;
    for e in old {
        if let Some(prefix) = &gone {
            if e.path.starts_with(prefix) {
                continue;
            }
            gone = None;
        }
        // Listed again: as an entry of a folder listed again, or as such a
        // folder itself (its own entry is listed with it).
        let now = in_fresh(&e.path);
        let replaced = e.path.parent().is_some_and(|p| relisted.contains(&p))
            || (relisted.contains(&e.path) && now.is_some());
        if !replaced {
            kept.push(e);
            continue;
        }
        if e.kind.is_dir() && !now.is_some_and(|f| f.kind.is_dir()) {
            gone = Some(e.path);
        }
    }
    merge_sorted(kept, fresh)
}

/// Merges two sorted, disjoint entry lists.
fn merge_sorted(a: Vec<Entry>, b: Vec<Entry>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.path < y.path,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
    out
}

#[cfg(test)]
use super::{scan, Previous};
#[cfg(test)]
use crate::contract::options::SyncOptions;
#[cfg(test)]
use crate::contract::stop::StopFlag;
#[cfg(test)]
use crate::fs::identity::RootIdentity;
#[cfg(test)]
use std::sync::Arc;

/// A first full scan, as the last tick's listings for a partial one.
#[cfg(test)]
fn first_scan(o: &SyncOptions) -> (RootIdentity, Previous) {
    let first = scan(o, None, &StopFlag::new()).unwrap();
    let prev = Previous {
        source: Arc::new(first.walk.source),
        replica: Arc::new(first.walk.replica),
    };
    (first.identity, prev)
}

#[cfg(test)]
mod partial_tests {
    use super::*;
    use crate::stages::scanner::scan_folders;
    use std::fs;

    fn listing_paths(l: &Listing) -> Vec<String> {
        l.entries
            .iter()
            .map(|e| format!("{} {}", e.path, e.kind.as_str()))
            .collect()
    }

    fn opts(src: &std::path::Path, dst: &std::path::Path) -> SyncOptions {
        let mut o = SyncOptions::new(src.to_path_buf(), dst.to_path_buf());
        o.watch = true;
        o
    }

    #[test]
    fn a_plan_after_a_partial_scan_sees_only_what_changed_and_its_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        for root in [&s, &r] {
            for d in 0..10 {
                fs::create_dir_all(root.join(format!("d{d}/sub"))).unwrap();
                for f in 0..4 {
                    fs::write(root.join(format!("d{d}/f{f}")), b"x").unwrap();
                }
            }
        }
        let o = opts(&s, &r);
        let stop = StopFlag::new();
        let (pinned, prev) = first_scan(&o);
        fs::write(s.join("d3/sub/new"), b"y").unwrap();
        fs::create_dir_all(s.join("d3/sub/made/deeper")).unwrap();
        fs::remove_dir_all(r.join("d7/sub")).unwrap();
        fs::write(r.join("d7/sub"), b"now a file").unwrap();
        let dirty = [
            RelPath::from_str_lossy("d3/sub"),
            RelPath::from_str_lossy("d7"),
        ];
        let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
        let w = &partial.walk;
        let listed = w.listed_source.iter().chain(&w.listed_replica);
        let (ps, pr) = narrowed(&w.source, &w.replica, listed).expect("a small part");
        let kinds = |l: &Listing| listing_paths(l).join(", ");
        assert_eq!(
            kinds(&ps),
            ". folder, d3 folder, d3/sub folder, d3/sub/made folder, d3/sub/made/deeper folder, \
             d3/sub/new file, d7 folder, d7/f0 file, d7/f1 file, d7/f2 file, d7/f3 file, \
             d7/sub folder"
        );
        assert_eq!(
            kinds(&pr),
            ". folder, d3 folder, d3/sub folder, d7 folder, d7/f0 file, d7/f1 file, \
             d7/f2 file, d7/f3 file, d7/sub file"
        );
        // The root listed again: its entries, not what is below them.
        let root = [RelPath::root()];
        let (ps, _) = narrowed(&w.source, &w.replica, root.iter()).unwrap();
        assert_eq!(ps.entries.len(), 11);
        // Every folder listed again is most of the tree: the plan takes the
        // whole listings.
        let every = w
            .source
            .entries
            .iter()
            .filter(|e| e.kind.is_dir())
            .map(|e| &e.path);
        assert!(narrowed(&w.source, &w.replica, every).is_none());
    }

    /// A partial scan of the changed folders must give what a full scan
    /// gives.
    fn check(
        setup: impl Fn(&std::path::Path, &std::path::Path),
        change: impl Fn(&std::path::Path, &std::path::Path),
        dirty: &[&str],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        fs::create_dir_all(&s).unwrap();
        fs::create_dir_all(&r).unwrap();
        setup(&s, &r);
        let o = opts(&s, &r);
        let stop = StopFlag::new();
        let (pinned, prev) = first_scan(&o);
        change(&s, &r);
        let dirty: Vec<RelPath> = dirty.iter().map(|d| RelPath::from_str_lossy(d)).collect();
        let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
        let full = scan(&o, Some(&pinned), &stop).unwrap();
        assert_eq!(
            listing_paths(&partial.walk.source),
            listing_paths(&full.walk.source),
            "source"
        );
        assert_eq!(
            listing_paths(&partial.walk.replica),
            listing_paths(&full.walk.replica),
            "replica"
        );
        assert_eq!(partial.walk.source.entries, full.walk.source.entries);
        assert_eq!(partial.walk.replica.entries, full.walk.replica.entries);
    }

    #[test]
    fn relisting_unchanged_known_folders_keeps_their_contents() {
        let tree = |root: &std::path::Path| {
            fs::create_dir_all(root.join("newdir/deep")).unwrap();
            fs::write(root.join("newdir/deep/z"), b"z").unwrap();
            fs::create_dir_all(root.join("sub")).unwrap();
            fs::write(root.join("sub/d"), b"d").unwrap();
        };
        check(
            |s, r| {
                tree(s);
                tree(r);
            },
            |_, _| {},
            &["", "newdir", "newdir/deep", "sub"],
        );
    }

    #[test]
    fn new_folders_are_walked_and_removed_ones_dropped() {
        check(
            |s, _| {
                fs::create_dir_all(s.join("old/inner")).unwrap();
                fs::write(s.join("old/inner/f"), b"f").unwrap();
            },
            |s, r| {
                fs::remove_dir_all(s.join("old")).unwrap();
                fs::create_dir_all(s.join("new/deeper")).unwrap();
                fs::write(s.join("new/deeper/g"), b"g").unwrap();
                fs::write(r.join("stray"), b"x").unwrap();
            },
            &[""],
        );
    }

    #[test]
    fn two_partial_ticks_in_a_row_match_full_scans() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        for root in [&s, &r] {
            fs::create_dir_all(root.join("sub")).unwrap();
            fs::write(root.join("sub/c"), b"c").unwrap();
        }
        let o = opts(&s, &r);
        let stop = StopFlag::new();
        let (pinned, mut prev) = first_scan(&o);
        let rel = |v: &[&str]| {
            v.iter()
                .map(|d| RelPath::from_str_lossy(d))
                .collect::<Vec<_>>()
        };
        // Tick 2: the source gains a file and a new subtree.
        fs::write(s.join("sub/d"), b"d").unwrap();
        fs::create_dir_all(s.join("newdir/deep")).unwrap();
        fs::write(s.join("newdir/deep/z"), b"z").unwrap();
        // Tick 3: the replica catches up (what the Applier would do).
        type Step<'a> = (Box<dyn Fn() + 'a>, Vec<RelPath>);
        let steps: Vec<Step> = vec![
            (Box::new(|| {}), rel(&["", "sub", "newdir", "newdir/deep"])),
            (
                Box::new(|| {
                    fs::write(r.join("sub/d"), b"d").unwrap();
                    fs::create_dir_all(r.join("newdir/deep")).unwrap();
                    fs::write(r.join("newdir/deep/z"), b"z").unwrap();
                }),
                rel(&["", "newdir", "newdir/deep", "sub"]),
            ),
        ];
        for (change, dirty) in steps {
            change();
            let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
            let full = scan(&o, Some(&pinned), &stop).unwrap();
            assert_eq!(
                listing_paths(&partial.walk.source),
                listing_paths(&full.walk.source)
            );
            assert_eq!(
                listing_paths(&partial.walk.replica),
                listing_paths(&full.walk.replica)
            );
            prev = Previous {
                source: Arc::new(partial.walk.source),
                replica: Arc::new(partial.walk.replica),
            };
        }
    }

    #[test]
    fn a_folder_new_on_one_side_only_leaves_the_other_sides_listing_alone() {
        // The replica gains newdir/deep/z, but the event for z was missed
        // (inotify watches a new folder only once it saw it created): only
        // the root and newdir are relisted. The source knew newdir/deep.
        check(
            |s, r| {
                fs::create_dir_all(s.join("newdir/deep")).unwrap();
                fs::write(s.join("newdir/deep/z"), b"z").unwrap();
                fs::create_dir_all(r.join("newdir")).unwrap();
            },
            |_, r| {
                fs::create_dir_all(r.join("newdir/deep")).unwrap();
                fs::write(r.join("newdir/deep/z"), b"z").unwrap();
            },
            &["", "newdir"],
        );
    }
}

#[cfg(test)]
mod parts_tests {
    use super::*;
    use crate::contract::model::SameContent;
    use crate::contract::plan::Op;
    use crate::stages::differ::{diff, DiffOptions};

    fn listing(entries: &[(&str, EntryKind, bool)]) -> Listing {
        let mut l = Listing {
            entries: entries
                .iter()
                .map(|(path, kind, excluded)| Entry {
                    path: RelPath::from_str_lossy(path),
                    kind: kind.clone(),
                    meta: Default::default(),
                    excluded: *excluded,
                })
                .collect(),
            incomplete: Vec::new(),
        };
        l.sort();
        l
    }

    /// A replica-only folder named like the rules file, kept for what is
    /// below it, above the folder listed again: the parts must not hold it
    /// without what keeps it.
    #[test]
    fn a_kept_folder_named_like_the_rules_file_is_not_picked_as_rules() {
        let (d, f) = (EntryKind::Dir, EntryKind::File);
        let src = listing(&[
            ("", d.clone(), false),
            ("k", d.clone(), false),
            ("k/b", d.clone(), false),
        ]);
        let rep = listing(&[
            ("", d.clone(), false),
            ("k", d.clone(), false),
            ("k/.syncignore", d.clone(), false),
            ("k/.syncignore/x", f, true),
            ("k/b", d, false),
        ]);
        let listed = [RelPath::from_str_lossy("k/b")];
        let (ps, pr) = parts(&src, &rep, listed.iter()).unwrap();
        let same = SameContent::default();
        let o = DiffOptions::from(&SyncOptions::new("s".into(), "r".into()));
        let work = |l: (&Listing, &Listing)| -> Vec<Op> {
            diff(l.0, l.1, &same, &Default::default(), o)
                .ops
                .into_iter()
                .filter(|op| matches!(op, Op::Rmdir { .. } | Op::Delete { .. }))
                .collect()
        };
        assert_eq!(work((&ps, &pr)), work((&src, &rep)));
        assert_eq!(work((&src, &rep)), Vec::new());
    }
}

#[cfg(test)]
mod partial_properties {
    use super::*;
    use crate::contract::messages::LogEvent;
    use crate::contract::model::TempTokens;
    use crate::stages::scanner::scan_folders;
    use proptest::prelude::*;
    use std::fs;
    use std::path::Path;

    const PATHS: &[&str] = &[
        "a",
        "b",
        "a/x",
        "a/y",
        "b/x",
        "a/x/z",
        "c",
        "a/.syncignore",
        ".syncignore",
    ];

    #[derive(Clone, Debug)]
    enum Change {
        Write {
            replica: bool,
            path: usize,
            len: usize,
        },
        Mkdir {
            replica: bool,
            path: usize,
        },
        Remove {
            replica: bool,
            path: usize,
        },
    }

    fn change() -> impl Strategy<Value = Change> {
        let side = any::<bool>();
        let path = 0..PATHS.len();
        prop_oneof![
            (side, path.clone(), 0..4usize).prop_map(|(replica, path, len)| Change::Write {
                replica,
                path,
                len
            }),
            (side, path.clone()).prop_map(|(replica, path)| Change::Mkdir { replica, path }),
            (side, path).prop_map(|(replica, path)| Change::Remove { replica, path }),
        ]
    }

    /// Applies a change and returns the folders a watcher would report.
    fn apply(s: &Path, r: &Path, c: &Change) -> Vec<RelPath> {
        let (replica, idx) = match c {
            Change::Write { replica, path, .. }
            | Change::Mkdir { replica, path }
            | Change::Remove { replica, path } => (*replica, *path),
        };
        let root = if replica { r } else { s };
        let rel = RelPath::from_str_lossy(PATHS[idx]);
        let full = root.join(PATHS[idx]);
        let mut touched = Vec::new();
        let parents_made = |full: &Path, rel: &RelPath, touched: &mut Vec<RelPath>| {
            let mut missing = Vec::new();
            let mut p = rel.parent();
            while let Some(dir) = p {
                if dir.is_root() || fs::symlink_metadata(dir.under(root)).is_ok_and(|m| m.is_dir())
                {
                    break;
                }
                missing.push(dir.clone());
                p = dir.parent();
            }
            for d in missing.iter().rev() {
                let _ = fs::remove_file(d.under(root));
                touched.push(d.parent().unwrap_or_default());
            }
            if let Some(parent) = full.parent() {
                let _ = fs::create_dir_all(parent);
            }
        };
        let remove = |full: &Path| {
            let _ = fs::remove_file(full).or_else(|_| fs::remove_dir_all(full));
        };
        match c {
            Change::Write { len, .. } => {
                parents_made(&full, &rel, &mut touched);
                remove(&full);
                // Rules files exclude what other changes create.
                let content = if rel.name() == IGNORE_FILE {
                    b"x\nz\n".to_vec()
                } else {
                    vec![b'x'; *len]
                };
                let _ = fs::write(&full, content);
            }
            Change::Mkdir { .. } => {
                parents_made(&full, &rel, &mut touched);
                if !full.is_dir() {
                    remove(&full);
                    let _ = fs::create_dir(&full);
                }
            }
            Change::Remove { .. } => remove(&full),
        }
        touched.push(rel.parent().unwrap_or_default());
        touched
    }

    /// What plans depend on: an excluded replica entry is kept (or, with
    /// `--delete-excluded`, deleted) whatever its metadata, which a
    /// partial scan does not refresh (its folder is never entered).
    fn planned(entries: &[Entry]) -> Vec<Entry> {
        entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if e.excluded {
                    e.meta = Default::default();
                }
                e
            })
            .collect()
    }

    /// Two empty roots `s` and `r` in a temporary folder, watch-mode
    /// options, and their first scan.
    fn empty_trees() -> (tempfile::TempDir, SyncOptions, RootIdentity, Previous) {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        fs::create_dir_all(&s).unwrap();
        fs::create_dir_all(&r).unwrap();
        let mut o = SyncOptions::new(s, r);
        o.watch = true;
        let (pinned, prev) = first_scan(&o);
        (tmp, o, pinned, prev)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// From a mirrored state, whatever changes on either side, the plan
        /// made from the parts of the listings (`narrowed`) is the plan
        /// made from the whole listings, but for reports (skips, warnings)
        /// about entries outside the parts, and attribute checks: those go
        /// by ctimes, and an entry outside the parts had no event (an
        /// attribute change is one), so it needs none.
        #[test]
        fn narrowed_plans_equal_whole_plans(batches in prop::collection::vec(prop::collection::vec(change(), 1..5), 1..5)) {
            use crate::stages::differ::{diff, DiffOptions};
            use crate::contract::plan::guard_base;
            use crate::contract::model::{Listing, SameContent};
            use crate::contract::moves;
            use crate::contract::plan::Op;
            let (tmp, o, pinned, mut prev) = empty_trees();
            let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
            let stop = StopFlag::new();
            let is_report = |op: &Op| matches!(op, Op::Skip { .. } | Op::Warn { .. } | Op::Refuse { .. } | Op::Attrs { .. });
            for batch in &batches {
                let dirty: Vec<RelPath> = batch.iter().flat_map(|c| apply(&s, &r, c)).collect();
                let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
                let w = &partial.walk;
                let listed = w.listed_source.iter().chain(&w.listed_replica);
                // Content checks decide nothing here: every candidate differs.
                let same = SameContent::default();
                let moved = |s: &Listing, r: &Listing| {
                    let caps = o.replica_fs.caps;
                    let temps = TempTokens::this_run();
                    let found = moves::search(s, r, moves::SearchOptions { fs: &caps, temps: &temps, checksum: false, seen: &[], racy: &Default::default() });
                    found.resolve(|_| false)
                };
                let whole = diff(&w.source, &w.replica, &same, &moved(&w.source, &w.replica), DiffOptions::from(&o));
                if let Some((ps, pr)) = parts(&w.source, &w.replica, listed) {
                    let opts = DiffOptions {
                        managed: Some(guard_base(&w.replica, &w.source, o.delete_excluded, &TempTokens::this_run())),
                        ..DiffOptions::from(&o)
                    };
                    let part = diff(&ps, &pr, &same, &moved(&ps, &pr), opts);
                    let work = |ops: &[Op]| ops.iter().filter(|op| !is_report(op)).cloned().collect::<Vec<_>>();
                    prop_assert_eq!(work(&part.ops), work(&whole.ops));
                    prop_assert_eq!(part.guard, whole.guard);
                    for op in part.ops.iter().filter(|op| is_report(op)) {
                        prop_assert!(whole.ops.contains(op), "{:?} not in the whole plan", op);
                    }
                }
                // Mirror, so the next batch starts from a mirrored state.
                let log = |_: LogEvent| {};
                crate::stages::applier::apply(&whole, &o, &stop, &log);
                let after = scan(&o, Some(&pinned), &stop).unwrap();
                prev = Previous {
                    source: Arc::new(after.walk.source),
                    replica: Arc::new(after.walk.replica),
                };
            }
        }

        /// Whatever changes between two ticks, listing only the folders a
        /// watcher reports gives the listings a full walk gives.
        #[test]
        fn partial_scans_equal_full_scans(batches in prop::collection::vec(prop::collection::vec(change(), 1..5), 1..5)) {
            let (tmp, o, pinned, mut prev) = empty_trees();
            let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
            let stop = StopFlag::new();
            for batch in &batches {
                let dirty: Vec<RelPath> = batch.iter().flat_map(|c| apply(&s, &r, c)).collect();
                let partial = scan_folders(&o, Some(&pinned), &stop, prev, &dirty).unwrap();
                let full = scan(&o, Some(&pinned), &stop).unwrap();
                prop_assert_eq!(&partial.walk.source.entries, &full.walk.source.entries);
                prop_assert_eq!(
                    planned(&partial.walk.replica.entries),
                    planned(&full.walk.replica.entries)
                );
                prev = Previous {
                    source: Arc::new(partial.walk.source),
                    replica: Arc::new(partial.walk.replica),
                };
            }
        }
    }
}
