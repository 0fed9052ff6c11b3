//! The joint walk: lists the source and the replica tree together, folder
//! by folder, in parallel.
//!
//! Each folder is reached from its parent's handle (`openat` with
//! `O_NOFOLLOW | O_DIRECTORY`), so the walk never follows a link and never
//! builds a full path: it reaches any depth, PATH_MAX or not. A folder is
//! one job for both trees at once, because the replica side needs the
//! source side's rules for the same folder. Jobs sit on a shared LIFO stack:
//! depth first keeps the open handles bounded by the depth of the tree (a
//! pending job holds its parent's handle, shared by its siblings, and
//! nothing else).
//!
//! Per entry the walk costs one `getdents` slot, one `lstat` (`fstatat`
//! relative to the folder handle), one `RelPath` allocation, plus a
//! `readlinkat` for links; rules are matched only where some folder on the
//! way down has any, and names to hide are checked only in the folders that
//! hold them. Every error is collected (not sent) so the caller logs them
//! after the walk, off the worker threads.
//!
//! A replica folder of ours that we may not read or search (an ordinary
//! user's `000` folder) is unlocked while it is listed and gets its mode
//! back once its handle closes (`unlock.rs`); its listed mode is the one it
//! had, so the Differ plans the mode the source gives it.
//!
//! `queue` runs the jobs on the threads, `listing` lists one folder on both
//! sides, `assemble` puts the workers' findings in order and `partial`
//! seeds the jobs of a partial walk.

mod assemble;
mod base;
mod listing;
mod partial;
mod queue;

use crate::contract::messages::LogEvent;
use crate::contract::model::{Entry, Listing};
use crate::contract::relpath::RelPath;
use crate::contract::stop::StopFlag;
use crate::fs::root::Root;
use crate::fs::rules::Rules;
use crate::fs::unlock::Unlocks;
use assemble::Output;
use base::{Fences, Side};
use listing::open_root;
use queue::{run_jobs, Job};

/// What the walk needs besides the two roots.
#[derive(Clone, Copy)]
pub struct WalkOptions<'a> {
    /// Worker threads (at least one is used).
    pub jobs: usize,
    /// Lines added to the source root's `.syncignore`.
    pub excludes: &'a [String],
    /// Paths left out of the source listing and flagged excluded in the
    /// replica listing.
    pub hidden: &'a [RelPath],
    /// List the contents of excluded replica folders (all flagged excluded).
    pub delete_excluded: bool,
    /// List a source folder on another filesystem than the source root's
    /// (a mount point) as an empty folder: `-x`.
    pub one_file_system: bool,
    /// Unlock replica folders of ours that we may not read or search, for
    /// as long as they are listed (`unlock.rs`); off in a dry run, which
    /// changes nothing in the replica.
    pub unlock_replica: bool,
    pub stop: &'a StopFlag,
    /// Partial walks: whether a subfolder, as just listed (source side
    /// when the flag is true), is already known and needs no listing.
    /// `None`: descend into every subfolder.
    pub known: Option<&'a KnownFolder<'a>>,
}

/// Whether a folder (source side when the flag is true) needs no listing.
pub type KnownFolder<'a> = dyn Fn(&Entry, bool) -> bool + Sync + 'a;

/// Both listings, sorted, and the errors met on the way.
#[derive(Debug, Default)]
pub struct WalkResult {
    pub source: Listing,
    /// Empty when there was no replica root to walk.
    pub replica: Listing,
    /// Errors to log (already counted in `errors`), ordered by path.
    pub events: Vec<LogEvent>,
    pub errors: u64,
    /// The stop flag was raised before the walk finished: the listings are
    /// partial.
    pub interrupted: bool,
    /// The folders whose entries each listing holds (what a partial walk
    /// replaces in the last listings).
    pub listed_source: Vec<RelPath>,
    pub listed_replica: Vec<RelPath>,
}

/// Walks `source` and, when given, `replica` with `opts.jobs` threads.
pub fn walk(source: &Root, replica: Option<&Root>, opts: &WalkOptions<'_>) -> WalkResult {
    let mut out = Output::default();
    let root = RelPath::root();
    let unlocks = unlocks(opts);
    let job = Job {
        source: open_root(source, Side::Source, &mut out),
        replica: replica.and_then(|r| open_root(r, Side::Replica, &mut out)),
        replica_excluded: false,
        inherited: Rules::none(),
        rel: root,
    };
    let fences = Fences::around(source, replica, opts);
    run_jobs(vec![job], out, opts, fences, unlocks)
}

fn unlocks(opts: &WalkOptions<'_>) -> Unlocks {
    if opts.unlock_replica {
        Unlocks::default()
    } else {
        Unlocks::off()
    }
}

/// Lists the folders `folders` again on both sides, and below them only
/// the subfolders that `opts.known` does not cover. The listings hold the
/// entries of the folders listed and the folders' own entries. `Err` when the rules in force above a folder cannot
/// be read: only a full walk can then tell what they exclude.
pub fn walk_folders(
    source: &Root,
    replica: Option<&Root>,
    folders: &[RelPath],
    replica_excluded: &dyn Fn(&RelPath) -> bool,
    opts: &WalkOptions<'_>,
) -> Result<WalkResult, String> {
    let mut out = Output::default();
    let unlocks = unlocks(opts);
    let jobs = partial::seed(
        source,
        replica,
        folders,
        replica_excluded,
        opts,
        &unlocks,
        &mut out,
    )?;
    let fences = Fences::around(source, replica, opts);
    Ok(run_jobs(jobs, out, opts, fences, unlocks))
}

#[cfg(test)]
mod tests {
    use super::base::DIR_FLAGS;
    use super::*;
    use crate::contract::model::EntryKind;
    use crate::contract::model::SpecialKind;
    use rustix::fs::{self as rfs, FileType, Mode, OFlags};
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// Options for a test walk, owned.
    #[derive(Default)]
    struct Opts {
        jobs: usize,
        excludes: Vec<String>,
        hidden: Vec<RelPath>,
        delete_excluded: bool,
        stop: StopFlag,
        /// Unlock nothing in the replica (as a dry run).
        no_unlock: bool,
    }

    fn run(source: &Path, replica: Option<&Path>, o: &Opts) -> WalkResult {
        let opts = WalkOptions {
            jobs: if o.jobs == 0 { 2 } else { o.jobs },
            excludes: &o.excludes,
            hidden: &o.hidden,
            delete_excluded: o.delete_excluded,
            one_file_system: false,
            unlock_replica: !o.no_unlock,
            stop: &o.stop,
            known: None,
        };
        let source = Root::open(source).unwrap();
        let replica = replica.map(|r| Root::open(r).unwrap());
        walk(&source, replica.as_ref(), &opts)
    }

    /// `path kind`, with `!` after excluded entries; the root is `.`.
    fn show(listing: &Listing) -> Vec<String> {
        listing
            .entries
            .iter()
            .map(|e| {
                let mark = if e.excluded { "!" } else { "" };
                format!("{} {}{mark}", e.path, e.kind.as_str())
            })
            .collect()
    }

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, rel).unwrap();
    }

    fn mkdirs(root: &Path, rels: &[&str]) {
        for rel in rels {
            fs::create_dir_all(root.join(rel)).unwrap();
        }
    }

    fn assert_sorted(listing: &Listing) {
        let mut sorted = listing.entries.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(sorted, listing.entries);
    }

    #[test]
    fn lists_every_kind_with_the_root_first_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        touch(s, "b/file");
        touch(s, ".hidden");
        mkdirs(s, &["empty", "b/c"]);
        symlink("b/file", s.join("link")).unwrap();
        symlink("../nowhere", s.join("b/dangling")).unwrap();
        let dir = rfs::open(s, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        rfs::mknodat(&dir, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
        fs::write(s.join(OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();

        let r = run(s, None, &Opts::default());
        assert_eq!(
            show(&r.source),
            [
                ". folder",
                ".hidden file",
                "b folder",
                "b/c folder",
                "b/dangling symlink",
                "b/file file",
                "caf\\xE9 file",
                "empty folder",
                "fifo fifo",
                "link symlink",
                "sock socket",
            ]
        );
        assert_sorted(&r.source);
        assert!(r.replica.entries.is_empty());
        assert_eq!((r.errors, r.interrupted), (0, false));
        let get = |p: &str| r.source.get(&RelPath::from_str_lossy(p)).unwrap().clone();
        let target = |p: &str| match get(p).kind {
            EntryKind::Symlink { target } => target.as_bytes().to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(target("link"), b"b/file");
        assert_eq!(target("b/dangling"), b"../nowhere");
        assert_eq!(
            get("fifo").kind,
            EntryKind::Special {
                what: SpecialKind::Fifo
            }
        );
        assert_eq!(get("b/file").meta.size, 6);
        let root = r.source.root().unwrap();
        assert_eq!(root.kind, EntryKind::Dir);
        assert_eq!(
            root.meta.id.ino,
            fs::metadata(s)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap()
        );
    }

    #[test]
    fn walks_both_sides_and_any_number_of_threads_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        for i in 0..20 {
            touch(&s, &format!("x{i}/y/z/f{i}"));
            touch(&d, &format!("x{}/only{i}", i * 2));
        }
        let one = run(
            &s,
            Some(&d),
            &Opts {
                jobs: 1,
                ..Opts::default()
            },
        );
        let many = run(
            &s,
            Some(&d),
            &Opts {
                jobs: 4,
                ..Opts::default()
            },
        );
        assert_eq!(show(&one.source), show(&many.source));
        assert_eq!(show(&one.replica), show(&many.replica));
        assert_eq!(one.source.entries.len(), 1 + 20 * 4);
        assert_eq!(one.replica.entries.len(), 1 + 20 * 2);
        assert_sorted(&many.replica);
    }

    #[test]
    fn source_rules_leave_entries_out_at_every_level() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        fs::write(s.join(".syncignore"), "*.tmp\nbuild/\n/top.txt\nsecret\n").unwrap();
        touch(s, "top.txt");
        touch(s, "a/top.txt");
        touch(s, "a/x.tmp");
        touch(s, "a/keep.tmp");
        touch(s, "a/build/out");
        touch(s, "a/b/secret");
        touch(s, "a/b/y.txt");
        touch(s, "build");
        fs::write(s.join("a/.syncignore"), "!keep.tmp\n").unwrap();
        fs::write(s.join("a/b/.syncignore"), "y.txt\n!secret\n").unwrap();
        let r = run(s, None, &Opts::default());
        assert_eq!(
            show(&r.source),
            [
                ". folder",
                ".syncignore file",
                "a folder",
                "a/.syncignore file",
                "a/b folder",
                "a/b/.syncignore file",
                "a/b/secret file",
                "a/keep.tmp file",
                "a/top.txt file",
                "build file",
            ]
        );
        assert_eq!(r.errors, 0);
    }

    #[test]
    fn excludes_come_after_the_root_file() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        fs::write(s.join(".syncignore"), "!*.o\n").unwrap();
        touch(s, "a.o");
        touch(s, "d/b.o");
        touch(s, "d/c.log");
        let o = Opts {
            excludes: vec!["*.o".into(), "/d/c.log".into()],
            ..Opts::default()
        };
        let r = run(s, None, &o);
        assert_eq!(
            show(&r.source),
            [". folder", ".syncignore file", "d folder"]
        );
    }

    /// A source with rules, and a replica holding excluded entries.
    fn excluded_replica(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (s, d) = (tmp.join("s"), tmp.join("d"));
        fs::create_dir_all(&s).unwrap();
        fs::write(s.join(".syncignore"), "*.log\ncache/\n").unwrap();
        touch(&s, "a/f");
        touch(&d, "a/f");
        touch(&d, "a/x.log");
        touch(&d, "cache/deep/obj");
        touch(&d, "cache/top");
        (s, d)
    }

    #[test]
    fn excluded_replica_entries_are_flagged_and_not_entered() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = excluded_replica(tmp.path());
        let r = run(&s, Some(&d), &Opts::default());
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "a folder",
                "a/f file",
                "a/x.log file!",
                "cache folder!"
            ]
        );
    }

    #[test]
    fn delete_excluded_lists_their_contents_all_excluded() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = excluded_replica(tmp.path());
        let o = Opts {
            delete_excluded: true,
            ..Opts::default()
        };
        let r = run(&s, Some(&d), &o);
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "a folder",
                "a/f file",
                "a/x.log file!",
                "cache folder!",
                "cache/deep folder!",
                "cache/deep/obj file!",
                "cache/top file!",
            ]
        );
    }

    #[test]
    fn a_replica_only_folder_uses_its_own_syncignore() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        fs::create_dir_all(&s).unwrap();
        fs::write(s.join(".syncignore"), "*.log\n").unwrap();
        // The source's own folder wins over the replica's copy of its rules.
        touch(&s, "both/f");
        fs::write(s.join("both/.syncignore"), "a\n").unwrap();
        touch(&d, "both/a");
        touch(&d, "both/b");
        fs::write(d.join("both/.syncignore"), "b\n").unwrap();
        // A folder gone from the source keeps the rules its copy carries.
        touch(&d, "gone/keep.o");
        touch(&d, "gone/x.log");
        touch(&d, "gone/plain");
        fs::write(d.join("gone/.syncignore"), "*.o\n").unwrap();
        let r = run(&s, Some(&d), &Opts::default());
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "both folder",
                "both/.syncignore file",
                "both/a file!",
                "both/b file",
                "gone folder",
                "gone/.syncignore file",
                "gone/keep.o file!",
                "gone/plain file",
                "gone/x.log file!",
            ]
        );
    }

    #[test]
    fn hidden_paths_are_omitted_from_the_source_and_flagged_in_the_replica() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        touch(&s, "logs/treesync.log");
        touch(&s, "logs/other");
        touch(&d, "logs/treesync.log");
        let o = Opts {
            hidden: vec![RelPath::from_str_lossy("logs/treesync.log")],
            ..Opts::default()
        };
        let r = run(&s, Some(&d), &o);
        assert_eq!(
            show(&r.source),
            [". folder", "logs folder", "logs/other file"]
        );
        assert_eq!(
            show(&r.replica),
            [". folder", "logs folder", "logs/treesync.log file!"]
        );
    }

    #[test]
    fn the_state_folder_is_never_listed_in_the_replica_nor_entered_in_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        touch(&s, ".treesync/inner");
        touch(&s, "a/.treesync/inner");
        touch(&d, ".treesync/lock");
        touch(&d, "a/.treesync/x");
        let r = run(&s, Some(&d), &Opts::default());
        assert_eq!(
            show(&r.source),
            [
                ". folder",
                ".treesync folder",
                "a folder",
                "a/.treesync folder",
                "a/.treesync/inner file",
            ]
        );
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "a folder",
                "a/.treesync folder",
                "a/.treesync/x file"
            ]
        );
    }

    #[test]
    fn walks_trees_deeper_than_path_max() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = rfs::open(
            tmp.path(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        let name = "twenty-byte-name-000";
        assert_eq!(name.len(), 20);
        let depth = 300;
        for _ in 0..depth {
            rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)).unwrap();
            dir = rfs::openat(&dir, name, DIR_FLAGS, Mode::empty()).unwrap();
        }
        let file = rfs::openat(
            &dir,
            "leaf",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(file);
        drop(dir);
        let r = run(tmp.path(), Some(tmp.path()), &Opts::default());
        assert_eq!(r.errors, 0, "{:?}", r.events);
        assert_eq!(r.source.entries.len(), 1 + depth + 1);
        assert_eq!(r.replica.entries.len(), 1 + depth + 1);
        let last = r.source.entries.last().unwrap();
        assert_eq!(last.path.name(), b"leaf");
        assert_eq!(last.path.depth(), depth + 1);
        assert!(last.path.as_bytes().len() > 4096);
    }

    #[test]
    fn unreadable_rules_are_errors_and_withhold_their_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        mkdirs(s, &["a/.syncignore"]);
        touch(s, "b/x");
        touch(s, "b/sub/y");
        symlink("elsewhere", s.join("b/.syncignore")).unwrap();
        touch(s, "c/secret.key");
        fs::write(s.join("c/.syncignore"), b"*.key\n\xff\n").unwrap();
        touch(s, "d/x");
        fs::write(s.join("d/.syncignore"), "*.key\n").unwrap();
        let r = run(s, None, &Opts::default());
        assert_eq!(r.errors, 3, "{:?}", r.events);
        let paths: Vec<String> = r.events.iter().map(|e| format!("{:?}", e.path)).collect();
        assert_eq!(
            paths,
            [
                "Some(\"a/.syncignore\")",
                "Some(\"b/.syncignore\")",
                "Some(\"c/.syncignore\")"
            ]
        );
        assert!(r
            .events
            .iter()
            .all(|e| e.field("op")
                == Some(&crate::contract::messages::LogValue::Str("rules".into()))));
        let incomplete: Vec<String> = r.source.incomplete.iter().map(|p| p.to_string()).collect();
        assert_eq!(incomplete, ["a", "b", "c"]);
        // Nothing below rules that could not be honoured is listed (it
        // would be copied); folders with readable rules are as usual.
        let listed = show(&r.source);
        for withheld in ["b/x", "b/sub", "b/sub/y", "c/secret.key", "c/.syncignore"] {
            assert!(
                !listed
                    .iter()
                    .any(|l| l.starts_with(&format!("{withheld} "))),
                "{listed:?}"
            );
        }
        assert!(listed.contains(&"d/x file".to_string()), "{listed:?}");
        assert!(listed.contains(&"b folder".to_string()), "{listed:?}");
    }

    #[test]
    fn unreadable_folders_are_errors_and_incomplete() {
        if rustix::process::geteuid().is_root() {
            return; // root reads any folder
        }
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path();
        touch(s, "locked/x");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(s.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let r = run(s, None, &Opts::default());
        fs::set_permissions(s.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(r.errors, 1);
        assert_eq!(r.source.incomplete, [RelPath::from_str_lossy("locked")]);
        assert_eq!(show(&r.source), [". folder", "locked folder"]);
    }

    #[test]
    fn locked_replica_folders_of_ours_are_listed_with_their_modes_and_get_them_back() {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            eprintln!("skipped: root is never denied (tests/unprivileged.rs runs this as a user)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        touch(&s, "x");
        touch(&d, "a/b/f");
        touch(&d, "a/r/g");
        let set = |rel: &str, mode: u32| {
            fs::set_permissions(d.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        };
        let mode = |rel: &str| {
            fs::symlink_metadata(d.join(rel))
                .unwrap()
                .permissions()
                .mode()
        };
        // Nothing, nothing, read without search.
        set("a/b", 0o000);
        set("a/r", 0o400);
        set("a", 0o000);
        let off = run(
            &s,
            Some(&d),
            &Opts {
                no_unlock: true,
                ..Opts::default()
            },
        );
        assert_eq!(off.errors, 1, "{:?}", off.events);
        assert_eq!(off.replica.incomplete, [RelPath::from_str_lossy("a")]);
        let r = run(&s, Some(&d), &Opts::default());
        assert_eq!(r.errors, 0, "{:?}", r.events);
        assert_eq!(
            show(&r.replica),
            [
                ". folder",
                "a folder",
                "a/b folder",
                "a/b/f file",
                "a/r folder",
                "a/r/g file"
            ]
        );
        let perm = |p: &str| {
            r.replica
                .get(&RelPath::from_str_lossy(p))
                .unwrap()
                .meta
                .perm
        };
        assert_eq!((perm("a"), perm("a/b"), perm("a/r")), (0o000, 0o000, 0o400));
        assert_eq!(mode("a") & 0o7777, 0o000);
        set("a", 0o700);
        assert_eq!((mode("a/b") & 0o7777, mode("a/r") & 0o7777), (0o000, 0o400));
        set("a/b", 0o700);
        set("a/r", 0o700);
    }

    #[test]
    fn orders_like_listing_sort_where_bytes_and_components_disagree() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        for rel in ["a/b", "a/c/d", "a.b", "a0", "a-", "b/a.b/x", "b/a/y"] {
            touch(&s, rel);
            touch(&d, rel);
        }
        let r = run(&s, Some(&d), &Opts::default());
        for listing in [&r.source, &r.replica] {
            assert_sorted(listing);
            let mut sorted = listing.clone();
            sorted.sort();
            assert_eq!(show(&sorted), show(listing));
        }
        assert_eq!(
            show(&r.source)[..5],
            [
                ". folder",
                "a folder",
                "a/b file",
                "a/c folder",
                "a/c/d file"
            ]
        );
    }

    #[test]
    fn a_raised_stop_flag_interrupts_the_walk() {
        let tmp = tempfile::tempdir().unwrap();
        touch(tmp.path(), "a/b");
        let o = Opts::default();
        o.stop.request();
        let r = run(tmp.path(), None, &o);
        assert!(r.interrupted);
    }

    /// Times the walk over two existing trees:
    /// `WALK_BENCH=SRC:DST cargo test --release -p treesync-stages -- --ignored walk_bench --nocapture`
    #[test]
    #[ignore]
    fn walk_bench() {
        let Ok(spec) = std::env::var("WALK_BENCH") else {
            return;
        };
        let (s, d) = spec.split_once(':').unwrap();
        let jobs: usize = std::env::var("WALK_JOBS").map_or(2, |j| j.parse().unwrap());
        for _ in 0..5 {
            let o = Opts {
                jobs,
                ..Opts::default()
            };
            let (t, cpu) = (std::time::Instant::now(), cpu_secs());
            let r = run(Path::new(s), Some(Path::new(d)), &o);
            let n = (r.source.entries.len() + r.replica.entries.len()) as f64;
            let (el, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
            println!(
                "{jobs} jobs: {n} entries, {el:.3} s wall, {cpu:.2} s cpu: {:.2} us wall, {:.2} us cpu per entry",
                el * 1e6 / n,
                cpu * 1e6 / n
            );
        }
    }

    /// User + system CPU seconds of this process so far.
    fn cpu_secs() -> f64 {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // utime and stime are fields 14 and 15, in clock ticks (100 Hz).
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    }
}
