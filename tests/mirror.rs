//! A first sync and a sync with nothing to do, on a rich tree; folder
//! metadata, special files, temporaries, the tool's own folder, odd names.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

/// The `rich` fixture plus everything git cannot store: modes, ns mtimes,
/// empty folders, links of every sort, names that are not UTF-8.
fn build_rich(sb: &Sandbox) {
    copy_fixture("rich", &sb.src);
    let s = &sb.src;
    file_with(
        s,
        "private.key",
        read(&s.join("private.key")),
        0o600,
        (1_234_567_890, 500),
    );
    file_with(
        s,
        "scripts/run.sh",
        read(&s.join("scripts/run.sh")),
        0o755,
        (1_650_000_000, 1),
    );
    file_with(
        s,
        "docs/guide.md",
        read(&s.join("docs/guide.md")),
        0o640,
        (1_650_000_001, 999_999_999),
    );
    file_with(
        s,
        "README.txt",
        read(&s.join("README.txt")),
        0o444,
        (1_700_000_000, 42),
    );
    dir(s, "empty");
    dir(s, "docs/nested/empty-too");
    dir(s, "locked");
    set_mode(&s.join("locked"), 0o700);
    file(s, "restricted/inside.txt", "inside a 0750 folder\n");
    set_mode(&s.join("restricted"), 0o750);
    symlink(s, "links/rel", "../README.txt");
    symlink(s, "links/abs", "/etc/hostname");
    symlink(s, "links/dangling", "does/not/exist");
    symlink(s, "links/abs-dangling", "/nonexistent/treesync/target");
    symlink(s, "links/to-dir", "../docs");
    set_mtime(&s.join("links/rel"), (1_610_000_000, 7));
    file(s, bpath(b"bin\xff\xfe.dat"), b"not utf-8 name\n");
    file(
        s,
        bpath(b"caf\xe9/menu.txt"),
        b"in a folder whose name is latin-1\n",
    );
    file_with(s, ".hidden-exec", "#!/bin/sh\n", 0o700, (1_600_000_001, 1));
    freeze_dirs(s, DIR_TIME);
    set_mtime(&s.join("docs"), (1_400_000_000, 5));
}

#[test]
fn first_sync_mirrors_a_rich_tree() {
    let sb = Sandbox::new();
    build_rich(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    insta::assert_snapshot!("rich_replica", tree(&sb.dst));
    insta::assert_snapshot!("rich_log", run.ops_text());

    let tick = run.tick();
    assert_eq!(tick.u64("seq"), Some(1));
    assert_eq!(tick.u64("errors"), Some(0));
    assert_eq!(tick.u64("copy"), Some(run.entries("copy").len() as u64));
    let copied: u64 = listing(&sb.src)
        .iter()
        .filter(|n| n.kind == "file")
        .map(|n| n.size.unwrap_or(0))
        .sum();
    assert_eq!(tick.u64("bytes"), Some(copied));
    let sizes: std::collections::HashMap<String, Option<u64>> = listing(&sb.src)
        .into_iter()
        .map(|n| (n.path, n.size))
        .collect();
    for c in run.entries("copy") {
        let p = c.path.as_deref().unwrap();
        assert_eq!(c.u64("bytes"), sizes[p], "bytes of {p}");
    }
    assert_eq!(
        run.get("symlink", "links/to-dir").str("target"),
        Some("../docs")
    );
    assert_eq!(
        run.get("symlink", "links/abs").str("target"),
        Some("/etc/hostname")
    );
    // Non-UTF-8 names are logged with \xNN escapes.
    assert!(run.has("copy", "bin\\xFF\\xFE.dat"), "{}", run.dump());
    assert!(run.has("mkdir", "caf\\xE9"), "{}", run.dump());
    assert!(run.log.iter().all(|e| !e.dry_run()));
}

#[test]
fn second_sync_of_an_unchanged_tree_does_nothing() {
    let sb = Sandbox::new();
    build_rich(&sb);
    sb.sync(&[]).expect_code(0);
    let before = identities(&sb.dst);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_eq!(run.ops(), vec![], "no operation expected\n{}", run.dump());
    let tick = run.tick();
    assert_eq!(tick.u64("seq"), Some(1));
    assert_eq!(tick.u64("bytes"), Some(0));
    assert_eq!(
        identities(&sb.dst),
        before,
        "inodes, mtimes and ctimes of the replica must not change"
    );
    sb.assert_mirror();
}

#[test]
fn the_replica_root_takes_the_source_roots_mode_and_mtime() {
    let sb = Sandbox::new();
    file(&sb.src, "a", "a");
    set_mode(&sb.src, 0o750);
    set_mtime(&sb.src, (1_111_111_111, 222));
    fs::create_dir(&sb.dst).unwrap();
    set_mode(&sb.dst, 0o777);
    sb.sync(&[]).expect_code(0).no_errors();
    assert_eq!(mode_of(&sb.dst), 0o750);
    assert_eq!(mtime_of(&sb.dst), (1_111_111_111, 222));
    sb.assert_mirror();
}

#[test]
fn folder_mode_and_mtime_are_set_after_their_contents() {
    let sb = Sandbox::new();
    file(&sb.src, "d/one.txt", "one");
    file(&sb.src, "e/x.txt", "x");
    freeze_dirs(&sb.src, DIR_TIME);
    sb.sync(&[]).expect_code(0);

    // New files in `d`, whose own metadata is then put back: restoring the
    // replica folder's mtime is part of the copies, not a `meta`.
    file(&sb.src, "d/two.txt", "two");
    file(&sb.src, "d/sub/three.txt", "three");
    set_mtime(&sb.s("d/sub"), (1_300_000_000, 3));
    set_mtime(&sb.s("d"), DIR_TIME);
    // `e` changes its mode and mtime only: that is a `meta`.
    set_mode(&sb.s("e"), 0o705);
    set_mtime(&sb.s("e"), (1_333_333_333, 333_333_333));
    set_mtime(&sb.src, DIR_TIME);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert_eq!(mtime_of(&sb.d("d")), DIR_TIME);
    assert_eq!(mtime_of(&sb.d("d/sub")), (1_300_000_000, 3));
    assert_eq!(mode_of(&sb.d("e")), 0o705);
    run.assert_changes(&[
        ("copy", "d/two.txt"),
        ("mkdir", "d/sub"),
        ("copy", "d/sub/three.txt"),
        ("meta", "e"),
    ]);
    run.tick();
}

#[test]
fn a_new_read_only_folder_still_gets_its_contents() {
    let sb = Sandbox::new();
    file(&sb.src, "ro/a.txt", "a");
    file(&sb.src, "ro/deeper/b.txt", "b");
    set_mode(&sb.s("ro/deeper"), 0o555);
    set_mode(&sb.s("ro"), 0o500);
    // As root permission bits do not deny: run as a user where possible.
    let run = sb.sync_as_user(&[]).unwrap_or_else(|| sb.sync(&[]));
    set_mode(&sb.s("ro"), 0o755);
    set_mode(&sb.s("ro/deeper"), 0o755);
    run.expect_code(0).no_errors();
    assert_eq!(mode_of(&sb.d("ro")), 0o500);
    assert_eq!(mode_of(&sb.d("ro/deeper")), 0o555);
    assert_eq!(read(&sb.d("ro/deeper/b.txt")), b"b");
    set_mode(&sb.d("ro"), 0o755);
    set_mode(&sb.d("ro/deeper"), 0o755);
}

#[test]
fn a_fifo_is_skipped_and_the_sync_succeeds() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    fifo(&sb.src, "pipe");
    fifo(&sb.src, "sub/pipe2");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    let skip = run.get("skip", "pipe");
    assert!(!skip.str("reason").unwrap().is_empty());
    assert!(run.has("skip", "sub/pipe2"), "{}", run.dump());
    assert!(!exists(&sb.d("pipe")));
    assert!(!exists(&sb.d("sub/pipe2")));
    assert_eq!(read(&sb.d("a.txt")), b"a");
    assert_eq!(run.tick().u64("skip"), Some(2));
}

#[test]
fn a_replica_entry_where_the_source_has_a_fifo_is_left_as_it_is() {
    let sb = Sandbox::new();
    file(&sb.src, "p", "was a file");
    sb.sync(&[]).expect_code(0);
    let before = identities(&sb.dst);
    remove(&sb.s("p"));
    fifo(&sb.src, "p");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(run.has("skip", "p"), "{}", run.dump());
    assert!(!run.has("delete", "p"), "{}", run.dump());
    assert_eq!(read(&sb.d("p")), b"was a file");
    let after = identities(&sb.dst);
    let p_before = before.iter().find(|x| x.0 == "p").unwrap();
    let p_after = after.iter().find(|x| x.0 == "p").unwrap();
    assert_eq!(p_before, p_after);
}

#[test]
fn stale_temporaries_are_removed_but_a_source_file_of_that_name_is_mirrored() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    file(&sb.src, "sub/b.txt", "b");
    file(
        &sb.src,
        ".treesync-tmp-x",
        "a real file that looks like a temporary",
    );
    file(&sb.src, "sub/.treesync-tmp-9-9", "another, in a folder");
    sb.sync(&[]).expect_code(0);
    // Left by a run that recorded its token, as every run does before its
    // first temporary.
    let token = "00000000000000ab";
    let temps = fs::read_to_string(sb.d(".treesync/temps")).unwrap_or_default();
    file(&sb.dst, ".treesync/temps", format!("{token}\n{temps}"));
    file(&sb.dst, format!(".treesync-tmp-{token}-4"), "partial");
    file(&sb.dst, format!("sub/.treesync-tmp-{token}-4"), "partial");
    file(
        &sb.dst,
        format!("sub/.treesync-tmp-{token}-1"),
        "partial too",
    );
    set_mtime(&sb.d("sub"), mtime_of(&sb.s("sub")));
    set_mtime(&sb.dst, mtime_of(&sb.src));

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    // Removed silently: they were never part of the mirror.
    assert!(run.entries("delete").is_empty(), "{}", run.dump());
    sb.assert_mirror();
    let left: Vec<_> = temporaries(&sb.dst)
        .into_iter()
        .filter(|p| !p.ends_with(".treesync-tmp-x") && !p.ends_with("sub/.treesync-tmp-9-9"))
        .collect();
    assert!(left.is_empty(), "stale temporaries left: {left:?}");
    assert_eq!(
        read(&sb.d(".treesync-tmp-x")),
        b"a real file that looks like a temporary"
    );

    // And a later sync keeps it.
    let run = sb.sync(&[]);
    run.expect_code(0);
    assert_eq!(run.ops(), vec![], "{}", run.dump());
    assert!(exists(&sb.d(".treesync-tmp-x")));
    assert_eq!(
        read(&sb.d("sub/.treesync-tmp-9-9")),
        b"another, in a folder"
    );
}

#[test]
fn a_user_file_named_like_a_temporary_is_an_ordinary_file() {
    let sb = Sandbox::new();
    let names = [".treesync-tmp-1-1", "d/.treesync-tmp-0123456789abcdef-1"];
    for n in names {
        file(&sb.src, n, "a user's file");
    }
    file(&sb.src, "d/other", "x");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    for n in names {
        run.get("copy", n);
    }
    sb.assert_mirror();

    // Gone from the source: a deletion like any other, so the guard
    // counts it and `--max-delete 0` keeps it...
    for n in names {
        remove(&sb.s(n));
    }
    let run = sb.sync(&["--max-delete", "0"]);
    run.expect_code(4);
    for n in names {
        assert_eq!(read(&sb.d(n)), b"a user's file");
    }
    // ...and without the guard it goes, with its `delete` line.
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    for n in names {
        run.get("delete", n);
        assert!(!exists(&sb.d(n)));
    }
    sb.assert_mirror();
}

#[test]
fn names_of_the_longest_length_are_mirrored() {
    let sb = Sandbox::new();
    let long = "n".repeat(255);
    file(&sb.src, &long, "longest name\n");
    file(
        &sb.src,
        format!("{}/{long}", "d".repeat(255)),
        "in a long folder\n",
    );
    symlink(&sb.src, format!("l{}", "x".repeat(254)), &long);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    file_with(
        &sb.src,
        &long,
        "longest name, updated\n",
        0o644,
        (1_700_000_000, 0),
    );
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(run.has("update", &long));
    sb.assert_mirror();
}

#[test]
fn a_treesync_entry_at_the_source_root_is_skipped_and_the_state_folder_kept() {
    let sb = Sandbox::new();
    file(&sb.src, ".treesync/state", "source's own, not mirrored");
    file(
        &sb.src,
        "sub/.treesync/inner",
        "an ordinary folder below the root",
    );
    file(&sb.src, "a.txt", "a");
    file(&sb.dst, ".treesync/keepme", "the replica's state");

    let run = sb.sync(&["--delete-excluded", "--max-delete", "100%"]);
    run.expect_code(0).no_errors();
    assert!(run.has("skip", ".treesync"), "{}", run.dump());
    assert!(!run.log.iter().any(|e| e
        .path
        .as_deref()
        .is_some_and(|p| is_at_or_below(p, ".treesync") && e.msg != "skip")));
    assert_eq!(read(&sb.d(".treesync/keepme")), b"the replica's state");
    assert!(!exists(&sb.d(".treesync/state")));
    assert_eq!(
        read(&sb.d("sub/.treesync/inner")),
        b"an ordinary folder below the root"
    );
    sb.assert_mirror();
}

/// Names with a newline, an ESC, and two that differ only in invalid bytes.
fn odd_names(sb: &Sandbox) -> Vec<&'static [u8]> {
    let names: Vec<&'static [u8]> = vec![
        b"line\nbreak.txt",
        b"esc\x1b[31mred.txt",
        b"caf\xe9",
        b"caf\xe8",
        b"tab\there",
    ];
    for (i, n) in names.iter().enumerate() {
        file(&sb.src, bpath(n), format!("content {i}\n"));
    }
    file(&sb.src, bpath(b"dir\nwith newline/inner"), "x");
    names
}

#[test]
fn odd_names_are_mirrored_and_logged_one_entry_each() {
    let sb = Sandbox::new();
    let names = odd_names(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();

    let log_text = fs::read_to_string(run.log_path.as_ref().unwrap()).unwrap();
    let lines = log_text.lines().filter(|l| !l.is_empty()).count();
    assert_eq!(lines, run.log.len());
    let copied: Vec<String> = run
        .entries("copy")
        .iter()
        .map(|e| e.path.clone().unwrap())
        .collect();
    for n in &names {
        let want = log_path(n);
        assert!(
            copied
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&want) && p.len() == want.len()),
            "no copy of {want:?} in {copied:?}"
        );
    }
    let latin: Vec<&String> = copied.iter().filter(|p| p.starts_with("caf")).collect();
    assert_eq!(latin.len(), 2);
    assert_ne!(
        latin[0], latin[1],
        "names differing in invalid bytes must stay distinct"
    );
    assert!(run.has("mkdir", "dir\nwith newline"), "{}", run.dump());
    assert!(run.has("copy", "dir\nwith newline/inner"), "{}", run.dump());
}

/// A name holding the byte 0xFF and one holding the four characters `\xFF`
/// read the same in `path`; `path_b64` (and `target_b64` for a link's
/// target) tells them apart, and valid names get no such key.
#[test]
fn json_log_keeps_an_invalid_byte_apart_from_its_escape() {
    let sb = Sandbox::new();
    let (invalid, literal) = (&b"n\xff.txt"[..], &b"n\\xFF.txt"[..]);
    file(&sb.src, bpath(invalid), "byte\n");
    file(&sb.src, bpath(literal), "four characters\n");
    symlink(&sb.src, "to-invalid", bpath(invalid));
    symlink(&sb.src, "to-literal", bpath(literal));
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();

    let copies: Vec<&Entry> = run
        .log
        .iter()
        .filter(|e| e.is("copy", "n\\xFF.txt"))
        .collect();
    assert_eq!(copies.len(), 2, "{}", run.dump());
    let mut raw: Vec<Vec<u8>> = copies.iter().map(|e| e.raw("path").unwrap()).collect();
    raw.sort();
    assert_eq!(raw, [literal.to_vec(), invalid.to_vec()]);
    let lines: Vec<String> = fs::read_to_string(run.log_path.as_ref().unwrap())
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""msg":"copy""#))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2);
    assert_ne!(lines[0], lines[1]);
    // Only the name that is not UTF-8 carries its bytes.
    let b64: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split(r#""path_b64":""#).nth(1))
        .collect();
    assert_eq!(b64.len(), 1, "{lines:?}");
    assert!(b64[0].starts_with("bv8udHh0\""), "{lines:?}");

    let to_invalid = run.get("symlink", "to-invalid");
    assert_eq!(to_invalid.str("target"), Some("n\\xFF.txt"));
    assert_eq!(to_invalid.raw("target").unwrap(), invalid);
    let to_literal = run.get("symlink", "to-literal");
    assert_eq!(to_literal.str("target"), Some("n\\xFF.txt"));
    assert_eq!(to_literal.str("target_b64"), None);
    assert_eq!(to_literal.raw("target").unwrap(), literal);

    // The text format escapes the backslash itself: `\xFF` is the byte,
    // `\\xFF` the four characters.
    let text_log = sb.path("text.log");
    let dst2 = sb.path("dst2");
    sb.run_raw(&[
        "--once".as_ref(),
        "--log-file".as_ref(),
        text_log.as_os_str(),
        "--log-format".as_ref(),
        "text".as_ref(),
        sb.src.as_os_str(),
        dst2.as_os_str(),
    ])
    .expect_code(0);
    let text = fs::read_to_string(&text_log).unwrap();
    assert!(text.contains(r"copy path=n\xFF.txt "), "{text}");
    assert!(text.contains(r"copy path=n\\xFF.txt "), "{text}");
    assert!(text.contains(r"target=n\xFF.txt"), "{text}");
    assert!(text.contains(r"target=n\\xFF.txt"), "{text}");
}

#[test]
fn text_log_has_one_line_per_operation_even_with_odd_names() {
    let sb = Sandbox::new();
    odd_names(&sb);
    let json = sb.sync(&[]);
    json.expect_code(0);

    let text_log = sb.path("text.log");
    let dst2 = sb.path("dst2");
    let run = sb.run_raw(&[
        "--once".as_ref(),
        "--log-file".as_ref(),
        text_log.as_os_str(),
        "--log-format".as_ref(),
        "text".as_ref(),
        sb.src.as_os_str(),
        dst2.as_os_str(),
    ]);
    run.expect_code(0);
    assert_same_tree(&sb.src, &dst2);
    let bytes = fs::read(&text_log).unwrap();
    assert!(!bytes.contains(&0x1b), "raw ESC in the text log");
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        json.log.len(),
        "one line per entry expected; text log:\n{text}\njson log:\n{}",
        json.dump()
    );
    let lower = text.to_lowercase();
    assert!(
        lower.contains("caf\\xe9") && lower.contains("caf\\xe8"),
        "{text}"
    );
}

#[test]
fn as_root_owner_and_setuid_bits_are_kept() {
    if !is_root_user() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = Sandbox::new();
    let f = file(&sb.src, "owned", "x");
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
    set_mode(&f, 0o4755);
    set_mtime(&f, FILE_TIME);
    let g = file(&sb.src, "group-only", "y");
    std::os::unix::fs::chown(&g, None, Some(65534)).unwrap();
    set_mode(&g, 0o2750);
    set_mtime(&g, FILE_TIME);
    let l = symlink(&sb.src, "link", "owned");
    std::os::unix::fs::lchown(&l, Some(65534), Some(65534)).unwrap();
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    let md = fs::symlink_metadata(sb.d("owned")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (65534, 65534, 0o4755)
    );
    let md = fs::symlink_metadata(sb.d("group-only")).unwrap();
    assert_eq!((md.gid(), md.mode() & 0o7777), (65534, 0o2750));
    let md = fs::symlink_metadata(sb.d("link")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
}

#[test]
fn jobs_one_gives_the_same_replica() {
    let sb = Sandbox::new();
    build_rich(&sb);
    let run = sb.sync(&["--jobs", "1"]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    let run2 = sb.sync(&["-j", "1"]);
    run2.expect_code(0);
    assert_eq!(run2.ops(), vec![]);
}

#[test]
fn a_socket_is_skipped() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let _l = std::os::unix::net::UnixListener::bind(sb.s("sock")).unwrap();
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(run.has("skip", "sock"), "{}", run.dump());
    assert!(!exists(&sb.d("sock")));
}

#[test]
fn link_targets_are_copied_byte_for_byte() {
    let sb = Sandbox::new();
    symlink(&sb.src, "latin", bpath(b"caf\xe9/../x"));
    symlink(&sb.src, "spaced", "a name with spaces/and ünïcødé");
    symlink(&sb.src, "long", "x/".repeat(1000) + "end");
    symlink(&sb.src, "loop", "loop");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    let t = run
        .get("symlink", "latin")
        .str("target")
        .unwrap()
        .to_string();
    assert!(t.eq_ignore_ascii_case("caf\\xE9/../x"), "{t}");
    assert_eq!(
        fs::read_link(sb.d("latin")).unwrap(),
        bpath(b"caf\xe9/../x")
    );
    assert_eq!(
        run.get("symlink", "spaced").str("target"),
        Some("a name with spaces/and ünïcødé")
    );
}

/// Builds a chain of folders whose full path is longer than PATH_MAX.
fn deep_tree(root: &std::path::Path) {
    let script = r#"
        set -e
        cd "$1"
        name=$(printf 'd%0200d' 0)
        for i in $(seq 1 25); do mkdir "$name$i"; cd "$name$i"; done
        printf 'deep\n' > leaf.txt
        ln -s leaf.txt leaf.link
    "#;
    let st = std::process::Command::new("bash")
        .args(["-c", script, "bash"])
        .arg(root)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `find` listing (it walks below PATH_MAX): path, type, size, mode, mtime.
fn find_listing(root: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("find")
        .arg(root)
        .args(["-mindepth", "1", "-path"])
        .arg(root.join(".treesync"))
        .args(["-prune", "-o", "-printf", "%P %y %s %m %T@ %l\\n"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // Folder sizes differ between filesystems and fill levels.
            let mut f: Vec<&str> = l.split(' ').collect();
            if f.get(1) == Some(&"d") {
                f[2] = "-";
            }
            f.join(" ")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn paths_deeper_than_path_max_are_mirrored() {
    let sb = Sandbox::new();
    file(&sb.src, "shallow.txt", "s");
    deep_tree(&sb.src);
    let src = find_listing(&sb.src);
    assert!(
        src.iter().any(|l| l.len() > 4096),
        "the tree is deep enough"
    );
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_eq!(find_listing(&sb.dst), src);
    let leaf = run
        .entries("copy")
        .into_iter()
        .find(|e| e.path.as_deref().unwrap().ends_with("/leaf.txt"))
        .unwrap_or_else(|| panic!("no copy of the deep leaf\n{}", run.dump()));
    assert!(leaf.path.as_ref().unwrap().len() > 4096);

    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_eq!(run.ops(), vec![], "{}", run.dump());
}

#[test]
fn terminal_output_escapes_control_characters() {
    let sb = Sandbox::new();
    odd_names(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "raw ESC written to the terminal:\n{:?}",
        run.stderr
    );
    assert!(
        !run.stderr.lines().any(|l| l.starts_with("break.txt")),
        "a name's newline split a terminal line:\n{}",
        run.stderr
    );
}

#[test]
fn creating_the_replica_root_is_not_a_meta() {
    // Whatever the umask, the new root's mode and mtime come with its
    // creation: the source's metadata did not change.
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    set_mtime(&sb.src, DIR_TIME);
    let umask_077 = ["sh", "-c", "umask 077; exec \"$0\" \"$@\""];
    let args = ["--once".as_ref(), sb.src.as_os_str(), sb.dst.as_os_str()];
    let run = sb.run_with_prefix(&umask_077, &args);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert!(!run.has("meta", "."), "{}", run.dump());

    // An empty source: nothing else to do.
    let sb = Sandbox::new();
    set_mtime(&sb.src, DIR_TIME);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert!(!run.has("meta", "."), "{}", run.dump());
}

#[test]
fn a_wide_tree_is_mirrored_with_parallel_workers() {
    let sb = Sandbox::new();
    for d in 0..40 {
        for f in 0..60 {
            file(
                &sb.src,
                format!("d{d:02}/sub{}/f{f:02}.txt", f % 3),
                format!("{d} {f}\n").repeat(f + 1),
            );
        }
    }
    freeze_dirs(&sb.src, DIR_TIME);
    let run = sb.sync(&["--jobs", "4"]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert_eq!(run.entries("copy").len(), 2400);
    assert_eq!(run.entries("mkdir").len(), 160);
    run.tick();

    // Change a third of it; folder times must still come out right.
    for d in 0..40 {
        for f in (0..60).step_by(3) {
            file_with(
                &sb.src,
                format!("d{d:02}/sub0/f{f:02}.txt"),
                "changed\n",
                0o600,
                (1_700_000_000, f as u32),
            );
        }
        remove(&sb.s(format!("d{d:02}/sub1/f01.txt")));
    }
    freeze_dirs(&sb.src, DIR_TIME);
    let run = sb.sync(&["--jobs", "4", "--max-delete", "100%"]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert_eq!(run.entries("update").len(), 800);
    assert_eq!(run.entries("delete").len(), 40);
    let run = sb.sync(&[]);
    assert_eq!(run.ops(), vec![], "{}", run.dump());
}
