//! The replica's filesystem, probed rather than assumed (Safety rule 7).
//!
//! At the start of a run (`SyncOptions::settle_replica_fs`), throwaway
//! entries in `REPLICA/.treesync/` tell what the replica's filesystem
//! keeps: whether names ignore case (or Unicode normalisation), whether
//! permission bits stick, whether owners can be set (as root), whether
//! symbolic links can be made, and how finely mtimes are stored. The result (`FsCaps`) travels in `SyncOptions` and
//! shapes the rest of the run:
//!
//! - mtimes are compared within the granularity (or `--modify-window`), in
//!   the Differ and in the Hasher's choice of what to read;
//! - permissions and owners the replica cannot store are neither compared
//!   nor set; the Applier reports that once a run, as a `warn`;
//! - a source link is an `error` where links cannot be made;
//! - on a replica that ignores case, source names that would land on one
//!   replica entry are paired by their folded form (`fold`): the first in
//!   byte order wins every run, each other is an `error`.
//!
//! A dry run writes nothing under the replica, so it does not probe: it
//! uses the result an earlier run saved in `.treesync/fs-probe` (same
//! filesystem only), or else the capabilities of a POSIX filesystem.

use crate::contract::model::{Meta, Timestamp};
use crate::fs::root::Root;
use crate::fs::state;
use crate::fs::xattrs;
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the replica's filesystem keeps, as probed (or assumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsCaps {
    /// `A.txt` and `a.txt` name one entry.
    pub case_insensitive: bool,
    /// An NFD name and its NFC form name one entry (detected and reported;
    /// names are folded by case only).
    pub normalizes_unicode: bool,
    /// Permission bits read back as they were set.
    pub keeps_perms: bool,
    /// Owner and group can be set (probed only as root; else not wanted).
    pub keeps_owners: bool,
    /// Symbolic links can be made.
    pub symlinks: bool,
    /// A file can have several names (hard links).
    pub hard_links: bool,
    /// `user.*` extended attributes can be stored.
    pub xattrs: bool,
    /// POSIX ACLs can be stored.
    pub acls: bool,
    /// The finest step of stored mtimes, in nanoseconds (1 ns to 2 s).
    pub granularity_ns: u64,
    /// Mtimes that differ by at most this many nanoseconds count as equal:
    /// just under the granularity, or `--modify-window`.
    pub mtime_window_ns: u64,
    /// Owners were wanted (running as root) but cannot be kept.
    pub owners_lost: bool,
}

impl Default for FsCaps {
    /// A POSIX filesystem: everything kept, mtimes to the nanosecond.
    fn default() -> Self {
        FsCaps {
            case_insensitive: false,
            normalizes_unicode: false,
            keeps_perms: true,
            keeps_owners: true,
            symlinks: true,
            hard_links: true,
            xattrs: true,
            acls: true,
            granularity_ns: 1,
            mtime_window_ns: 0,
            owners_lost: false,
        }
    }
}

impl FsCaps {
    /// Caps with their mtime window set from the granularity, or from
    /// `--modify-window` when given (it overrides the probe, 0 included).
    pub fn with_window(mut self, modify_window: Option<Duration>) -> Self {
        self.mtime_window_ns = match modify_window {
            Some(w) => u64::try_from(w.as_nanos()).unwrap_or(u64::MAX),
            None => self.granularity_ns.saturating_sub(1),
        };
        self
    }

    /// How far apart two mtimes may be and still look equal here: a write
    /// within this span after a copy is invisible to metadata.
    pub fn blind_span(&self) -> Duration {
        Duration::from_nanos(self.mtime_window_ns)
    }

    /// Two mtimes that the replica cannot tell apart.
    pub fn same_mtime(&self, a: Timestamp, b: Timestamp) -> bool {
        if self.mtime_window_ns == 0 {
            return a == b;
        }
        let ns = |t: Timestamp| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
        (ns(a) - ns(b)).unsigned_abs() <= u128::from(self.mtime_window_ns)
    }

    /// `model::needs_content_check` with mtimes compared within the window.
    pub fn needs_content_check(&self, source: &Meta, replica: &Meta, checksum: bool) -> bool {
        source.size == replica.size && (checksum || !self.same_mtime(source.mtime, replica.mtime))
    }

    /// Whether names must be paired by their folded form (by case only:
    /// Unicode normalisation is detected but not folded).
    pub fn folds_names(&self) -> bool {
        self.case_insensitive
    }

    /// What the replica does not keep, for the run's one `warn`.
    fn unkept_reason(&self, unkept: u8) -> Option<String> {
        let names: Vec<&str> = [
            (UNKEPT_PERMS, "permission bits"),
            (UNKEPT_OWNER, "owners"),
            (UNKEPT_XATTRS, "extended attributes"),
            (UNKEPT_ACLS, "ACLs"),
        ]
        .into_iter()
        .filter(|(bit, _)| unkept & bit != 0)
        .map(|(_, name)| name)
        .collect();
        let what = match names.as_slice() {
            [] => return None,
            [one] => one.to_string(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        };
        Some(format!(
            "the replica's filesystem does not keep {what}: content and mtimes are mirrored, {what} are not"
        ))
    }
}

/// Bits of what a tick could not keep (`ReplicaOps` records them).
pub const UNKEPT_PERMS: u8 = 1;
pub const UNKEPT_OWNER: u8 = 2;
pub const UNKEPT_XATTRS: u8 = 4;
pub const UNKEPT_ACLS: u8 = 8;

/// The capabilities of one run and its once-a-run report of what is not
/// kept.
#[derive(Clone, Debug, Default)]
pub struct ReplicaFs {
    pub caps: FsCaps,
    reported: Arc<AtomicBool>,
}

impl ReplicaFs {
    pub fn new(caps: FsCaps) -> Self {
        ReplicaFs {
            caps,
            reported: Arc::default(),
        }
    }

    /// The reason for the run's one `warn` about permissions or owners
    /// not kept, the first time a tick met them.
    pub fn unkept_warning(&self, unkept: &Unkept) -> Option<String> {
        let reason = self.caps.unkept_reason(unkept.0.load(Ordering::Relaxed))?;
        if self.reported.swap(true, Ordering::Relaxed) {
            return None;
        }
        Some(reason)
    }
}

/// What one tick's operations could not keep (`UNKEPT_*` bits).
#[derive(Debug, Default)]
pub struct Unkept(AtomicU8);

impl Unkept {
    pub fn note(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::Relaxed);
    }

    /// The result of a chmod (`UNKEPT_PERMS`) or chown (`UNKEPT_OWNER`):
    /// an errno by which the filesystem says it cannot store that is noted
    /// and is not an error. EPERM says so only for an entry of ours (or as
    /// root); `ours` tells, asked only then.
    pub fn tolerate(
        &self,
        bit: u8,
        result: Result<(), Errno>,
        ours: impl FnOnce() -> bool,
    ) -> Result<(), Errno> {
        match result {
            Err(Errno::OPNOTSUPP | Errno::NOSYS) => {}
            Err(Errno::PERM) if rustix::process::geteuid().is_root() || ours() => {}
            other => return other,
        }
        self.note(bit);
        Ok(())
    }
}

/// The state file that keeps the last probe, for dry runs.
const SAVED: &str = "fs-probe";

/// Probes the replica's filesystem in `REPLICA/.treesync/` (which must
/// exist) and saves the result there.
pub fn probe_replica(replica: &std::path::Path, as_root: bool) -> io::Result<FsCaps> {
    let root = Root::open(replica)?;
    let dir = state::open_dir(&root)?;
    let caps = probe(dir.as_fd(), as_root)?;
    let dev = root.stat()?.st_dev;
    // Only a convenience for dry runs: a failure to save changes nothing.
    let _ = state::write_bytes(&dir, SAVED, encode(&caps, dev).as_bytes());
    Ok(caps)
}

/// The probe saved by an earlier run on this replica's filesystem.
pub fn load_saved(replica: &std::path::Path) -> Option<FsCaps> {
    let root = Root::open(replica).ok()?;
    let dir = state::open_dir(&root).ok()?;
    let bytes = state::read_small(dir.as_fd(), SAVED, 4096).ok()??;
    let (caps, dev) = decode(std::str::from_utf8(&bytes).ok()?)?;
    (dev == root.stat().ok()?.st_dev).then_some(caps)
}

const PROBE_FILE: &str = "probe-Ab";
const PROBE_FOLDED: &str = "PROBE-aB";
const PROBE_NFD: &str = "probe-e\u{301}";
const PROBE_NFC: &str = "probe-\u{e9}";
const PROBE_LINK: &str = "probe-link";
const PROBE_HARD: &str = "probe-hard";
/// Odd seconds and nanoseconds that no coarser step keeps whole.
const PROBE_MTIME: Timestamp = Timestamp {
    secs: 1_000_000_001,
    nanos: 123_456_789,
};

/// Probes with throwaway entries in `dir`, removed afterwards.
pub fn probe(dir: BorrowedFd<'_>, as_root: bool) -> io::Result<FsCaps> {
    let names = [
        PROBE_FILE,
        PROBE_FOLDED,
        PROBE_NFD,
        PROBE_NFC,
        PROBE_LINK,
        PROBE_HARD,
    ];
    let clean = || {
        for name in names {
            let _ = rfs::unlinkat(dir, name, AtFlags::empty());
        }
    };
    clean();
    let result = probe_clean(dir, as_root);
    clean();
    result
}

fn probe_clean(dir: BorrowedFd<'_>, as_root: bool) -> io::Result<FsCaps> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, PROBE_FILE, flags, Mode::from_raw_mode(0o600))?;
    let exists = |name: &str| rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    let case_insensitive = exists(PROBE_FOLDED);
    let normalizes_unicode = match rfs::openat(dir, PROBE_NFD, flags, Mode::from_raw_mode(0o600)) {
        Ok(_) => exists(PROBE_NFC),
        Err(_) => false,
    };
    let keeps_perms = [0o604, 0o640].into_iter().all(|perm| {
        rfs::fchmod(&fd, Mode::from_raw_mode(perm)).is_ok()
            && rfs::fstat(&fd).is_ok_and(|st| st.st_mode & 0o7777 == perm)
    });
    let keeps_owners = !as_root || {
        // An owner other than the present one: setting the same one
        // succeeds even where owners are not stored.
        let st = rfs::fstat(&fd)?;
        let (uid, gid) = (
            if st.st_uid == 1 { 2 } else { 1 },
            if st.st_gid == 1 { 2 } else { 1 },
        );
        rfs::fchown(
            &fd,
            Some(rfs::Uid::from_raw_unchecked(uid)),
            Some(rfs::Gid::from_raw_unchecked(gid)),
        )
        .is_ok()
            && rfs::fstat(&fd).is_ok_and(|st| st.st_uid == uid && st.st_gid == gid)
    };
    let set = Timespec {
        tv_sec: PROBE_MTIME.secs,
        tv_nsec: PROBE_MTIME.nanos.into(),
    };
    rfs::futimens(
        &fd,
        &Timestamps {
            last_access: set,
            last_modification: set,
        },
    )?;
    let (xattrs, acls) = xattrs::probe(fd.as_fd());
    drop(fd);
    let st = rfs::statat(dir, PROBE_FILE, AtFlags::SYMLINK_NOFOLLOW)?;
    let got = Timestamp::new(st.st_mtime, st.st_mtime_nsec as u32);
    let symlinks = rfs::symlinkat("probe-target", dir, PROBE_LINK).is_ok();
    let hard_links = rfs::linkat(dir, PROBE_FILE, dir, PROBE_HARD, AtFlags::empty()).is_ok();
    Ok(FsCaps {
        case_insensitive,
        normalizes_unicode,
        keeps_perms,
        keeps_owners,
        symlinks,
        hard_links,
        xattrs,
        acls,
        granularity_ns: granularity(PROBE_MTIME, got),
        ..FsCaps::default()
    })
}

/// The finest step that explains reading `got` back after setting `set`.
pub fn granularity(set: Timestamp, got: Timestamp) -> u64 {
    let ns = |t: Timestamp| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
    let lost = (ns(set) - ns(got)).unsigned_abs();
    const STEPS: [u64; 7] = [
        1,
        1_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        2_000_000_000,
    ];
    STEPS
        .into_iter()
        .find(|&g| lost < u128::from(g))
        .unwrap_or(2_000_000_000)
}

fn encode(c: &FsCaps, dev: u64) -> String {
    let b = |v: bool| u8::from(v);
    format!(
        "dev={dev}\ncase_insensitive={}\nnormalizes_unicode={}\nkeeps_perms={}\nkeeps_owners={}\nsymlinks={}\nhard_links={}\nxattrs={}\nacls={}\ngranularity_ns={}\n",
        b(c.case_insensitive),
        b(c.normalizes_unicode),
        b(c.keeps_perms),
        b(c.keeps_owners),
        b(c.symlinks),
        b(c.hard_links),
        b(c.xattrs),
        b(c.acls),
        c.granularity_ns
    )
}

fn decode(text: &str) -> Option<(FsCaps, u64)> {
    let fields: HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let get = |k: &str| fields.get(k).copied();
    let flag = |k: &str| get(k).map(|v| v != 0);
    let caps = FsCaps {
        case_insensitive: flag("case_insensitive")?,
        normalizes_unicode: flag("normalizes_unicode")?,
        keeps_perms: flag("keeps_perms")?,
        keeps_owners: flag("keeps_owners")?,
        symlinks: flag("symlinks")?,
        // Saved by runs before these were probed: assumed kept.
        hard_links: flag("hard_links").unwrap_or(true),
        xattrs: flag("xattrs").unwrap_or(true),
        acls: flag("acls").unwrap_or(true),
        granularity_ns: get("granularity_ns")?.clamp(1, 2_000_000_000),
        ..FsCaps::default()
    };
    Some((caps, get("dev")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64, nanos: u32) -> Timestamp {
        Timestamp::new(secs, nanos)
    }

    #[test]
    fn granularity_from_what_was_read_back() {
        let set = PROBE_MTIME;
        assert_eq!(granularity(set, set), 1);
        assert_eq!(granularity(set, ts(1_000_000_001, 123_456_000)), 1_000);
        assert_eq!(granularity(set, ts(1_000_000_001, 120_000_000)), 10_000_000);
        assert_eq!(granularity(set, ts(1_000_000_001, 0)), 1_000_000_000);
        assert_eq!(granularity(set, ts(1_000_000_000, 0)), 2_000_000_000);
        // Rounded up rather than down: still the step.
        assert_eq!(granularity(set, ts(1_000_000_002, 0)), 1_000_000_000);
    }

    #[test]
    fn mtimes_compare_within_the_window() {
        let exact = FsCaps::default().with_window(None);
        assert!(!exact.same_mtime(ts(10, 5), ts(10, 0)));
        let coarse = FsCaps {
            granularity_ns: 1_000_000_000,
            ..FsCaps::default()
        }
        .with_window(None);
        assert!(coarse.same_mtime(ts(10, 999_999_999), ts(10, 0)));
        assert!(!coarse.same_mtime(ts(11, 0), ts(10, 0)));
        // --modify-window overrides the probe, rsync's way (inclusive).
        let two = coarse.with_window(Some(Duration::from_secs(2)));
        assert!(two.same_mtime(ts(12, 0), ts(10, 0)));
        assert!(!two.same_mtime(ts(12, 1), ts(10, 0)));
        let zero = coarse.with_window(Some(Duration::ZERO));
        assert!(!zero.same_mtime(ts(10, 1), ts(10, 0)));
    }

    #[test]
    fn saved_probes_round_trip() {
        let caps = FsCaps {
            case_insensitive: true,
            keeps_perms: false,
            keeps_owners: false,
            symlinks: false,
            granularity_ns: 10_000_000,
            ..FsCaps::default()
        };
        assert_eq!(decode(&encode(&caps, 7)), Some((caps, 7)));
        assert_eq!(decode("dev=1\n"), None);
    }

    #[test]
    fn probe_of_a_posix_filesystem_finds_everything_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = rfs::open(
            tmp.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let caps = probe(dir.as_fd(), false).unwrap();
        assert_eq!(
            caps,
            FsCaps {
                normalizes_unicode: false,
                ..FsCaps::default()
            }
        );
        // Nothing is left behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_chmod_the_filesystem_refuses_is_noted_not_failed() {
        let unkept = Unkept::default();
        assert_eq!(
            unkept.tolerate(UNKEPT_PERMS, Err(Errno::OPNOTSUPP), || false),
            Ok(())
        );
        assert_eq!(
            unkept.tolerate(UNKEPT_OWNER, Err(Errno::IO), || true),
            Err(Errno::IO)
        );
        assert_eq!(unkept.0.load(Ordering::Relaxed), UNKEPT_PERMS);
    }
}
