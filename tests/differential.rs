//! treesync against `rsync -aHAXS --delete`: random trees (nested folders,
//! files, relative symlinks, hard-link groups across folders, `user.*`
//! xattrs, POSIX access and default ACLs, sparse files, owners as root) are
//! mirrored by both tools, changed (an xattr, an ACL entry, a hard-link
//! group broken and one joined, edits, deletes, a new file and a new sparse
//! file) and mirrored again; once more with `-x` and a tmpfs mounted inside
//! the source. After each sync the two replicas are compared with each
//! other, property by property; a difference names the seed, the path, the
//! property, both replicas' values and the source's. Self-contained: it
//! shares nothing with `tests/common`. Without `rsync`, or xattrs or ACLs
//! on the temp folder's filesystem, the tests say `skipped: <why>` and pass.

use filetime::FileTime;
use rustix::fs::XattrFlags;
use rustix::io::Errno;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{lchown, symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compare hard-link groups, xattrs and ACLs too; `false` compares only
/// the properties treesync mirrored before it kept those.
const FULL_FIDELITY: bool = true;

/// Random trees per run: each is a seed, built, mirrored, changed and
/// mirrored again.
const SEEDS: u64 = 16;

/// How much more a sparse file's copy may allocate than its source.
const ALLOCATION_SLACK: u64 = 64 * 1024;

#[test]
fn random_trees_and_their_changes_are_mirrored_as_rsync_mirrors_them() {
    let Some(owners) = preconditions() else {
        return;
    };
    let mut results = Vec::new();
    for seed in 0..SEEDS {
        let mut case = Case::new();
        let mut gen = Gen::new(seed, owners);
        gen.tree(&case.src);
        case.mirror(&[]);
        results.push((format!("seed {seed}, first sync"), case.compare()));
        gen.changes(&case.src);
        case.mirror(&[]);
        results.push((format!("seed {seed}, after changes"), case.compare()));
    }
    report(&results);
}

#[test]
fn with_one_file_system_a_mount_inside_the_source_is_left_out_as_rsync_leaves_it() {
    let Some(owners) = preconditions() else {
        return;
    };
    if !owners {
        eprintln!("skipped: mounting a tmpfs inside the source needs root");
        return;
    }
    let mut case = Case::new();
    let mut gen = Gen::new(1_000, owners);
    gen.tree(&case.src);
    let mnt = case.src.join("mnt");
    let _mount = match Tmpfs::mount(&mnt) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: a tmpfs inside the source: {why}");
            return;
        }
    };
    fs::create_dir(mnt.join("sub")).expect("mkdir on the tmpfs");
    fs::write(mnt.join("inner"), "on another filesystem\n").expect("write on the tmpfs");
    fs::write(mnt.join("sub/deeper"), "deeper\n").expect("write on the tmpfs");
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o750)).expect("chmod the tmpfs");
    lchown(&mnt, Some(1000), Some(100)).expect("chown the tmpfs");
    // tmpfs keeps user.* xattrs since Linux 6.6; older ones refuse them.
    let _ = rustix::fs::lsetxattr(&mnt, "user.on-tmpfs", b"yes", XattrFlags::empty());
    set_mtime(&mnt, FileTime::from_unix_time(1_400_000_000, 5));

    let mut results = Vec::new();
    case.mirror(&["-x"]);
    results.push(("-x, first sync".to_owned(), case.compare()));
    fs::write(mnt.join("later"), "written after the first sync\n").expect("write on the tmpfs");
    gen.changes(&case.src);
    case.mirror(&["-x"]);
    results.push(("-x, after changes".to_owned(), case.compare()));
    report(&results);
}

/// `Some(running as root)` when rsync is installed and the temp folder's
/// filesystem keeps xattrs and ACLs; `None` after saying why not.
fn preconditions() -> Option<bool> {
    if Command::new("rsync").arg("--version").output().is_err() {
        eprintln!("skipped: rsync not installed");
        return None;
    }
    let probe = tempfile::Builder::new()
        .prefix("treesync-diff-probe-")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir");
    let file = probe.path().join("probe");
    fs::write(&file, "").expect("probe file");
    if let Err(e) = rustix::fs::setxattr(&file, "user.treesync-probe", b"1", XattrFlags::empty()) {
        eprintln!("skipped: no user xattrs in the temp folder ({e})");
        return None;
    }
    let acl = acl_bytes(&[
        (USER_OBJ, 6, NO_ID),
        (USER, 4, 1000),
        (GROUP_OBJ, 4, NO_ID),
        (MASK, 4, NO_ID),
        (OTHER, 0, NO_ID),
    ]);
    if let Err(e) = rustix::fs::setxattr(&file, ACL_ACCESS, &acl, XattrFlags::empty()) {
        eprintln!("skipped: no POSIX ACLs in the temp folder ({e})");
        return None;
    }
    if xattr(&file, ACL_ACCESS).as_deref() != Some(&acl[..]) {
        eprintln!("skipped: the temp folder's filesystem does not keep a set ACL");
        return None;
    }
    Some(rustix::process::geteuid().is_root())
}

// ---------------------------------------------------------------------------
// Two replicas of one source
// ---------------------------------------------------------------------------

/// A temporary folder holding the source, rsync's replica, treesync's
/// replica and treesync's logs (outside both replicas).
struct Case {
    tmp: tempfile::TempDir,
    src: PathBuf,
    rsync_dst: PathBuf,
    ts_dst: PathBuf,
    runs: u32,
}

impl Case {
    fn new() -> Case {
        let tmp = tempfile::Builder::new()
            .prefix("treesync-diff-")
            .tempdir_in(std::env::temp_dir())
            .expect("temp dir");
        let src = tmp.path().join("src");
        fs::create_dir(&src).expect("create the source");
        Case {
            rsync_dst: tmp.path().join("rsync"),
            ts_dst: tmp.path().join("treesync"),
            src,
            tmp,
            runs: 0,
        }
    }

    /// `rsync -aHAXS --delete --modify-window=-1 <x> SRC/ RSYNC/`, then
    /// `treesync --once --quiet --log-file LOG <x> SRC TREESYNC`, where
    /// `x` is `-x` or nothing; either failing fails the test.
    ///
    /// rsync's default modify window (0) compares whole seconds: a folder
    /// it has just made, whose mtime falls in the same second as the
    /// source's, keeps its own nanoseconds, and later runs leave it so.
    /// `-1` makes rsync compare, and so set, mtimes to the nanosecond, as
    /// treesync does.
    fn mirror(&mut self, one_file_system: &[&str]) {
        let slash = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push("/");
            s
        };
        let flags = if one_file_system.is_empty() {
            "-aHAXS"
        } else {
            "-aHAXSx"
        };
        let out = Command::new("rsync")
            .args([flags, "--delete", "--modify-window=-1"])
            .arg(slash(&self.src))
            .arg(slash(&self.rsync_dst))
            .output()
            .expect("run rsync");
        assert!(
            out.status.success(),
            "rsync failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );

        self.runs += 1;
        let log = self.tmp.path().join(format!("treesync-{}.log", self.runs));
        let out = Command::new(env!("CARGO_BIN_EXE_treesync"))
            .args(["--once", "--quiet", "--log-file"])
            .arg(&log)
            .args(one_file_system)
            .arg(&self.src)
            .arg(&self.ts_dst)
            .output()
            .expect("run treesync");
        assert!(
            out.status.success(),
            "treesync failed ({}): {}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Every difference between rsync's replica and treesync's.
    fn compare(&self) -> Vec<Diff> {
        compare(&self.src, &self.rsync_dst, &self.ts_dst)
    }
}

/// A tmpfs mounted for one test, unmounted when dropped, whatever the test
/// did.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path) -> Result<Tmpfs, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

// ---------------------------------------------------------------------------
// Random trees and random changes
// ---------------------------------------------------------------------------

/// SplitMix64: a few lines, and the same sequence for a seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// A time between 2001 and 2023, with nanoseconds.
    fn time(&mut self) -> FileTime {
        FileTime::from_unix_time(
            self.range(1_000_000_000, 1_700_000_000) as i64,
            self.range(0, 1_000_000_000) as u32,
        )
    }
}

const FILE_MODES: [u32; 7] = [0o644, 0o600, 0o755, 0o640, 0o444, 0o664, 0o700];
/// Set only as root: chown clears them, and they need the owner.
const ROOT_FILE_MODES: [u32; 3] = [0o4755, 0o2755, 0o6750];
const DIR_MODES: [u32; 7] = [0o755, 0o750, 0o700, 0o775, 0o711, 0o1777, 0o2775];
const UIDS: [u32; 4] = [0, 1000, 1001, 65534];
const GIDS: [u32; 4] = [0, 100, 1000, 65534];
/// Ids named in ACL entries (they need not exist).
const ACL_USERS: [u32; 4] = [1000, 1001, 2000, 4242];
const ACL_GROUPS: [u32; 3] = [100, 1000, 3000];
const XATTR_NAMES: [&str; 4] = ["user.a", "user.comment", "user.mime_type", "user.checksum"];

/// Builds a seed's tree and its changes.
struct Gen {
    rng: Rng,
    /// Appended to every new name, so names never collide.
    serial: u32,
    /// Root: owners and set-id bits vary.
    owners: bool,
}

impl Gen {
    fn new(seed: u64, owners: bool) -> Gen {
        Gen {
            rng: Rng(seed),
            serial: 0,
            owners,
        }
    }

    /// A fresh name: `stem` and a number, sometimes with a space, a
    /// non-ASCII letter or a byte that is not UTF-8.
    fn name(&mut self, stem: &str) -> OsString {
        self.serial += 1;
        let mut name = format!("{stem}{}", self.serial).into_bytes();
        match self.rng.range(0, 12) {
            0 => name.extend_from_slice(" x.txt".as_bytes()),
            1 => name.extend_from_slice("é".as_bytes()),
            2 => name.push(0xff),
            _ => {}
        }
        OsString::from_vec(name)
    }

    fn content(&mut self) -> Vec<u8> {
        let len = if self.rng.chance(10) {
            0
        } else {
            self.rng.range(1, 3000) as usize
        };
        self.rng.bytes(len)
    }

    /// Nested folders, files, hard-link groups, sparse files and symlinks,
    /// then owners, modes, ACLs, xattrs and mtimes on all of them.
    fn tree(&mut self, root: &Path) {
        let mut dirs = vec![PathBuf::new()];
        for _ in 0..self.rng.range(3, 8) {
            let d = self.rng.pick(&dirs).join(self.name("d"));
            fs::create_dir(root.join(&d)).expect("mkdir");
            dirs.push(d);
        }
        let mut files = Vec::new();
        for _ in 0..self.rng.range(6, 16) {
            let f = self.rng.pick(&dirs).join(self.name("f"));
            fs::write(root.join(&f), self.content()).expect("write");
            files.push(f);
        }
        // Hard-link groups of 2 or 3 names, across folders.
        let mut linked = BTreeSet::new();
        for _ in 0..self.rng.range(1, 4) {
            let f = self.rng.pick(&files).clone();
            if !linked.insert(f.clone()) {
                continue;
            }
            for _ in 0..self.rng.range(1, 3) {
                let name = self.rng.pick(&dirs).join(self.name("h"));
                fs::hard_link(root.join(&f), root.join(name)).expect("link");
            }
        }
        for _ in 0..self.rng.range(0, 3) {
            let s = self.rng.pick(&dirs).join(self.name("s"));
            self.sparse(&root.join(&s));
            files.push(s);
        }
        let mut links = Vec::new();
        for _ in 0..self.rng.range(2, 6) {
            let at = self.rng.pick(&dirs).join(self.name("l"));
            let target = self.link_target(&at, &files, &dirs);
            symlink(target, root.join(&at)).expect("symlink");
            links.push(at);
        }

        for f in &files {
            self.dress_file(&root.join(f));
        }
        for l in &links {
            let l = root.join(l);
            if self.owners {
                lchown(&l, Some(*self.rng.pick(&UIDS)), Some(*self.rng.pick(&GIDS)))
                    .expect("chown a symlink");
            }
            let t = self.rng.time();
            set_mtime(&l, t);
        }
        for d in &dirs {
            self.dress_dir(&root.join(d));
        }
    }

    /// A relative target: an entry of the tree, or nothing.
    fn link_target(&mut self, at: &Path, files: &[PathBuf], dirs: &[PathBuf]) -> PathBuf {
        let ups = at.parent().map_or(0, |p| p.components().count());
        let mut target: PathBuf = std::iter::repeat_n("..", ups).collect();
        match self.rng.range(0, 4) {
            0 | 1 => target.push(self.rng.pick(files)),
            2 => target.push(self.rng.pick(dirs)),
            _ => target.push("missing/nowhere"),
        }
        if target.as_os_str().is_empty() {
            target.push(".");
        }
        target
    }

    /// 4 MiB long, holding 4 KiB of data at one to four random offsets.
    fn sparse(&mut self, path: &Path) {
        let f = fs::File::create(path).expect("create a sparse file");
        f.set_len(4 << 20).expect("set_len");
        for _ in 0..self.rng.range(1, 5) {
            let at = self.rng.range(0, 1024) * 4096;
            f.write_all_at(&self.rng.bytes(4096), at).expect("pwrite");
        }
    }

    /// Owner, mode, maybe an access ACL and xattrs, and an mtime.
    fn dress_file(&mut self, path: &Path) {
        let mut modes = FILE_MODES.to_vec();
        if self.owners {
            lchown(
                path,
                Some(*self.rng.pick(&UIDS)),
                Some(*self.rng.pick(&GIDS)),
            )
            .expect("chown");
            modes.extend(ROOT_FILE_MODES);
        }
        let mode = *self.rng.pick(&modes);
        set_mode(path, mode);
        if self.rng.chance(30) {
            let acl = self.access_acl(mode);
            set_acl(path, ACL_ACCESS, &acl);
        }
        let owners = self.owners;
        with_write_access(owners, path, || self.xattrs(path));
        let t = self.rng.time();
        set_mtime(path, t);
    }

    /// Owner, mode, maybe access and default ACLs and xattrs, and an mtime.
    fn dress_dir(&mut self, path: &Path) {
        if self.owners {
            lchown(
                path,
                Some(*self.rng.pick(&UIDS)),
                Some(*self.rng.pick(&GIDS)),
            )
            .expect("chown");
        }
        let mode = *self.rng.pick(&DIR_MODES);
        set_mode(path, mode);
        // rsync 3.5.0 copies the access ACL of a folder with the sticky bit
        // with the owning group's permissions cleared where they equal the
        // mask's: such folders get none, so treesync is not held to that.
        if mode & 0o1000 == 0 && self.rng.chance(30) {
            let acl = self.access_acl(mode);
            set_acl(path, ACL_ACCESS, &acl);
        }
        if self.rng.chance(30) {
            let acl = self.default_acl();
            set_acl(path, ACL_DEFAULT, &acl);
        }
        let owners = self.owners;
        with_write_access(owners, path, || self.xattrs(path));
        let t = self.rng.time();
        set_mtime(path, t);
    }

    /// Two times in five, one to three `user.*` xattrs, some empty.
    fn xattrs(&mut self, path: &Path) {
        if !self.rng.chance(40) {
            return;
        }
        for _ in 0..self.rng.range(1, 4) {
            self.set_some_xattr(path);
        }
    }

    fn set_some_xattr(&mut self, path: &Path) {
        let name = if self.rng.chance(70) {
            (*self.rng.pick(&XATTR_NAMES)).to_owned()
        } else {
            format!("user.k{}", self.rng.range(0, 1000))
        };
        let len = if self.rng.chance(25) {
            0
        } else {
            self.rng.range(1, 64) as usize
        };
        let value = self.rng.bytes(len);
        rustix::fs::lsetxattr(path, name.as_str(), &value, XattrFlags::empty()).expect("setxattr");
    }

    /// An access ACL agreeing with `mode`'s owner and other bits, with one
    /// or two named users, maybe a named group, and a mask.
    fn access_acl(&mut self, mode: u32) -> Vec<AclEntry> {
        let mut acl = vec![
            (USER_OBJ, ((mode >> 6) & 7) as u16, NO_ID),
            (GROUP_OBJ, ((mode >> 3) & 7) as u16, NO_ID),
            (OTHER, (mode & 7) as u16, NO_ID),
            (MASK, self.rng.range(0, 8) as u16, NO_ID),
        ];
        let mut users = BTreeSet::new();
        for _ in 0..self.rng.range(1, 3) {
            users.insert(*self.rng.pick(&ACL_USERS));
        }
        for u in users {
            acl.push((USER, self.rng.range(0, 8) as u16, u));
        }
        if self.rng.chance(50) {
            let g = *self.rng.pick(&ACL_GROUPS);
            acl.push((GROUP, self.rng.range(0, 8) as u16, g));
        }
        acl
    }

    /// A default ACL: the three base entries, half the time a named user
    /// and a mask too.
    fn default_acl(&mut self) -> Vec<AclEntry> {
        let mut acl = vec![
            (USER_OBJ, 7, NO_ID),
            (GROUP_OBJ, self.rng.range(0, 8) as u16, NO_ID),
            (OTHER, self.rng.range(0, 8) as u16, NO_ID),
        ];
        if self.rng.chance(50) {
            acl.push((
                USER,
                self.rng.range(0, 8) as u16,
                *self.rng.pick(&ACL_USERS),
            ));
            acl.push((MASK, self.rng.range(0, 8) as u16, NO_ID));
        }
        acl
    }

    /// The changes made between the two syncs of a seed: deletes, an
    /// xattr-only change, an ACL-only change, a hard-link group broken and
    /// one joined, content edits, a new file and a new sparse file. Entries
    /// on another filesystem (a mount inside the source) are left alone.
    fn changes(&mut self, root: &Path) {
        for _ in 0..self.rng.range(1, 3) {
            self.delete_one(root);
        }
        self.change_an_xattr(root);
        self.change_an_acl(root);
        self.break_a_group(root);
        self.join_a_group(root);
        for _ in 0..self.rng.range(1, 4) {
            self.edit_one(root);
        }
        let dirs = entries(root, |m| m.is_dir());
        let f = root.join(self.rng.pick(&dirs)).join(self.name("n"));
        fs::write(&f, self.content()).expect("write");
        self.dress_file(&f);
        let s = root.join(self.rng.pick(&dirs)).join(self.name("s"));
        self.sparse(&s);
        self.dress_file(&s);
    }

    fn delete_one(&mut self, root: &Path) {
        let all = entries(root, |_| true);
        let all: Vec<_> = all.iter().filter(|p| !p.as_os_str().is_empty()).collect();
        if all.is_empty() {
            return;
        }
        let victim = root.join(self.rng.pick(&all));
        let md = fs::symlink_metadata(&victim).expect("stat");
        if md.is_dir() {
            // Whole folders go less often: they take the most with them.
            if self.rng.chance(30) {
                fs::remove_dir_all(&victim).expect("remove a folder");
            }
        } else {
            fs::remove_file(&victim).expect("remove");
        }
    }

    /// Sets a new or existing `user.*` xattr, or removes one, on a file or
    /// folder; nothing else about it changes.
    fn change_an_xattr(&mut self, root: &Path) {
        let targets = entries(root, |m| m.is_file() || m.is_dir());
        let target = root.join(self.rng.pick(&targets));
        let names: Vec<OsString> = xattr_names(&target)
            .into_iter()
            .filter(|n| n.as_bytes().starts_with(b"user."))
            .collect();
        let owners = self.owners;
        with_write_access(owners, &target, || {
            if !names.is_empty() && self.rng.chance(40) {
                let name = self.rng.pick(&names);
                rustix::fs::lremovexattr(&target, name.as_os_str()).expect("removexattr");
            } else {
                self.set_some_xattr(&target);
            }
        });
    }

    /// Changes one entry's permissions, adds a named user or removes a
    /// named entry of an access ACL (adds an ACL where none has one), and
    /// sometimes changes a folder's default ACL.
    fn change_an_acl(&mut self, root: &Path) {
        let with_acl = entries(root, |m| m.is_file() || m.is_dir())
            .into_iter()
            .filter(|p| xattr(&root.join(p), ACL_ACCESS).is_some())
            .collect::<Vec<_>>();
        if with_acl.is_empty() {
            let targets = entries(root, |m| m.is_file());
            let target = root.join(self.rng.pick(&targets));
            let mode = fs::symlink_metadata(&target).expect("stat").mode();
            let acl = self.access_acl(mode);
            set_acl(&target, ACL_ACCESS, &acl);
        } else {
            let target = root.join(self.rng.pick(&with_acl));
            let mut acl = acl_entries(&xattr(&target, ACL_ACCESS).expect("an ACL"));
            let named: Vec<usize> = (0..acl.len())
                .filter(|&i| acl[i].0 == USER || acl[i].0 == GROUP)
                .collect();
            match self.rng.range(0, 3) {
                0 => {
                    let i = self.rng.range(0, acl.len() as u64) as usize;
                    acl[i].1 = (acl[i].1 + self.rng.range(1, 8) as u16) % 8;
                }
                1 => {
                    let free: Vec<u32> = ACL_USERS
                        .iter()
                        .copied()
                        .filter(|u| !acl.iter().any(|e| e.0 == USER && e.2 == *u))
                        .collect();
                    if let Some(&u) = free.first() {
                        acl.push((USER, self.rng.range(0, 8) as u16, u));
                    }
                }
                _ => {
                    if !named.is_empty() {
                        acl.remove(*self.rng.pick(&named));
                    }
                }
            }
            set_acl(&target, ACL_ACCESS, &acl);
        }
        if self.rng.chance(40) {
            let dirs = entries(root, |m| m.is_dir());
            let dir = root.join(self.rng.pick(&dirs));
            if xattr(&dir, ACL_DEFAULT).is_some() && self.rng.chance(50) {
                rustix::fs::lremovexattr(&dir, ACL_DEFAULT).expect("remove a default ACL");
            } else {
                let acl = self.default_acl();
                set_acl(&dir, ACL_DEFAULT, &acl);
            }
        }
    }

    /// One name of a hard-link group becomes a file of its own: a copy
    /// with the same content, owner, mode, ACL and xattrs, and another
    /// mtime, written aside and renamed over the name.
    fn break_a_group(&mut self, root: &Path) {
        let groups = link_groups(root);
        if groups.is_empty() {
            return;
        }
        let group = self.rng.pick(&groups).clone();
        let name = root.join(self.rng.pick(&group));
        let md = fs::symlink_metadata(&name).expect("stat");
        let tmp = name.with_file_name(self.name(".break"));
        fs::write(&tmp, fs::read(&name).expect("read")).expect("write");
        if self.owners {
            lchown(&tmp, Some(md.uid()), Some(md.gid())).expect("chown");
        }
        match xattr(&name, ACL_ACCESS) {
            Some(acl) => set_raw_acl(&tmp, ACL_ACCESS, &acl),
            None => remove_xattr_if_any(&tmp, ACL_ACCESS),
        }
        set_mode(&tmp, md.mode() & 0o7777);
        with_write_access(self.owners, &tmp, || {
            for n in xattr_names(&name) {
                if n.as_bytes().starts_with(b"user.") {
                    let v = xattr(&name, &n).unwrap_or_default();
                    rustix::fs::lsetxattr(&tmp, n.as_os_str(), &v, XattrFlags::empty())
                        .expect("setxattr");
                }
            }
        });
        let later = FileTime::from_unix_time(
            md.mtime() + self.rng.range(1, 100_000) as i64,
            md.mtime_nsec() as u32,
        );
        set_mtime(&tmp, later);
        fs::rename(&tmp, &name).expect("rename over");
    }

    /// A file gets one more name: a new one in some folder, or the name of
    /// another file, replaced (a link made aside, renamed over it).
    fn join_a_group(&mut self, root: &Path) {
        let files = entries(root, |m| m.is_file());
        if files.is_empty() {
            return;
        }
        let from = root.join(self.rng.pick(&files));
        let ino = fs::symlink_metadata(&from).expect("stat").ino();
        let others: Vec<&PathBuf> = files
            .iter()
            .filter(|p| fs::symlink_metadata(root.join(p)).expect("stat").ino() != ino)
            .collect();
        if others.is_empty() || self.rng.chance(50) {
            let dirs = entries(root, |m| m.is_dir());
            let name = root.join(self.rng.pick(&dirs)).join(self.name("j"));
            fs::hard_link(&from, name).expect("link");
        } else {
            let over = root.join(self.rng.pick(&others));
            let tmp = over.with_file_name(self.name(".join"));
            fs::hard_link(&from, &tmp).expect("link");
            fs::rename(&tmp, &over).expect("rename over");
        }
    }

    /// New content written in place (all of a group's names see it), and
    /// a new mtime.
    fn edit_one(&mut self, root: &Path) {
        let files = entries(root, |m| m.is_file());
        if files.is_empty() {
            return;
        }
        let path = root.join(self.rng.pick(&files));
        let content = self.content();
        with_write_access(self.owners, &path, || {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open for writing");
            f.write_all(&content).expect("write");
        });
        let t = self.rng.time();
        set_mtime(&path, t);
    }
}

/// Runs `f` with the owner's write permission on `path`, which writing
/// and user xattrs need when not running as root; the mode is put back
/// after.
fn with_write_access<R>(owners: bool, path: &Path, f: impl FnOnce() -> R) -> R {
    let mode = fs::symlink_metadata(path).expect("stat").mode() & 0o7777;
    if owners || mode & 0o200 != 0 {
        return f();
    }
    set_mode(path, mode | 0o200);
    let out = f();
    set_mode(path, mode);
    out
}

/// The relative paths (the root is the empty path) under `root` whose
/// metadata passes `keep`, in order, not crossing into other filesystems.
fn entries(root: &Path, keep: impl Fn(&fs::Metadata) -> bool) -> Vec<PathBuf> {
    let dev = fs::symlink_metadata(root).expect("stat the root").dev();
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let md = fs::symlink_metadata(root.join(&rel)).expect("stat");
        if md.dev() != dev {
            continue;
        }
        if md.is_dir() {
            let mut children: Vec<_> = fs::read_dir(root.join(&rel))
                .expect("read_dir")
                .map(|e| rel.join(e.expect("dir entry").file_name()))
                .collect();
            children.sort();
            stack.extend(children.into_iter().rev());
        }
        if keep(&md) {
            out.push(rel);
        }
    }
    out
}

/// The names of each file with more than one, as relative paths.
fn link_groups(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for f in entries(root, |m| m.is_file() && m.nlink() > 1) {
        let ino = fs::symlink_metadata(root.join(&f)).expect("stat").ino();
        by_ino.entry(ino).or_default().push(f);
    }
    by_ino.into_values().filter(|g| g.len() > 1).collect()
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn set_mtime(path: &Path, t: FileTime) {
    filetime::set_symlink_file_times(path, t, t).expect("set times");
}

// ---------------------------------------------------------------------------
// xattrs and POSIX ACLs
// ---------------------------------------------------------------------------

const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";
const ACL_VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id of the entries that name no one.
const NO_ID: u32 = u32::MAX;

/// (tag, permissions, id).
type AclEntry = (u16, u16, u32);

/// The xattr form of an ACL: a version, then the entries sorted by tag and
/// id, little-endian.
fn acl_bytes(entries: &[AclEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|&(tag, _, id)| (tag, id));
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in sorted {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn acl_entries(bytes: &[u8]) -> Vec<AclEntry> {
    bytes
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect()
}

/// `u::rw-,u:1000:r--,g::r-x,m::r-x,o::---`, as `getfacl -c` would say.
fn acl_text(bytes: &[u8]) -> String {
    let entries: Vec<String> = acl_entries(bytes)
        .into_iter()
        .map(|(tag, perm, id)| {
            let who = match tag {
                USER_OBJ | USER => "u",
                GROUP_OBJ | GROUP => "g",
                MASK => "m",
                OTHER => "o",
                _ => "?",
            };
            let id = if id == NO_ID {
                String::new()
            } else {
                id.to_string()
            };
            let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
                .iter()
                .map(|&(bit, c)| if perm & bit != 0 { c } else { '-' })
                .collect();
            format!("{who}:{id}:{rwx}")
        })
        .collect();
    entries.join(",")
}

fn set_acl(path: &Path, name: &str, entries: &[AclEntry]) {
    set_raw_acl(path, name, &acl_bytes(entries));
}

fn set_raw_acl(path: &Path, name: &str, bytes: &[u8]) {
    rustix::fs::setxattr(path, name, bytes, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("set {name} {} on {path:?}: {e}", acl_text(bytes)));
}

fn remove_xattr_if_any(path: &Path, name: &str) {
    match rustix::fs::lremovexattr(path, name) {
        Ok(()) | Err(Errno::NODATA) => {}
        Err(e) => panic!("remove {name} from {path:?}: {e}"),
    }
}

/// The names of a path's xattrs (never following a symlink).
fn xattr_names(path: &Path) -> Vec<OsString> {
    let mut buf = vec![0u8; 64 * 1024];
    let len = rustix::fs::llistxattr(path, &mut buf[..])
        .unwrap_or_else(|e| panic!("listxattr {path:?}: {e}"));
    buf[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| OsStr::from_bytes(n).to_owned())
        .collect()
}

/// One xattr's value (never following a symlink); `None` where it is not
/// set.
fn xattr(path: &Path, name: impl AsRef<OsStr>) -> Option<Vec<u8>> {
    let name = name.as_ref();
    let mut buf = vec![0u8; 64 * 1024];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(len) => {
            buf.truncate(len);
            Some(buf)
        }
        Err(Errno::NODATA) => None,
        Err(e) => panic!("getxattr {name:?} of {path:?}: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The comparison
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Folder,
    Symlink,
    Other,
}

/// What is compared of one entry of a tree.
struct Node {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    dev: u64,
    ino: u64,
    size: u64,
    allocated: u64,
    /// Files only.
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    /// All xattrs but the ACLs; files and folders only.
    xattrs: BTreeMap<OsString, Vec<u8>>,
    acl_access: Option<Vec<u8>>,
    acl_default: Option<Vec<u8>>,
}

/// Every entry of a tree by relative path (the root is the empty path),
/// without the root's `.treesync` state folder.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {path:?}: {e}"));
        let kind = if md.is_file() {
            Kind::File
        } else if md.is_dir() {
            Kind::Folder
        } else if md.file_type().is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        if kind == Kind::Folder {
            for e in fs::read_dir(&path).expect("read_dir") {
                let name = e.expect("dir entry").file_name();
                if rel.as_os_str().is_empty() && name == ".treesync" {
                    continue;
                }
                stack.push(rel.join(name));
            }
        }
        let mut xattrs = BTreeMap::new();
        let (mut acl_access, mut acl_default) = (None, None);
        if matches!(kind, Kind::File | Kind::Folder) {
            for name in xattr_names(&path) {
                let Some(value) = xattr(&path, &name) else {
                    continue;
                };
                if name == ACL_ACCESS {
                    acl_access = Some(value);
                } else if name == ACL_DEFAULT {
                    acl_default = Some(value);
                } else {
                    xattrs.insert(name, value);
                }
            }
        }
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: (md.mtime(), md.mtime_nsec()),
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            allocated: md.blocks() * 512,
            content: (kind == Kind::File).then(|| fs::read(&path).expect("read")),
            target: (kind == Kind::Symlink).then(|| fs::read_link(&path).expect("readlink")),
            xattrs,
            acl_access,
            acl_default,
        };
        out.insert(rel, node);
    }
    out
}

/// One property of one path on which the replicas disagree.
struct Diff {
    path: String,
    /// What kind of property (`mode`, `xattr`, `hard-link group`, …).
    class: &'static str,
    /// The property itself (`xattr user.a`).
    property: String,
    rsync: String,
    treesync: String,
    /// The source's value, where the source has an entry of that type.
    source: Option<String>,
}

/// The entries at one path in the source and in both replicas, and the
/// differences found so far.
struct Sides<'a> {
    path: &'a Path,
    source: Option<&'a Node>,
    rsync: &'a Node,
    treesync: &'a Node,
    out: &'a mut Vec<Diff>,
}

impl Sides<'_> {
    fn push(
        &mut self,
        class: &'static str,
        property: String,
        values: [String; 2],
        source: Option<String>,
    ) {
        let [rsync, treesync] = values;
        self.out.push(Diff {
            path: show_path(self.path),
            class,
            property,
            rsync,
            treesync,
            source,
        });
    }

    /// Records `property` where `value` differs between the replicas.
    fn check(&mut self, class: &'static str, property: &str, value: impl Fn(&Node) -> String) {
        let (r, t) = (value(self.rsync), value(self.treesync));
        if r != t {
            let source = self
                .source
                .filter(|s| s.kind == self.rsync.kind)
                .map(&value);
            self.push(class, property.to_owned(), [r, t], source);
        }
    }

    /// Contents differ: their lengths, where they part, and which the
    /// source's equals.
    fn check_content(&mut self) {
        let (Some(r), Some(t)) = (&self.rsync.content, &self.treesync.content) else {
            return;
        };
        if r == t {
            return;
        }
        let first = r.iter().zip(t).position(|(p, q)| p != q);
        let first = first.unwrap_or(r.len().min(t.len()));
        let values = [
            format!("{} bytes", r.len()),
            format!("{} bytes, different from byte {first}", t.len()),
        ];
        let source = self.source.and_then(|s| s.content.as_ref()).map(|s| {
            if s == r {
                "equal to rsync's".to_owned()
            } else if s == t {
                "equal to treesync's".to_owned()
            } else {
                format!("{} bytes, equal to neither", s.len())
            }
        });
        self.push("content", "content".into(), values, source);
    }

    /// A file whose source has holes: neither copy allocates more than the
    /// source plus `ALLOCATION_SLACK`.
    fn check_sparseness(&mut self) {
        let Some(s) = self.source.filter(|s| s.kind == Kind::File) else {
            return;
        };
        let limit = s.allocated + ALLOCATION_SLACK;
        let too_much = self.rsync.allocated > limit || self.treesync.allocated > limit;
        if s.allocated < s.size && too_much {
            let values = [self.rsync.allocated, self.treesync.allocated].map(|n| n.to_string());
            let source = Some(format!("{} of {} bytes", s.allocated, s.size));
            self.push("sparseness", "allocated bytes".into(), values, source);
        }
    }
}

/// Every disagreement between rsync's replica `a` and treesync's `b` of
/// `src`.
fn compare(src: &Path, a: &Path, b: &Path) -> Vec<Diff> {
    let (ss, sa, sb) = (snapshot(src), snapshot(a), snapshot(b));
    let (gs, ga, gb) = (
        names_of_inodes(&ss),
        names_of_inodes(&sa),
        names_of_inodes(&sb),
    );
    let mut diffs = Vec::new();
    let paths: BTreeSet<&PathBuf> = sa.keys().chain(sb.keys()).collect();
    for path in paths {
        let source = ss.get(path);
        let say = |n: Option<&Node>| n.map_or("missing".to_owned(), |n| kind_name(n.kind));
        let (x, y) = match (sa.get(path), sb.get(path)) {
            (Some(x), Some(y)) if x.kind == y.kind => (x, y),
            (x, y) => {
                diffs.push(Diff {
                    path: show_path(path),
                    class: "presence or type",
                    property: "type".into(),
                    rsync: say(x),
                    treesync: say(y),
                    source: Some(say(source)),
                });
                continue;
            }
        };
        let mut sides = Sides {
            path,
            source,
            rsync: x,
            treesync: y,
            out: &mut diffs,
        };
        if x.kind != Kind::Symlink {
            sides.check("mode", "mode", |n| format!("{:04o}", n.mode));
        }
        sides.check("owner", "uid", |n| n.uid.to_string());
        sides.check("owner", "gid", |n| n.gid.to_string());
        sides.check("mtime", "mtime", |n| {
            format!("{}.{:09}", n.mtime.0, n.mtime.1)
        });
        sides.check("target", "target", |n| {
            n.target.as_deref().map(show_path).unwrap_or_default()
        });
        sides.check_content();
        sides.check_sparseness();
        if !FULL_FIDELITY {
            continue;
        }
        let names: BTreeSet<&OsString> = x.xattrs.keys().chain(y.xattrs.keys()).collect();
        for name in names {
            let property = format!("xattr {}", show_bytes(name.as_bytes()));
            sides.check("xattr", &property, |n| {
                n.xattrs
                    .get(name)
                    .map_or("absent".to_owned(), |v| quoted(v))
            });
        }
        sides.check("ACL", "access ACL", |n| {
            show_acl(access_acl(n.acl_access.as_deref()))
        });
        sides.check("ACL", "default ACL", |n| show_acl(n.acl_default.as_deref()));
        if x.kind == Kind::File {
            let (na, nb) = (&ga[&(x.dev, x.ino)], &gb[&(y.dev, y.ino)]);
            if na != nb {
                let ns = source
                    .filter(|s| s.kind == Kind::File)
                    .map(|s| show_names(&gs[&(s.dev, s.ino)]));
                let values = [show_names(na), show_names(nb)];
                sides.push("hard-link group", "names of its inode".into(), values, ns);
            }
        }
    }
    diffs
}

/// The file paths of each inode of a snapshot.
fn names_of_inodes(s: &BTreeMap<PathBuf, Node>) -> BTreeMap<(u64, u64), BTreeSet<&PathBuf>> {
    let mut out: BTreeMap<(u64, u64), BTreeSet<&PathBuf>> = BTreeMap::new();
    for (path, n) in s {
        if n.kind == Kind::File {
            out.entry((n.dev, n.ino)).or_default().insert(path);
        }
    }
    out
}

fn show_names(names: &BTreeSet<&PathBuf>) -> String {
    let names: Vec<String> = names.iter().map(|p| show_path(p)).collect();
    format!("[{}]", names.join(", "))
}

/// An access ACL of the three base entries says no more than the mode
/// bits: rsync removes it, so it counts as none.
fn access_acl(bytes: Option<&[u8]>) -> Option<&[u8]> {
    bytes.filter(|b| acl_entries(b).len() > 3)
}

fn show_acl(bytes: Option<&[u8]>) -> String {
    bytes.map_or("absent".to_owned(), acl_text)
}

fn kind_name(kind: Kind) -> String {
    format!("{kind:?}").to_lowercase()
}

/// A relative path as text: `.` for the root, escapes for bytes that are
/// not UTF-8.
fn show_path(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        return ".".to_owned();
    }
    show_bytes(path.as_os_str().as_bytes())
}

fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// An xattr value, quoted, its first 16 bytes only.
fn quoted(value: &[u8]) -> String {
    const SHOWN: usize = 16;
    if value.len() <= SHOWN {
        return format!("\"{}\"", value.escape_ascii());
    }
    let head = value[..SHOWN].escape_ascii();
    format!("\"{head}…\" ({} bytes)", value.len())
}

/// Fails the test when any sync left the replicas different: a count by
/// property, every difference of the first such sync, and a line for each
/// other one.
fn report(results: &[(String, Vec<Diff>)]) {
    let failing: Vec<&(String, Vec<Diff>)> =
        results.iter().filter(|(_, d)| !d.is_empty()).collect();
    let Some((first, first_diffs)) = failing.first() else {
        return;
    };
    let mut by_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (_, diffs) in &failing {
        let classes: BTreeSet<&str> = diffs.iter().map(|d| d.class).collect();
        for c in classes {
            by_class.entry(c).or_default().0 += 1;
        }
        for d in diffs {
            by_class.entry(d.class).or_default().1 += 1;
        }
    }
    let mut msg = format!(
        "{} of {} syncs left treesync's replica different from rsync's\n",
        failing.len(),
        results.len()
    );
    for (class, (syncs, paths)) in &by_class {
        let _ = writeln!(msg, "  {class}: {paths} differences in {syncs} syncs");
    }
    let _ = writeln!(
        msg,
        "{first} (path: property: rsync's | treesync's (the source's)):"
    );
    const SHOWN: usize = 60;
    for d in first_diffs.iter().take(SHOWN) {
        let source = d.source.as_deref().unwrap_or("-");
        let _ = writeln!(
            msg,
            "  {}: {}: {} | {} ({source})",
            d.path, d.property, d.rsync, d.treesync
        );
    }
    if first_diffs.len() > SHOWN {
        let _ = writeln!(msg, "  … and {} more", first_diffs.len() - SHOWN);
    }
    for (context, diffs) in failing.iter().skip(1) {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for d in diffs {
            *counts.entry(d.class).or_default() += 1;
        }
        let counts: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(msg, "{context}: {}", counts.join(", "));
    }
    panic!("{msg}");
}
