//! Changes between two syncs: metadata only, content, new entries,
//! deletions and type changes.

mod common;

use common::*;
use std::fs;

/// A synced sandbox with a few files and folders.
fn synced() -> Sandbox {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    file(&sb.src, "b.txt", "bravo\n");
    file(&sb.src, "dir/c.txt", "charlie\n");
    file(&sb.src, "dir/sub/d.txt", "delta\n");
    file(&sb.src, "dir/sub/e.txt", "echo\n");
    symlink(&sb.src, "link", "a.txt");
    symlink(&sb.src, "dlink", "dir");
    dir(&sb.src, "emptydir");
    freeze_dirs(&sb.src, DIR_TIME);
    sb.sync(&[]).expect_code(0).no_errors();
    sb.assert_mirror();
    sb
}

/// Puts the folder times back so that only the intended change remains.
fn refreeze(sb: &Sandbox) {
    freeze_dirs(&sb.src, DIR_TIME);
}

#[test]
fn touch_only_is_a_meta_and_keeps_the_inode() {
    let sb = synced();
    let ino_before = ino(&sb.d("a.txt"));
    let ino_c = ino(&sb.d("dir/c.txt"));
    set_mtime(&sb.s("a.txt"), (1_700_000_000, 111));
    set_mode(&sb.s("dir/c.txt"), 0o600);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "a.txt"), ("meta", "dir/c.txt")]);
    sb.assert_mirror();
    assert_eq!(
        ino(&sb.d("a.txt")),
        ino_before,
        "content must not be rewritten"
    );
    assert_eq!(ino(&sb.d("dir/c.txt")), ino_c);
    assert_eq!(mtime_of(&sb.d("a.txt")), (1_700_000_000, 111));
    let t = run.tick();
    assert_eq!(t.u64("meta"), Some(2));
    assert_eq!(t.u64("bytes"), Some(0));
}

#[test]
fn a_link_retimed_only_is_a_meta() {
    let sb = synced();
    set_mtime(&sb.s("link"), (1_700_000_000, 5));
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "link")]);
    sb.assert_mirror();
}

#[test]
fn same_size_and_mtime_with_new_content_is_caught_only_by_checksum() {
    let sb = synced();
    // The files were copied right after they were written, so that copy
    // is checked again by content at the next sync (a write may have been
    // in flight); once that sync found them equal, with their stamps well
    // in the past, metadata decides again.
    std::thread::sleep(std::time::Duration::from_millis(200));
    sb.sync(&[]).expect_code(0).assert_changes(&[]);
    let t = mtime_of(&sb.s("a.txt"));
    rewrite(&sb.s("a.txt"), "ALPHA\n");
    set_mtime(&sb.s("a.txt"), t);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[]);
    assert_eq!(
        read(&sb.d("a.txt")),
        b"alpha\n",
        "metadata says equal: untouched"
    );

    let run = sb.sync(&["--checksum"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("update", "a.txt")]);
    assert_eq!(run.get("update", "a.txt").u64("bytes"), Some(6));
    assert_eq!(read(&sb.d("a.txt")), b"ALPHA\n");
    sb.assert_mirror();
}

#[test]
fn checksum_does_not_trust_a_cached_hash_after_a_hidden_change() {
    let sb = synced();
    // A first --checksum sync reads (and may cache) every hash.
    let run = sb.sync(&["--checksum"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[]);

    for (name, new) in [("b.txt", "BRAVO\n"), ("dir/c.txt", "CHARLIE\n")] {
        let t = mtime_of(&sb.s(name));
        rewrite(&sb.s(name), new);
        set_mtime(&sb.s(name), t);
    }
    // Replica side too: same size and mtime, different bytes.
    let t = mtime_of(&sb.d("dir/sub/d.txt"));
    rewrite(&sb.d("dir/sub/d.txt"), "DELTA\n");
    set_mtime(&sb.d("dir/sub/d.txt"), t);

    let run = sb.sync(&["--checksum"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("update", "b.txt"),
        ("update", "dir/c.txt"),
        ("update", "dir/sub/d.txt"),
    ]);
    sb.assert_mirror();
}

#[test]
fn same_size_new_mtime_new_content_is_an_update() {
    let sb = synced();
    let ino_before = ino(&sb.d("a.txt"));
    file(&sb.src, "a.txt", "ALPHA\n");
    set_mtime(&sb.s("a.txt"), (1_700_000_000, 1));
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("update", "a.txt")]);
    assert_eq!(run.get("update", "a.txt").u64("bytes"), Some(6));
    assert_eq!(read(&sb.d("a.txt")), b"ALPHA\n");
    assert_ne!(
        ino(&sb.d("a.txt")),
        ino_before,
        "new content goes through a temporary renamed over the old file"
    );
    sb.assert_mirror();
}

#[test]
fn different_size_is_an_update_with_bytes() {
    let sb = synced();
    file(&sb.src, "dir/sub/d.txt", "delta, now longer\n");
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("update", "dir/sub/d.txt")]);
    assert_eq!(run.get("update", "dir/sub/d.txt").u64("bytes"), Some(18));
    assert_eq!(run.tick().u64("bytes"), Some(18));
    sb.assert_mirror();
}

#[test]
fn new_file_is_a_copy_and_new_folder_a_mkdir() {
    let sb = synced();
    file(&sb.src, "new.txt", "brand new\n");
    file(&sb.src, "newdir/inner/f.bin", vec![7u8; 4096]);
    dir(&sb.src, "newdir/empty");
    symlink(&sb.src, "newdir/l", "inner/f.bin");
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("copy", "new.txt"),
        ("copy", "newdir/inner/f.bin"),
        ("mkdir", "newdir"),
        ("mkdir", "newdir/empty"),
        ("mkdir", "newdir/inner"),
        ("symlink", "newdir/l"),
    ]);
    assert_eq!(run.get("copy", "new.txt").u64("bytes"), Some(10));
    assert_eq!(
        run.get("copy", "newdir/inner/f.bin").u64("bytes"),
        Some(4096)
    );
    assert_eq!(
        run.get("symlink", "newdir/l").str("target"),
        Some("inner/f.bin")
    );
    // A folder is created before what goes in it.
    assert!(run.index("mkdir", "newdir") < run.index("mkdir", "newdir/inner"));
    assert!(run.index("mkdir", "newdir/inner") < run.index("copy", "newdir/inner/f.bin"));
    let t = run.tick();
    assert_eq!(t.u64("copy"), Some(2));
    assert_eq!(t.u64("mkdir"), Some(3));
    assert_eq!(t.u64("bytes"), Some(4106));
    sb.assert_mirror();
}

#[test]
fn retargeted_link_is_a_symlink() {
    let sb = synced();
    remove(&sb.s("link"));
    symlink(&sb.src, "link", "b.txt");
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("symlink", "link")]);
    assert_eq!(run.get("symlink", "link").str("target"), Some("b.txt"));
    assert_eq!(fs::read_link(sb.d("link")).unwrap().to_str(), Some("b.txt"));
    sb.assert_mirror();
}

#[test]
fn deletions_remove_files_links_and_folders_children_first() {
    let sb = synced();
    remove(&sb.s("b.txt"));
    remove(&sb.s("link"));
    remove(&sb.s("dir"));
    remove(&sb.s("emptydir"));
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("delete", "b.txt"),
        ("delete", "dir/c.txt"),
        ("delete", "dir/sub/d.txt"),
        ("delete", "dir/sub/e.txt"),
        ("delete", "link"),
        ("rmdir", "dir"),
        ("rmdir", "dir/sub"),
        ("rmdir", "emptydir"),
    ]);
    for child in ["dir/sub/d.txt", "dir/sub/e.txt"] {
        assert!(run.index("delete", child) < run.index("rmdir", "dir/sub"));
    }
    assert!(run.index("delete", "dir/c.txt") < run.index("rmdir", "dir"));
    assert!(run.index("rmdir", "dir/sub") < run.index("rmdir", "dir"));
    // `dlink` pointed at `dir`: it is a link and stays a link.
    assert!(fs::symlink_metadata(sb.d("dlink"))
        .unwrap()
        .file_type()
        .is_symlink());
    let t = run.tick();
    assert_eq!(t.u64("delete"), Some(5));
    assert_eq!(t.u64("rmdir"), Some(3));
    sb.assert_mirror();
}

#[test]
fn type_changes_delete_the_old_entry_then_create_the_new() {
    let sb = synced();
    // file -> folder
    remove(&sb.s("a.txt"));
    file(&sb.src, "a.txt/inside", "now a folder\n");
    // folder -> file
    remove(&sb.s("dir"));
    file(&sb.src, "dir", "now a file\n");
    // file -> symlink
    remove(&sb.s("b.txt"));
    symlink(&sb.src, "b.txt", "dir");
    // symlink -> folder
    remove(&sb.s("dlink"));
    dir(&sb.src, "dlink");
    // folder -> symlink
    remove(&sb.s("emptydir"));
    symlink(&sb.src, "emptydir", "/");
    // symlink -> file
    remove(&sb.s("link"));
    file(&sb.src, "link", "now a file\n");
    refreeze(&sb);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    run.assert_changes(&[
        ("copy", "a.txt/inside"),
        ("copy", "dir"),
        ("copy", "link"),
        ("delete", "a.txt"),
        ("delete", "b.txt"),
        ("delete", "dir/c.txt"),
        ("delete", "dir/sub/d.txt"),
        ("delete", "dir/sub/e.txt"),
        ("delete", "dlink"),
        ("delete", "link"),
        ("mkdir", "a.txt"),
        ("mkdir", "dlink"),
        ("rmdir", "dir"),
        ("rmdir", "dir/sub"),
        ("rmdir", "emptydir"),
        ("symlink", "b.txt"),
        ("symlink", "emptydir"),
    ]);
    assert!(run.index("delete", "a.txt") < run.index("mkdir", "a.txt"));
    assert!(run.index("mkdir", "a.txt") < run.index("copy", "a.txt/inside"));
    assert!(run.index("rmdir", "dir") < run.index("copy", "dir"));
    assert!(run.index("delete", "b.txt") < run.index("symlink", "b.txt"));
    assert!(run.index("delete", "dlink") < run.index("mkdir", "dlink"));
    assert!(run.index("rmdir", "emptydir") < run.index("symlink", "emptydir"));
    assert!(run.index("delete", "link") < run.index("copy", "link"));
}

#[test]
fn a_type_change_is_not_a_deletion_for_the_guard() {
    let sb = synced();
    remove(&sb.s("a.txt"));
    symlink(&sb.src, "a.txt", "b.txt");
    remove(&sb.s("link"));
    dir(&sb.src, "link");
    refreeze(&sb);
    let run = sb.sync(&["--max-delete", "0"]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
}

#[test]
fn the_contents_of_a_folder_turned_file_count_as_deletions() {
    let sb = synced();
    remove(&sb.s("dir"));
    file(&sb.src, "dir", "now a file\n");
    refreeze(&sb);
    let run = sb.sync(&["--max-delete", "2"]);
    run.expect_code(4);
    let guard: Vec<_> = run
        .errors()
        .into_iter()
        .filter(|e| e.str("op") == Some("guard"))
        .collect();
    assert_eq!(guard.len(), 1, "{}", run.dump());
    assert!(guard[0].path.is_none(), "a guard entry has no path");
    assert_eq!(read(&sb.d("dir/sub/d.txt")), b"delta\n", "nothing deleted");
    assert!(run.entries("delete").is_empty() && run.entries("rmdir").is_empty());
}

#[test]
fn extreme_mtimes_are_mirrored() {
    let sb = synced();
    set_mtime(&sb.s("a.txt"), (-1_000_000_000, 500));
    set_mtime(&sb.s("b.txt"), (4_102_444_800, 999_999_999));
    set_mtime(&sb.s("dir/c.txt"), (0, 0));
    set_mtime(&sb.s("link"), (1, 1));
    set_mtime(&sb.s("emptydir"), (-86_400, 0));
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("meta", "a.txt"),
        ("meta", "b.txt"),
        ("meta", "dir/c.txt"),
        ("meta", "emptydir"),
        ("meta", "link"),
    ]);
    sb.assert_mirror();
    let run = sb.sync(&[]);
    assert_eq!(run.changes(), vec![], "{}", run.dump());
}

#[test]
fn special_permission_bits_on_folders_are_mirrored() {
    let sb = synced();
    set_mode(&sb.s("emptydir"), 0o1777);
    set_mode(&sb.s("dir/sub"), 0o2755);
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "dir/sub"), ("meta", "emptydir")]);
    sb.assert_mirror();
}

#[test]
fn a_replica_entry_of_the_wrong_type_is_replaced() {
    let sb = synced();
    // Someone changed the replica behind our back.
    remove(&sb.d("a.txt"));
    file(&sb.dst, "a.txt/junk", "junk");
    remove(&sb.d("emptydir"));
    file(&sb.dst, "emptydir", "not a folder");
    remove(&sb.d("link"));
    file(&sb.dst, "link", "not a link");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
}

#[test]
fn replica_side_changes_are_undone() {
    let sb = synced();
    // Touched in the replica: same content, so only metadata is restored.
    let ino_a = ino(&sb.d("a.txt"));
    set_mtime(&sb.d("a.txt"), (1_111_111_111, 1));
    set_mode(&sb.d("b.txt"), 0o600);
    // Corrupted in the replica: same size, another mtime.
    rewrite(&sb.d("dir/c.txt"), "CHARLIE\n");
    // Shortened in the replica, mtime put back.
    let t = mtime_of(&sb.d("dir/sub/d.txt"));
    rewrite(&sb.d("dir/sub/d.txt"), "d\n");
    set_mtime(&sb.d("dir/sub/d.txt"), t);
    // Retargeted link.
    remove(&sb.d("link"));
    symlink(&sb.dst, "link", "elsewhere");
    freeze_dirs(&sb.dst, DIR_TIME);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("meta", "a.txt"),
        ("meta", "b.txt"),
        ("symlink", "link"),
        ("update", "dir/c.txt"),
        ("update", "dir/sub/d.txt"),
    ]);
    assert_eq!(ino(&sb.d("a.txt")), ino_a);
    sb.assert_mirror();
}

#[test]
fn a_file_emptied_is_an_update_of_zero_bytes() {
    let sb = synced();
    file_with(&sb.src, "a.txt", "", 0o644, (1_700_000_000, 0));
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("update", "a.txt")]);
    assert_eq!(run.get("update", "a.txt").u64("bytes"), Some(0));
    assert_eq!(read(&sb.d("a.txt")), b"");
    sb.assert_mirror();
}

#[test]
fn as_root_a_mode_000_file_is_mirrored() {
    if !is_root_user() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = synced();
    file_with(&sb.src, "sealed", "sealed\n", 0o000, FILE_TIME);
    set_mode(&sb.s("b.txt"), 0o000);
    refreeze(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", "sealed"), ("meta", "b.txt")]);
    sb.assert_mirror();
}

#[test]
fn special_files_in_the_replica_are_deleted_or_replaced() {
    let sb = synced();
    fifo(&sb.dst, "stray-pipe");
    let _sock = std::os::unix::net::UnixListener::bind(sb.d("dir/stray-sock")).unwrap();
    remove(&sb.d("b.txt"));
    fifo(&sb.dst, "b.txt");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("copy", "b.txt"),
        ("delete", "b.txt"),
        ("delete", "dir/stray-sock"),
        ("delete", "stray-pipe"),
    ]);
    assert!(run.index("delete", "b.txt") < run.index("copy", "b.txt"));
    sb.assert_mirror();
}
