//! Running as an ordinary user: replica folders of ours that deny us
//! reading, writing or searching are mirrored in one sync and end with the
//! mode they should have; another user's folder is never changed; groups
//! the user belongs to are kept, and a folder's setgid bit with them.
//!
//! As root the binary runs through `setpriv` as `nobody`; as an ordinary
//! user, directly. Tests that need a second user or chosen groups need
//! root.

mod common;

use common::*;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `chmod -R u+rwX`, so that the sandbox can be removed.
fn unlock_all(root: &Path) {
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwX"])
        .arg(root)
        .status();
}

fn gid_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("lstat").gid()
}

/// `--once SRC DST <extra>` under `prefix` (a `setpriv` command), with no
/// ownership changed first (`Sandbox::sync_as_user` hands both trees to
/// `nobody`).
fn sync_with(sb: &Sandbox, prefix: &[&str], extra: &[&str]) -> Run {
    let mut args: Vec<OsString> = vec!["--once".into()];
    args.extend(extra.iter().map(OsString::from));
    args.push(sb.src.clone().into());
    args.push(sb.dst.clone().into());
    sb.run_with_prefix(prefix, &args)
}

#[test]
fn locked_folders_of_ours_are_mirrored_in_one_sync() {
    let sb = Sandbox::new();
    file(&sb.src, "a/b/f", "f\n");
    file(&sb.src, "a/c/g", "g\n");
    file(&sb.src, "d/h", "h\n");
    file(&sb.src, "e/i", "i\n");
    freeze_dirs(&sb.src, DIR_TIME);
    let Some(first) = sb.sync_as_user(&[]) else {
        eprintln!("skipped: root without setpriv");
        return;
    };
    first.expect_code(0).no_errors();
    sb.assert_mirror();

    // Locked in the replica, at any depth: nothing, read without search,
    // search without read, read-only.
    set_mode(&sb.d("a/b"), 0o000);
    set_mode(&sb.d("a/c"), 0o400);
    set_mode(&sb.d("a"), 0o000);
    set_mode(&sb.d("d"), 0o100);
    set_mode(&sb.d("e"), 0o555);
    file(&sb.src, "a/b/new", "new\n");
    file(&sb.src, "d/h", "h, longer now\n");
    std::fs::remove_file(sb.s("e/i")).unwrap();
    freeze_dirs(&sb.src, DIR_TIME);

    // A dry run changes nothing in the replica, not even for a moment:
    // the locked folders are errors there.
    let dry = sb.sync_as_user(&["--dry-run"]).unwrap();
    assert_eq!(
        dry.get("error", "a").str("op"),
        Some("scan"),
        "{}",
        dry.dump()
    );
    assert_eq!(mode_of(&sb.d("a")), 0o000);
    assert_eq!(mode_of(&sb.d("e")), 0o555);

    let run = sb.sync_as_user(&[]).unwrap();
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("copy", "a/b/new"),
        ("delete", "e/i"),
        ("meta", "a"),
        ("meta", "a/b"),
        ("meta", "a/c"),
        ("meta", "d"),
        ("meta", "e"),
        ("update", "d/h"),
    ]);
    assert_eq!(run.tick().u64("errors"), Some(0));
    sb.assert_mirror();
    for d in ["a", "a/b", "a/c", "d", "e"] {
        assert_eq!(mode_of(&sb.d(d)), 0o755, "{d}");
    }
    assert_eq!(read(&sb.d("a/b/new")), b"new\n");
    assert_eq!(read(&sb.d("a/c/g")), b"g\n");

    let again = sb.sync_as_user(&[]).unwrap();
    again.expect_code(0).no_errors();
    again.assert_changes(&[]);
}

#[test]
fn locked_folders_that_are_not_mirrored_end_as_they_were() {
    let sb = Sandbox::new();
    file(&sb.src, ".syncignore", "kept/\n*.keep\n");
    file(&sb.src, "top.txt", "top\n");
    freeze_dirs(&sb.src, DIR_TIME);
    let Some(first) = sb.sync_as_user(&[]) else {
        eprintln!("skipped: root without setpriv");
        return;
    };
    first.expect_code(0).no_errors();
    // Excluded, never entered; and a folder gone from the source that
    // holds an excluded file: its other file goes, the folder stays.
    file(&sb.dst, "kept/secret", "secret\n");
    file(&sb.dst, "kept/sub/deep", "deep\n");
    file(&sb.dst, "gone/x.txt", "x\n");
    file(&sb.dst, "gone/y.keep", "y\n");
    freeze_dirs(&sb.dst, DIR_TIME);
    set_mode(&sb.d("kept/sub"), 0o000);
    set_mode(&sb.d("kept"), 0o000);
    set_mode(&sb.d("gone"), 0o500);
    if is_root_user() {
        // As `sync_as_user` does before it runs.
        chown_tree(&sb.dst, NOBODY);
    }
    let kept_before = node_at(&sb.d("kept"));
    file(&sb.src, "new.txt", "new\n");

    let run = sb.sync_as_user(&[]).unwrap();
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", "new.txt"), ("delete", "gone/x.txt")]);
    assert!(run.has("warn", "gone"), "{}", run.dump());
    // Untouched: it was never entered.
    let kept = node_at(&sb.d("kept"));
    assert_eq!(
        (kept.mode, kept.mtime_ns, kept.uid, kept.ino),
        (
            0o000,
            kept_before.mtime_ns,
            kept_before.uid,
            kept_before.ino
        )
    );
    assert_eq!(mode_of(&sb.d("gone")), 0o500);
    set_mode(&sb.d("kept"), 0o700);
    assert_eq!(mode_of(&sb.d("kept/sub")), 0o000);
    unlock_all(&sb.dst);
    assert_eq!(read(&sb.d("kept/secret")), b"secret\n");
    assert_eq!(read(&sb.d("kept/sub/deep")), b"deep\n");
    assert_eq!(read(&sb.d("gone/y.keep")), b"y\n");
    assert!(!exists(&sb.d("gone/x.txt")));
    assert_eq!(read(&sb.d("new.txt")), b"new\n");
    unlock_all(&sb.dst);
}

#[test]
fn another_users_folder_is_never_unlocked() {
    let Some(prefix) = user_prefix() else {
        eprintln!("skipped: needs root and setpriv (a second user)");
        return;
    };
    let sb = Sandbox::new();
    set_mode(sb.root(), 0o777);
    file(&sb.src, "theirs/f", "f\n");
    file(&sb.src, "ours/g", "g\n");
    chown_tree(&sb.src, NOBODY);
    sync_with(&sb, &prefix, &[]).expect_code(0).no_errors();
    file(&sb.src, "theirs/f", "f, changed\n");
    file(&sb.src, "ours/g", "g, changed\n");
    chown_tree(&sb.src, NOBODY);
    // Someone else's, and closed to others; ours, closed to all.
    std::os::unix::fs::lchown(sb.d("theirs"), Some(4321), Some(4321)).unwrap();
    set_mode(&sb.d("theirs"), 0o700);
    set_mode(&sb.d("ours"), 0o000);

    let run = sync_with(&sb, &prefix, &[]);
    run.expect_code(3);
    let scan = run.get("error", "theirs");
    assert_eq!(scan.str("op"), Some("scan"), "{}", run.dump());
    assert!(
        scan.str("error").unwrap().contains("Permission denied"),
        "{scan:?}"
    );
    // Ours was unlocked and mirrored; theirs was not changed.
    assert!(run.has("update", "ours/g"), "{}", run.dump());
    assert_eq!(read(&sb.d("ours/g")), b"g, changed\n");
    assert_eq!(mode_of(&sb.d("ours")), 0o755);
    let md = std::fs::symlink_metadata(sb.d("theirs")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (4321, 4321, 0o700)
    );
    assert_eq!(read(&sb.d("theirs/f")), b"f\n");
}

#[test]
fn groups_of_ours_are_kept_and_a_folders_setgid_with_them() {
    if !is_root_user() || !has_setpriv() {
        eprintln!("skipped: needs root and setpriv (chosen groups)");
        return;
    }
    // nobody, in two more groups.
    let prefix = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--groups=4242,4343",
    ];
    let sb = Sandbox::new();
    set_mode(sb.root(), 0o777);
    file(&sb.src, "shared/f", "f\n");
    file(&sb.src, "shared/foreign/g", "g\n");
    file(&sb.src, "plain/h", "h\n");
    file_with(&sb.src, "tool", "#!/bin/sh\n", 0o2755, FILE_TIME);
    chown_tree(&sb.src, NOBODY);
    let chgrp = |rel: &str, gid: u32| {
        std::os::unix::fs::lchown(sb.s(rel), None, Some(gid)).unwrap();
    };
    chgrp("shared", 4242);
    chgrp("shared/f", 4242);
    // A group we are not in: not kept, and no setgid without it.
    chgrp("shared/foreign", 777);
    chgrp("plain", 4343);
    chgrp("tool", 4242);
    set_mode(&sb.s("shared"), 0o2775);
    set_mode(&sb.s("shared/foreign"), 0o2755);
    set_mode(&sb.s("tool"), 0o2755);
    freeze_dirs(&sb.src, DIR_TIME);

    let run = sync_with(&sb, &prefix, &[]);
    run.expect_code(0).no_errors();
    let got = |rel: &str| (gid_of(&sb.d(rel)), mode_of(&sb.d(rel)));
    assert_eq!(got("shared"), (4242, 0o2775));
    assert_eq!(got("shared/f"), (4242, 0o644));
    assert_eq!(got("plain"), (4343, 0o755));
    assert_eq!(got("plain/h"), (NOBODY, 0o644));
    // A group we are not in is not kept, nor setgid without it; setgid
    // on a file is kept only as root.
    assert_eq!(got("shared/foreign"), (NOBODY, 0o755));
    assert_eq!(got("tool"), (4242, 0o755));
    assert_eq!(node_at(&sb.d("shared")).uid, NOBODY);

    let again = sync_with(&sb, &prefix, &[]);
    again.expect_code(0).no_errors();
    again.assert_changes(&[]);

    // A group that changes is mirrored (setgid stays with it).
    chgrp("shared", 4343);
    set_mode(&sb.s("shared"), 0o2775);
    chgrp("shared/f", 4343);
    chgrp("plain", NOBODY);
    freeze_dirs(&sb.src, DIR_TIME);
    let run = sync_with(&sb, &prefix, &[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "plain"), ("meta", "shared"), ("meta", "shared/f")]);
    assert_eq!(got("shared"), (4343, 0o2775));
    assert_eq!(got("shared/f"), (4343, 0o644));
    assert_eq!(got("plain"), (NOBODY, 0o755));

    let again = sync_with(&sb, &prefix, &[]);
    again.expect_code(0).no_errors();
    again.assert_changes(&[]);
}
