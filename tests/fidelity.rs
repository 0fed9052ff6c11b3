//! What a mirror keeps beyond names and bytes: hard links, extended
//! attributes and ACLs, holes in sparse files, and with `-x` the
//! boundaries of the source's filesystem.

mod common;

use common::mounts::Mounted;
use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// The attributes of `path` (not following a link), by name.
fn attrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = names[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 4096];
            let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
            value.truncate(len);
            (String::from_utf8_lossy(name).into_owned(), value)
        })
        .collect();
    out.sort();
    out
}

fn set_attr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A POSIX ACL as the kernel stores it: (tag, permissions, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

const ANY: u32 = u32::MAX;

/// Whether the sandbox's filesystem stores user attributes and ACLs.
fn attrs_supported(sb: &Sandbox) -> bool {
    let probe = file(sb.root(), "probe", "");
    let user = rustix::fs::setxattr(&probe, "user.p", b"1", rustix::fs::XattrFlags::empty());
    let acls = rustix::fs::setxattr(
        &probe,
        "system.posix_acl_access",
        &acl(&[
            (1, 6, ANY),
            (2, 4, 65534),
            (4, 4, ANY),
            (0x10, 4, ANY),
            (0x20, 4, ANY),
        ]),
        rustix::fs::XattrFlags::empty(),
    );
    fs::remove_file(&probe).unwrap();
    if user.is_err() || acls.is_err() {
        eprintln!("skipped: this filesystem stores no user attributes or ACLs");
        return false;
    }
    true
}

#[test]
fn hard_links_in_the_source_are_hard_links_in_the_replica() {
    let sb = Sandbox::new();
    file(&sb.src, "a/f", "shared\n");
    dir(&sb.src, "b");
    fs::hard_link(sb.s("a/f"), sb.s("b/g")).unwrap();
    fs::hard_link(sb.s("a/f"), sb.s("h")).unwrap();
    file(&sb.src, "solo", "alone\n");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("copy", "a/f"),
        ("copy", "solo"),
        ("link", "b/g"),
        ("link", "h"),
        ("mkdir", "a"),
        ("mkdir", "b"),
    ]);
    assert_eq!(run.get("link", "b/g").str("to"), Some("a/f"));
    assert_eq!(run.tick().u64("link"), Some(2));
    let f = ino(&sb.d("a/f"));
    assert!(ino(&sb.d("b/g")) == f && ino(&sb.d("h")) == f);
    assert_ne!(ino(&sb.d("solo")), f);
    sb.assert_mirror();
    sb.sync(&[]).expect_code(0).no_errors().assert_changes(&[]);

    // A name broken off its group (a copy with the same content and
    // mtime, as `cp -p` makes) gets a file of its own in the replica;
    // a file given a second name gets it there too.
    let t = mtime_of(&sb.s("b/g"));
    remove(&sb.s("b/g"));
    file(&sb.src, "b/g", "shared\n");
    set_mtime(&sb.s("b/g"), t);
    fs::hard_link(sb.s("solo"), sb.s("solo2")).unwrap();
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("link", "solo2"), ("update", "b/g")]);
    assert_ne!(ino(&sb.d("b/g")), ino(&sb.d("a/f")));
    assert_eq!(ino(&sb.d("h")), ino(&sb.d("a/f")));
    assert_eq!(ino(&sb.d("solo2")), ino(&sb.d("solo")));
    // Writing through one name of the replica's group changes them all,
    // as in the source; the broken-off name keeps its content.
    assert_eq!(read(&sb.d("b/g")), b"shared\n");
    sb.assert_mirror();
    sb.sync(&[]).expect_code(0).no_errors().assert_changes(&[]);

    // A name of a group gone, and a copy of the file made under a new
    // name: not a move of the old name (it would stay linked).
    remove(&sb.s("h"));
    let t = mtime_of(&sb.s("a/f"));
    file(&sb.src, "h2", "shared\n");
    set_mtime(&sb.s("h2"), t);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(run.entries("move").is_empty(), "{}", run.dump());
    assert_ne!(ino(&sb.d("h2")), ino(&sb.d("a/f")));
    sb.assert_mirror();

    // Off: every name is a file of its own.
    let other = sb.path("flat");
    let run = sb.run(&[
        "--once".as_ref(),
        "--no-hard-links".as_ref(),
        sb.src.as_os_str(),
        other.as_os_str(),
    ]);
    run.expect_code(0).no_errors();
    assert!(run.entries("link").is_empty(), "{}", run.dump());
    assert_ne!(ino(&other.join("solo2")), ino(&other.join("solo")));
    assert_eq!(read(&other.join("solo2")), b"alone\n");
    // A replica made with links, synced without: names that are files of
    // their own in the source part, once, and then stay as they are.
    let run = sb.sync(&["--no-hard-links"]);
    run.expect_code(0).no_errors();
    assert!(run.entries("link").is_empty(), "{}", run.dump());
    assert_eq!(ino(&sb.d("solo2")), ino(&sb.d("solo")));
    let t = mtime_of(&sb.s("solo2"));
    remove(&sb.s("solo2"));
    file(&sb.src, "solo2", "alone\n");
    set_mtime(&sb.s("solo2"), t);
    set_mode(&sb.s("solo2"), 0o600);
    let run = sb.sync(&["--no-hard-links"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("update", "solo2")]);
    assert_ne!(ino(&sb.d("solo2")), ino(&sb.d("solo")));
    assert_eq!(mode_of(&sb.d("solo")) & 0o777, 0o644);
    sb.sync(&["--no-hard-links"])
        .expect_code(0)
        .no_errors()
        .assert_changes(&[]);
}

#[test]
fn an_edit_through_a_hard_link_in_another_folder_is_mirrored_when_watching() {
    let sb = Sandbox::new();
    file(&sb.src, "x/a", "one\n");
    dir(&sb.src, "y");
    fs::hard_link(sb.s("x/a"), sb.s("y/b")).unwrap();
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(2);
    // The event is in `y` only; `x/a` changed all the same.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(sb.s("y/b"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"two\n").unwrap();
    drop(f);
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0).no_errors();
    assert_eq!(read(&sb.d("x/a")), b"one\ntwo\n", "{}", run.dump());
    assert_eq!(ino(&sb.d("x/a")), ino(&sb.d("y/b")));
    assert!(
        run.entries("tick")
            .iter()
            .any(|t| t.str("mode") == Some("incremental")),
        "{}",
        run.dump()
    );
}

#[test]
fn extended_attributes_and_acls_are_mirrored_with_their_changes() {
    let sb = Sandbox::new();
    if !attrs_supported(&sb) {
        return;
    }
    let f = file(&sb.src, "d/f", "tagged\n");
    set_attr(&f, "user.tag", b"v1");
    set_attr(&f, "user.empty", b"");
    let access = acl(&[
        (1, 6, ANY),
        (2, 4, 65534),
        (4, 4, ANY),
        (0x10, 4, ANY),
        (0x20, 4, ANY),
    ]);
    set_attr(&f, "system.posix_acl_access", &access);
    let d = sb.s("d");
    set_attr(&d, "user.dir", b"folder");
    let default = acl(&[
        (1, 7, ANY),
        (4, 5, ANY),
        (8, 5, 65534),
        (0x10, 5, ANY),
        (0x20, 5, ANY),
    ]);
    set_attr(&d, "system.posix_acl_default", &default);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", "d/f"), ("mkdir", "d")]);
    assert_eq!(attrs(&sb.d("d/f")), attrs(&f));
    assert_eq!(attrs(&sb.d("d")), attrs(&d));
    assert_eq!(attrs(&sb.d("d/f")).len(), 3);
    sb.assert_mirror();
    sb.sync(&[]).expect_code(0).no_errors().assert_changes(&[]);

    // An attribute-only change and an ACL-only change: the mtime stays,
    // the ctime moves, and each is a `meta`.
    set_attr(&f, "user.tag", b"v2");
    rustix::fs::removexattr(&d, "system.posix_acl_default").unwrap();
    let dry = sb.sync(&["--dry-run"]);
    dry.expect_code(0).no_errors();
    dry.assert_changes(&[("meta", "d"), ("meta", "d/f")]);
    assert!(dry.entries("meta").iter().all(|e| e.dry_run()));
    assert_ne!(attrs(&sb.d("d/f")), attrs(&f));
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "d"), ("meta", "d/f")]);
    assert_eq!(attrs(&sb.d("d/f")), attrs(&f));
    assert_eq!(
        attrs(&sb.d("d")),
        vec![("user.dir".to_string(), b"folder".to_vec())]
    );
    sb.sync(&[]).expect_code(0).no_errors().assert_changes(&[]);

    // Without them, a new file comes without its attributes, and the
    // next sync with them compares every entry's once.
    let g = file(&sb.src, "g", "later\n");
    set_attr(&g, "user.tag", b"g");
    let run = sb.sync(&["--no-xattrs", "--no-acls"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", "g")]);
    assert!(attrs(&sb.d("g")).is_empty());
    rustix::fs::removexattr(sb.d("d/f"), "user.empty").unwrap();
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "d/f"), ("meta", "g")]);
    assert_eq!(attrs(&sb.d("g")), attrs(&g));
    assert_eq!(attrs(&sb.d("d/f")), attrs(&f));
    sb.sync(&[]).expect_code(0).no_errors().assert_changes(&[]);
}

/// exFAT (through FUSE) has no hard links and no attributes: names are
/// copies, and the run says once what it could not keep.
#[test]
fn a_replica_without_links_or_attributes_gets_copies_and_one_warning() {
    use common::mounts::Image;
    let mut sb = Sandbox::new();
    if !attrs_supported(&sb) {
        return;
    }
    let disk = match Mounted::image(&sb.path("disk"), Image::Exfat, 64) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: an exFAT replica: {why}");
            return;
        }
    };
    sb.dst = disk.dir.join("dst");
    let f = file(&sb.src, "f", "data\n");
    set_attr(&f, "user.tag", b"v");
    fs::hard_link(&f, sb.s("g")).unwrap();
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", "f"), ("copy", "g")]);
    let warns: Vec<_> = run
        .entries("warn")
        .into_iter()
        .filter_map(|w| w.str("reason"))
        .collect();
    assert_eq!(warns.len(), 1, "{}", run.dump());
    assert!(warns[0].contains("extended attributes"), "{}", run.dump());
    assert_eq!(read(&sb.d("g")), b"data\n");
    sb.sync(&[]).expect_code(0).no_errors().assert_changes(&[]);
}

#[test]
fn a_sparse_file_stays_sparse_in_the_replica() {
    let sb = Sandbox::new();
    let mib = 1 << 20;
    fs::create_dir_all(&sb.src).unwrap();
    let f = fs::File::create(sb.s("vm.img")).unwrap();
    f.set_len(256 * mib).unwrap();
    f.write_all_at(&[7u8; 4096], 100 * mib).unwrap();
    drop(f);
    let allocated = |p: &std::path::Path| fs::metadata(p).unwrap().blocks() * 512;
    if allocated(&sb.s("vm.img")) >= 256 * mib {
        eprintln!("skipped: this filesystem stores no holes");
        return;
    }
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_eq!(run.get("copy", "vm.img").u64("bytes"), Some(256 * mib));
    assert!(
        allocated(&sb.d("vm.img")) <= 64 * 1024,
        "{} bytes",
        allocated(&sb.d("vm.img"))
    );
    sb.assert_mirror();
}

#[test]
fn with_one_file_system_a_mount_inside_the_source_is_an_empty_folder() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "here\n");
    let _mount = match Mounted::tmpfs(&sb.s("mnt"), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: a mount inside the source: {why}");
            return;
        }
    };
    file(&sb.src, "mnt/inner.txt", "on another filesystem\n");
    file(&sb.src, "mnt/sub/x", "deeper\n");

    let run = sb.sync(&["-x"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", "a.txt"), ("mkdir", "mnt")]);
    assert!(exists(&sb.d("mnt")) && fs::read_dir(sb.d("mnt")).unwrap().count() == 0);
    sb.sync(&["-x"])
        .expect_code(0)
        .no_errors()
        .assert_changes(&[]);

    // Watched: a change on the mounted filesystem is not mirrored either.
    let mut r = sb.spawn_interval("1", &["--one-file-system"]);
    r.wait_ticks(2);
    file(&sb.src, "mnt/new.txt", "later\n");
    file(&sb.src, "b.txt", "next to it\n");
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0).no_errors();
    assert!(run.has("copy", "b.txt"), "{}", run.dump());
    assert!(
        fs::read_dir(sb.d("mnt")).unwrap().count() == 0,
        "{}",
        run.dump()
    );

    // Without it, the mount's contents are mirrored as before.
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(run.has("copy", "mnt/inner.txt"));
    sb.assert_mirror();
}

/// A source on FUSE (exFAT here): inotify does not see every change there,
/// so an interval walks everything each tick, and says so once.
#[test]
fn a_source_whose_changes_events_miss_is_walked_fully_every_tick() {
    use common::mounts::Image;
    let mut sb = Sandbox::new();
    let disk = match Mounted::image(&sb.path("disk"), Image::Exfat, 64) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: an exFAT source: {why}");
            return;
        }
    };
    let fs_type = std::process::Command::new("stat")
        .args(["-f", "-c", "%t"])
        .arg(&disk.dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if fs_type != "65735546" {
        eprintln!("skipped: exFAT is mounted without FUSE here ({fs_type})");
        return;
    }
    sb.src = disk.dir.join("src");
    file(&sb.src, "a.txt", "one\n");
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(3);
    let run = r.stop("INT");
    run.expect_code(0).no_errors();
    let warns = run.entries("warn");
    assert_eq!(warns.len(), 1, "{}", run.dump());
    assert!(warns[0].str("reason").is_some_and(|r| r.contains("FUSE")));
    let ticks = run.entries("tick");
    assert!(ticks.len() >= 3, "{}", run.dump());
    assert!(
        ticks.iter().all(|t| t.str("mode") == Some("full")),
        "{}",
        run.dump()
    );
    sb.assert_mirror();
}

#[test]
fn attributes_follow_a_rename_and_a_folder_changed_with_its_contents() {
    let sb = Sandbox::new();
    if !attrs_supported(&sb) {
        return;
    }
    file(&sb.src, "f", "one\n");
    dir(&sb.src, "d");
    sb.sync(&[]).expect_code(0).no_errors();
    // A rename moves the ctime; the attribute set with it is not lost.
    set_attr(&sb.s("f"), "user.k", b"1");
    sb.mv("f", "d/g");
    // A folder whose attributes change as files come into it.
    set_attr(&sb.s("d"), "user.n", b"2");
    file(&sb.src, "d/new", "x\n");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", "d/new"), ("meta", "d"), ("move", "d/g")]);
    assert_eq!(attrs(&sb.d("d/g")), attrs(&sb.s("d/g")));
    assert_eq!(attrs(&sb.d("d")), attrs(&sb.s("d")));
    sb.sync(&[]).expect_code(0).no_errors().assert_changes(&[]);
}

/// As an ordinary user, a read-only file or folder of ours takes its
/// attributes all the same (they are set before its mode).
#[test]
fn read_only_entries_get_their_attributes_as_an_ordinary_user() {
    let sb = Sandbox::new();
    if !attrs_supported(&sb) {
        return;
    }
    let ro = file(&sb.src, "d/ro", "read only\n");
    set_attr(&ro, "user.a", b"1");
    set_mode(&ro, 0o444);
    set_attr(&sb.s("d"), "user.k", b"2");
    set_mode(&sb.s("d"), 0o555);
    let Some(run) = sb.sync_as_user(&[]) else {
        eprintln!("skipped: no ordinary user to run as");
        return;
    };
    run.expect_code(0).no_errors();
    assert_eq!(attrs(&sb.d("d/ro")), attrs(&ro));
    assert_eq!(attrs(&sb.d("d")), attrs(&sb.s("d")));
    // An attribute-only change of the read-only file (the trees are the
    // user's already: handing them over again would move their ctimes).
    set_mode(&sb.s("d"), 0o755);
    set_attr(&ro, "user.a", b"changed");
    set_mode(&sb.s("d"), 0o555);
    let as_user = |sb: &Sandbox| {
        let args = ["--once".as_ref(), sb.src.as_os_str(), sb.dst.as_os_str()];
        sb.run_with_prefix(&user_prefix().unwrap(), &args)
    };
    let run = as_user(&sb);
    run.expect_code(0).no_errors();
    assert!(run.has("meta", "d/ro"), "{}", run.dump());
    assert_eq!(attrs(&sb.d("d/ro")), attrs(&ro));
    assert_eq!(mode_of(&sb.d("d/ro")) & 0o7777, 0o444);
    assert_eq!(mode_of(&sb.d("d")) & 0o7777, 0o555);
    as_user(&sb).expect_code(0).assert_changes(&[]);
}

/// An attribute the replica refuses is an error, and the next run
/// compares every entry's again (a partial update may have moved the
/// entry's ctime past the source's).
#[test]
fn an_attribute_the_replica_refused_is_tried_again_by_the_next_run() {
    let sb = Sandbox::new();
    if !attrs_supported(&sb) {
        return;
    }
    let f = file(&sb.src, "f", "x\n");
    sb.sync(&[]).expect_code(0).no_errors();
    let marker = sb.d(".treesync/attrs");
    assert!(exists(&marker));
    // An immutable replica file takes no attribute.
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(sb.d("f"))
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        eprintln!("skipped: chattr +i (root, and a filesystem with the flag)");
        return;
    }
    set_attr(&f, "user.k", b"v");
    let run = sb.sync(&[]);
    chattr("-i");
    run.expect_code(3);
    assert_eq!(run.errors().len(), 1, "{}", run.dump());
    assert_eq!(run.errors()[0].str("op"), Some("meta"), "{}", run.dump());
    assert!(!exists(&marker), "{}", run.dump());
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("meta", "f")]);
    assert_eq!(attrs(&sb.d("f")), attrs(&f));
    assert!(exists(&marker));
}
