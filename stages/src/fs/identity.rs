//! Root identity: the two folders a run syncs are fixed when it starts.
//!
//! At start the binary records each root's (device, inode) and the
//! replica's marker, `REPLICA/.treesync/replica-id`, a random id written
//! at the first sync (`RootIdentity::record`, carried in `SyncOptions`).
//! Every tick the Scanner opens both roots again by their canonical paths,
//! never through a link in any component, and checks them against it
//! (`open_roots`): a path that names another folder now (a symbolic link
//! or another folder put there, a bind mount gone, another replica's state
//! copied in, the marker lost) counts as vanished, and the tick does
//! nothing. The handles checked are the ones the rest of the tick uses
//! (`Roots`, travelling with the tick's messages), so no stage opens a root
//! path between the check and its writes.

use crate::contract::model::{FileId, STATE_DIR};
use crate::fs::root::Root;
use crate::fs::state;
use rustix::io::Errno;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

/// The marker file's name in the state folder.
pub const MARKER: &str = "replica-id";

/// A replica's marker: 128 random bits, in lowercase hex.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicaId(String);

impl ReplicaId {
    pub fn random() -> io::Result<ReplicaId> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(ReplicaId(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    /// The id a marker file holds, if it holds one (a final newline aside).
    pub fn parse(bytes: &[u8]) -> Option<ReplicaId> {
        let text = std::str::from_utf8(bytes).ok()?.trim_end_matches('\n');
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        (text.len() == 32 && text.chars().all(hex)).then(|| ReplicaId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({})", self.0)
    }
}

/// The roots as they were when the run started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootIdentity {
    pub source: FileId,
    /// `None`: there was no replica (a dry run into a missing one); the
    /// run plans against an empty replica and opens none.
    pub replica: Option<FileId>,
    /// `None`: a dry run into a replica never synced, which has none and
    /// gets none; then only (device, inode) identify it.
    pub marker: Option<ReplicaId>,
}

/// Both roots, open and checked for one tick. The replica is `None` only
/// in a dry run into a missing replica.
#[derive(Debug)]
pub struct Roots {
    pub source: Root,
    pub replica: Option<Root>,
}

impl RootIdentity {
    /// Records the roots at `source` and `replica` (canonical paths) as
    /// they are now. Outside a dry run the replica exists, and gets its
    /// marker if it has none; a dry run writes nothing.
    pub fn record(source: &Path, replica: &Path, dry_run: bool) -> Result<RootIdentity, String> {
        let source = open_root(source, "source", None).map_err(|e| e.message)?;
        let replica = match open_root(replica, "replica", None) {
            Ok(root) => Some(root),
            Err(e) if e.missing && dry_run => None,
            Err(e) => return Err(e.message),
        };
        let marker = match &replica {
            None => None,
            // A marker that cannot be read changes nothing in a dry run.
            Some(r) if dry_run => read_marker(r).ok().flatten(),
            Some(r) => Some(ensure_marker(r)?),
        };
        Ok(RootIdentity {
            source: id_of(&source).map_err(|e| e.message)?,
            replica: replica
                .as_ref()
                .map(id_of)
                .transpose()
                .map_err(|e| e.message)?,
            marker,
        })
    }
}

impl RootIdentity {
    /// The source root alone, for a replica that is no local folder (a
    /// remote store): the scan opens no replica root.
    pub fn source_only(source: &Path) -> Result<RootIdentity, String> {
        let source = open_root(source, "source", None).map_err(|e| e.message)?;
        Ok(RootIdentity {
            source: id_of(&source).map_err(|e| e.message)?,
            replica: None,
            marker: None,
        })
    }
}

/// The marker in the replica's state folder: `Ok(None)` when there is none.
pub fn read_marker(replica: &Root) -> Result<Option<ReplicaId>, String> {
    let dir = match state::open_dir(replica) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!(".treesync cannot be opened: {e}")),
    };
    match state::read_small(std::os::fd::AsFd::as_fd(&dir), MARKER, 256) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => ReplicaId::parse(&bytes)
            .map(Some)
            .ok_or_else(|| format!(".treesync/{MARKER} holds no replica id")),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads the replica's marker, writing a fresh one where there is none or
/// where what stands there is not one (the state folder is ours).
fn ensure_marker(replica: &Root) -> Result<ReplicaId, String> {
    if let Ok(Some(id)) = read_marker(replica) {
        return Ok(id);
    }
    let shown = replica.path().display();
    let fail = |e: io::Error| format!("cannot write {shown}/.treesync/{MARKER}: {e}");
    let id = ReplicaId::random().map_err(fail)?;
    match rustix::fs::mkdirat(
        replica.fd(),
        STATE_DIR,
        rustix::fs::Mode::from_raw_mode(0o755),
    ) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(fail(e.into())),
    }
    let dir = state::open_dir(replica).map_err(fail)?;
    state::write_bytes(&dir, MARKER, format!("{}\n", id.as_str()).as_bytes()).map_err(fail)?;
    Ok(id)
}

/// Opens both roots for a tick and checks them against `pinned`, the
/// identity recorded at start (`None`: nothing recorded yet, as in tests
/// that build their options by hand: the roots are taken as found, and a
/// missing replica is empty in a dry run). Returns them with what was
/// found, or the reason the tick cannot run.
pub fn open_roots(
    source: &Path,
    replica: &Path,
    pinned: Option<&RootIdentity>,
    dry_run: bool,
) -> Result<(Roots, RootIdentity), String> {
    let source_root =
        open_root(source, "source", pinned.map(|p| p.source)).map_err(|e| e.message)?;
    let replica_root = match pinned {
        // A dry run into a replica that was missing at start plans against
        // nothing for the whole run: whatever appears there is not it.
        Some(p) if p.replica.is_none() => None,
        _ => match open_root(replica, "replica", pinned.and_then(|p| p.replica)) {
            // Another filesystem mounted inside the replica is not its own.
            Ok(root) => Some(root.on_its_filesystem()),
            Err(e) if e.missing && dry_run && pinned.is_none() => None,
            Err(e) => return Err(e.message),
        },
    };
    if let (Some(root), Some(want)) = (&replica_root, pinned.and_then(|p| p.marker.as_ref())) {
        let shown = replica.display();
        let other = |why: String| {
            format!("replica {shown} is not the replica this run started with ({why}): nothing done until it is back")
        };
        match read_marker(root) {
            Ok(Some(found)) if &found == want => {}
            Ok(Some(_)) => return Err(other(format!(".treesync/{MARKER} names another replica"))),
            Ok(None) => return Err(other(format!("its .treesync/{MARKER} is missing"))),
            Err(e) => return Err(other(e)),
        }
    }
    let found = RootIdentity {
        source: id_of(&source_root).map_err(|e| e.message)?,
        replica: replica_root
            .as_ref()
            .map(id_of)
            .transpose()
            .map_err(|e| e.message)?,
        marker: pinned.and_then(|p| p.marker.clone()),
    };
    let roots = Roots {
        source: source_root,
        replica: replica_root,
    };
    Ok((roots, found))
}

/// Why a root cannot be used.
#[derive(Debug)]
pub struct RootError {
    /// Nothing is at the root's path.
    pub missing: bool,
    pub message: String,
}

/// Opens a root without following any link on its path and, with
/// `expect`, checks it is that folder.
pub fn open_root(path: &Path, which: &str, expect: Option<FileId>) -> Result<Root, RootError> {
    let shown = path.display();
    let fail = |missing, message| RootError { missing, message };
    let is_link = || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let root = Root::open_no_links(path).map_err(|e| match Errno::from_io_error(&e) {
        Some(Errno::NOENT) => fail(true, format!("{which} folder {shown} is missing")),
        Some(Errno::LOOP | Errno::NOTDIR) if is_link() => fail(
            false,
            format!("{which} {shown} is a symbolic link now: not the folder this run started with"),
        ),
        Some(Errno::LOOP) => fail(
            false,
            format!("{which} {shown} lies below a symbolic link now: not the folder this run started with"),
        ),
        Some(Errno::NOTDIR) => fail(false, format!("{which} {shown} is not a folder")),
        _ => fail(false, format!("{which} folder {shown} cannot be opened: {e}")),
    })?;
    let id = id_of(&root)?;
    match expect {
        Some(want) if want != id => Err(fail(
            false,
            format!("{which} folder {shown} is not the folder this run started with (another folder, or a mount came or went): nothing done until it is back"),
        )),
        _ => Ok(root),
    }
}

fn id_of(root: &Root) -> Result<FileId, RootError> {
    let st = root.stat().map_err(|e| RootError {
        missing: false,
        message: format!("folder {} cannot be read: {e}", root.path().display()),
    })?;
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn trees() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let (s, r) = (base.join("s"), base.join("r"));
        fs::create_dir(&s).unwrap();
        fs::create_dir(&r).unwrap();
        (tmp, s, r)
    }

    fn check(s: &Path, r: &Path, pinned: &RootIdentity) -> Result<(), String> {
        open_roots(s, r, Some(pinned), false).map(|_| ())
    }

    #[test]
    fn ids_are_random_hex_and_parse_back() {
        let (a, b) = (ReplicaId::random().unwrap(), ReplicaId::random().unwrap());
        assert_ne!(a, b);
        assert_eq!(
            ReplicaId::parse(format!("{}\n", a.as_str()).as_bytes()),
            Some(a)
        );
        assert_eq!(ReplicaId::parse(b"not an id"), None);
        assert_eq!(ReplicaId::parse(&[b'A'; 32]), None);
    }

    #[test]
    fn the_first_sync_writes_the_marker_and_later_ones_keep_it() {
        let (_tmp, s, r) = trees();
        let first = RootIdentity::record(&s, &r, false).unwrap();
        let written = fs::read(r.join(".treesync").join(MARKER)).unwrap();
        assert_eq!(ReplicaId::parse(&written), first.marker);
        let again = RootIdentity::record(&s, &r, false).unwrap();
        assert_eq!(again, first);
        assert!(check(&s, &r, &first).is_ok());
    }

    #[test]
    fn a_dry_run_writes_no_marker_and_may_have_no_replica() {
        let (_tmp, s, r) = trees();
        let id = RootIdentity::record(&s, &r, true).unwrap();
        assert_eq!(id.marker, None);
        assert!(!r.join(".treesync").exists());
        fs::remove_dir(&r).unwrap();
        let id = RootIdentity::record(&s, &r, true).unwrap();
        assert_eq!(id.replica, None);
        let (roots, _) = open_roots(&s, &r, Some(&id), true).unwrap();
        assert!(roots.replica.is_none());
        assert!(RootIdentity::record(&s, &r, false).is_err());
    }

    #[test]
    fn another_folder_at_a_root_path_is_refused() {
        let (_tmp, s, r) = trees();
        let id = RootIdentity::record(&s, &r, false).unwrap();
        // Another inode on the same device, with the marker copied along.
        let moved = r.with_file_name("r.real");
        fs::rename(&r, &moved).unwrap();
        fs::create_dir_all(r.join(".treesync")).unwrap();
        fs::copy(
            moved.join(".treesync").join(MARKER),
            r.join(".treesync").join(MARKER),
        )
        .unwrap();
        let err = check(&s, &r, &id).unwrap_err();
        assert!(
            err.contains("not the folder this run started with"),
            "{err}"
        );
        fs::remove_dir_all(&r).unwrap();
        fs::rename(&moved, &r).unwrap();
        assert!(check(&s, &r, &id).is_ok());
        // The source swapped for a link to another folder.
        let other = s.with_file_name("other");
        fs::create_dir(&other).unwrap();
        fs::rename(&s, s.with_file_name("s.real")).unwrap();
        symlink(&other, &s).unwrap();
        let err = check(&s, &r, &id).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        // A link to the very folder is refused too: the path must be it.
        fs::remove_file(&s).unwrap();
        symlink(s.with_file_name("s.real"), &s).unwrap();
        assert!(check(&s, &r, &id).is_err());
        fs::remove_file(&s).unwrap();
        fs::rename(s.with_file_name("s.real"), &s).unwrap();
        assert!(check(&s, &r, &id).is_ok());
    }

    #[test]
    fn a_replica_whose_marker_changed_or_went_is_refused() {
        let (_tmp, s, r) = trees();
        let id = RootIdentity::record(&s, &r, false).unwrap();
        let marker = r.join(".treesync").join(MARKER);
        let kept = fs::read(&marker).unwrap();
        let stranger = ReplicaId::random().unwrap();
        fs::write(&marker, stranger.as_str()).unwrap();
        let err = check(&s, &r, &id).unwrap_err();
        assert!(err.contains("names another replica"), "{err}");
        fs::remove_file(&marker).unwrap();
        let err = check(&s, &r, &id).unwrap_err();
        assert!(err.contains("missing"), "{err}");
        symlink("elsewhere", &marker).unwrap();
        assert!(check(&s, &r, &id).is_err());
        fs::remove_file(&marker).unwrap();
        fs::write(&marker, kept).unwrap();
        assert!(check(&s, &r, &id).is_ok());
    }
}
