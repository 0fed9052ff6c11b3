//! Filesystems mounted for one test: an image on a loop device (ext4, ext4
//! with whole-second times, exFAT through FUSE), a small tmpfs, a bind
//! mount. Each is unmounted, and its loop device detached, when dropped,
//! whatever the test did. Mounting needs root and the tools: `Err` says
//! why it cannot be had, and the test prints `skipped: <why>` and returns.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a system command; its standard output, or what went wrong.
pub fn sh(program: &str, args: &[&OsStr]) -> Result<String, String> {
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

/// What an image is made with.
#[derive(Clone, Copy, Debug)]
pub enum Image {
    /// `mkfs.ext4` with its defaults (`data=ordered` when mounted).
    Ext4,
    /// ext4 with 128-byte inodes: mtimes kept to the second.
    Ext4WholeSeconds,
    /// exFAT through FUSE: names that ignore case, no modes, no owners, no
    /// links, mtimes to the second.
    Exfat,
}

/// A mounted filesystem; `dir` is its mount point.
pub struct Mounted {
    pub dir: PathBuf,
    device: Option<String>,
    fuse: bool,
    mounted: bool,
}

impl Mounted {
    /// Makes an image of `mib` MiB at `at/image` and mounts it at `at/mnt`.
    pub fn image(at: &Path, kind: Image, mib: u64) -> Result<Mounted, String> {
        need_root()?;
        std::fs::create_dir_all(at.join("mnt")).map_err(|e| e.to_string())?;
        let image = at.join("image");
        let made = std::fs::File::create(&image).and_then(|f| f.set_len(mib << 20));
        made.map_err(|e| format!("cannot make the image: {e}"))?;
        let img = image.as_os_str();
        match kind {
            Image::Ext4 => sh("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), img])?,
            Image::Ext4WholeSeconds => sh(
                "mkfs.ext4",
                &[
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-I".as_ref(),
                    "128".as_ref(),
                    img,
                ],
            )?,
            Image::Exfat => sh("mkfs.exfat", &[img])?,
        };
        let device = sh("losetup", &["--find".as_ref(), "--show".as_ref(), img])?;
        let mut m = Mounted {
            dir: at.join("mnt"),
            device: Some(device),
            fuse: matches!(kind, Image::Exfat),
            mounted: false,
        };
        m.mount()?;
        Ok(m)
    }

    /// A tmpfs of `size` (as `mount -o size=` takes it) at `dir`.
    pub fn tmpfs(dir: &Path, size: &str) -> Result<Mounted, String> {
        need_root()?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let opts = format!("size={size}");
        let args = ["-t", "tmpfs", "-o", &opts, "tmpfs"];
        let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        args.push(dir.as_os_str());
        sh("mount", &args)?;
        Ok(Mounted {
            dir: dir.to_path_buf(),
            device: None,
            fuse: false,
            mounted: true,
        })
    }

    /// `from` seen at `onto` too (`mount --bind`).
    pub fn bind(from: &Path, onto: &Path) -> Result<Mounted, String> {
        need_root()?;
        sh(
            "mount",
            &["--bind".as_ref(), from.as_os_str(), onto.as_os_str()],
        )?;
        Ok(Mounted {
            dir: onto.to_path_buf(),
            device: None,
            fuse: false,
            mounted: true,
        })
    }

    /// Mounts the image's device again after `unmount`.
    pub fn mount(&mut self) -> Result<(), String> {
        let device = self.device.as_deref().ok_or("nothing to mount again")?;
        let program = if self.fuse {
            "mount.exfat-fuse"
        } else {
            "mount"
        };
        sh(program, &[device.as_ref(), self.dir.as_os_str()])?;
        self.mounted = true;
        Ok(())
    }

    pub fn unmount(&mut self) -> Result<(), String> {
        sh("umount", &[self.dir.as_os_str()])?;
        self.mounted = false;
        Ok(())
    }

    /// A power cut: the filesystem stops at once and what its journal has
    /// not committed is lost (`FS_IOC_SHUTDOWN` with `NOLOGFLUSH`).
    pub fn shutdown(&self) -> Result<(), String> {
        let args = ["-x", "-c", "shutdown"];
        let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        args.push(self.dir.as_os_str());
        sh("xfs_io", &args).map(drop)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            let _ = sh("umount", &["-l".as_ref(), self.dir.as_os_str()]);
        }
        if let Some(device) = &self.device {
            let _ = sh("losetup", &["-d".as_ref(), device.as_ref()]);
        }
    }
}

fn need_root() -> Result<(), String> {
    if super::is_root_user() {
        Ok(())
    } else {
        Err("needs root (mounts and loop devices)".into())
    }
}
