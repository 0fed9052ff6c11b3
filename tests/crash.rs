//! A power cut right after an update sweep, on a real ext4 (default mount
//! options) in a loop-mounted image: every updated file must come back
//! holding its old or its new content, never an empty or a mixed one.
//!
//! The cut is the `FS_IOC_SHUTDOWN` ioctl with `NOLOGFLUSH` (`xfs_io -x -c
//! shutdown`): the filesystem stops at once and what its journal has not
//! committed is lost, as after pulling the plug. Needs root, loop devices
//! and `xfs_io` (xfsprogs); without them the test says why on stderr and
//! returns.

mod common;

use common::mounts::{sh, Image, Mounted};
use common::*;
use std::fs;

/// The content of file `i`, before (`0`) and after (`1`) the rewrite; the
/// sizes vary, and the new ones differ from the old for two files in three.
fn content(i: usize, version: u8) -> Vec<u8> {
    let len = 100 + (i * 37 + usize::from(version) * (i % 3) * 501) % 6000;
    let tag = format!("file {i} version {version};");
    tag.bytes().cycle().take(len).collect()
}

#[test]
fn a_power_cut_after_an_update_sweep_leaves_old_or_new_content() {
    const FILES: usize = 300;
    let sb = Sandbox::new();
    let mut disk = match Mounted::image(&sb.path("disk"), Image::Ext4, 96) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: power-cut test: {why}");
            return;
        }
    };
    let replica = disk.dir.join("replica");
    for i in 0..FILES {
        file(&sb.src, format!("d{}/f{i:03}", i % 4), content(i, 0));
    }
    let args = |extra: &str| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec!["--once".into()];
        if !extra.is_empty() {
            v.push(extra.into());
        }
        v.push(sb.src.clone().into());
        v.push(replica.clone().into());
        v
    };
    sb.run(&args("")).expect_code(0);
    // Durable: only the image's filesystem is synced (syncfs).
    sh("sync", &["-f".as_ref(), replica.as_os_str()]).unwrap();
    for i in 0..FILES {
        rewrite(&sb.s(format!("d{}/f{i:03}", i % 4)), content(i, 1));
    }
    let run = sb.run(&args(""));
    run.expect_code(0);
    // Another program's fsync commits the journal's running transaction,
    // the renames with it, as its timer would a few seconds later.
    let other = disk.dir.join("other");
    fs::write(&other, b"x").unwrap();
    fs::File::open(&other).unwrap().sync_all().unwrap();
    disk.shutdown().unwrap();
    disk.unmount().unwrap();
    disk.mount().unwrap();
    let mut bad = Vec::new();
    for i in 0..FILES {
        let rel = format!("d{}/f{i:03}", i % 4);
        let got = fs::read(replica.join(&rel)).unwrap_or_default();
        if got != content(i, 0) && got != content(i, 1) {
            bad.push(format!("{rel}: {} bytes", got.len()));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {FILES} files neither old nor new after the power cut: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}
