//! The seed of a partial walk: one job per folder to list again, each with
//! the rules in force in its parent. Takes the folders and the
//! source root; gives back the jobs (and, into the `Output`, each folder's
//! own entry, listed again too), or `Err` when the rules above a folder
//! cannot be read, since only a full walk can then tell what they exclude.

use super::assemble::Output;
use super::base::{vanished, DirHandle, Side};
use super::listing::open_root;
use super::queue::Job;
use super::WalkOptions;
use crate::contract::model::{Entry, EntryKind, Meta};
use crate::contract::relpath::RelPath;
use crate::fs::root::{meta_of, Root};
use crate::fs::rules::{read_ignore_file, Rules};
use crate::fs::unlock::{HeldDir, Unlocks};
use rustix::fd::OwnedFd;
use rustix::fs as rfs;
use rustix::io::Errno;
use std::collections::HashMap;

/// The jobs that list `folders` again (see `walk_folders`).
pub(super) fn seed(
    source: &Root,
    replica: Option<&Root>,
    folders: &[RelPath],
    replica_excluded: &dyn Fn(&RelPath) -> bool,
    opts: &WalkOptions<'_>,
    unlocks: &Unlocks,
    out: &mut Output,
) -> Result<Vec<Job>, String> {
    let (excludes, one_file_system) = (opts.excludes, opts.one_file_system);
    // `-x`: the source root's device. A folder on another one is, if its
    // parent is not, a mount point: its entry is listed, its contents not;
    // below that, nothing is.
    let device = |fd: &OwnedFd| rfs::fstat(fd).ok().map(|st| st.st_dev);
    let fence = one_file_system
        .then(|| {
            source
                .open_dir(&RelPath::root())
                .ok()
                .as_ref()
                .and_then(device)
        })
        .flatten();
    let fenced = |rel: &RelPath, st: &rfs::Stat| -> Option<bool> {
        let root_device = fence?;
        if st.st_dev == root_device {
            return None;
        }
        let parent = rel.parent().unwrap_or_default();
        let parent_device = source.open_dir(&parent).ok().as_ref().and_then(device);
        Some(parent_device == Some(root_device))
    };
    let mut rules = RuleChain::new(source, excludes);
    let mut jobs = Vec::with_capacity(folders.len());
    for rel in folders {
        let job = if rel.is_root() {
            Job {
                source: open_root(source, Side::Source, out),
                replica: replica.and_then(|r| open_root(r, Side::Replica, out)),
                replica_excluded: false,
                inherited: Rules::none(),
                rel: rel.clone(),
            }
        } else {
            let excluded = replica_excluded(rel);
            // The folder's own entry is listed again too: a change inside
            // it moves its mtime, which no event reports to its parent. A
            // replica folder of ours that denies us is unlocked, as the
            // full walk does; its entry has the mode it had.
            let mut open = |root: &Root, side: Side| {
                let opened = match side {
                    Side::Source => root.open_dir(rel).map(HeldDir::new),
                    Side::Replica => root.open_dir_unlocking(rel, unlocks),
                };
                let fd = match opened {
                    Ok(fd) => fd,
                    Err(e) => {
                        let errno = e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error);
                        // Gone is news for its parent's listing; anything
                        // else keeps what is below it, as a full walk would.
                        if !vanished(errno) {
                            out.folder_failed(side, rel, "cannot open folder", errno);
                        }
                        return None;
                    }
                };
                let stat = rfs::fstat(&fd).ok()?;
                let fence = match side {
                    Side::Source => fenced(rel, &stat),
                    Side::Replica => None,
                };
                if fence == Some(false) {
                    return None;
                }
                let meta = Meta {
                    perm: unlocks.mode_seen(&stat),
                    ..meta_of(&stat)
                };
                out.listing(side).entries.push(Entry {
                    path: rel.clone(),
                    kind: EntryKind::Dir,
                    meta,
                    excluded: side == Side::Replica && excluded,
                });
                fence.is_none().then_some(DirHandle::Open(fd))
            };
            let src = open(source, Side::Source);
            let rep = replica.and_then(|r| open(r, Side::Replica));
            if src.is_none() && rep.is_none() {
                // Gone: the listing of its parent, changed too, tells.
                continue;
            }
            let parent = rel.parent().unwrap_or_default();
            Job {
                source: src,
                replica: rep,
                replica_excluded: excluded,
                inherited: rules.in_force(&parent)?,
                rel: rel.clone(),
            }
        };
        jobs.push(job);
    }
    Ok(jobs)
}

/// The rules in force in folders of the source, read from the root down
/// and remembered for the folders that share ancestors.
struct RuleChain<'r> {
    source: &'r Root,
    excludes: &'r [String],
    known: HashMap<RelPath, Rules>,
}

impl<'r> RuleChain<'r> {
    fn new(source: &'r Root, excludes: &'r [String]) -> Self {
        RuleChain {
            source,
            excludes,
            known: HashMap::new(),
        }
    }

    /// The rules in force in `folder`: every `.syncignore` from the root
    /// down to it, the `--exclude` lines at the root.
    fn in_force(&mut self, folder: &RelPath) -> Result<Rules, String> {
        if let Some(rules) = self.known.get(folder) {
            return Ok(rules.clone());
        }
        let inherited = match folder.parent() {
            Some(parent) => self.in_force(&parent)?,
            None => Rules::none(),
        };
        let fd = self
            .source
            .open_dir(folder)
            .map_err(|e| format!("cannot open {folder} for its rules: {e}"))?;
        let text = match read_ignore_file(&fd) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read the rules in {folder}: {e}")),
        };
        let extra: &[String] = if folder.is_root() { self.excludes } else { &[] };
        let (rules, errors) = inherited.with_folder(folder, text.as_deref(), extra);
        if let Some(e) = errors.first() {
            return Err(format!("rules in {folder}: {e}"));
        }
        self.known.insert(folder.clone(), rules.clone());
        Ok(rules)
    }
}
