//! Extended attributes and POSIX ACLs of a file or folder, read from the
//! source and set on the replica.
//!
//! POSIX ACLs are the attributes `system.posix_acl_access` (any entry)
//! and `system.posix_acl_default` (folders): they are copied as the bytes
//! the kernel gives, user and group ids as numbers, as on one machine.
//! Which attributes are mirrored is the run's `Policy`: `user.*`, plus
//! `trusted.*` and `security.*` as root (others cannot set them), plus
//! the ACLs; other `system.*` attributes belong to the filesystem.
//!
//! An attribute goes through an open handle, or through the
//! `/proc/self/fd` name of an `O_PATH` handle for an entry we may not
//! open (that name reaches that very inode, whatever is renamed).

use crate::contract::model::Meta;
use crate::fs::root::Root;
use crate::fs::state;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd};
use rustix::fs::{self as rfs, XattrFlags};
use rustix::io::Errno;
use std::fmt::Write;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// How XFS shows a file's ACLs to root, besides the `system.*` names;
/// setting or removing these sets or removes the ACLs themselves.
const XFS_ACLS: [&[u8]; 2] = [b"trusted.SGI_ACL_FILE", b"trusted.SGI_ACL_DEFAULT"];

/// The probe's attribute name; never left behind.
const PROBE_NAME: &str = "user.treesync-probe";

/// Which attributes a run mirrors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `user.*`.
    pub user: bool,
    /// `trusted.*` and `security.*` (root only).
    pub privileged: bool,
    /// `system.posix_acl_access` and `system.posix_acl_default`.
    pub acls: bool,
}

impl Policy {
    /// From `--no-xattrs` and `--no-acls` (negated) and whether we run as
    /// root.
    pub fn new(xattrs: bool, acls: bool, as_root: bool) -> Self {
        Policy {
            user: xattrs,
            privileged: xattrs && as_root,
            acls,
        }
    }

    /// Nothing to mirror: no attribute is read at all.
    pub fn is_none(self) -> bool {
        !(self.user || self.privileged || self.acls)
    }

    pub fn wants(self, name: &[u8]) -> bool {
        if XFS_ACLS.contains(&name) {
            // XFS's own form of the ACLs, shown to root: the ACLs are
            // mirrored as ACLs (or not at all, with `--no-acls`).
            false
        } else if name.starts_with(b"user.") {
            self.user
        } else if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
            self.privileged
        } else if name == ACL_ACCESS || name == ACL_DEFAULT {
            self.acls
        } else {
            false
        }
    }

    /// What the replica's state records after a full comparison under
    /// this policy (`attrs_marker`), e.g. `user,privileged,acls`.
    pub fn describe(self) -> String {
        let mut out = String::new();
        for (on, name) in [
            (self.user, "user"),
            (self.privileged, "privileged"),
            (self.acls, "acls"),
        ] {
            if on {
                let sep = if out.is_empty() { "" } else { "," };
                let _ = write!(out, "{sep}{name}");
            }
        }
        out
    }
}

/// The state file that says under which policy every entry's attributes
/// were last compared (`Policy::describe`).
const MARKER: &str = "attrs";

/// Whether this run's first sync must compare every entry's attributes
/// (a sweep): the replica's record is not this policy's. Where it must,
/// the record is removed first (not in a dry run): a run stopped before
/// its sweep is done leaves none. A run that mirrors no attribute removes
/// it too: what it copies has none, so a later run must sweep.
pub fn settle_marker(replica: &Path, policy: Policy, dry_run: bool) -> bool {
    let Ok(root) = Root::open(replica) else {
        return !policy.is_none();
    };
    let Ok(dir) = state::open_dir(&root) else {
        return !policy.is_none();
    };
    let recorded = state::read_small(dir.as_fd(), MARKER, 256).ok().flatten();
    let matches = recorded.is_some_and(|r| r == policy.describe().as_bytes());
    if matches && !policy.is_none() {
        return false;
    }
    if !dry_run {
        let _ = rfs::unlinkat(&dir, MARKER, rfs::AtFlags::empty());
    }
    !policy.is_none()
}

/// Records that every entry's attributes were compared under `policy`
/// and set where they differed (the sweep's sync ended without error).
pub fn record_marker(replica: &Root, policy: Policy) -> std::io::Result<()> {
    let dir = state::open_dir(replica)?;
    state::write_bytes(&dir, MARKER, policy.describe().as_bytes())
}

/// Removes the record of a full comparison (see `settle_marker`).
pub fn clear_marker(replica: &Root) -> std::io::Result<()> {
    let dir = state::open_dir(replica)?;
    match rfs::unlinkat(&dir, MARKER, rfs::AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the entries `name` of the folders `a` and `b` have the same
/// attributes under `policy`: the common case, neither has any that it
/// mirrors, costs one `listxattrat` each; the rest are read in full
/// through the folders' `/proc/self/fd` names. An entry that cannot be
/// read counts as different (the Applier then finds out).
pub fn same_at(a: BorrowedFd<'_>, b: BorrowedFd<'_>, name: &[u8], policy: Policy) -> bool {
    let wanted = |dir: BorrowedFd<'_>| {
        names_at(dir, name).map(|names| {
            names.map(|list| {
                list.split(|&c| c == 0)
                    .any(|n| !n.is_empty() && policy.wants(n))
            })
        })
    };
    if let (Some(Ok(false)), Some(Ok(false))) = (wanted(a), wanted(b)) {
        return true;
    }
    let below = |dir: BorrowedFd<'_>| {
        let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        std::path::PathBuf::from(std::ffi::OsString::from_vec(p))
    };
    let (pa, pb) = (below(a), below(b));
    matches!(
        (read(On::Below(&pa), policy), read(On::Below(&pb), policy)),
        (Ok(x), Ok(y)) if x == y
    )
}

/// The kernel has no `listxattrat` (before Linux 6.13): paths then.
static NO_LISTXATTRAT: AtomicBool = AtomicBool::new(false);

/// The attribute names of `dir`'s entry `name`, its link not followed, by
/// `listxattrat(2)`; `None` where the kernel lacks it.
fn names_at(dir: BorrowedFd<'_>, name: &[u8]) -> Option<Result<Vec<u8>, Errno>> {
    const SYS_LISTXATTRAT: libc::c_long = 465;
    if NO_LISTXATTRAT.load(Ordering::Relaxed) || !cfg!(target_arch = "x86_64") {
        return None;
    }
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: the name is NUL-terminated and outlives the call; the
        // kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Some(Ok(buf));
        }
        match Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error()?) {
            Errno::NOSYS => {
                NO_LISTXATTRAT.store(true, Ordering::Relaxed);
                return None;
            }
            Errno::RANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 8, 0),
            e => return Some(Err(e)),
        }
    }
}

/// Whether an entry's attributes are to be compared: at a sweep, or when
/// the source's ctime may be newer than the replica's (an attribute change
/// moves the ctime, not the mtime; every write of ours moves the
/// replica's to now). Timestamps come from a clock of a few milliseconds'
/// step, so an equal ctime may be a change made just after the replica's
/// write; and a source that keeps whole-second ctimes cannot tell a change
/// later in that second. Both count as newer.
pub fn due(source: &Meta, replica: &Meta, sweep: bool) -> bool {
    let coarse = source.ctime.nanos == 0 && source.ctime.secs == replica.ctime.secs;
    sweep || source.ctime >= replica.ctime || coarse
}

/// Where attributes are read or set.
#[derive(Clone, Copy)]
pub enum On<'a> {
    /// An open file or folder (not `O_PATH`).
    Fd(BorrowedFd<'a>),
    /// The `/proc/self/fd/N` name of an `O_PATH` handle.
    Proc(&'a str),
    /// A path, its last component not followed: for reading only, where
    /// a link swapped into the path can at worst mislead a comparison
    /// (what is then set goes through handles).
    Below(&'a Path),
}

/// Attributes by name, sorted by name.
pub type Attrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The attributes of `on` that `policy` mirrors. A filesystem without
/// attributes has none.
pub fn read(on: On<'_>, policy: Policy) -> Result<Attrs, Errno> {
    if policy.is_none() {
        return Ok(Vec::new());
    }
    let names = match list(on) {
        Ok(names) => names,
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut attrs = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !policy.wants(name) {
            continue;
        }
        match get(on, name) {
            Ok(value) => attrs.push((name.to_vec(), value)),
            // Removed since it was listed.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    attrs.sort_unstable();
    Ok(attrs)
}

/// What setting attributes could not do without failing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Something was set or removed.
    pub changed: bool,
    /// Attributes other than ACLs that the replica refused as unsupported.
    pub unkept_xattrs: bool,
    /// ACLs that the replica refused as unsupported.
    pub unkept_acls: bool,
}

/// A failure to set or remove one attribute.
#[derive(Debug)]
pub struct SetError {
    pub name: Vec<u8>,
    pub errno: Errno,
}

/// Makes the attributes of `on` that `policy` mirrors equal to `want`
/// (the source's): sets those that differ, removes those the source
/// lacks (but `security.*` labels). A replica that cannot store an attribute (unsupported, or a
/// privileged one refused) is noted in the result, not an error.
pub fn apply(on: On<'_>, want: &Attrs, policy: Policy) -> Result<Applied, SetError> {
    let mut done = Applied::default();
    let have = match read(on, policy) {
        Ok(have) => have,
        Err(errno) => {
            return Err(SetError {
                name: Vec::new(),
                errno,
            })
        }
    };
    let unkept = |done: &mut Applied, name: &[u8], e: Errno| {
        let privileged = !name.starts_with(b"user.") && !is_acl(name);
        match e {
            Errno::OPNOTSUPP | Errno::NOSYS => {}
            Errno::PERM if privileged => {}
            _ => return false,
        }
        if is_acl(name) {
            done.unkept_acls = true;
        } else {
            done.unkept_xattrs = true;
        }
        true
    };
    for (name, value) in want {
        let same = have
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .is_ok_and(|k| have[k].1 == *value);
        if same {
            continue;
        }
        match set(on, name, value) {
            Ok(()) => done.changed = true,
            Err(e) if unkept(&mut done, name, e) => {}
            Err(errno) => {
                return Err(SetError {
                    name: name.clone(),
                    errno,
                })
            }
        }
    }
    for (name, _) in &have {
        // A security label the source lacks (its filesystem has none) is
        // the one the replica's security module gave: never removed.
        if want.binary_search_by(|(n, _)| n.cmp(name)).is_ok() || name.starts_with(b"security.") {
            continue;
        }
        match remove(on, name) {
            Ok(()) => done.changed = true,
            Err(Errno::NODATA) => {}
            Err(e) if unkept(&mut done, name, e) => {}
            Err(errno) => {
                return Err(SetError {
                    name: name.clone(),
                    errno,
                })
            }
        }
    }
    Ok(done)
}

fn is_acl(name: &[u8]) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

/// Whether the filesystem of the open file `fd` stores `user.*`
/// attributes and POSIX ACLs.
pub fn probe(fd: BorrowedFd<'_>) -> (bool, bool) {
    let xattrs = rfs::fsetxattr(fd, PROBE_NAME, b"1", XattrFlags::empty()).is_ok();
    if xattrs {
        let _ = rfs::fremovexattr(fd, PROBE_NAME);
    }
    // A file without an ACL: "no such attribute" where ACLs are stored.
    let acls = matches!(
        rfs::fgetxattr(fd, ACL_ACCESS, &mut [0u8; 64][..]),
        Ok(_) | Err(Errno::NODATA)
    );
    (xattrs, acls)
}

/// The names, NUL-terminated, one call in the common case.
fn list(on: On<'_>) -> Result<Vec<u8>, Errno> {
    grown(
        1024,
        |buf| match on {
            On::Fd(fd) => rfs::flistxattr(fd, buf),
            On::Proc(p) => rfs::listxattr(p, buf),
            On::Below(p) => rfs::llistxattr(p, buf),
        },
        || match on {
            On::Fd(fd) => rfs::flistxattr_query(fd),
            On::Proc(p) => rfs::listxattr_query(p),
            On::Below(p) => rfs::llistxattr_query(p),
        },
    )
}

fn get(on: On<'_>, name: &[u8]) -> Result<Vec<u8>, Errno> {
    grown(
        256,
        |buf| match on {
            On::Fd(fd) => rfs::fgetxattr(fd, name, buf),
            On::Proc(p) => rfs::getxattr(p, name, buf),
            On::Below(p) => rfs::lgetxattr(p, name, buf),
        },
        || match on {
            On::Fd(fd) => rfs::fgetxattr_query(fd, name),
            On::Proc(p) => rfs::getxattr_query(p, name),
            On::Below(p) => rfs::lgetxattr_query(p, name),
        },
    )
}

/// What `fill` puts in a buffer of `start` bytes, or of the size `size`
/// says when that is too small (`ERANGE`; the value may grow meanwhile).
fn grown(
    start: usize,
    fill: impl Fn(&mut [u8]) -> Result<usize, Errno>,
    size: impl Fn() -> Result<usize, Errno>,
) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; start];
    loop {
        match fill(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {
                let need = size()?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

fn set(on: On<'_>, name: &[u8], value: &[u8]) -> Result<(), Errno> {
    match on {
        On::Fd(fd) => rfs::fsetxattr(fd, name, value, XattrFlags::empty()),
        On::Proc(p) => rfs::setxattr(p, name, value, XattrFlags::empty()),
        // Never written by path.
        On::Below(_) => Err(Errno::PERM),
    }
}

fn remove(on: On<'_>, name: &[u8]) -> Result<(), Errno> {
    match on {
        On::Fd(fd) => rfs::fremovexattr(fd, name),
        On::Proc(p) => rfs::removexattr(p, name),
        On::Below(_) => Err(Errno::PERM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;
    use std::fs::File;

    const ALL: Policy = Policy {
        user: true,
        privileged: false,
        acls: true,
    };

    fn supported(f: &File) -> bool {
        let (xattrs, _) = probe(f.as_fd());
        if !xattrs {
            eprintln!("skipped: the temporary folder's filesystem stores no user attributes");
        }
        xattrs
    }

    #[test]
    fn the_policy_picks_namespaces() {
        let p = Policy::new(true, false, false);
        assert!(p.wants(b"user.a") && !p.wants(b"trusted.a") && !p.wants(ACL_ACCESS));
        let root = Policy::new(true, true, true);
        assert!(root.wants(b"security.selinux") && root.wants(ACL_DEFAULT));
        assert!(!root.wants(b"system.nfs4_acl"));
        assert!(!root.wants(b"trusted.SGI_ACL_FILE") && root.wants(b"trusted.overlay.x"));
        assert_eq!(root.describe(), "user,privileged,acls");
        assert!(Policy::new(false, false, true).is_none());
    }

    #[test]
    fn due_where_the_source_ctime_may_be_newer() {
        use crate::contract::model::Timestamp;
        let at = |secs, nanos| Meta {
            ctime: Timestamp::new(secs, nanos),
            ..Meta::default()
        };
        assert!(due(&at(50, 5), &at(40, 5), false));
        assert!(!due(&at(40, 5), &at(50, 5), false));
        assert!(due(&at(40, 5), &at(50, 5), true));
        // The clock's step: equal may be later.
        assert!(due(&at(50, 5), &at(50, 5), false));
        // Whole seconds: the replica's second may hold a later change.
        assert!(due(&at(60, 0), &at(60, 300), false));
        assert!(!due(&at(59, 0), &at(60, 300), false));
    }

    #[test]
    fn apply_sets_changes_and_removes_extras() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let (fa, fb) = (File::create(&a).unwrap(), File::create(&b).unwrap());
        if !supported(&fa) {
            return;
        }
        for (name, value) in [
            ("user.x", &b"1"[..]),
            ("user.empty", b""),
            ("user.big", &[7; 3000]),
        ] {
            rfs::fsetxattr(&fa, name, value, XattrFlags::empty()).unwrap();
        }
        rfs::fsetxattr(&fb, "user.x", b"old", XattrFlags::empty()).unwrap();
        rfs::fsetxattr(&fb, "user.gone", b"z", XattrFlags::empty()).unwrap();
        let want = read(On::Fd(fa.as_fd()), ALL).unwrap();
        assert_eq!(want.len(), 3);
        let done = apply(On::Fd(fb.as_fd()), &want, ALL).unwrap();
        assert!(done.changed);
        assert_eq!(read(On::Fd(fb.as_fd()), ALL).unwrap(), want);
        // Equal now: nothing to do.
        assert!(!apply(On::Fd(fb.as_fd()), &want, ALL).unwrap().changed);
        // Attributes the policy leaves out are neither read nor removed.
        let none = Policy::default();
        assert!(read(On::Fd(fb.as_fd()), none).unwrap().is_empty());
        assert!(
            !apply(On::Fd(fb.as_fd()), &Vec::new(), none)
                .unwrap()
                .changed
        );
        assert_eq!(read(On::Fd(fb.as_fd()), ALL).unwrap().len(), 3);
    }
}
