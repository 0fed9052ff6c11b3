//! Replicas on filesystems that keep less than a POSIX one (Safety rule 7):
//! exFAT through FUSE (names that ignore case, no modes, no owners, no
//! links, 1 s mtimes here) and ext4 with 128-byte inodes (1 s mtimes). Each
//! test makes its filesystem on a loop device; without root, or where the
//! mount fails, it says so on stderr and is skipped.

mod common;
use common::mounts::{Image, Mounted};
use common::*;

use std::path::Path;

/// A sandbox whose replica is `dst` on a fresh `kind` filesystem; `None`
/// (after saying why on stderr) where that cannot be had.
fn sandbox_on(kind: Image) -> Option<(Sandbox, Mounted)> {
    let mut sb = Sandbox::new();
    match Mounted::image(&sb.path("disk"), kind, 64) {
        Ok(m) => {
            sb.dst = m.dir.join("dst");
            Some((sb, m))
        }
        Err(why) => {
            eprintln!("skipped: {kind:?} replica: {why}");
            None
        }
    }
}

/// Files in a few folders with assorted modes and nanosecond mtimes.
fn many_files(sb: &Sandbox, n: usize) {
    for i in 0..n {
        let mode = [0o644, 0o600, 0o755][i % 3];
        let mtime = (1_700_000_000 + i as i64, 123_456_789 + i as u32);
        file_with(
            &sb.src,
            format!("d{}/f{i:03}.txt", i % 7),
            format!("file {i}\n"),
            mode,
            mtime,
        );
    }
}

/// The names in a folder, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The run after a first sync of files made moments before it: those
/// copies are racy (their source ctime is inside the copy's window, which
/// on a replica that keeps whole seconds is a second wide), so this run
/// compares them by content once, as soon as their sources are older than
/// that window (nothing to wait on but time). It changes nothing.
fn settle(sb: &Sandbox) {
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(run.changes().is_empty(), "{}", run.dump());
}

/// Asserts a run changed nothing on the replica and compared no content
/// (`-v` shows each comparison on the terminal).
fn assert_idle(run: &Run) {
    run.expect_code(0).no_errors();
    assert!(run.changes().is_empty(), "{}", run.dump());
    assert!(!run.stderr.contains(" compare, path:"), "{}", run.dump());
    assert_eq!(run.tick().u64("meta").unwrap_or(0), 0);
}

#[test]
fn exfat_keeps_content_and_mtimes_with_one_warn_and_a_second_run_does_nothing() {
    let Some((sb, _m)) = sandbox_on(Image::Exfat) else {
        return;
    };
    many_files(&sb, 300);
    let first = sb.sync(&[]);
    first.expect_code(0).no_errors();
    assert_eq!(first.tick().u64("copy"), Some(300), "{}", first.dump());
    let warns = first.entries("warn");
    assert_eq!(warns.len(), 1, "{}", first.dump());
    let reason = warns[0].str("reason").unwrap_or_default();
    assert!(
        reason.contains("permission bits") && reason.contains("owners"),
        "{reason}"
    );
    for i in [0, 1, 299] {
        let rel = format!("d{}/f{i:03}.txt", i % 7);
        assert_eq!(read(&sb.d(&rel)), format!("file {i}\n").into_bytes());
        assert_eq!(mtime_of(&sb.d(&rel)).0, 1_700_000_000 + i as i64);
    }
    settle(&sb);
    assert_idle(&sb.sync(&["-v"]));
    // A dry run uses the probe the last run saved: nothing to do either.
    let dry = sb.sync(&["--dry-run", "-v"]);
    assert_idle(&dry);
}

#[test]
fn exfat_names_that_differ_only_in_case_the_first_in_byte_order_wins_every_run() {
    let Some((sb, _m)) = sandbox_on(Image::Exfat) else {
        return;
    };
    file_with(&sb.src, "a.txt", "lower\n", 0o644, (1_700_000_000, 0));
    sb.sync(&[]).expect_code(0);
    // "A.txt" sorts first: it wins over "a.txt", and the replica's
    // "a.txt" is its entry (no delete and copy).
    file_with(&sb.src, "A.txt", "UPPER!\n", 0o644, (1_700_000_001, 0));
    for round in 0..2 {
        let run = sb.sync(&[]);
        run.expect_code(3);
        let err = run.get("error", "a.txt");
        assert_eq!(err.str("op"), Some("collision"), "{}", run.dump());
        assert!(err.str("error").unwrap_or_default().contains("A.txt"));
        assert_eq!(run.errors().len(), 1, "{}", run.dump());
        assert!(!run.has("delete", "a.txt") && !run.has("copy", "a.txt"));
        assert!(!run.has("copy", "A.txt"), "{}", run.dump());
        if round == 0 {
            assert!(run.has("update", "A.txt"), "{}", run.dump());
        } else {
            assert!(run.changes().is_empty(), "{}", run.dump());
        }
        // One entry holds the winner (read by its listed name: FUSE may
        // keep the other spelling's old size cached for a moment).
        assert_eq!(names_in(&sb.dst), [".treesync", "A.txt"]);
        assert_eq!(read(&sb.d("A.txt")), b"UPPER!\n");
    }
    // A name whose case changed in the source pairs with the replica's
    // entry: nothing is deleted and copied again. The file's content is
    // compared (its stored name is another spelling); where FUSE cannot
    // tell it is the same file, it is rewritten once, under the new name.
    std::fs::remove_file(sb.s("a.txt")).unwrap();
    file_with(&sb.src, "Notes/Todo.md", "x\n", 0o644, (1_700_000_000, 0));
    sb.sync(&[]).expect_code(0);
    std::fs::rename(sb.s("Notes"), sb.s("NOTES")).unwrap();
    std::fs::rename(sb.s("NOTES/Todo.md"), sb.s("NOTES/TODO.MD")).unwrap();
    let run = sb.sync(&[]);
    run.expect_code(0);
    // The renames moved the folders' mtimes: a `meta` may follow, when
    // they fell in another second than the replica's.
    for verb in ["copy", "delete", "mkdir", "rmdir"] {
        assert!(run.entries(verb).is_empty(), "{}", run.dump());
    }
    assert_eq!(read(&sb.d("NOTES/TODO.MD")), b"x\n");
    let again = sb.sync(&[]);
    again.expect_code(0);
    for verb in ["copy", "update", "delete", "mkdir", "rmdir"] {
        assert!(again.entries(verb).is_empty(), "{}", again.dump());
    }
}

#[test]
fn exfat_a_source_folder_named_like_the_state_folder_in_another_case_stays_out_of_it() {
    let Some((sb, _m)) = sandbox_on(Image::Exfat) else {
        return;
    };
    file(&sb.src, ".TreeSync/lock", "not treesync's\n");
    file(&sb.src, ".TreeSync/fs-probe", "not treesync's\n");
    file(&sb.src, "plain.txt", "x\n");
    for _ in 0..2 {
        let run = sb.sync(&[]);
        run.expect_code(3);
        let err = run.get("error", ".TreeSync");
        assert_eq!(err.str("op"), Some("collision"), "{}", run.dump());
        assert_eq!(run.errors().len(), 1, "{}", run.dump());
        assert!(!run.has("mkdir", ".TreeSync"), "{}", run.dump());
        assert_ne!(read(&sb.d(".treesync/lock")), b"not treesync's\n");
        assert_ne!(read(&sb.d(".treesync/fs-probe")), b"not treesync's\n");
    }
}

#[test]
fn exfat_a_symlink_is_an_error_every_run_and_the_rest_is_mirrored() {
    let Some((sb, _m)) = sandbox_on(Image::Exfat) else {
        return;
    };
    file(&sb.src, "plain.txt", "x\n");
    symlink(&sb.src, "link", "plain.txt");
    for _ in 0..2 {
        let run = sb.sync(&[]);
        run.expect_code(3);
        let err = run.get("error", "link");
        assert_eq!(err.str("op"), Some("symlink"), "{}", run.dump());
        assert_eq!(run.errors().len(), 1, "{}", run.dump());
        assert_eq!(read(&sb.d("plain.txt")), b"x\n");
    }
    // Known from the probe, so a dry run reports it too, and says why.
    let dry = sb.sync(&["--dry-run"]);
    let err = dry.get("error", "link");
    assert!(err.dry_run(), "{}", dry.dump());
    assert!(
        err.str("error")
            .unwrap_or_default()
            .contains("symbolic links"),
        "{}",
        dry.dump()
    );
    assert!(!dry.has("symlink", "link"), "{}", dry.dump());
}

#[test]
fn ext4_with_one_second_timestamps_a_no_change_run_does_nothing() {
    let Some((sb, _m)) = sandbox_on(Image::Ext4WholeSeconds) else {
        return;
    };
    many_files(&sb, 50);
    sb.sync(&[]).expect_code(0).no_errors();
    settle(&sb);
    assert_idle(&sb.sync(&["-v"]));
    // A change of a whole second with the same size is still seen.
    set_mtime(&sb.s("d0/f000.txt"), (1_700_000_100, 0));
    let run = sb.sync(&[]);
    run.expect_code(0);
    assert_eq!(run.changes(), [("meta".into(), "d0/f000.txt".into())]);
}

#[test]
fn exfat_letters_with_one_capital_are_one_name_and_never_replace_each_other() {
    let Some((sb, _m)) = sandbox_on(Image::Exfat) else {
        return;
    };
    // Final and medial sigma: lowercase apart, one capital (Σ), one name on
    // exFAT. "ς" sorts before "σ" in UTF-8: it wins.
    file(&sb.src, "ς.txt", "final sigma\n");
    file(&sb.src, "σ.txt", "medial sigma, other content\n");
    file(&sb.src, "ς/a", "in the first folder\n");
    file(&sb.src, "σ/b", "in the second folder\n");
    for round in 0..3 {
        let run = sb.sync(&[]);
        run.expect_code(3);
        for loser in ["σ.txt", "σ"] {
            let err = run.get("error", loser);
            assert_eq!(err.str("op"), Some("collision"), "{}", run.dump());
        }
        assert!(run.entries("delete").is_empty(), "{}", run.dump());
        assert_eq!(read(&sb.d("ς.txt")), b"final sigma\n", "round {round}");
        assert_eq!(read(&sb.d("ς/a")), b"in the first folder\n");
        if round > 0 {
            assert!(run.changes().is_empty(), "{}", run.dump());
        }
    }
}

#[test]
fn a_rewrite_within_the_replicas_second_is_still_mirrored() {
    let Some((sb, _m)) = sandbox_on(Image::Ext4WholeSeconds) else {
        return;
    };
    file(&sb.src, "f", "version-1\n");
    // Older than the 100 ms a copy from a nanosecond source allows for a
    // write in flight, younger than the replica's one-second step: only
    // the replica's step makes this copy one to check again.
    std::thread::sleep(std::time::Duration::from_millis(300));
    sb.sync(&[]).expect_code(0);
    // The replica keeps X.000; a rewrite of the same size stamped half a
    // second later is within the replica's window: metadata cannot see it.
    let (secs, _) = mtime_of(&sb.d("f"));
    file(&sb.src, "f", "version-2\n");
    set_mtime(&sb.s("f"), (secs, 500_000_000));
    let run = sb.sync(&[]);
    run.expect_code(0);
    assert!(run.has("update", "f"), "{}", run.dump());
    assert_eq!(read(&sb.d("f")), b"version-2\n");
}

#[test]
fn checksum_reads_a_source_whose_filesystem_can_put_its_ctime_back() {
    // exFAT through FUSE reports ctime = mtime: a writer that puts the old
    // mtime back leaves the digest cache's key unchanged.
    let mut sb = Sandbox::new();
    let m = match Mounted::image(&sb.path("disk"), Image::Exfat, 64) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: exFAT source: {why}");
            return;
        }
    };
    sb.src = m.dir.join("src");
    file(&sb.src, "f", "content-AAAA\n");
    set_mtime(&sb.s("f"), (1_700_000_000, 0));
    for _ in 0..2 {
        sb.sync(&["--checksum"]).expect_code(0);
    }
    std::fs::write(sb.s("f"), "content-BBBB\n").unwrap();
    set_mtime(&sb.s("f"), (1_700_000_000, 0));
    let run = sb.sync(&["--checksum"]);
    run.expect_code(0);
    assert!(run.has("update", "f"), "{}", run.dump());
    assert_eq!(read(&sb.d("f")), b"content-BBBB\n");
}

#[test]
fn exfat_a_name_that_pairs_with_another_spelling_is_compared_by_content() {
    let Some((sb, _m)) = sandbox_on(Image::Exfat) else {
        return;
    };
    // Same size, mtimes within the replica's second: metadata cannot tell
    // the two files apart once the first is gone.
    file_with(
        &sb.src,
        "Report.txt",
        "AAAA\n",
        0o644,
        (1_700_000_000, 200_000_000),
    );
    file_with(
        &sb.src,
        "report.txt",
        "bbbb\n",
        0o644,
        (1_700_000_000, 700_000_000),
    );
    sb.sync(&[]).expect_code(3);
    assert_eq!(read(&sb.d("Report.txt")), b"AAAA\n");
    std::fs::remove_file(sb.s("Report.txt")).unwrap();
    let run = sb.sync(&[]);
    run.expect_code(0);
    assert!(run.has("update", "report.txt"), "{}", run.dump());
    assert_eq!(names_in(&sb.dst), [".treesync", "report.txt"]);
    assert_eq!(read(&sb.d("report.txt")), b"bbbb\n");
    // Stored under its own name now: nothing more to do.
    let again = sb.sync(&[]);
    again.expect_code(0);
    assert!(again.changes().is_empty(), "{}", again.dump());
}

#[test]
fn a_backup_folder_on_exfat_is_refused_at_start_for_want_of_hard_links() {
    let Some((sb, m)) = sandbox_on(Image::Exfat) else {
        return;
    };
    file(&sb.src, "f", "x\n");
    let versions = m.dir.join("versions");
    let run = sb.sync(&["--backup-dir", versions.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(run.stderr.contains("hard links"), "{}", run.stderr);
    // Nothing was synced, and the probe left nothing behind.
    assert!(!exists(&sb.d("f")));
    assert!(std::fs::read_dir(&versions).map_or(true, |mut d| d.next().is_none()));
}
