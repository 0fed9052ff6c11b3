//! What a mirror keeps beyond names and bytes: holes in sparse files, and
//! with `-x` the boundaries of the source's filesystem.

mod common;

use common::mounts::Mounted;
use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

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
