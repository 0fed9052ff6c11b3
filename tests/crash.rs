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

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a system command; its output when it failed.
fn sh(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A loop device holding an ext4 image, mounted at `mnt`. Dropping it
/// unmounts and detaches, whatever state the test left it in.
struct Ext4 {
    device: String,
    mnt: PathBuf,
    mounted: bool,
}

impl Ext4 {
    fn new(image: &Path, mnt: &Path) -> Result<Ext4, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("needs root (loop devices and mount)".into());
        }
        for tool in ["losetup", "mkfs.ext4", "mount", "xfs_io"] {
            if sh(
                "sh",
                &["-c".as_ref(), format!("command -v {tool}").as_ref()],
            )
            .is_err()
            {
                return Err(format!("{tool} not found"));
            }
        }
        let file = fs::File::create(image).map_err(|e| e.to_string())?;
        file.set_len(96 << 20).map_err(|e| e.to_string())?;
        drop(file);
        sh(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        )?;
        let device = sh(
            "losetup",
            &["--find".as_ref(), "--show".as_ref(), image.as_os_str()],
        )?;
        fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
        let mut fs = Ext4 {
            device,
            mnt: mnt.to_path_buf(),
            mounted: false,
        };
        fs.mount()?;
        Ok(fs)
    }

    fn mount(&mut self) -> Result<(), String> {
        sh(
            "mount",
            &[
                "-t".as_ref(),
                "ext4".as_ref(),
                self.device.as_ref(),
                self.mnt.as_os_str(),
            ],
        )?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) -> Result<(), String> {
        sh("umount", &[self.mnt.as_os_str()])?;
        self.mounted = false;
        Ok(())
    }

    /// The power cut: nothing more reaches the disk, the journal is not
    /// flushed.
    fn shutdown(&self) -> Result<(), String> {
        sh(
            "xfs_io",
            &[
                "-x".as_ref(),
                "-c".as_ref(),
                "shutdown".as_ref(),
                self.mnt.as_os_str(),
            ],
        )
        .map(drop)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            let _ = sh("umount", &["-l".as_ref(), self.mnt.as_os_str()]);
        }
        let _ = sh("losetup", &["-d".as_ref(), self.device.as_ref()]);
    }
}

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
    let mut disk = match Ext4::new(&sb.path("ext4.img"), &sb.path("mnt")) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: power-cut test: {why}");
            return;
        }
    };
    let replica = sb.path("mnt/replica");
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
    let other = sb.path("mnt/other");
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
