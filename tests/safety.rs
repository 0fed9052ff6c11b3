//! Safety rules: roots, links in the replica, the deletion guard, failures
//! that must not stop the sync, atomic copies under kill -9.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

// ---------------------------------------------------------------------------
// Roots
// ---------------------------------------------------------------------------

fn replica_with_content(sb: &Sandbox) -> Vec<Node> {
    file(&sb.dst, "keep/me.txt", "precious\n");
    file(&sb.dst, "top.txt", "top\n");
    listing(&sb.dst)
}

#[test]
fn missing_source_is_fatal_and_the_replica_untouched() {
    let sb = Sandbox::new();
    let before = replica_with_content(&sb);
    let missing = sb.path("no-such-source");
    let run = sb.run(&os(&[&"--once", &missing, &sb.dst]));
    run.expect_code(1);
    assert!(!run.stderr.trim().is_empty(), "a fatal error says why");
    assert_same_nodes(&before, &listing(&sb.dst), "replica before (-) / after (+)");
    assert!(run.entries("delete").is_empty());

    // A missing replica is not created either.
    let dst2 = sb.path("dst2");
    sb.run(&os(&[&"--once", &missing, &dst2])).expect_code(1);
    assert!(!exists(&dst2));
}

#[test]
fn source_that_is_a_file_is_fatal() {
    let sb = Sandbox::new();
    let before = replica_with_content(&sb);
    let f = file(sb.root(), "plainfile", "not a folder");
    sb.run(&os(&[&"--once", &f, &sb.dst])).expect_code(1);
    assert_same_nodes(&before, &listing(&sb.dst), "replica before (-) / after (+)");
    let link = symlink(sb.root(), "link-to-file", &f);
    sb.run(&os(&[&"--once", &link, &sb.dst])).expect_code(1);
}

#[test]
fn replica_inside_source_is_fatal() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let before = listing(&sb.src);
    let inner = sb.s("replica");
    sb.run(&os(&[&"--once", &sb.src, &inner])).expect_code(1);
    assert!(!exists(&inner));
    // The same through a link.
    let alias = symlink(sb.root(), "alias", &sb.src);
    let via = alias.join("replica2");
    sb.run(&os(&[&"--once", &sb.src, &via])).expect_code(1);
    assert!(!exists(&sb.s("replica2")));
    // Or the same folder twice.
    sb.run(&os(&[&"--once", &sb.src, &alias])).expect_code(1);
    sb.run(&os(&[&"--once", &sb.src, &sb.src])).expect_code(1);
    assert_same_nodes(&before, &listing(&sb.src), "source before (-) / after (+)");
}

#[test]
fn source_inside_replica_is_fatal() {
    let sb = Sandbox::new();
    file(&sb.dst, "inner/a.txt", "a");
    file(&sb.dst, "other.txt", "would be deleted");
    let before = listing(&sb.dst);
    sb.run(&os(&[&"--once", &sb.d("inner"), &sb.dst]))
        .expect_code(1);
    assert_same_nodes(&before, &listing(&sb.dst), "replica before (-) / after (+)");
    let alias = symlink(sb.root(), "alias", &sb.dst);
    sb.run(&os(&[&"--once", &alias.join("inner"), &sb.dst]))
        .expect_code(1);
    assert_same_nodes(&before, &listing(&sb.dst), "replica before (-) / after (+)");
}

#[test]
fn missing_replica_is_created_but_not_its_parent() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    set_mode(&sb.src, 0o751);
    set_mtime(&sb.src, DIR_TIME);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();

    let deep = sb.path("no/such/parent/replica");
    let run = sb.run(&os(&[&"--once", &sb.src, &deep]));
    run.expect_code(1);
    assert!(!exists(&sb.path("no")));
}

#[test]
fn log_file_inside_replica_is_refused() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    fs::create_dir(&sb.dst).unwrap();
    let before = listing(&sb.dst);
    let log = sb.d("sync.log");
    let run = sb.run_raw(&os(&[&"--once", &"--log-file", &log, &sb.src, &sb.dst]));
    run.expect_code(1);
    assert!(!exists(&sb.d("a.txt")));
    assert!(!exists(&log), "refused before anything is written");
    assert_same_nodes(&before, &listing(&sb.dst), "replica before (-) / after (+)");
}

#[test]
fn log_file_that_cannot_be_opened_is_fatal() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let log = sb.path("missing-dir/sync.log");
    let run = sb.run_raw(&os(&[&"--once", &"--log-file", &log, &sb.src, &sb.dst]));
    run.expect_code(1);
    assert!(!exists(&sb.d("a.txt")));
}

#[test]
fn log_file_inside_source_is_left_out_of_the_mirror() {
    for (format, name) in [("text", "sync.log"), ("json", "logs/sync.jsonl")] {
        let sb = Sandbox::new();
        file(&sb.src, "a.txt", "a");
        dir(&sb.src, "logs");
        let log = sb.s(name);
        let args = os(&[
            &"--once",
            &"--log-file",
            &log,
            &"--log-format",
            &format,
            &sb.src,
            &sb.dst,
        ]);
        sb.run_raw(&args).expect_code(0);
        assert!(exists(&log), "{format}: log written");
        assert!(!exists(&sb.d(name)), "{format}: log file mirrored");
        assert_eq!(read(&sb.d("a.txt")), b"a");
        let text = String::from_utf8_lossy(&read(&log)).into_owned();
        assert!(
            !text.contains(name),
            "{format}: the log mentions itself:\n{text}"
        );
        // A second run (the log grew) still leaves it out.
        sb.run_raw(&args).expect_code(0);
        assert!(!exists(&sb.d(name)));
        let text = String::from_utf8_lossy(&read(&log)).into_owned();
        assert!(
            !text.contains(name),
            "{format}: the log mentions itself:\n{text}"
        );
        if format == "json" {
            let entries = parse_log(&text);
            assert_eq!(entries.iter().filter(|e| e.msg == "tick").count(), 2);
        }
    }
}

#[test]
fn default_log_file_is_treesync_log_in_the_current_folder() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let run = sb.run_raw(&os(&[&"--once", &sb.src, &sb.dst]));
    run.expect_code(0);
    let text = fs::read_to_string(sb.path("treesync.log")).expect("treesync.log");
    assert!(text.contains("a.txt"), "{text}");
    assert_eq!(read(&sb.d("a.txt")), b"a");
}

#[test]
fn a_replica_root_given_through_a_link_is_used() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    fs::create_dir(&sb.dst).unwrap();
    let alias = symlink(sb.root(), "dst-alias", &sb.dst);
    sb.run(&os(&[&"--once", &sb.src, &alias])).expect_code(0);
    assert!(fs::symlink_metadata(&alias)
        .unwrap()
        .file_type()
        .is_symlink());
    sb.assert_mirror();
}

// ---------------------------------------------------------------------------
// Links in the replica
// ---------------------------------------------------------------------------

#[test]
fn a_replica_folder_swapped_for_a_link_is_replaced_not_written_through() {
    let sb = Sandbox::new();
    file(&sb.src, "d/a.txt", "a\n");
    file(&sb.src, "d/b.txt", "b\n");
    file(&sb.src, "d/sub/c.txt", "c\n");
    freeze_dirs(&sb.src, DIR_TIME);
    sb.sync(&[]).expect_code(0);

    let outside = sb.path("outside");
    file(&outside, "a.txt", "outside a\n");
    file(&outside, "b.txt", "outside b\n");
    file(&outside, "sub/c.txt", "outside c\n");
    file(
        &outside,
        "only-outside.txt",
        "would be deleted if followed\n",
    );
    let before = listing(&outside);
    let before_ids = identities(&outside);
    remove(&sb.d("d"));
    symlink(&sb.dst, "d", &outside);

    file_with(
        &sb.src,
        "d/a.txt",
        "A, changed\n",
        0o644,
        (1_700_000_000, 9),
    );
    file(&sb.src, "d/new.txt", "new\n");
    remove(&sb.s("d/b.txt"));
    freeze_dirs(&sb.src, DIR_TIME);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_same_nodes(
        &before,
        &listing(&outside),
        "outside before (-) / after (+)",
    );
    assert_eq!(identities(&outside), before_ids, "outside folder touched");
    assert!(fs::symlink_metadata(sb.d("d")).unwrap().is_dir());
    sb.assert_mirror();
    assert!(
        run.index("delete", "d") < run.index("mkdir", "d"),
        "{}",
        run.dump()
    );
}

#[test]
fn a_replica_file_swapped_for_a_link_is_replaced_not_written_through() {
    let sb = Sandbox::new();
    file(&sb.src, "f.txt", "source\n");
    sb.sync(&[]).expect_code(0);
    let outside = file(sb.root(), "outside.txt", "outside\n");
    let before = identities(sb.root())
        .into_iter()
        .find(|x| x.0 == "outside.txt");
    remove(&sb.d("f.txt"));
    symlink(&sb.dst, "f.txt", &outside);
    file_with(
        &sb.src,
        "f.txt",
        "source, changed\n",
        0o644,
        (1_700_000_000, 1),
    );

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_eq!(read(&outside), b"outside\n");
    let after = identities(sb.root())
        .into_iter()
        .find(|x| x.0 == "outside.txt");
    assert_eq!(before, after);
    assert!(fs::symlink_metadata(sb.d("f.txt")).unwrap().is_file());
    sb.assert_mirror();
}

// ---------------------------------------------------------------------------
// Deletion guard
// ---------------------------------------------------------------------------

/// A replica of `n` files `f00..`, synced.
fn synced_files(n: usize) -> Sandbox {
    let sb = Sandbox::new();
    for i in 0..n {
        file(&sb.src, format!("f{i:02}.txt"), format!("file {i}\n"));
    }
    sb.sync(&[]).expect_code(0).no_errors();
    sb
}

fn guard_errors(run: &Run) -> Vec<&Entry> {
    run.errors()
        .into_iter()
        .filter(|e| e.str("op") == Some("guard"))
        .collect()
}

#[test]
fn the_guard_withholds_mass_deletions_but_still_copies() {
    let sb = synced_files(20);
    for i in 5..20 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    file(&sb.src, "new1.txt", "new 1\n");
    file(&sb.src, "newdir/new2.txt", "new 2\n");
    file_with(
        &sb.src,
        "f00.txt",
        "file 0, changed\n",
        0o644,
        (1_700_000_000, 0),
    );

    let run = sb.sync(&[]);
    run.expect_code(4);
    let g = guard_errors(&run);
    assert_eq!(g.len(), 1, "one guard error\n{}", run.dump());
    assert!(g[0].path.is_none(), "a guard entry has no path");
    assert!(run.entries("delete").is_empty(), "{}", run.dump());
    for i in 0..20 {
        assert!(exists(&sb.d(format!("f{i:02}.txt"))), "f{i:02}.txt deleted");
    }
    assert!(run.has("copy", "new1.txt") && run.has("copy", "newdir/new2.txt"));
    assert!(run.has("update", "f00.txt"), "{}", run.dump());
    assert_eq!(read(&sb.d("newdir/new2.txt")), b"new 2\n");
    assert_eq!(read(&sb.d("f00.txt")), b"file 0, changed\n");
    run.tick();

    let run = sb.sync(&["--max-delete", "100%"]);
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("delete").len(), 15);
    sb.assert_mirror();
}

#[test]
fn max_delete_zero_forbids_any_deletion() {
    let sb = synced_files(3);
    remove(&sb.s("f01.txt"));
    let run = sb.sync(&["--max-delete", "0"]);
    run.expect_code(4);
    assert_eq!(guard_errors(&run).len(), 1, "{}", run.dump());
    assert!(exists(&sb.d("f01.txt")));
}

#[test]
fn max_delete_count_allows_exactly_n() {
    let sb = synced_files(6);
    for i in 0..3 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    let run = sb.sync(&["--max-delete", "3"]);
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("delete").len(), 3);
    sb.assert_mirror();
}

#[test]
fn max_delete_percentage_boundary() {
    // 11 of 22 is exactly 50%: allowed.
    let sb = synced_files(22);
    for i in 0..11 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    let run = sb.sync(&["--max-delete", "50%"]);
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("delete").len(), 11);
    sb.assert_mirror();

    // 11 of 20 is over 50%: withheld.
    let sb = synced_files(20);
    for i in 0..11 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    let run = sb.sync(&[]);
    run.expect_code(4);
    assert_eq!(guard_errors(&run).len(), 1, "{}", run.dump());

    // Ten deletions never trip the percentage form, even 10 of 10.
    let sb = synced_files(10);
    for i in 0..10 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("delete").len(), 10);
}

#[test]
fn kept_excluded_entries_do_not_dilute_the_guard() {
    let sb = synced_files(20);
    for i in 0..40 {
        file(&sb.dst, format!("x{i:02}.log"), "excluded, kept\n");
    }
    file(&sb.src, ".syncignore", "*.log\n");
    for i in 0..11 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    let run = sb.sync(&[]);
    run.expect_code(4);
    assert_eq!(guard_errors(&run).len(), 1, "{}", run.dump());
    assert!(exists(&sb.d("f00.txt")));
}

#[test]
fn an_emptied_source_never_wipes_the_replica() {
    let sb = synced_files(20);
    file(&sb.src, "sub/a.txt", "a");
    sb.sync(&[]).expect_code(0);
    let before: Vec<(String, Option<String>)> = listing(&sb.dst)
        .into_iter()
        .filter(|n| n.path != ".")
        .map(|n| (n.path, n.sha1))
        .collect();
    for (p, _) in walk(&sb.src) {
        if exists(&p) {
            remove(&p);
        }
    }
    let run = sb.sync(&[]);
    run.expect_code(4);
    assert_eq!(guard_errors(&run).len(), 1, "{}", run.dump());
    let after: Vec<(String, Option<String>)> = listing(&sb.dst)
        .into_iter()
        .filter(|n| n.path != ".")
        .map(|n| (n.path, n.sha1))
        .collect();
    assert_eq!(before, after);
    assert!(run.entries("delete").is_empty() && run.entries("rmdir").is_empty());
}

// ---------------------------------------------------------------------------
// Failures that do not stop the sync
// ---------------------------------------------------------------------------

#[test]
fn an_unreadable_file_is_an_error_and_the_rest_is_synced() {
    let Some(prefix) = user_prefix() else {
        if !is_root_user() {
            // Permission bits deny as an ordinary user: run directly.
            return unreadable_as(&[]);
        }
        eprintln!("skipped: root without setpriv");
        return;
    };
    unreadable_as(&prefix);
}

fn unreadable_as(prefix: &[&str]) {
    let sb = Sandbox::new();
    set_mode(sb.root(), 0o777);
    file(&sb.src, "ok1.txt", "one\n");
    file(&sb.src, "sub/ok2.txt", "two\n");
    file(&sb.src, "secret-old", "new secret content\n");
    file(&sb.src, "secret-new", "never readable\n");
    file(&sb.src, "closed/inner.txt", "inner\n");
    file(&sb.dst, "secret-old", "old secret\n");
    file(&sb.dst, "closed/inner.txt", "inner\n");
    file(
        &sb.dst,
        "closed/replica-only.txt",
        "must survive: its source folder is unreadable\n",
    );
    set_mtime(&sb.s("secret-old"), (1_700_000_000, 0));
    set_mode(&sb.s("secret-old"), 0o000);
    set_mode(&sb.s("secret-new"), 0o000);
    set_mode(&sb.s("closed"), 0o000);
    if !prefix.is_empty() {
        chown_tree(&sb.dst, NOBODY);
    }
    // The replica was filled by hand here: it is adopted.
    let args = os(&[&"--once", &"--adopt", &sb.src, &sb.dst]);
    let run = if prefix.is_empty() {
        sb.run(&args)
    } else {
        sb.run_with_prefix(prefix, &args)
    };
    set_mode(&sb.s("closed"), 0o755);
    run.expect_code(3);

    for p in ["secret-old", "secret-new", "closed"] {
        let e = run
            .errors()
            .into_iter()
            .find(|e| e.path.as_deref() == Some(p))
            .unwrap_or_else(|| panic!("no error for {p}\n{}", run.dump()));
        assert!(!e.str("op").unwrap().is_empty() && !e.str("error").unwrap().is_empty());
    }
    assert_eq!(read(&sb.d("ok1.txt")), b"one\n");
    assert_eq!(read(&sb.d("sub/ok2.txt")), b"two\n");
    assert_eq!(
        read(&sb.d("secret-old")),
        b"old secret\n",
        "kept, never deleted"
    );
    assert!(!exists(&sb.d("secret-new")));
    assert!(
        exists(&sb.d("closed/replica-only.txt")),
        "nothing deleted below an unlisted folder"
    );
    assert!(!run.has("delete", "secret-old") && !run.has("delete", "closed/replica-only.txt"));
    assert!(
        temporaries(&sb.dst).is_empty(),
        "{:?}",
        temporaries(&sb.dst)
    );
    let t = run.tick();
    assert!(t.u64("errors").unwrap() >= 3, "{t:?}");
}

// ---------------------------------------------------------------------------
// Atomic copies
// ---------------------------------------------------------------------------

const BIG: u64 = 1 << 30;

/// Writes a 1 GiB file of varied content quickly.
fn write_big(path: &Path) {
    write_big_sized(path, BIG);
}

fn write_big_sized(path: &Path, size: u64) {
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    for i in 0..(size >> 20) {
        block[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(fa), Ok(fb)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ra, mut rb) = (
        std::io::BufReader::with_capacity(1 << 20, fa),
        std::io::BufReader::with_capacity(1 << 20, fb),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = ra.read(&mut ba).unwrap();
        if na == 0 {
            return rb.read(&mut bb).unwrap() == 0;
        }
        if rb.read_exact(&mut bb[..na]).is_err() || ba[..na] != bb[..na] {
            return false;
        }
    }
}

/// Waits until a temporary not in `seen` appears in `dst`, or the process ends.
fn wait_for_temporary(r: &mut Running, dst: &Path, seen: &[std::path::PathBuf]) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(rd) = fs::read_dir(dst) {
            for e in rd.flatten() {
                let n = e.file_name();
                if n.as_bytes().starts_with(b".treesync-tmp-") && !seen.contains(&e.path()) {
                    return true;
                }
            }
        }
        if !r.is_running() {
            return false;
        }
        std::thread::yield_now();
    }
    false
}

fn no_partial_file(sb: &Sandbox) {
    let final_name = sb.d("big.bin");
    if exists(&final_name) {
        assert_eq!(
            fs::metadata(&final_name).unwrap().len(),
            BIG,
            "partial file under the final name"
        );
        assert!(
            same_content(&sb.s("big.bin"), &final_name),
            "mixed content under the final name"
        );
    }
}

#[test]
fn interrupted_copies_never_leave_a_partial_file() {
    let sb = Sandbox::new();
    write_big(&sb.s("big.bin"));
    file(&sb.src, "small.txt", "small\n");
    let once = os(&[&"--once", &sb.src, &sb.dst]);

    // Ctrl+C during the copy: 130, unless the sync had already finished.
    let mut r = sb.spawn(&once);
    let caught = wait_for_temporary(&mut r, &sb.dst, &[]);
    let run = r.stop("INT");
    if !caught {
        run.expect_code(0);
    } else {
        match run.code {
            Some(130) => {}
            Some(0) => assert!(
                same_content(&sb.s("big.bin"), &sb.d("big.bin")),
                "{}",
                run.dump()
            ),
            _ => panic!("expected 130\n{}", run.dump()),
        }
    }
    no_partial_file(&sb);
    if exists(&sb.d("big.bin")) {
        remove(&sb.d("big.bin"));
    }

    // kill -9 during the copy.
    let seen = temporaries(&sb.dst);
    let mut r = sb.spawn(&once);
    let caught = wait_for_temporary(&mut r, &sb.dst, &seen);
    r.kill();
    if !caught {
        eprintln!("note: the copy finished before a temporary was seen");
    }
    no_partial_file(&sb);

    // The next run completes and cleans up.
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(same_content(&sb.s("big.bin"), &sb.d("big.bin")));
    assert_eq!(temporaries(&sb.dst), Vec::<std::path::PathBuf>::new());
    sb.assert_mirror();
    assert_eq!(mtime_of(&sb.s("big.bin")), mtime_of(&sb.d("big.bin")));
    assert_eq!(mode_of(&sb.s("big.bin")), mode_of(&sb.d("big.bin")));

    // kill -9 during an update: the old version or the new one, whole.
    // (The size changes too, so that no hashing is needed to see it.)
    let mut old_head = [0u8; 8];
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(sb.s("big.bin"))
            .unwrap();
        f.read_exact_at(&mut old_head, 0).unwrap();
        f.write_all_at(b"NEWHEAD!", 0).unwrap();
        f.write_all_at(b"+", BIG).unwrap();
    }
    set_mtime(&sb.s("big.bin"), (1_700_000_000, 1));
    let seen = temporaries(&sb.dst);
    let mut r = sb.spawn(&once);
    wait_for_temporary(&mut r, &sb.dst, &seen);
    r.kill();
    let replica = sb.d("big.bin");
    let mut head = [0u8; 8];
    fs::File::open(&replica)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    if head == old_head {
        assert_eq!(
            fs::metadata(&replica).unwrap().len(),
            BIG,
            "old head, new size"
        );
        assert!(
            same_range(&sb.s("big.bin"), &replica, 8, BIG),
            "old version damaged"
        );
    } else {
        assert!(same_content(&sb.s("big.bin"), &replica), "mixed content");
    }
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(same_content(&sb.s("big.bin"), &replica));
    assert!(temporaries(&sb.dst).is_empty());
}

#[test]
fn a_temporary_left_by_a_killed_run_is_removed_silently_by_the_next() {
    let sb = Sandbox::new();
    write_big_sized(&sb.s("big.bin"), 256 << 20);
    let once = os(&[&"--once", &sb.src, &sb.dst]);
    let mut left = Vec::new();
    for _ in 0..5 {
        let mut r = sb.spawn(&once);
        let caught = wait_for_temporary(&mut r, &sb.dst, &[]);
        r.kill();
        left = temporaries(&sb.dst);
        if caught && !left.is_empty() {
            break;
        }
        if exists(&sb.d("big.bin")) {
            remove(&sb.d("big.bin"));
        }
    }
    assert!(
        !left.is_empty(),
        "no run was caught in the middle of its copy"
    );
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    // Ours (its token was recorded before it was made): no `delete` line,
    // not counted by the guard.
    assert!(run.entries("delete").is_empty(), "{}", run.dump());
    assert!(temporaries(&sb.dst).is_empty());
    assert!(same_content(&sb.s("big.bin"), &sb.d("big.bin")));
}

/// The two files hold the same bytes in `from..to`.
fn same_range(a: &Path, b: &Path, from: u64, to: u64) -> bool {
    use std::io::{Seek, SeekFrom};
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    fa.seek(SeekFrom::Start(from)).unwrap();
    fb.seek(SeekFrom::Start(from)).unwrap();
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = to - from;
    while left > 0 {
        let n = left.min(1 << 20) as usize;
        if fa.read_exact(&mut ba[..n]).is_err() || fb.read_exact(&mut bb[..n]).is_err() {
            return false;
        }
        if ba[..n] != bb[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

#[test]
fn read_only_folders_are_updated_and_deleted_as_a_user() {
    let sb = Sandbox::new();
    file_with(&sb.src, "ro/a.txt", "a\n", 0o444, FILE_TIME);
    file_with(&sb.src, "ro/sub/b.txt", "b\n", 0o444, FILE_TIME);
    file_with(&sb.src, "gone/x.txt", "x\n", 0o444, FILE_TIME);
    file(&sb.src, "top.txt", "top\n");
    for d in ["ro/sub", "ro", "gone"] {
        set_mode(&sb.s(d), 0o555);
    }
    freeze_dirs(&sb.src, DIR_TIME);
    set_mode(&sb.src, 0o555);
    let Some(run) = sb.sync_as_user(&[]) else {
        eprintln!("skipped: root without setpriv");
        return;
    };
    run.expect_code(0).no_errors();
    sb.assert_mirror();

    set_mode(&sb.src, 0o755);
    for d in ["ro/sub", "ro", "gone"] {
        set_mode(&sb.s(d), 0o755);
    }
    file_with(
        &sb.src,
        "ro/a.txt",
        "a, changed\n",
        0o444,
        (1_700_000_000, 0),
    );
    file_with(&sb.src, "ro/new.txt", "new\n", 0o444, FILE_TIME);
    file(&sb.src, "new-top.txt", "new top\n");
    remove(&sb.s("ro/sub/b.txt"));
    remove(&sb.s("gone"));
    for d in ["ro/sub", "ro"] {
        set_mode(&sb.s(d), 0o555);
    }
    freeze_dirs(&sb.src, DIR_TIME);
    set_mode(&sb.src, 0o555);

    let run = sb.sync_as_user(&[]).unwrap();
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("copy", "new-top.txt"),
        ("copy", "ro/new.txt"),
        ("delete", "gone/x.txt"),
        ("delete", "ro/sub/b.txt"),
        ("rmdir", "gone"),
        ("update", "ro/a.txt"),
    ]);
    sb.assert_mirror();
    for root in [&sb.src, &sb.dst] {
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwX"])
            .arg(root)
            .status();
    }
}

#[test]
fn a_withheld_deletion_outranks_a_failed_operation() {
    let sb = synced_files(20);
    for i in 5..20 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    file(&sb.src, "unreadable", "x");
    set_mode(&sb.s("unreadable"), 0o000);
    let Some(run) = sb.sync_as_user(&[]) else {
        eprintln!("skipped: root without setpriv");
        return;
    };
    run.expect_code(4);
    assert_eq!(guard_errors(&run).len(), 1, "{}", run.dump());
    assert!(
        run.errors()
            .iter()
            .any(|e| e.path.as_deref() == Some("unreadable")),
        "{}",
        run.dump()
    );
}

#[test]
fn folders_do_not_count_for_the_guard() {
    let sb = Sandbox::new();
    for i in 0..20 {
        file(&sb.src, format!("f{i:02}.txt"), "x");
        if i < 15 {
            dir(&sb.src, format!("d{i:02}/inner"));
        }
    }
    sb.sync(&[]).expect_code(0);
    for i in 0..15 {
        remove(&sb.s(format!("d{i:02}")));
    }
    let run = sb.sync(&["--max-delete", "0"]);
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("rmdir").len(), 30);
    sb.assert_mirror();
}

#[test]
fn a_file_that_changes_or_vanishes_during_its_copy_is_skipped() {
    let sb = Sandbox::new();
    let big = sb.s("big.bin");
    write_big_sized(&big, 512 << 20);
    file(&sb.src, "small.txt", "small\n");
    let once = os(&[&"--once", &sb.src, &sb.dst]);

    // Appended to while being copied. The check only counts when the
    // temporary was still there after the change (the copy was in flight).
    let mut r = sb.spawn(&once);
    let mut in_flight = false;
    if wait_for_temporary(&mut r, &sb.dst, &[]) {
        let mut f = fs::OpenOptions::new().append(true).open(&big).unwrap();
        f.write_all(b"appended during the copy").unwrap();
        in_flight = !temporaries(&sb.dst).is_empty();
    }
    let run = r.wait();
    if in_flight {
        run.expect_code(0).no_errors();
        assert!(!run.has("copy", "big.bin"), "{}", run.dump());
        assert!(run.get("skip", "big.bin").str("reason").is_some());
        assert!(
            !exists(&sb.d("big.bin")),
            "a skipped new file is not created"
        );
    } else {
        eprintln!("note: the copy finished before the change");
    }
    assert!(
        temporaries(&sb.dst).is_empty(),
        "{:?}",
        temporaries(&sb.dst)
    );
    if exists(&sb.d("big.bin")) {
        remove(&sb.d("big.bin"));
    }

    // Deleted while being copied.
    let mut r = sb.spawn(&once);
    let mut in_flight = false;
    if wait_for_temporary(&mut r, &sb.dst, &[]) {
        fs::remove_file(&big).unwrap();
        in_flight = !temporaries(&sb.dst).is_empty();
    }
    let run = r.wait();
    if in_flight {
        run.expect_code(0).no_errors();
        assert!(!run.has("copy", "big.bin"), "{}", run.dump());
        assert!(run.has("skip", "big.bin"), "{}", run.dump());
        assert!(!exists(&sb.d("big.bin")), "a vanished file must not appear");
    } else {
        eprintln!("note: the copy finished before the deletion");
    }
    assert!(
        temporaries(&sb.dst).is_empty(),
        "{:?}",
        temporaries(&sb.dst)
    );
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
}

#[test]
fn sibling_roots_sharing_a_name_prefix_are_not_nested() {
    let sb = Sandbox::new();
    let data = sb.path("data");
    let data2 = sb.path("data2");
    file(&data, "a.txt", "a");
    let run = sb.run(&os(&[&"--once", &data, &data2]));
    run.expect_code(0).no_errors();
    assert_same_tree(&data, &data2);
    let back = sb.path("dat");
    let run = sb.run(&os(&[&"--once", &data, &back]));
    run.expect_code(0).no_errors();
    assert_same_tree(&data, &back);
}

#[test]
fn a_replica_path_that_is_a_file_is_fatal() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let f = file(sb.root(), "dst", "I am a file");
    let run = sb.run(&os(&[&"--once", &sb.src, &f]));
    run.expect_code(1);
    assert_eq!(read(&f), b"I am a file");
}

#[test]
fn log_file_paths_are_resolved_before_the_checks() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    fs::create_dir(&sb.dst).unwrap();
    let src_alias = symlink(sb.root(), "src-alias", &sb.src);
    let dst_alias = symlink(sb.root(), "dst-alias", &sb.dst);

    // Inside the replica through a link: refused.
    let log = dst_alias.join("sync.log");
    let run = sb.run_raw(&os(&[&"--once", &"--log-file", &log, &sb.src, &sb.dst]));
    run.expect_code(1);
    assert!(!exists(&sb.d("a.txt")) && !exists(&sb.d("sync.log")));

    // Inside the source through a link: left out of the mirror.
    let log = src_alias.join("sync.log");
    let args = os(&[&"--once", &"--log-file", &log, &sb.src, &sb.dst]);
    sb.run_raw(&args).expect_code(0);
    assert!(exists(&sb.s("sync.log")));
    assert!(!exists(&sb.d("sync.log")), "the log file was mirrored");
    sb.run_raw(&args).expect_code(0);
    assert!(!exists(&sb.d("sync.log")), "the log file was mirrored");
}

#[test]
fn relative_root_paths_work() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    file(&sb.src, "d/b.txt", "b");
    let run = sb.run(&["--once", "src", "dst"]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    let run = sb.run(&["--once", "./src/../src/", "dst/"]);
    run.expect_code(0).no_errors();
    assert_eq!(run.changes(), vec![]);
    // Nested, relative: still refused.
    sb.run(&["--once", "src", "src/inner"]).expect_code(1);
    assert!(!exists(&sb.s("inner")));
}

#[test]
fn a_replica_file_hard_linked_outside_is_replaced_not_written_through() {
    let sb = Sandbox::new();
    file(&sb.src, "f.txt", "version 1\n");
    sb.sync(&[]).expect_code(0);
    let outside = sb.path("outside.txt");
    fs::hard_link(sb.d("f.txt"), &outside).unwrap();
    file_with(
        &sb.src,
        "f.txt",
        "version 2, longer\n",
        0o644,
        (1_700_000_000, 0),
    );
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("update", "f.txt")]);
    assert_eq!(
        read(&outside),
        b"version 1\n",
        "written through a hard link"
    );
    assert_eq!(read(&sb.d("f.txt")), b"version 2, longer\n");
}

#[test]
fn an_empty_source_makes_an_empty_replica() {
    let sb = Sandbox::new();
    set_mtime(&sb.src, DIR_TIME);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    // Setting the new replica root's mode and mtime may show as a `meta`.
    assert!(
        run.changes().iter().all(|(m, p)| m == "meta" && p == "."),
        "{}",
        run.dump()
    );
    sb.assert_mirror();
    run.tick();
    let run = sb.sync(&[]);
    run.expect_code(0);
    assert_eq!(run.changes(), vec![]);
}

#[test]
fn a_state_folder_swapped_for_a_link_is_not_written_through() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let outside = dir(sb.root(), "outside-state");
    file(&outside, "untouched", "x");
    let before = identities(&outside);
    fs::create_dir(&sb.dst).unwrap();
    symlink(&sb.dst, ".treesync", &outside);
    let run = sb.sync(&["--checksum"]);
    assert_eq!(
        identities(&outside),
        before,
        "written through .treesync\n{}",
        run.dump()
    );
    assert!(matches!(run.code, Some(0 | 1)), "{}", run.dump());
    assert!(
        fs::symlink_metadata(sb.d(".treesync")).is_ok(),
        "the replica's .treesync is never deleted"
    );
}

#[test]
fn state_files_swapped_for_links_are_not_written_through() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    sb.sync(&["--checksum"]).expect_code(0);
    let state: Vec<_> = fs::read_dir(sb.d(".treesync"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let outside = dir(sb.root(), "outside");
    let mut targets = Vec::new();
    for (i, name) in state.iter().enumerate() {
        let target = file(&outside, format!("target{i}"), "outside content\n");
        remove(&sb.d(".treesync").join(name));
        std::os::unix::fs::symlink(&target, sb.d(".treesync").join(name)).unwrap();
        targets.push(target);
    }
    // And the names a lock or cache could get.
    for name in ["lock", "hashes", "state", "pid"] {
        let p = sb.d(".treesync").join(name);
        if !exists(&p) {
            let target = file(&outside, format!("t-{name}"), "outside content\n");
            std::os::unix::fs::symlink(&target, &p).unwrap();
            targets.push(target);
        }
    }
    let before = identities(&outside);
    file_with(&sb.src, "a.txt", "changed", 0o644, (1_700_000_000, 0));
    let run = sb.sync(&["--checksum"]);
    assert_eq!(
        identities(&outside),
        before,
        "written through a link\n{}",
        run.dump()
    );
    for t in targets {
        assert_eq!(read(&t), b"outside content\n");
    }
}

#[test]
fn as_a_user_files_get_the_users_owner_and_lose_setuid() {
    let Some(prefix) = user_prefix() else {
        eprintln!("skipped: needs root and setpriv");
        return;
    };
    let sb = Sandbox::new();
    set_mode(sb.root(), 0o777);
    file_with(&sb.src, "tool", "#!/bin/sh\n", 0o4755, FILE_TIME);
    file_with(&sb.src, "shared", "g\n", 0o2755, FILE_TIME);
    file(&sb.src, "plain", "p\n");
    let run = sb.run_with_prefix(&prefix, &os(&[&"--once", &sb.src, &sb.dst]));
    run.expect_code(0).no_errors();
    for name in ["tool", "shared", "plain"] {
        let md = fs::symlink_metadata(sb.d(name)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "owner of {name}");
        assert_eq!(
            md.mode() & 0o6000,
            0,
            "{name} kept setuid/setgid without the owner"
        );
    }
    assert_eq!(mode_of(&sb.d("tool")) & 0o777, 0o755);
    assert_eq!(read(&sb.d("tool")), b"#!/bin/sh\n");
}

#[test]
fn an_unchanged_tick_reads_no_file_contents() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    file(&sb.src, "d/b.txt", "bravo\n");
    let Some(run) = sb.sync_as_user(&[]) else {
        eprintln!("skipped: needs setpriv as root");
        return;
    };
    run.expect_code(0).no_errors();
    // Unreadable now, same size and mtime: only the mode changes.
    set_mode(&sb.s("a.txt"), 0o000);
    set_mode(&sb.s("d/b.txt"), 0o000);
    let run = sb.sync_as_user(&[]).unwrap();
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "a.txt"), ("meta", "d/b.txt")]);
    sb.assert_mirror();
    let run = sb.sync_as_user(&[]).unwrap();
    run.expect_code(0).no_errors();
    run.assert_changes(&[]);
}

#[test]
fn quiet_still_shows_errors() {
    let sb = Sandbox::new();
    file(&sb.src, "fine-unique-name.txt", "ok\n");
    file(&sb.src, "locked-unique-name", "x\n");
    set_mode(&sb.s("locked-unique-name"), 0o000);
    let Some(run) = sb.sync_as_user(&["-q"]) else {
        eprintln!("skipped: needs setpriv as root");
        return;
    };
    run.expect_code(3);
    assert!(run.stderr.contains("locked-unique-name"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("fine-unique-name.txt"),
        "{}",
        run.stderr
    );
    assert!(run.has("copy", "fine-unique-name.txt"));
}

#[test]
fn an_unreadable_source_root_deletes_nothing() {
    let Some(prefix) = user_prefix() else {
        eprintln!("skipped: needs setpriv as root");
        return;
    };
    let sb = Sandbox::new();
    set_mode(sb.root(), 0o777);
    for i in 0..5 {
        file(&sb.dst, format!("f{i}.txt"), "replica\n");
    }
    chown_tree(&sb.dst, NOBODY);
    let before = listing(&sb.dst);
    set_mode(&sb.src, 0o000); // owned by root: the user cannot list it
    let run = sb.run_with_prefix(&prefix, &os(&[&"--once", &sb.src, &sb.dst]));
    set_mode(&sb.src, 0o755);
    assert!(matches!(run.code, Some(1 | 3)), "{}", run.dump());
    assert!(run.entries("delete").is_empty(), "{}", run.dump());
    let after = listing(&sb.dst);
    assert_same_nodes(
        &before[1..],
        &after[1..],
        "replica before (-) / after (+), root aside",
    );
}

#[test]
fn a_source_root_given_through_a_link_is_followed() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    file(&sb.src, "d/b.txt", "b");
    let alias = symlink(sb.root(), "src-alias", &sb.src);
    let run = sb.run(&os(&[&"--once", &alias, &sb.dst]));
    run.expect_code(0).no_errors();
    sb.assert_mirror();
}

#[test]
fn a_zero_percent_limit_still_allows_ten_deletions() {
    let sb = synced_files(30);
    for i in 0..3 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    let run = sb.sync(&["--max-delete", "0%"]);
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("delete").len(), 3);

    for i in 3..14 {
        remove(&sb.s(format!("f{i:02}.txt")));
    }
    let run = sb.sync(&["--max-delete", "0%"]);
    run.expect_code(4);
    assert_eq!(guard_errors(&run).len(), 1, "{}", run.dump());
    assert!(exists(&sb.d("f03.txt")));
}

#[test]
fn fatal_errors_are_written_to_the_log_file_too() {
    // "Every operation and every error is appended" to the log file: a
    // mirror run from cron has no terminal to show a fatal error.
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let missing = sb.path("unmounted-disk");
    let run = sb.run(&os(&[&"--once", &missing, &sb.dst]));
    run.expect_code(1);
    let text = run.log_path.as_deref().map(fs::read_to_string);
    let text = text.and_then(Result::ok).unwrap_or_default();
    assert!(
        text.contains("ERROR") && text.contains("unmounted-disk"),
        "the log file does not record the fatal error\n{}",
        run.dump()
    );

    let inner = sb.s("inner");
    let run = sb.run(&os(&[&"--once", &sb.src, &inner]));
    run.expect_code(1);
    assert!(
        run.log.iter().any(|e| e.level == "ERROR"),
        "the log file does not record the fatal error\n{}",
        run.dump()
    );
}

#[test]
fn corrupt_state_files_do_not_break_the_sync() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    file(&sb.src, "b.txt", "bravo\n");
    sb.sync(&["--checksum"]).expect_code(0);
    let state = sb.d(".treesync");
    for e in fs::read_dir(&state).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            fs::write(e.path(), b"\xff\x00garbage\n{not what was written").unwrap();
        }
    }
    // A hidden change that only a real hash can see.
    let t = mtime_of(&sb.s("a.txt"));
    rewrite(&sb.s("a.txt"), "ALPHA\n");
    set_mtime(&sb.s("a.txt"), t);
    let run = sb.sync(&["--checksum"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("update", "a.txt")]);
    sb.assert_mirror();
    let run = sb.sync(&["--checksum"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[]);
}

#[test]
fn stopping_an_interval_run_mid_copy_exits_0_and_leaves_no_partial_file() {
    let sb = Sandbox::new();
    let big = sb.s("big.bin");
    write_big_sized(&big, 512 << 20);
    let mut r = sb.spawn_interval("60", &[]);
    let caught = wait_for_temporary(&mut r, &sb.dst, &[]);
    let run = r.stop("INT");
    run.expect_code(0);
    if !caught {
        eprintln!("note: the copy finished before the stop");
    }
    let replica = sb.d("big.bin");
    if exists(&replica) {
        assert!(
            same_content(&big, &replica),
            "partial file under the final name"
        );
    }
    assert_eq!(
        run.log.last().map(|e| e.msg.as_str()),
        Some("tick"),
        "{}",
        run.dump()
    );
}
