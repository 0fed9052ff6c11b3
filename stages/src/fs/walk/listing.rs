//! One folder, both sides: reads the entries relative to the folder's
//! handle, applies the `.syncignore` rules, the names to hide and the
//! fences, and decides which subfolders become jobs. Takes a `Job` on a
//! worker; gives back the folder's entries (into the worker's `Output`)
//! and the jobs for its subfolders. Errors are recorded, never raised: a
//! folder that cannot be read is marked incomplete so nothing below it is
//! deleted.

use super::assemble::Output;
use super::base::{DirHandle, Raw, Side, DIR_FLAGS};
use super::queue::{Job, Worker};
use crate::contract::messages::LogEvent;
use crate::contract::model::{Entry, EntryKind, IGNORE_FILE, STATE_DIR};
use crate::contract::relpath::RelPath;
use crate::fs::root::{kind_of, meta_of, Root};
use crate::fs::rules::{read_ignore_file, Rules};
use crate::fs::unlock::{HeldDir, SEARCH};
use rustix::fs::{self as rfs, AtFlags, Mode, RawDir};
use rustix::io::Errno;
use std::cmp::Ordering;
use std::sync::Arc;

/// Opens a root for the walk and lists its own entry.
pub(super) fn open_root(root: &Root, side: Side, out: &mut Output) -> Option<DirHandle> {
    let rel = RelPath::root();
    let fd = match rfs::openat(root.fd(), c".", DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            out.folder_failed(side, &rel, "cannot open folder", e);
            return None;
        }
    };
    match rfs::fstat(&fd) {
        Ok(stat) => out.listing(side).entries.push(Entry {
            path: rel,
            kind: EntryKind::Dir,
            meta: meta_of(&stat),
            excluded: false,
        }),
        Err(e) => out.folder_failed(side, &rel, "cannot stat folder", e),
    }
    Some(DirHandle::Open(HeldDir::new(fd)))
}

/// One side of a folder once listed: its subfolders to descend into and the
/// rules in force there.
struct Listed {
    /// The folder's handle, kept only when it has subfolders to open.
    fd: Option<HeldDir>,
    /// Subfolders, with whether each is excluded (replica side) and
    /// whether a partial walk already knows it.
    dirs: Vec<(RelPath, bool, bool)>,
    rules: Rules,
}

impl Listed {
    fn nothing(rules: &Rules) -> Self {
        Listed {
            fd: None,
            dirs: Vec::new(),
            rules: rules.clone(),
        }
    }
}

/// Which rules decide what is excluded in a replica folder.
enum ReplicaRules {
    /// The source has this folder: its rules apply.
    Source(Rules),
    /// A replica-only folder: the inherited rules plus the replica's own
    /// `.syncignore` there (the mirrored copy of the rules that applied).
    Own(Rules),
    /// Below an excluded folder: everything is excluded.
    Excluded,
}

// What a worker does with each job; the loop that hands it jobs is the
// queue's.
impl Worker<'_, '_> {
    /// Lists one folder on both sides; returns the jobs for its subfolders.
    pub(super) fn visit(&mut self, job: Job) -> Vec<Job> {
        let Job {
            rel,
            source,
            replica,
            replica_excluded,
            inherited,
        } = job;
        let hidden = hidden_in(self.opts().hidden, &rel);
        let mut src = Listed::nothing(&inherited);
        let mut source_rules = None;
        if let Some(handle) = source {
            match handle.open(&rel) {
                Ok(fd) => {
                    src = self.list_source(fd, &rel, &inherited, &hidden);
                    source_rules = Some(src.rules.clone());
                }
                Err(e) => self
                    .out
                    .folder_failed(Side::Source, &rel, "cannot open folder", e),
            }
        }
        let mut rep = Listed::nothing(&inherited);
        if let Some(handle) = replica {
            let rules = match (replica_excluded, source_rules) {
                (true, _) => ReplicaRules::Excluded,
                (false, Some(rules)) => ReplicaRules::Source(rules),
                (false, None) => ReplicaRules::Own(inherited.clone()),
            };
            match handle.open_on_its_filesystem(&rel, &self.walker.unlocks) {
                Ok(fd) => rep = self.list_replica(fd, &rel, rules, &hidden),
                // Listed by its parent, never entered: nothing below it is
                // deleted, and the Applier's paths stop at it too.
                Err(Errno::XDEV) => {
                    self.out.log_error(
                        Side::Replica,
                        &rel,
                        "scan",
                        "another filesystem is mounted here: nothing below it is written or deleted",
                    );
                    self.out.listing(Side::Replica).incomplete.push(rel.clone());
                }
                Err(e) => self
                    .out
                    .folder_failed(Side::Replica, &rel, "cannot open folder", e),
            }
        }
        subfolder_jobs(src, rep)
    }

    /// Whether a partial walk already knows the folder `entry`.
    fn is_known(&self, entry: &Entry, source_side: bool) -> bool {
        self.opts()
            .known
            .is_some_and(|known| known(entry, source_side))
    }

    /// Lists a source folder: entries the rules exclude or that are hidden
    /// are left out, and so is everything below them.
    fn list_source(
        &mut self,
        fd: HeldDir,
        rel: &RelPath,
        inherited: &Rules,
        hidden: &[&RelPath],
    ) -> Listed {
        let has_ignore_file = self.read_raw(&fd, rel, Side::Source);
        let (rules, understood) =
            self.folder_rules(&fd, rel, Side::Source, inherited, has_ignore_file);
        let mut dirs = Vec::new();
        let mut raws = std::mem::take(&mut self.scratch);
        if !understood {
            // Rules that could not be read or understood may be the ones
            // that keep a secret out of the replica: nothing here or below
            // is listed, so nothing is copied, and the folder stays
            // incomplete, so nothing is deleted.
            raws.clear();
        }
        let mut entries = Vec::with_capacity(raws.len());
        for raw in raws.drain(..) {
            let is_dir = raw.is_dir();
            if is_hidden(hidden, &raw.path) || rules.is_excluded(&raw.path, is_dir) {
                continue;
            }
            if is_dir && self.walker.fences.holds_replica(&raw.stat) {
                // Left out, and its folder incomplete: the replica's copy of
                // what was mirrored here is kept.
                self.out.log_error(
                    Side::Source,
                    &raw.path,
                    "scan",
                    "this folder is the replica, or holds it (a mount): left out, or the replica would be mirrored into itself",
                );
                self.out.listing(Side::Source).incomplete.push(rel.clone());
                continue;
            }
            let entry_stat = raw.stat;
            let Some(entry) = self.entry(&fd, rel, raw, false, Side::Source) else {
                continue;
            };
            // The state folder's namesake at the source root is listed (the
            // plan skips it) but never entered; so is, with `-x`, a folder
            // where another filesystem is mounted (mirrored empty).
            let fenced = self.walker.fences.other_filesystem(&entry_stat);
            if is_dir && !fenced && !(rel.is_root() && entry.path.name() == STATE_DIR) {
                let known = self.is_known(&entry, true);
                dirs.push((entry.path.clone(), false, known));
            }
            entries.push(entry);
        }
        self.scratch = raws;
        self.out.add_chunk(Side::Source, rel, &mut entries);
        Listed {
            fd: (!dirs.is_empty()).then_some(fd),
            dirs,
            rules,
        }
    }

    /// Lists a replica folder: every entry is listed, flagged when the rules
    /// in force exclude it; excluded folders are entered only for
    /// `--delete-excluded`. The state folder at the root is never listed.
    fn list_replica(
        &mut self,
        fd: HeldDir,
        rel: &RelPath,
        rules: ReplicaRules,
        hidden: &[&RelPath],
    ) -> Listed {
        let has_ignore_file = self.read_raw(&fd, rel, Side::Replica);
        let (rules, all_excluded) = match rules {
            ReplicaRules::Source(rules) => (rules, false),
            ReplicaRules::Own(inherited) => (
                self.folder_rules(&fd, rel, Side::Replica, &inherited, has_ignore_file)
                    .0,
                false,
            ),
            ReplicaRules::Excluded => (Rules::none(), true),
        };
        let descend_excluded = self.opts().delete_excluded;
        let mut dirs = Vec::new();
        let mut raws = std::mem::take(&mut self.scratch);
        let mut entries = Vec::with_capacity(raws.len());
        for raw in raws.drain(..) {
            if rel.is_root() && raw.path.name() == STATE_DIR {
                continue;
            }
            let is_dir = raw.is_dir();
            let excluded = all_excluded
                || is_hidden(hidden, &raw.path)
                || rules.is_excluded(&raw.path, is_dir);
            let Some(entry) = self.entry(&fd, rel, raw, excluded, Side::Replica) else {
                continue;
            };
            if is_dir && (!excluded || descend_excluded) {
                let known = self.is_known(&entry, false);
                dirs.push((entry.path.clone(), excluded, known));
            }
            entries.push(entry);
        }
        self.scratch = raws;
        self.out.add_chunk(Side::Replica, rel, &mut entries);
        Listed {
            fd: (!dirs.is_empty()).then_some(fd),
            dirs,
            rules,
        }
    }

    /// Reads the folder's entries into `scratch`, one `lstat` each; returns
    /// whether it holds a `.syncignore`. A read that fails midway keeps
    /// what was read and marks the folder incomplete. A replica folder of
    /// ours that we may read but not search is unlocked for search at the
    /// first `lstat` it refuses, for as long as its handle lives.
    fn read_raw(&mut self, fd: &HeldDir, rel: &RelPath, side: Side) -> bool {
        self.scratch.clear();
        let mut has_ignore_file = false;
        let mut may_unlock = side == Side::Replica;
        let mut dir = RawDir::new(fd, &mut self.buf);
        while let Some(item) = dir.next() {
            let entry = match item {
                Ok(entry) => entry,
                Err(e) => {
                    self.out.folder_failed(side, rel, "cannot read folder", e);
                    break;
                }
            };
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let stat = match rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::ACCESS) if may_unlock => {
                    may_unlock = false;
                    if fd.unlock(&self.walker.unlocks, SEARCH) {
                        rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    } else {
                        Err(Errno::ACCESS)
                    }
                }
                other => other,
            };
            match stat {
                Ok(stat) => {
                    has_ignore_file |= bytes == IGNORE_FILE;
                    self.scratch.push(Raw {
                        path: rel.join(bytes),
                        stat,
                    });
                }
                Err(e) => self.out.entry_failed(side, rel, bytes, "cannot stat", e),
            }
        }
        has_ignore_file
    }

    /// The model's entry for `raw`; `None` when it vanished or its link
    /// could not be read (then logged).
    fn entry(
        &mut self,
        fd: &HeldDir,
        rel: &RelPath,
        raw: Raw,
        excluded: bool,
        side: Side,
    ) -> Option<Entry> {
        match kind_of(&raw.stat, fd, raw.path.name()) {
            Ok(kind) => {
                let mut meta = meta_of(&raw.stat);
                if side == Side::Replica && kind == EntryKind::Dir {
                    // Unlocked already, by a partial walk's seed: the mode
                    // it had, and gets back.
                    meta.perm = self.walker.unlocks.mode_seen(&raw.stat);
                }
                Some(Entry {
                    meta,
                    path: raw.path,
                    kind,
                    excluded,
                })
            }
            Err(e) => {
                let errno = e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error);
                self.out
                    .entry_failed(side, rel, raw.path.name(), "cannot read link", errno);
                None
            }
        }
    }

    /// The rules in force in the folder `rel`: the inherited ones plus the
    /// folder's `.syncignore` (and, at the root, the `--exclude` lines).
    /// Rules that cannot be read or parsed are logged and the folder counts
    /// as incomplete, since what they would have kept is unknown; the flag
    /// returned is false then.
    fn folder_rules(
        &mut self,
        fd: &HeldDir,
        rel: &RelPath,
        side: Side,
        inherited: &Rules,
        has_ignore_file: bool,
    ) -> (Rules, bool) {
        let extra: &[String] = if rel.is_root() {
            self.opts().excludes
        } else {
            &[]
        };
        if !has_ignore_file && extra.is_empty() {
            return (inherited.clone(), true);
        }
        let path = rel.join(IGNORE_FILE);
        let mut failed = false;
        let text = if has_ignore_file {
            match read_ignore_file(fd) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    self.out
                        .log_error(side, &path, "rules", format_args!("cannot read: {e}"));
                    failed = true;
                    None
                }
            }
        } else {
            None
        };
        let (rules, errors) = inherited.with_folder(rel, text.as_deref(), extra);
        for e in &errors {
            let at = e.in_file.then_some(&path);
            self.out.events.push(LogEvent::error(at, "rules", e));
            self.out.errors += 1;
            failed = true;
        }
        if failed {
            self.out.listing(side).incomplete.push(rel.clone());
        }
        (rules, !failed)
    }
}

/// The jobs for the subfolders of one folder: a folder on both sides is one
/// job, so its replica side gets the source side's rules; partial walks
/// leave out what they know (a folder on both sides only when both sides
/// are known, again for the rules).
fn subfolder_jobs(src: Listed, rep: Listed) -> Vec<Job> {
    let Listed {
        fd: src_fd,
        dirs: mut src_dirs,
        rules: src_rules,
    } = src;
    let Listed {
        fd: rep_fd,
        dirs: mut rep_dirs,
        rules: rep_rules,
    } = rep;
    let src_fd = src_fd.map(Arc::new);
    let rep_fd = rep_fd.map(Arc::new);
    let under = |fd: &Option<Arc<HeldDir>>| fd.as_ref().map(|fd| DirHandle::Under(fd.clone()));
    // Same parent, so ordering by bytes orders by name.
    src_dirs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    rep_dirs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut jobs = Vec::with_capacity(src_dirs.len().max(rep_dirs.len()));
    let mut src_iter = src_dirs.into_iter().peekable();
    let mut rep_iter = rep_dirs.into_iter().peekable();
    loop {
        let order = match (src_iter.peek(), rep_iter.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(s), Some(r)) => s.0.as_bytes().cmp(r.0.as_bytes()),
        };
        let job = match order {
            Ordering::Less => src_iter.next().filter(|d| !d.2).map(|(rel, ..)| Job {
                rel,
                source: under(&src_fd),
                replica: None,
                replica_excluded: false,
                inherited: src_rules.clone(),
            }),
            Ordering::Greater => rep_iter
                .next()
                .filter(|d| !d.2)
                .map(|(rel, excluded, _)| Job {
                    rel,
                    source: None,
                    replica: under(&rep_fd),
                    replica_excluded: excluded,
                    inherited: rep_rules.clone(),
                }),
            Ordering::Equal => {
                let (_, excluded, rep_known) = rep_iter.next().unwrap_or_default();
                src_iter
                    .next()
                    .filter(|d| !(d.2 && rep_known))
                    .map(|(rel, ..)| Job {
                        rel,
                        source: under(&src_fd),
                        replica: under(&rep_fd),
                        replica_excluded: excluded,
                        inherited: src_rules.clone(),
                    })
            }
        };
        jobs.extend(job);
    }
    jobs
}

/// The hidden paths that lie directly in the folder `rel`: computed once per
/// folder so that most folders check none.
fn hidden_in<'h>(hidden: &'h [RelPath], rel: &RelPath) -> Vec<&'h RelPath> {
    if hidden.is_empty() {
        return Vec::new();
    }
    hidden.iter().filter(|h| lies_in(h, rel)).collect()
}

/// True when `path` is an entry of the folder `folder` (without allocating,
/// unlike comparing `path.parent()`).
fn lies_in(path: &RelPath, folder: &RelPath) -> bool {
    let (p, f) = (path.as_bytes(), folder.as_bytes());
    let name = if f.is_empty() {
        p
    } else {
        match p.strip_prefix(f).and_then(|rest| rest.strip_prefix(b"/")) {
            Some(name) => name,
            None => return false,
        }
    };
    !name.is_empty() && !name.contains(&b'/')
}

fn is_hidden(hidden: &[&RelPath], path: &RelPath) -> bool {
    !hidden.is_empty() && hidden.contains(&path)
}
