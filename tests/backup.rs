//! `--backup-dir` and `--backup-keep`: old versions of replaced and deleted
//! files and links kept under DIR/<tick stamp>/<path>, the log lines that
//! say so, the checks on DIR, and pruning.

mod common;

use common::mounts::Mounted;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};

/// `--backup-dir <sandbox>/versions`, beside the roots.
fn versions(sb: &Sandbox) -> PathBuf {
    sb.path("versions")
}

fn backup_args(dir: &Path) -> Vec<&str> {
    vec!["--backup-dir", dir.to_str().unwrap()]
}

/// The stamp folders under `dir`, sorted.
fn stamps(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|it| {
            it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The one stamp folder under `dir`; its name is the tick's UTC start.
fn only_stamp(dir: &Path, run: &Run) -> PathBuf {
    let all = stamps(dir);
    assert_eq!(all.len(), 1, "{all:?}\n{}", run.dump());
    let name = &all[0];
    // YYYY-MM-DDTHHMMSS.mmmZ, within the run's tick.
    assert_eq!(name.len(), 22, "{name}");
    let rfc = format!("{}:{}:{}", &name[..13], &name[13..15], &name[15..]);
    let started = ts_ms(&rfc);
    let tick = run.tick();
    assert!(
        (tick_start_ms(tick) - 1000..=ts_ms(&tick.ts)).contains(&started),
        "stamp {name} outside tick {tick:?}"
    );
    dir.join(name)
}

/// The `backup` entry for `path` comes before `then` for it, and names
/// where the old version went.
fn backed_up_before(run: &Run, path: &str, then: &str, stamp: &Path) {
    let (b, op) = (run.index("backup", path), run.index(then, path));
    assert!(b < op, "backup after {then}\n{}", run.dump());
    let to = run.get("backup", path).str("to").unwrap().to_string();
    let name = stamp.file_name().unwrap().to_str().unwrap();
    assert_eq!(to, format!("{name}/{path}"));
}

#[test]
fn backup_keeps_the_old_version_of_an_update() {
    let sb = Sandbox::new();
    file(&sb.src, "docs/a.txt", "old content");
    file(&sb.src, "same.txt", "same");
    sb.sync(&[]).expect_code(0);
    file_with(
        &sb.src,
        "docs/a.txt",
        "new content!",
        0o644,
        (1_700_000_000, 0),
    );
    let dir = versions(&sb);
    let run = sb.sync(&backup_args(&dir));
    run.expect_code(0).no_errors();
    assert_eq!(read(&sb.d("docs/a.txt")), b"new content!");
    let stamp = only_stamp(&dir, &run);
    assert_eq!(read(&stamp.join("docs/a.txt")), b"old content");
    // The old version as it was: its own times and mode.
    assert_eq!(mtime_of(&stamp.join("docs/a.txt")), FILE_TIME);
    assert!(!stamp.join("same.txt").exists());
    backed_up_before(&run, "docs/a.txt", "update", &stamp);
    assert_eq!(run.tick().u64("backup"), Some(1));
    sb.assert_mirror();
}

#[test]
fn backup_keeps_a_deleted_file_and_a_retargeted_link() {
    let sb = Sandbox::new();
    file(&sb.src, "a/gone.txt", "keep me");
    file(&sb.src, "a/stays.txt", "x");
    symlink(&sb.src, "l", "a/stays.txt");
    sb.sync(&[]).expect_code(0);
    remove(&sb.s("a/gone.txt"));
    remove(&sb.s("l"));
    symlink(&sb.src, "l", "elsewhere");
    let dir = versions(&sb);
    let run = sb.sync(&backup_args(&dir));
    run.expect_code(0).no_errors();
    let stamp = only_stamp(&dir, &run);
    assert!(!exists(&sb.d("a/gone.txt")));
    assert_eq!(read(&stamp.join("a/gone.txt")), b"keep me");
    assert_eq!(
        fs::read_link(stamp.join("l")).unwrap(),
        Path::new("a/stays.txt")
    );
    assert_eq!(fs::read_link(sb.d("l")).unwrap(), Path::new("elsewhere"));
    backed_up_before(&run, "a/gone.txt", "delete", &stamp);
    backed_up_before(&run, "l", "symlink", &stamp);
    assert_eq!(run.tick().u64("backup"), Some(2));
    sb.assert_mirror();
}

#[test]
fn backup_of_a_type_change_keeps_the_file_not_the_folders() {
    let sb = Sandbox::new();
    file(&sb.src, "t", "was a file");
    file(&sb.src, "d/inner.txt", "in a folder");
    sb.sync(&[]).expect_code(0);
    remove(&sb.s("t"));
    file(&sb.src, "t/now.txt", "now a folder");
    remove(&sb.s("d"));
    file(&sb.src, "d", "now a file");
    let dir = versions(&sb);
    let run = sb.sync(&backup_args(&dir));
    run.expect_code(0).no_errors();
    let stamp = only_stamp(&dir, &run);
    assert_eq!(read(&stamp.join("t")), b"was a file");
    assert_eq!(read(&stamp.join("d/inner.txt")), b"in a folder");
    backed_up_before(&run, "t", "delete", &stamp);
    assert!(run.index("delete", "t") < run.index("mkdir", "t"));
    // A folder is not backed up, its files are.
    assert!(!run.has("backup", "d"));
    assert_eq!(run.entries("backup").len(), 2, "{}", run.dump());
    sb.assert_mirror();
}

#[test]
fn backup_in_a_dry_run_is_logged_and_moves_nothing() {
    let sb = Sandbox::new();
    file(&sb.src, "u.txt", "old");
    file(&sb.src, "gone.txt", "old");
    sb.sync(&[]).expect_code(0);
    file_with(&sb.src, "u.txt", "newer", 0o644, (1_700_000_000, 0));
    remove(&sb.s("gone.txt"));
    let dir = versions(&sb);
    let mut args = backup_args(&dir);
    args.push("--dry-run");
    let run = sb.sync(&args);
    run.expect_code(0).no_errors();
    for (path, then) in [("u.txt", "update"), ("gone.txt", "delete")] {
        assert!(run.get("backup", path).dry_run());
        assert!(run.index("backup", path) < run.index(then, path));
    }
    assert!(!exists(&dir), "a dry run made the backup folder");
    assert_eq!(read(&sb.d("u.txt")), b"old");
    assert_eq!(read(&sb.d("gone.txt")), b"old");
}

#[test]
fn backup_dir_inside_a_root_is_refused() {
    let sb = Sandbox::new();
    file(&sb.src, "f", "x");
    sb.sync(&[]).expect_code(0);
    for inside in [sb.s("versions"), sb.d("versions"), sb.dst.clone()] {
        let run = sb.sync(&backup_args(&inside));
        run.expect_code(1);
        assert!(
            run.stderr.contains("backup folder") && run.stderr.contains("outside both roots"),
            "{}",
            run.dump()
        );
    }
    assert!(!exists(&sb.d("versions")));
}

#[test]
fn backup_dir_on_another_filesystem_is_refused() {
    let sb = Sandbox::new();
    file(&sb.src, "f", "x");
    sb.sync(&[]).expect_code(0);
    let mount = match Mounted::tmpfs(&sb.path("other-fs"), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: a backup folder on another filesystem: {why}");
            return;
        }
    };
    let run = sb.sync(&backup_args(&sb.path("other-fs/versions")));
    run.expect_code(1);
    assert!(
        run.stderr.contains("not on the filesystem of replica"),
        "{}",
        run.dump()
    );
    drop(mount);
}

#[test]
fn backup_keep_prunes_old_stamps_and_keeps_young_ones_and_other_names() {
    let sb = Sandbox::new();
    file(&sb.src, "f", "x");
    sb.sync(&[]).expect_code(0);
    let dir = versions(&sb);
    let old = "2001-02-03T040506.789Z";
    let young = stamp_ago(3600);
    file(&dir, format!("{old}/a/f"), "old backup");
    file(&dir, format!("{young}/f"), "young backup");
    file(&dir, "notes/2001-02-03T040506.789Z", "mine");
    file(&dir, "2001-02-03T040506.789Z.txt", "mine");
    let mut args = backup_args(&dir);
    args.extend(["--backup-keep", "7d"]);
    sb.sync(&args).expect_code(0).no_errors();
    let mut want = vec![
        young.clone(),
        "2001-02-03T040506.789Z.txt".to_string(),
        "notes".to_string(),
    ];
    want.sort();
    assert_eq!(stamps(&dir), want);
}

#[test]
fn backup_keep_never_removes_across_a_mount() {
    let sb = Sandbox::new();
    file(&sb.src, "f", "x");
    sb.sync(&[]).expect_code(0);
    let dir = versions(&sb);
    let (mounted, bound, plain) = (
        "2001-01-01T000000.000Z",
        "2001-01-02T000000.000Z",
        "2001-01-03T000000.000Z",
    );
    dir_at(&dir.join(mounted));
    dir_at(&dir.join(bound).join("sub"));
    file(&dir, format!("{plain}/f"), "old backup");
    let outside = sb.path("outside");
    file(&outside, "p", "someone else's\n");
    file(&outside, "d/q", "someone else's\n");
    let _tmpfs = match Mounted::tmpfs(&dir.join(mounted), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: mounts under the backup folder: {why}");
            return;
        }
    };
    file(&dir.join(mounted), "t", "on the tmpfs\n");
    let _bind = Mounted::bind(&outside, &dir.join(bound).join("sub")).expect("bind mount");
    let mut args = backup_args(&dir);
    args.extend(["--backup-keep", "1d"]);
    let run = sb.sync(&args);
    run.expect_code(0);
    assert_eq!(read(&outside.join("p")), b"someone else's\n");
    assert_eq!(read(&outside.join("d/q")), b"someone else's\n");
    assert_eq!(read(&dir.join(mounted).join("t")), b"on the tmpfs\n");
    // The plain old stamp went, with a line saying so; the others stay.
    assert!(!exists(&dir.join(plain)));
    let pruned: Vec<_> = run.entries("prune").iter().map(|e| e.str("to")).collect();
    assert_eq!(pruned, [Some(plain)], "{}", run.dump());
    assert_eq!(run.entries("warn").len(), 2, "{}", run.dump());
}

fn dir_at(path: &Path) {
    fs::create_dir_all(path).unwrap();
}

/// The stamp of `secs` ago.
fn stamp_ago(secs: i64) -> String {
    let ms = now_ms() - secs * 1000;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}", ms / 1000), "+%Y-%m-%dT%H%M%S"])
        .output()
        .expect("date");
    let s = String::from_utf8(out.stdout).unwrap();
    format!("{}.{:03}Z", s.trim(), ms % 1000)
}

#[test]
fn a_backup_that_fails_withholds_the_update_and_is_tried_again() {
    // The backup folder goes away under a running mirror: its old handle
    // leads nowhere, so keeping an old version fails.
    let sb = Sandbox::new();
    file(&sb.src, "f", "old");
    sb.sync(&[]).expect_code(0);
    let dir = versions(&sb);
    let mut running = sb.spawn_interval("1", &backup_args(&dir));
    running.wait_ticks(1);
    fs::remove_dir(&dir).unwrap();
    file_with(&sb.src, "f", "newer", 0o644, (1_700_000_000, 0));
    running.wait_fresh_tick();
    let n = running.ticks();
    running.wait_ticks(n + 1);
    let run = running.stop("TERM");
    run.expect_code(0);
    let failed: Vec<_> = run
        .entries("error")
        .into_iter()
        .filter(|e| e.path.as_deref() == Some("f"))
        .collect();
    assert!(failed.len() >= 2, "tried once only\n{}", run.dump());
    assert_eq!(failed[0].str("op"), Some("update"));
    assert!(!run.has("update", "f"), "{}", run.dump());
    assert_eq!(read(&sb.d("f")), b"old");
}

#[test]
fn a_replica_folder_on_another_filesystem_is_left_alone_and_the_rest_kept() {
    // Another filesystem mounted inside the replica: nothing below it is
    // written (its old file could not be linked into DIR either), the rest
    // is updated with its old version kept.
    let sb = Sandbox::new();
    file(&sb.src, "m/f", "old");
    file(&sb.src, "g", "old");
    sb.sync(&[]).expect_code(0);
    let mount = match Mounted::tmpfs(&sb.d("m"), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: a replica folder on another filesystem: {why}");
            return;
        }
    };
    file(&sb.dst, "m/f", "old");
    file_with(&sb.src, "m/f", "newer", 0o644, (1_700_000_000, 0));
    file_with(&sb.src, "g", "newer", 0o644, (1_700_000_000, 0));
    let run = sb.sync(&backup_args(&versions(&sb)));
    run.expect_code(3);
    assert_eq!(read(&sb.d("m/f")), b"old");
    let err = run.get("error", "m");
    assert!(
        err.str("error").unwrap_or_default().contains("mounted"),
        "{}",
        run.dump()
    );
    assert!(!run.has("backup", "m/f") && !run.has("update", "m/f"));
    // The others are not held up.
    assert_eq!(read(&sb.d("g")), b"newer");
    assert!(run.has("backup", "g"));
    drop(mount);
}
