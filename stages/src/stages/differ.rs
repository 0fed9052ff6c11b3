//! Differ: takes `TreesHashed`, sends `PlanMade`.
//!
//! The plan is a pure function of the two listings, the content
//! comparisons and a few options (`diff`), so it is tested and snapshotted
//! without actix or a filesystem. The stage only calls it, and keeps what
//! one tick's plan tells the next (the guard, the first plan).
//!
//! Rules, in short: metadata decides where it can, content comparisons
//! (made by the Hasher) where it cannot; a path whose type changed is
//! removed and created again; deletions never reach below a source folder
//! that was not fully listed, never touch excluded entries unless asked,
//! and are withheld as a whole when they exceed `--max-delete`.
//!
//! Moves: the Hasher pairs the files the source has under a new name with
//! the replica's files under the old one (`contract::moves`: metadata
//! where it is sure, SHA-1 where it is not), and the Differ plans them:
//! folders whose files moved together are one rename of the folder
//! (`moves::folder_moves`), the rest one rename per file. The plan is made
//! against the replica as it will be once its folders have moved (the
//! "view"), so what changed inside a moved folder is compared in its new
//! place like anything else, except that a file the folder brings to a
//! source path counts as the source's only if it was paired with that
//! very file (else it is updated: a folder that looks moved may be another
//! copy). A move is not a deletion for `--max-delete`; one the last plan
//! held and that is found again did not happen, and is planned as copies.
//! A move goes only from a path the source lacks to one the replica lacks:
//! it never overwrites an entry, or takes one the plan still needs. Names
//! that changed places (a <-> b, or a -> b -> c) keep their paths on both
//! sides, so they are compared in place (updated or copied), never moved:
//! no cycle needs a temporary, and the content after the tick is the
//! source's either way.
//!
//! Order of the plan (the Applier runs it in this order, consecutive file
//! operations in parallel): reports; removals (children first), so that a
//! path changing type is free for its new entry; new folders (parents
//! first); folder moves, once the folders they go into exist; removals and
//! new folders inside the moved folders, at their new places; file moves,
//! once the folders they go into exist, moved ones included; the removal
//! of the folders the moves emptied; files and links; the other names of
//! hard-linked files, once their first name is written; the attribute
//! checks of folders not otherwise finished; folders' own metadata last.
//!
//! Hard links (`contract::hard_links`): source files that are one inode
//! are one in the replica; each group's leader is planned as any file,
//! the other names as `Link`s to it. Attributes and ACLs: an entry the
//! Hasher marked (`SameContent::attrs`: its source ctime may be newer
//! than its replica's, or a sweep found them different), and nothing else
//! of which changed, gets an `Attrs` check.

use crate::contract::hard_links::{self, Role, Roles};
use crate::contract::messages::{Fact, LogEvent, PlanMade, TickCx, TreesHashed};
use crate::contract::model::{
    Entry, EntryKind, Listing, Meta, SameContent, TempTokens, IGNORE_FILE, STATE_DIR,
};
use crate::contract::moves::{self, FolderMove, MovePairs};
use crate::contract::options::{Groups, MaxDelete, SyncOptions};
use crate::contract::plan::{guard_base, GuardTrip, Op, Plan, RootIds};
use crate::contract::relpath::RelPath;
use crate::contract::stage::{Flow, Stage};
use crate::fs::replica_fs::FsCaps;
use actix::Recipient;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The options that shape a plan.
#[derive(Clone, Copy, Debug)]
pub struct DiffOptions {
    pub checksum: bool,
    pub delete_excluded: bool,
    pub max_delete: MaxDelete,
    pub preserve_owner: bool,
    /// The replica root was just created: its metadata is set as part of
    /// creating it, not reported as changed.
    pub fresh_root: bool,
    /// The guard's base when the listings are parts of the trees; `None`:
    /// counted in the replica listing.
    pub managed: Option<u64>,
    /// What the replica can store: mtimes are compared within its
    /// granularity, permissions and owners only where it keeps them.
    pub fs: FsCaps,
    /// The runs whose temporaries are ours to remove silently (this one
    /// and those recorded in the state folder); any other name is a file.
    pub temps: TempTokens,
    /// Moved files are renamed in the replica (off: `--no-renames`).
    pub renames: bool,
    /// Source files that are one inode are one in the replica (off:
    /// `--no-hard-links`, or a replica that cannot link).
    pub hard_links: bool,
    /// Extended attributes or ACLs are mirrored: an entry whose source
    /// ctime is newer than the replica's has them compared (an attribute
    /// change moves the ctime, not the mtime).
    pub attrs: bool,
    /// Every entry's attributes are compared (`SyncOptions::attrs_sweep`,
    /// or `--checksum`).
    pub attrs_sweep: bool,
    /// Not as root: the groups we may give our files. Where the source's
    /// group is one of them (and the replica keeps modes), the group is
    /// compared too, and a folder's setgid bit is kept (`rsync -g`).
    pub groups: Groups,
    /// The replica is remote (a store, an SFTP server): a source link is a
    /// `skip` there (no links are made), not a failure to retry.
    pub object_store: bool,
}

impl From<&SyncOptions> for DiffOptions {
    fn from(o: &SyncOptions) -> Self {
        DiffOptions {
            checksum: o.checksum,
            delete_excluded: o.delete_excluded,
            max_delete: o.max_delete,
            preserve_owner: o.preserve_owner,
            fresh_root: o.fresh_replica,
            managed: None,
            fs: o.replica_fs.caps,
            temps: TempTokens::this_run(),
            renames: o.renames,
            hard_links: o.hard_links && o.replica_fs.caps.hard_links,
            attrs: !o.attrs_policy().is_none(),
            attrs_sweep: o.checksum,
            groups: o.groups,
            object_store: o.remote.is_some(),
        }
    }
}

/// Computes the plan that makes `replica` equal to `source`, with `moves`
/// the files paired as moved (`contract::moves`; confirmed by the Hasher).
pub fn diff(
    source: &Listing,
    replica: &Listing,
    contents: &SameContent,
    moves: &MovePairs,
    opts: DiffOptions,
) -> Plan {
    let roots = match (source.root(), replica.root()) {
        (Some(s), Some(r)) => Some(RootIds {
            source: s.meta.id,
            replica: r.meta.id,
        }),
        _ => None,
    };
    let moves = Moves::new(source, replica, contents, moves, &opts);
    let mut full = Planner::new(source, opts, &moves, true).plan();
    let managed = opts
        .managed
        .unwrap_or_else(|| guard_base(replica, source, opts.delete_excluded, &opts.temps));
    if !opts.max_delete.trips(full.deletions, managed) {
        full.plan.roots = roots;
        full.plan.attrs_sweep = opts.attrs && opts.attrs_sweep;
        return full.plan;
    }
    let mut withheld = Planner::new(source, opts, &moves, false).plan();
    withheld.plan.guard = Some(GuardTrip {
        would_delete: full.deletions,
        managed,
        limit: opts.max_delete,
    });
    withheld.plan.roots = roots;
    withheld.plan.attrs_sweep = opts.attrs && opts.attrs_sweep;
    withheld.plan
}

/// The moves of a tick as the Planner sees them: the replica as it will
/// be once its folders have moved (`view`), and the file moves within it.
struct Moves<'a> {
    folders: Vec<FolderMove>,
    /// The replica listing with moved folders' entries at their new paths.
    view: Cow<'a, Listing>,
    /// Content verdicts, with files that a folder move brings to their
    /// source path counted as the same (metadata or content paired them).
    contents: Cow<'a, SameContent>,
    /// Source place to the view's path of the file that moves there.
    to: HashMap<usize, RelPath>,
    /// View places of the files that move.
    from: HashSet<usize>,
    /// View folders that entries move out of (every ancestor but the
    /// root): removed, if at all, only after the moves.
    leaving: HashSet<RelPath>,
}

impl<'a> Moves<'a> {
    fn new(
        source: &Listing,
        replica: &'a Listing,
        contents: &'a SameContent,
        pairs: &MovePairs,
        opts: &DiffOptions,
    ) -> Self {
        let mut moves = Moves {
            folders: Vec::new(),
            view: Cow::Borrowed(replica),
            contents: Cow::Borrowed(contents),
            to: HashMap::new(),
            from: HashSet::new(),
            leaving: HashSet::new(),
        };
        if !opts.renames || pairs.is_empty() {
            return moves;
        }
        let folders = moves::folder_moves(source, replica, pairs);
        // Replica place to view place.
        let (view, place) = match folders.is_empty() {
            true => (Cow::Borrowed(replica), (0..replica.entries.len()).collect()),
            false => {
                let (view, place) = rebase_listing(replica, &folders);
                (Cow::Owned(view), place)
            }
        };
        // Source places of the files a folder move brings to their path.
        let mut brought = HashSet::new();
        for p in &pairs.files {
            let s = &source.entries[p.source];
            let j = place[p.replica];
            let at = &view.entries[j].path;
            if *at == s.path {
                brought.insert(p.source);
                continue;
            }
            // Only from a path the source lacks to one the view lacks: no
            // move replaces an entry or takes one the plan still needs.
            if source.get(at).is_some() || view.get(&s.path).is_some() {
                continue;
            }
            // A replica file with other names moves only to be a file with
            // other names: else the moved name would stay linked to them.
            if view.entries[j].meta.nlink > 1 && s.meta.nlink <= 1 {
                continue;
            }
            if pairs.failed.contains(&(at.clone(), s.path.clone())) {
                continue;
            }
            moves.to.insert(p.source, at.clone());
            moves.from.insert(j);
            leave(&mut moves.leaving, at);
        }
        if !folders.is_empty() {
            // A file a folder move brings to a source path has the source's
            // content only if it was paired with that very file (by
            // metadata, content or a rename seen); any other is compared by
            // content, which here means it is updated: a folder that looks
            // moved may hold another version of a file under the same name
            // (two copies of a folder, a file replaced since).
            let mut verdicts = contents.clone();
            for f in &folders {
                let in_to = |l: &Listing| {
                    let start = l.entries.partition_point(|e| e.path < f.to);
                    let len = l.entries[start..]
                        .iter()
                        .take_while(|e| e.path.starts_with(&f.to))
                        .count();
                    start..start + len
                };
                let (s_range, v_range) = (in_to(source), in_to(&view));
                let (mut i, mut k) = (s_range.start, v_range.start);
                while i < s_range.end && k < v_range.end {
                    let (s, v) = (&source.entries[i], &view.entries[k]);
                    match s.path.cmp(&v.path) {
                        std::cmp::Ordering::Less => i += 1,
                        std::cmp::Ordering::Greater => k += 1,
                        std::cmp::Ordering::Equal => {
                            if s.kind == EntryKind::File && v.kind == EntryKind::File {
                                if brought.contains(&i) {
                                    verdicts.mark(i);
                                } else {
                                    verdicts.mark_rechecked(i);
                                }
                            }
                            i += 1;
                            k += 1;
                        }
                    }
                }
            }
            moves.contents = Cow::Owned(verdicts);
        }
        for f in &folders {
            leave(&mut moves.leaving, &f.from);
        }
        moves.folders = folders;
        moves.view = view;
        moves
    }

    /// At or below a folder that moves in: planned after the folder moves.
    fn inside(&self, path: &RelPath) -> bool {
        self.folders.iter().any(|f| path.starts_with(&f.to))
    }
}

/// Records the folders above `from` (but the root) as left by a move.
fn leave(leaving: &mut HashSet<RelPath>, from: &RelPath) {
    let mut p = from.parent();
    while let Some(dir) = p.filter(|d| !d.is_root()) {
        p = dir.parent();
        if !leaving.insert(dir) {
            break;
        }
    }
}

/// The replica's listing with each moved folder's entries at their new
/// paths, and each entry's place in it.
fn rebase_listing(replica: &Listing, folders: &[FolderMove]) -> (Listing, Vec<usize>) {
    let rebase = |p: &RelPath| {
        folders
            .iter()
            .find_map(|f| moves::rebase(p, &f.from, &f.to))
    };
    let mut entries: Vec<(Entry, usize)> = replica
        .entries
        .iter()
        .enumerate()
        .map(|(j, e)| {
            let mut e = e.clone();
            if let Some(p) = rebase(&e.path) {
                e.path = p;
            }
            (e, j)
        })
        .collect();
    entries.sort_unstable_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut place = vec![0; entries.len()];
    for (k, (_, j)) in entries.iter().enumerate() {
        place[*j] = k;
    }
    let incomplete = replica
        .incomplete
        .iter()
        .map(|p| rebase(p).unwrap_or_else(|| p.clone()))
        .collect();
    let mut view = Listing {
        entries: entries.into_iter().map(|(e, _)| e).collect(),
        incomplete,
    };
    view.incomplete.sort_unstable();
    (view, place)
}

struct Outcome {
    plan: Plan,
    /// Non-folder entries removed for good (not a type change of the path).
    deletions: u64,
}

/// What becomes of a replica entry that the source no longer has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Remove,
    Stale,
}

/// A source folder, to be finished once its contents are done.
struct DirState {
    path: RelPath,
    meta: Meta,
    mtime_changed: bool,
    /// Permissions or owner differ.
    other_changed: bool,
    created: bool,
    /// Its attributes are to be compared (`Planner::attrs_due`).
    attrs: bool,
}

struct Planner<'a> {
    source: &'a Listing,
    /// The replica as it is once its folders have moved (`Moves::view`).
    replica: &'a Listing,
    contents: &'a SameContent,
    opts: DiffOptions,
    moves: &'a Moves<'a>,
    allow_deletions: bool,
    report: Vec<Op>,
    clean: Vec<Op>,
    mkdir: Vec<Op>,
    /// Removals and new folders inside folders that move: after those.
    inside_clean: Vec<Op>,
    inside_mkdir: Vec<Op>,
    moved: Vec<Op>,
    /// Removals of folders that moves leave: after the moves.
    prune: Vec<Op>,
    files: Vec<Op>,
    /// Hard links to files the `files` operations write: after those.
    links: Vec<Op>,
    /// What names of one inode need (`hard_links`).
    roles: Roles,
    /// Source folders, in listing order.
    dirs: Vec<DirState>,
    /// Replica folders whose entries the plan changes (their mtime moves).
    touched: HashSet<RelPath>,
    /// Replica folders that must stay because something below them stays.
    blocked: HashSet<RelPath>,
    deletions: u64,
}

impl<'a> Planner<'a> {
    fn new(
        source: &'a Listing,
        opts: DiffOptions,
        moves: &'a Moves<'a>,
        allow_deletions: bool,
    ) -> Self {
        Planner {
            source,
            replica: moves.view.as_ref(),
            contents: moves.contents.as_ref(),
            opts,
            moves,
            allow_deletions,
            report: Vec::new(),
            clean: Vec::new(),
            mkdir: Vec::new(),
            inside_clean: Vec::new(),
            inside_mkdir: Vec::new(),
            moved: Vec::new(),
            prune: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
            roles: Roles::default(),
            dirs: Vec::new(),
            touched: HashSet::new(),
            blocked: HashSet::new(),
            deletions: 0,
        }
    }

    fn plan(mut self) -> Outcome {
        self.block_kept_entries();
        self.roles = self.link_roles();
        let (src, rep) = (&self.source.entries, &self.replica.entries);
        let (mut i, mut j) = (0, 0);
        while i < src.len() || j < rep.len() {
            match (src.get(i), rep.get(j)) {
                (Some(s), Some(r)) if s.path == r.path => {
                    self.both(s, r, i);
                    i += 1;
                    j += 1;
                }
                (Some(s), Some(r)) if s.path < r.path => {
                    self.source_only(s, i);
                    i += 1;
                }
                (Some(s), None) => {
                    self.source_only(s, i);
                    i += 1;
                }
                (_, Some(r)) => {
                    self.replica_only(r, j);
                    j += 1;
                }
                (None, None) => unreachable!(),
            }
        }
        self.assemble()
    }

    /// Marks the ancestors of every replica entry that stays although the
    /// source lacks it, so that those folders are not removed.
    fn block_kept_entries(&mut self) {
        let (src, rep) = (&self.source.entries, &self.replica.entries);
        let mut i = 0;
        for (j, r) in rep.iter().enumerate() {
            // Both listings are sorted: walk them side by side.
            while i < src.len() && src[i].path < r.path {
                i += 1;
            }
            if r.path.is_root()
                || src.get(i).is_some_and(|s| s.path == r.path)
                || self.moves.from.contains(&j)
            {
                continue;
            }
            if self.fate(r) == Fate::Keep {
                let mut p = r.path.parent();
                while let Some(dir) = p {
                    if !self.blocked.insert(dir.clone()) {
                        break;
                    }
                    p = dir.parent();
                }
            }
        }
    }

    fn fate(&self, r: &Entry) -> Fate {
        // Below a folder not fully listed (on either side) what would be
        // deleted is not known: keep it all.
        if self.source.is_incomplete_at(&r.path)
            || self.replica.is_incomplete_at(&r.path)
            || self.under_skipped_source(&r.path)
        {
            return Fate::Keep;
        }
        if !r.kind.is_dir() && self.opts.temps.owns(r.path.name()) {
            return Fate::Stale;
        }
        if (r.excluded && !self.opts.delete_excluded) || !self.allow_deletions {
            return Fate::Keep;
        }
        Fate::Remove
    }

    fn under_skipped_source(&self, path: &RelPath) -> bool {
        moves::under_special(self.source, path)
    }

    fn parent_blocked(&self, path: &RelPath) -> bool {
        path.parent().is_some_and(|p| self.blocked.contains(&p))
    }

    fn touch_parent(&mut self, path: &RelPath) {
        if let Some(parent) = path.parent() {
            self.touched.insert(parent);
        }
    }

    /// `index`: the entry's place in the source listing.
    fn source_only(&mut self, s: &Entry, index: usize) {
        if in_state_dir(&s.path) || self.skipped(s) || self.unstorable_link(s) {
            return;
        }
        if let Some(from) = self.moves.to.get(&index) {
            self.touch_parent(from);
            self.touch_parent(&s.path);
            self.moved.push(Op::Move {
                path: s.path.clone(),
                from: from.clone(),
                meta: s.meta,
            });
            if let Some(Role::Follow { to, .. }) = self.roles.get(index) {
                // Moved, and another name of a file that the move does not
                // bring: linked over the moved file once that is in place.
                self.link(s, to);
            }
            return;
        }
        self.create(s, index);
    }

    /// Roles of the names of one inode, against the view and the moves.
    fn link_roles(&self) -> Roles {
        let view = self.replica;
        let at = |p: &RelPath| view.entries.binary_search_by(|e| e.path.cmp(p)).ok();
        let replica_of = |i: usize| match self.moves.to.get(&i) {
            Some(from) => at(from),
            None => at(&self.source.entries[i].path),
        };
        let unchanged = |i: usize, j: usize| {
            !self.content_differs(&self.source.entries[i], &view.entries[j], i)
        };
        // Without hard links, names the replica has linked are still
        // parted when they are different files in the source.
        let join = self.opts.hard_links;
        hard_links::roles(self.source, view, replica_of, unchanged, join)
    }

    /// Makes `s` a name of the source file at `leader`'s replica file.
    fn link(&mut self, s: &Entry, leader: usize) {
        self.touch_parent(&s.path);
        self.links.push(Op::Link {
            path: s.path.clone(),
            to: self.source.entries[leader].path.clone(),
            meta: s.meta,
        });
    }

    /// Reports source entries that are never mirrored; true if `s` is one.
    fn skipped(&mut self, s: &Entry) -> bool {
        let reason = if s.path.depth() == 1 && s.path.name() == STATE_DIR {
            "reserved name: the replica keeps treesync's state there".to_string()
        } else if let EntryKind::Special { what } = s.kind {
            format!("{}: special files are not mirrored", what.as_str())
        } else {
            return false;
        };
        self.report.push(Op::Skip {
            path: s.path.clone(),
            reason,
        });
        true
    }

    /// `index`: the entry's place in the source listing.
    fn create(&mut self, s: &Entry, index: usize) {
        if let Some(Role::Follow { to, .. }) = self.roles.get(index) {
            return self.link(s, to);
        }
        let path = s.path.clone();
        if !path.is_root() {
            self.touch_parent(&path);
        }
        match &s.kind {
            EntryKind::Dir => {
                if !path.is_root() {
                    let op = Op::Mkdir {
                        path: path.clone(),
                        meta: s.meta,
                    };
                    if self.moves.inside(&path) {
                        self.inside_mkdir.push(op);
                    } else {
                        self.mkdir.push(op);
                    }
                }
                self.dirs.push(DirState {
                    path,
                    meta: s.meta,
                    mtime_changed: false,
                    other_changed: false,
                    created: true,
                    attrs: false,
                });
            }
            EntryKind::File => self.files.push(Op::Copy { path, meta: s.meta }),
            EntryKind::Symlink { target } => self.files.push(Op::Symlink {
                path,
                target: target.as_bytes().into(),
                meta: s.meta,
            }),
            EntryKind::Special { .. } => {}
        }
    }

    /// `index`: the entry's place in the replica listing.
    fn replica_only(&mut self, r: &Entry, index: usize) {
        if in_state_dir(&r.path) || self.moves.from.contains(&index) {
            return;
        }
        match self.fate(r) {
            Fate::Keep => {}
            Fate::Stale => {
                self.touch_parent(&r.path);
                self.clean.push(Op::RemoveStale {
                    path: r.path.clone(),
                });
            }
            // The rules of a folder kept for its excluded entries stay with
            // it: without them those entries would go at the next sync.
            // Only a regular file holds rules (the walk reads no other): a
            // folder of that name goes like any other.
            Fate::Remove
                if r.path.name() == IGNORE_FILE
                    && r.kind == EntryKind::File
                    && self.parent_blocked(&r.path) => {}
            Fate::Remove => {
                if r.kind.is_dir() && self.blocked.contains(&r.path) {
                    if !r.excluded {
                        self.report.push(Op::Warn {
                            path: r.path.clone(),
                            reason: "folder kept: it still holds excluded or unreadable entries"
                                .into(),
                        });
                    }
                    return;
                }
                self.remove(r);
                if !r.kind.is_dir() {
                    self.deletions += 1;
                }
            }
        }
    }

    fn remove(&mut self, r: &Entry) {
        self.touch_parent(&r.path);
        let path = r.path.clone();
        let op = if r.kind.is_dir() {
            Op::Rmdir { path }
        } else {
            Op::Delete { path }
        };
        if r.kind.is_dir() && self.moves.leaving.contains(&r.path) {
            self.prune.push(op);
        } else if self.moves.inside(&r.path) {
            self.inside_clean.push(op);
        } else {
            self.clean.push(op);
        }
    }

    /// `index`: the source entry's place in the source listing.
    fn both(&mut self, s: &Entry, r: &Entry, index: usize) {
        if in_state_dir(&s.path) || self.skipped(s) {
            return;
        }
        if self.unstorable_link(s) {
            return;
        }
        if !s.kind.same_type(&r.kind) {
            return self.replace(s, r, index);
        }
        // Paths are cloned only for what the plan keeps: on a no-change
        // tick this runs for every entry.
        let path = || s.path.clone();
        match &s.kind {
            EntryKind::Dir => {
                let fresh = s.path.is_root() && self.opts.fresh_root;
                let other_changed = !fresh && self.perm_or_owner_differs(&s.meta, &r.meta);
                let mtime_changed = !fresh && !self.opts.fs.same_mtime(s.meta.mtime, r.meta.mtime);
                let attrs = self.opts.attrs && self.contents.attrs(index);
                self.dirs.push(DirState {
                    path: path(),
                    meta: s.meta,
                    mtime_changed,
                    other_changed,
                    created: fresh,
                    attrs,
                });
            }
            EntryKind::File => match self.roles.get(index) {
                Some(Role::Follow { linked: true, .. }) => {}
                Some(Role::Follow { to, .. }) => self.link(s, to),
                role => self.file(s, r, index, role == Some(Role::Part)),
            },
            EntryKind::Symlink { target } => {
                if Some(target.as_bytes()) != link_target(r) {
                    self.touch_parent(&s.path);
                    self.files.push(Op::Symlink {
                        path: path(),
                        target: target.as_bytes().into(),
                        meta: s.meta,
                    });
                } else if self.meta_differs(&s.meta, &r.meta, false) {
                    self.files.push(Op::SetMeta {
                        path: path(),
                        link: true,
                        meta: s.meta,
                    });
                }
            }
            EntryKind::Special { .. } => {}
        }
    }

    /// A file on both sides. `part`: its replica file is shared with
    /// another source file's name, so it gets content of its own.
    fn file(&mut self, s: &Entry, r: &Entry, index: usize, part: bool) {
        if part || self.content_differs(s, r, index) {
            self.touch_parent(&s.path);
            self.files.push(Op::Update {
                path: s.path.clone(),
                meta: s.meta,
            });
        } else if self.meta_differs(&s.meta, &r.meta, true) {
            self.files.push(Op::SetMeta {
                path: s.path.clone(),
                link: false,
                meta: s.meta,
            });
        } else if self.opts.attrs && self.contents.attrs(index) {
            self.files.push(Op::Attrs {
                path: s.path.clone(),
                dir: false,
                meta: s.meta,
            });
        }
    }

    /// The path changed type: remove the replica's entry, create the new.
    /// A folder can only go once everything below it goes too.
    fn replace(&mut self, s: &Entry, r: &Entry, index: usize) {
        if r.kind.is_dir()
            && (self.blocked.contains(&r.path) || self.source.is_incomplete_at(&r.path))
        {
            if self.allow_deletions {
                self.report.push(Op::Refuse {
                    path: s.path.clone(),
                    op: "replace",
                    reason: format!(
                        "cannot replace the folder with a {}: it holds entries that are kept (excluded or unreadable)",
                        s.kind.as_str()
                    ),
                });
            }
            return;
        }
        self.remove(r);
        self.create(s, index);
    }

    fn content_differs(&self, s: &Entry, r: &Entry, index: usize) -> bool {
        if s.meta.size != r.meta.size {
            return true;
        }
        if self
            .opts
            .fs
            .needs_content_check(&s.meta, &r.meta, self.opts.checksum)
            || self.contents.rechecked(index)
        {
            return !self.contents.contains(index);
        }
        false
    }

    /// Whether times, permissions or (as root) owner differ. Links have no
    /// permissions of their own.
    /// What the replica cannot store is not compared.
    fn meta_differs(&self, s: &Meta, r: &Meta, with_perm: bool) -> bool {
        !self.opts.fs.same_mtime(s.mtime, r.mtime)
            || (with_perm && self.perm_differs(s, r))
            || self.owner_differs(s, r)
    }

    /// For a folder, whose setgid bit is kept with its group too.
    fn perm_or_owner_differs(&self, s: &Meta, r: &Meta) -> bool {
        let setgid = if self.keeps_group(s) {
            s.perm & 0o2000
        } else {
            0
        };
        let perm = expected_perm(s.perm, self.opts.preserve_owner) | setgid;
        (self.opts.fs.keeps_perms && perm != r.perm) || self.owner_differs(s, r)
    }

    fn perm_differs(&self, s: &Meta, r: &Meta) -> bool {
        self.opts.fs.keeps_perms && expected_perm(s.perm, self.opts.preserve_owner) != r.perm
    }

    /// As root, owner and group; otherwise the group, where it is kept.
    fn owner_differs(&self, s: &Meta, r: &Meta) -> bool {
        if self.opts.preserve_owner {
            self.opts.fs.keeps_owners && (s.uid != r.uid || s.gid != r.gid)
        } else {
            self.keeps_group(s) && s.gid != r.gid
        }
    }

    /// Not as root, the source's group is mirrored where it is one of ours.
    fn keeps_group(&self, s: &Meta) -> bool {
        !self.opts.preserve_owner && self.opts.groups.keeps(s.gid, &self.opts.fs)
    }

    /// A source link where the replica cannot hold links: an error for that
    /// link (each tick), and the replica's entry there is left as it is.
    fn unstorable_link(&mut self, s: &Entry) -> bool {
        if self.opts.fs.symlinks || !matches!(s.kind, EntryKind::Symlink { .. }) {
            return false;
        }
        self.report.push(match self.opts.object_store {
            true => Op::Skip {
                path: s.path.clone(),
                reason: "a symbolic link: remote replicas hold none".into(),
            },
            false => Op::Refuse {
                path: s.path.clone(),
                op: "symlink",
                reason: "the replica's filesystem cannot hold symbolic links".into(),
            },
        });
        true
    }

    fn assemble(mut self) -> Outcome {
        // Children before parents: the listing is pre-order, so reversed.
        self.clean.reverse();
        self.inside_clean.reverse();
        self.prune.reverse();
        let mut ops = self.report;
        ops.append(&mut self.clean);
        ops.append(&mut self.mkdir);
        for f in &self.moves.folders {
            self.touched.extend(f.from.parent());
            self.touched.extend(f.to.parent());
            ops.push(Op::MoveDir {
                path: f.to.clone(),
                from: f.from.clone(),
            });
        }
        ops.append(&mut self.inside_clean);
        ops.append(&mut self.inside_mkdir);
        ops.append(&mut self.moved);
        ops.append(&mut self.prune);
        ops.append(&mut self.files);
        ops.append(&mut self.links);
        let touched = self.touched;
        let mut attrs = Vec::new();
        let mut finish = Vec::new();
        for d in self.dirs.into_iter().rev() {
            let touched = touched.contains(&d.path);
            // A folder whose entries this plan changes has its mtime
            // restored as part of those operations, not as `meta`.
            let changed = d.other_changed || (d.mtime_changed && !touched);
            if changed || touched || d.mtime_changed || d.created {
                // Finishing a folder sets its attributes too.
                finish.push(Op::FinishDir {
                    path: d.path,
                    meta: d.meta,
                    changed,
                    created: d.created,
                });
            } else if d.attrs {
                attrs.push(Op::Attrs {
                    path: d.path,
                    dir: true,
                    meta: d.meta,
                });
            }
        }
        ops.append(&mut attrs);
        ops.append(&mut finish);
        Outcome {
            plan: Plan {
                ops,
                guard: None,
                roots: None,
                attrs_sweep: false,
            },
            deletions: self.deletions,
        }
    }
}

/// Below the tool's own folder: never planned for, on either side.
fn in_state_dir(path: &RelPath) -> bool {
    path.depth() >= 2 && path.components().next() == Some(STATE_DIR)
}

fn link_target(e: &Entry) -> Option<&[u8]> {
    match &e.kind {
        EntryKind::Symlink { target } => Some(target.as_bytes()),
        _ => None,
    }
}

/// The permission bits a replica entry should have: setuid and setgid are
/// kept only together with the owner.
pub fn expected_perm(perm: u32, preserve_owner: bool) -> u32 {
    if preserve_owner {
        perm
    } else {
        perm & !0o6000
    }
}

/// The Differ stage.
pub struct Differ {
    opts: Arc<SyncOptions>,
    log: Recipient<LogEvent>,
    /// No plan made yet (a fresh replica root matters only to the first).
    first: bool,
    /// The guard withheld deletions at some tick of this run: it withholds
    /// every deletion for the rest of the run, since the copies made
    /// meanwhile lower the ratio it measures (no ratchet).
    guard_tripped: bool,
    /// The moves (old path, new path) the last plan held: one found again
    /// did not happen, and is planned as a copy instead.
    planned_moves: HashSet<(RelPath, RelPath)>,
}

impl Differ {
    pub fn new(opts: Arc<SyncOptions>, log: Recipient<LogEvent>) -> Self {
        Differ {
            opts,
            log,
            first: true,
            guard_tripped: false,
            planned_moves: HashSet::new(),
        }
    }
}

impl Stage for Differ {
    type In = TreesHashed;
    type Out = PlanMade;

    fn name(&self) -> &'static str {
        "plan"
    }

    fn run(&mut self, msg: TreesHashed, _: &mut TickCx) -> Flow<PlanMade> {
        let mut opts = DiffOptions {
            fresh_root: self.first && self.opts.fresh_replica,
            attrs_sweep: (self.first && self.opts.attrs_sweep) || self.opts.checksum,
            managed: msg.managed,
            temps: DiffOptions::from(&*self.opts).temps.union(&msg.temps),
            ..DiffOptions::from(&*self.opts)
        };
        if self.guard_tripped {
            // Any deletion at all trips the guard now; it is reported with
            // the limit the user set.
            opts.max_delete = MaxDelete::Count(0);
        }
        let mut moves = msg.moves;
        if !self.opts.dry_run {
            moves.failed = std::mem::take(&mut self.planned_moves);
        }
        let mut plan = diff(&msg.source, &msg.replica, &msg.contents, &moves, opts);
        self.planned_moves = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Move { path, from, .. } | Op::MoveDir { path, from } => {
                    Some((from.clone(), path.clone()))
                }
                _ => None,
            })
            .collect();
        if let Some(trip) = &mut plan.guard {
            trip.limit = self.opts.max_delete;
            self.guard_tripped = true;
        }
        self.first = false;
        // Totals of the writes ahead, for the progress display.
        let (copies, bytes) = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Copy { meta, .. } | Op::Update { meta, .. } => Some(meta.size),
                _ => None,
            })
            .fold((0u64, 0u64), |(n, b), size| (n + 1, b + size));
        self.log.do_send(
            LogEvent::new(crate::contract::messages::Verb::Detail("plan"), None)
                .with_fact(Fact::PlanReady {
                    files: copies,
                    bytes,
                })
                .with_u64("ops", plan.ops.len() as u64)
                .with_u64("copies", copies)
                .with_u64("bytes", bytes)
                .with_u64("source_entries", msg.source.entries.len() as u64)
                .with_u64("replica_entries", msg.replica.entries.len() as u64),
        );
        Flow::Next(PlanMade {
            plan,
            roots: msg.roots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::model::{LinkTarget, SpecialKind, Timestamp};
    use std::fmt::Write;

    fn entry(path: &str, kind: EntryKind, size: u64, mtime: i64) -> Entry {
        Entry {
            path: RelPath::from_str_lossy(path),
            kind,
            meta: Meta {
                size,
                mtime: Timestamp::new(mtime, 0),
                perm: 0o644,
                ..Meta::default()
            },
            excluded: false,
        }
    }
    fn file(path: &str, size: u64, mtime: i64) -> Entry {
        entry(path, EntryKind::File, size, mtime)
    }
    fn dir(path: &str) -> Entry {
        let mut e = entry(path, EntryKind::Dir, 0, 100);
        e.meta.perm = 0o755;
        e
    }
    fn link(path: &str, target: &str) -> Entry {
        let target = LinkTarget::new(target.as_bytes());
        entry(path, EntryKind::Symlink { target }, 0, 100)
    }
    fn excluded(mut e: Entry) -> Entry {
        e.excluded = true;
        e
    }
    fn listing(entries: Vec<Entry>) -> Listing {
        let mut l = Listing {
            entries,
            incomplete: Vec::new(),
        };
        l.entries.push(dir(""));
        l.sort();
        l
    }
    fn opts() -> DiffOptions {
        DiffOptions {
            checksum: false,
            delete_excluded: false,
            max_delete: MaxDelete::Percent(100),
            preserve_owner: false,
            fresh_root: false,
            managed: None,
            fs: FsCaps::default(),
            temps: TempTokens::parse(b"0000000000000099\n"),
            renames: true,
            hard_links: true,
            // On in `attributes_are_compared_where_the_source_ctime_is_newer`.
            attrs: false,
            attrs_sweep: false,
            groups: Groups::default(),
            object_store: false,
        }
    }
    fn plan(src: &Listing, rep: &Listing) -> Plan {
        diff(src, rep, &SameContent::default(), opts())
    }
    /// The plan with the moves the Hasher would pass on, had it found
    /// every doubtful pair's contents equal.
    fn diff(src: &Listing, rep: &Listing, contents: &SameContent, o: DiffOptions) -> Plan {
        diff_seeing(src, rep, contents, o, true)
    }
    /// As `diff`, with the doubtful pairs' contents found `equal` or not.
    fn diff_seeing(
        src: &Listing,
        rep: &Listing,
        contents: &SameContent,
        o: DiffOptions,
        equal: bool,
    ) -> Plan {
        let search = moves::search(
            src,
            rep,
            moves::SearchOptions {
                fs: &o.fs,
                temps: &o.temps,
                checksum: o.checksum,
                seen: &[],
                racy: &Default::default(),
            },
        );
        let pairs = match o.renames {
            true => search.resolve(|_| equal),
            false => MovePairs::default(),
        };
        super::diff(src, rep, contents, &pairs, o)
    }
    fn render(plan: &Plan) -> String {
        let mut out = String::new();
        if let Some(g) = plan.guard {
            writeln!(
                out,
                "GUARD would_delete={} managed={} limit={}",
                g.would_delete, g.managed, g.limit
            )
            .unwrap();
        }
        for op in &plan.ops {
            let line = match op {
                Op::Skip { path, reason } => format!("skip {path} ({reason})"),
                Op::Warn { path, reason } => format!("warn {path} ({reason})"),
                Op::Refuse { path, op, reason } => format!("refuse {op} {path} ({reason})"),
                Op::RemoveStale { path } => format!("stale {path}"),
                Op::Delete { path } => format!("delete {path}"),
                Op::Rmdir { path } => format!("rmdir {path}"),
                Op::Move { path, from, .. } => format!("move {from} -> {path}"),
                Op::MoveDir { path, from } => format!("move folder {from} -> {path}"),
                Op::Mkdir { path, .. } => format!("mkdir {path}"),
                Op::Copy { path, meta } => format!("copy {path} {}", meta.size),
                Op::Update { path, meta } => format!("update {path} {}", meta.size),
                Op::Symlink { path, target, .. } => {
                    format!("symlink {path} -> {}", String::from_utf8_lossy(target))
                }
                Op::SetMeta { path, link, .. } => format!("meta {path} link={link}"),
                Op::Link { path, to, .. } => format!("link {path} -> {to}"),
                Op::Attrs { path, dir, .. } => format!("attrs {path} dir={dir}"),
                Op::FinishDir { path, changed, .. } => format!("finish {path} changed={changed}"),
            };
            writeln!(out, "{line}").unwrap();
        }
        out
    }

    fn rich_source() -> Listing {
        listing(vec![
            dir("docs"),
            file("docs/a.txt", 5, 10),
            dir("docs/empty"),
            dir("src"),
            file("src/main.rs", 40, 11),
            link("src/link", "../docs/a.txt"),
            link("dangling", "nowhere"),
            file(".hidden", 1, 12),
        ])
    }

    #[test]
    fn initial_sync_creates_everything_parents_first_and_finishes_folders_last() {
        insta::assert_snapshot!(render(&plan(&rich_source(), &listing(vec![]))));
    }

    /// A tree as an exFAT-like replica holds it after a first sync: mtimes
    /// cut to the second, every mode 0777, owned by root, no links.
    fn odd_replica_of(source: &Listing) -> Listing {
        let mut r = source.clone();
        r.entries
            .retain(|e| !matches!(e.kind, EntryKind::Symlink { .. }));
        for e in &mut r.entries {
            e.meta.mtime.nanos = 0;
            e.meta.perm = 0o777;
            (e.meta.uid, e.meta.gid) = (0, 0);
        }
        r
    }

    #[test]
    fn an_odd_replica_filesystem_is_compared_only_in_what_it_stores() {
        let mut s = listing(vec![
            dir("d"),
            file("d/f", 5, 10),
            file("setuid", 1, 11),
            link("l", "t"),
        ]);
        for e in &mut s.entries {
            e.meta.mtime.nanos = 123_456_789;
            (e.meta.uid, e.meta.gid) = (1000, 1000);
        }
        s.entries[3].meta.perm = 0o4755;
        let r = odd_replica_of(&s);
        let caps = FsCaps {
            keeps_perms: false,
            keeps_owners: false,
            symlinks: false,
            granularity_ns: 1_000_000_000,
            ..FsCaps::default()
        };
        let exact = DiffOptions {
            preserve_owner: true,
            ..opts()
        };
        let odd = DiffOptions {
            fs: caps.with_window(None),
            ..exact
        };
        let none = SameContent::default();
        insta::assert_snapshot!(format!(
            "assumed POSIX:\n{}\nas probed:\n{}",
            render(&diff(&s, &r, &none, exact)),
            render(&diff(&s, &r, &none, odd))
        ));
    }

    #[test]
    fn a_coarse_replica_still_sees_a_change_of_a_whole_step() {
        let s = listing(vec![file("f", 5, 11)]);
        let r = listing(vec![file("f", 5, 10)]);
        let coarse = DiffOptions {
            fs: FsCaps {
                granularity_ns: 1_000_000_000,
                ..FsCaps::default()
            }
            .with_window(None),
            ..opts()
        };
        let p = diff(&s, &r, &SameContent::default(), coarse);
        assert_eq!(render(&p), "update f 5\nfinish . changed=false\n");
    }

    #[test]
    fn equal_trees_need_nothing() {
        let s = rich_source();
        assert!(plan(&s, &s.clone()).ops.is_empty());
    }

    #[test]
    fn same_size_new_mtime_asks_the_content_comparison() {
        let s = listing(vec![
            file("same", 5, 20),
            file("differs", 5, 20),
            file("unread", 5, 20),
        ]);
        let r = listing(vec![
            file("same", 5, 10),
            file("differs", 5, 10),
            file("unread", 5, 10),
        ]);
        // "differs" was found different, "unread" could not be read.
        let contents = SameContent::of_paths(&s, ["same"]);
        insta::assert_snapshot!(render(&diff(&s, &r, &contents, opts())), @r"
        update differs 5
        meta same link=false
        update unread 5
        finish . changed=false
        ");
    }

    #[test]
    fn size_change_updates_without_asking_and_equal_metadata_is_trusted() {
        let s = listing(vec![file("grew", 6, 10), file("hidden-change", 5, 10)]);
        let r = listing(vec![file("grew", 5, 10), file("hidden-change", 5, 10)]);
        assert_eq!(
            render(&plan(&s, &r)),
            "update grew 6\nfinish . changed=false\n"
        );
    }

    #[test]
    fn checksum_compares_content_even_when_metadata_agrees() {
        let s = listing(vec![file("a", 5, 10), file("b", 5, 10)]);
        let contents = SameContent::of_paths(&s, ["b"]);
        let o = DiffOptions {
            checksum: true,
            ..opts()
        };
        assert_eq!(
            render(&diff(&s, &s.clone(), &contents, o)),
            "update a 5\nfinish . changed=false\n"
        );
    }

    #[test]
    fn permission_change_is_meta_and_setuid_needs_the_owner() {
        let mut s = listing(vec![file("x", 1, 1), file("suid", 1, 1)]);
        s.entries[1].meta.perm = 0o4755;
        s.entries[2].meta.perm = 0o600;
        let mut r = listing(vec![file("x", 1, 1), file("suid", 1, 1)]);
        r.entries[1].meta.perm = 0o755;
        assert_eq!(render(&plan(&s, &r)), "meta x link=false\n");
        let as_root = DiffOptions {
            preserve_owner: true,
            ..opts()
        };
        assert_eq!(
            render(&diff(&s, &r, &SameContent::default(), as_root)),
            "meta suid link=false\nmeta x link=false\n"
        );
    }

    #[test]
    fn deletions_go_children_first_and_folders_are_restored_after() {
        let s = listing(vec![dir("keep"), file("keep/a", 1, 1)]);
        let r = listing(vec![
            dir("keep"),
            file("keep/a", 1, 1),
            file("keep/gone", 1, 1),
            dir("old"),
            dir("old/sub"),
            file("old/sub/f", 1, 1),
            link("old/l", "x"),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        delete old/sub/f
        rmdir old/sub
        delete old/l
        rmdir old
        delete keep/gone
        finish keep changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn type_changes_remove_then_create() {
        let s = listing(vec![
            dir("f2d"),
            file("f2d/inner", 1, 1),
            file("d2f", 3, 1),
            link("f2l", "t"),
            dir("l2d"),
        ]);
        let r = listing(vec![
            file("f2d", 1, 1),
            dir("d2f"),
            file("d2f/x", 2, 1),
            file("f2l", 1, 1),
            link("l2d", "/outside"),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        delete l2d
        delete f2l
        delete f2d
        delete d2f/x
        rmdir d2f
        mkdir f2d
        mkdir l2d
        copy d2f 3
        copy f2d/inner 1
        symlink f2l -> t
        finish l2d changed=false
        finish f2d changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn excluded_replica_entries_stay_unless_delete_excluded() {
        let s = listing(vec![dir("a")]);
        let r = listing(vec![
            dir("a"),
            excluded(file("a/build.o", 1, 1)),
            dir("gone"),
            excluded(file("gone/cache", 1, 1)),
            file("gone/plain", 1, 1),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        warn gone (folder kept: it still holds excluded or unreadable entries)
        delete gone/plain
        ");
        let o = DiffOptions {
            delete_excluded: true,
            ..opts()
        };
        insta::assert_snapshot!(render(&diff(&s, &r, &SameContent::default(), o)), @r"
        delete gone/plain
        delete gone/cache
        rmdir gone
        delete a/build.o
        finish a changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn nothing_is_deleted_below_a_folder_the_source_could_not_list() {
        let mut s = listing(vec![dir("locked")]);
        s.incomplete.push(RelPath::from_str_lossy("locked"));
        let r = listing(vec![
            dir("locked"),
            file("locked/precious", 1, 1),
            dir("locked/sub"),
        ]);
        assert!(plan(&s, &r).ops.is_empty());
    }

    #[test]
    fn a_kept_folder_keeps_the_rules_that_keep_its_entries() {
        let s = listing(vec![]);
        let r = listing(vec![
            dir("gone"),
            file("gone/.syncignore", 6, 1),
            excluded(file("gone/x.log", 1, 1)),
            file("gone/plain", 1, 1),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        warn gone (folder kept: it still holds excluded or unreadable entries)
        delete gone/plain
        ");
    }

    #[test]
    fn a_folder_named_like_the_rules_file_is_no_rules_file_and_goes() {
        // The root is kept for a/x; the replica-only folder `.syncignore`
        // beside it holds no rules and nothing kept.
        let s = listing(vec![dir("a")]);
        let r = listing(vec![dir(".syncignore"), dir("a"), excluded(dir("a/x"))]);
        assert_eq!(
            render(&plan(&s, &r)),
            "rmdir .syncignore\nfinish . changed=false\n"
        );
    }

    #[test]
    fn nothing_below_the_state_folder_is_ever_planned() {
        let s = listing(vec![dir(".treesync"), file(".treesync/lock", 1, 1)]);
        let r = listing(vec![
            file(".treesync/hashes", 1, 1),
            file(".treesync/lock", 2, 2),
        ]);
        assert_eq!(
            render(&plan(&s, &r)),
            "skip .treesync (reserved name: the replica keeps treesync's state there)\n"
        );
    }

    #[test]
    fn a_replica_folder_that_could_not_be_listed_is_kept_with_its_parents() {
        let s = listing(vec![]);
        let mut r = listing(vec![dir("old"), dir("old/locked"), file("old/f", 1, 1)]);
        r.incomplete.push(RelPath::from_str_lossy("old/locked"));
        assert_eq!(
            render(&plan(&s, &r)),
            "warn old (folder kept: it still holds excluded or unreadable entries)\ndelete old/f\n"
        );
    }

    #[test]
    fn guard_withholds_every_deletion_but_keeps_copies_and_type_changes() {
        let mut rep: Vec<Entry> = (0..20).map(|i| file(&format!("f{i:02}"), 1, 1)).collect();
        rep.push(file("t", 1, 1));
        rep.push(dir("d2f"));
        rep.push(file("d2f/x", 1, 1));
        let mut src: Vec<Entry> = (0..5).map(|i| file(&format!("f{i:02}"), 1, 1)).collect();
        src.push(file("new", 2, 1));
        src.push(link("t", "target"));
        src.push(file("d2f", 1, 1));
        let o = DiffOptions {
            max_delete: MaxDelete::Percent(50),
            ..opts()
        };
        let p = diff(&listing(src), &listing(rep), &SameContent::default(), o);
        insta::assert_snapshot!(render(&p), @r"
        GUARD would_delete=16 managed=22 limit=50%
        delete t
        copy new 2
        symlink t -> target
        finish . changed=false
        ");
    }

    #[test]
    fn count_guard_zero_forbids_any_deletion() {
        let o = DiffOptions {
            max_delete: MaxDelete::Count(0),
            ..opts()
        };
        let p = diff(
            &listing(vec![]),
            &listing(vec![file("x", 1, 1)]),
            &SameContent::default(),
            o,
        );
        assert!(p.guard.is_some());
        assert!(p.ops.iter().all(|op| !matches!(op, Op::Delete { .. })));
    }

    #[test]
    fn special_files_and_the_state_name_are_skipped_and_their_replica_entry_left_alone() {
        let fifo = EntryKind::Special {
            what: SpecialKind::Fifo,
        };
        let s = listing(vec![
            entry("pipe", fifo, 0, 1),
            dir(".treesync"),
            file("a/.treesync", 1, 1),
            dir("a"),
        ]);
        let r = listing(vec![
            dir("pipe"),
            file("pipe/kept", 1, 1),
            dir("a"),
            file("a/.treesync", 1, 1),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        skip .treesync (reserved name: the replica keeps treesync's state there)
        skip pipe (fifo: special files are not mirrored)
        ");
    }

    #[test]
    fn stale_temporaries_are_removed_unless_the_source_has_that_name() {
        let ours = ".treesync-tmp-0000000000000099-1";
        let s = listing(vec![file(ours, 1, 1)]);
        let r = listing(vec![
            file(ours, 1, 1),
            dir("d"),
            file(&format!("d/{ours}"), 7, 1),
        ]);
        let s = {
            let mut s = s;
            s.entries.push(dir("d"));
            s.sort();
            s
        };
        assert_eq!(
            render(&plan(&s, &r)),
            format!("stale d/{ours}\nfinish d changed=false\n")
        );
    }

    #[test]
    fn a_rechecked_file_found_different_is_updated_though_metadata_agree() {
        let s = listing(vec![file("a", 5, 1), file("b", 5, 1)]);
        let mut contents = SameContent::of_paths(&s, ["b"]);
        for i in 0..s.entries.len() {
            contents.mark_rechecked(i);
        }
        assert_eq!(
            render(&diff(&s, &s.clone(), &contents, opts())),
            "update a 5\nfinish . changed=false\n"
        );
    }

    #[test]
    fn a_name_like_a_temporary_without_a_recorded_token_is_an_ordinary_file() {
        let s = listing(vec![dir("d")]);
        let r = listing(vec![
            dir("d"),
            file("d/.treesync-tmp-1-1", 1, 1),
            file("d/.treesync-tmp-00000000000000aa-1", 1, 1),
        ]);
        let p = plan(&s, &r);
        assert_eq!(
            render(&p),
            "delete d/.treesync-tmp-1-1\ndelete d/.treesync-tmp-00000000000000aa-1\nfinish d changed=false\n"
        );
        // Counted by the guard like any file.
        let o = DiffOptions {
            max_delete: MaxDelete::Count(0),
            ..opts()
        };
        assert_eq!(guard_base(&r, &s, o.delete_excluded, &o.temps), 2);
        assert!(diff(&s, &r, &SameContent::default(), o).guard.is_some());
    }

    #[test]
    fn link_retarget_and_link_times() {
        let s = listing(vec![link("a", "new"), link("b", "same")]);
        let mut r = listing(vec![link("a", "old"), link("b", "same")]);
        r.entries[2].meta.mtime = Timestamp::new(5, 0);
        assert_eq!(
            render(&plan(&s, &r)),
            "symlink a -> new\nmeta b link=true\nfinish . changed=false\n"
        );
    }

    #[test]
    fn a_replica_root_made_by_this_run_is_finished_without_a_meta() {
        let mut s = listing(vec![]);
        s.entries[0].meta.perm = 0o700;
        s.entries[0].meta.mtime = Timestamp::new(42, 0);
        let r = listing(vec![]);
        assert_eq!(render(&plan(&s, &r)), "finish . changed=true\n");
        let fresh = DiffOptions {
            fresh_root: true,
            ..opts()
        };
        assert_eq!(
            render(&diff(&s, &r, &SameContent::default(), fresh)),
            "finish . changed=false\n"
        );
    }

    #[test]
    fn folder_meta_is_logged_only_when_not_explained_by_its_contents() {
        let mut s = listing(vec![
            dir("touched"),
            file("touched/new", 1, 1),
            dir("retimed"),
            dir("chmod"),
        ]);
        for e in &mut s.entries {
            e.meta.mtime = Timestamp::new(500, 0);
        }
        s.entries
            .iter_mut()
            .find(|e| e.path.name() == b"chmod")
            .unwrap()
            .meta
            .perm = 0o700;
        let r = listing(vec![dir("touched"), dir("retimed"), dir("chmod")]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        copy touched/new 1
        finish touched changed=false
        finish retimed changed=true
        finish chmod changed=true
        finish . changed=true
        ");
    }

    /// `e` as one of `names` names of the inode `ino`.
    fn linked(mut e: Entry, ino: u64, names: u32) -> Entry {
        e.meta.id.ino = ino;
        e.meta.nlink = names;
        e
    }

    #[test]
    fn names_of_one_inode_are_linked_after_the_first_is_written() {
        let s = listing(vec![
            dir("a"),
            linked(file("a/f", 5, 10), 1, 3),
            dir("b"),
            linked(file("b/g", 5, 10), 1, 3),
            linked(file("h", 5, 10), 1, 3),
            file("solo", 2, 10),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &listing(vec![]))), @r"
        mkdir a
        mkdir b
        copy a/f 5
        copy solo 2
        link b/g -> a/f
        link h -> a/f
        finish b changed=false
        finish a changed=false
        finish . changed=false
        ");
        // Linked in the replica already: nothing. A name that became a
        // file of its own (same content and mtime) gets its own copy.
        let r = listing(vec![
            dir("a"),
            linked(file("a/f", 5, 10), 7, 3),
            dir("b"),
            linked(file("b/g", 5, 10), 7, 3),
            linked(file("h", 5, 10), 7, 3),
            file("solo", 2, 10),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @"");
        let mut split = s.clone();
        for e in &mut split.entries {
            if e.path.as_bytes() == b"h" {
                e.meta.id.ino = 2;
                e.meta.nlink = 1;
            }
        }
        insta::assert_snapshot!(render(&plan(&split, &r)), @r"
        update h 5
        finish . changed=false
        ");
        // Off: the names are compared one by one, as files.
        let off = DiffOptions {
            hard_links: false,
            ..opts()
        };
        let none = SameContent::default();
        insta::assert_snapshot!(render(&diff(&s, &listing(vec![]), &none, off)), @r"
        mkdir a
        mkdir b
        copy a/f 5
        copy b/g 5
        copy h 5
        copy solo 2
        finish b changed=false
        finish a changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn attributes_marked_by_the_hasher_are_checked_where_nothing_else_is_done() {
        let with_attrs = |s: &Listing, r: &Listing, marked: &[&str], sweep: bool| {
            let o = DiffOptions {
                attrs: true,
                attrs_sweep: sweep,
                ..opts()
            };
            let mut contents = SameContent::default();
            for p in marked {
                let i = s
                    .entries
                    .iter()
                    .position(|e| e.path.to_string() == *p)
                    .unwrap();
                contents.mark_attrs(i);
            }
            diff(s, r, &contents, o)
        };
        let s = listing(vec![
            dir("d"),
            file("f", 5, 10),
            file("g", 1, 10),
            file("h", 2, 10),
        ]);
        let r = listing(vec![
            dir("d"),
            file("f", 5, 10),
            file("g", 1, 10),
            file("h", 2, 20),
        ]);
        // `h` gets `meta` anyway, which sets its attributes too.
        insta::assert_snapshot!(render(&with_attrs(&s, &r, &["d", "f", "h"], false)), @r"
        attrs f dir=false
        update h 2
        attrs d dir=true
        finish . changed=false
        ");
        insta::assert_snapshot!(render(&with_attrs(&s, &r, &[], false)), @r"
        update h 2
        finish . changed=false
        ");
        let p = with_attrs(&s, &r, &[], true);
        assert!(p.attrs_sweep);
        let off = diff(&s, &r, &SameContent::default(), opts());
        assert!(!off.attrs_sweep);
    }

    #[test]
    fn a_file_renamed_in_its_folder_is_moved() {
        let s = listing(vec![
            dir("a"),
            file("a/new.txt", 5, 10),
            file("a/same", 3, 10),
        ]);
        let r = listing(vec![
            dir("a"),
            file("a/old.txt", 5, 10),
            file("a/same", 3, 10),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        move a/old.txt -> a/new.txt
        finish a changed=false
        ");
        // Found different by content: a copy and a deletion.
        let o = opts();
        let none = SameContent::default();
        insta::assert_snapshot!(render(&diff_seeing(&s, &r, &none, o, false)), @r"
        delete a/old.txt
        copy a/new.txt 5
        finish a changed=false
        ");
    }

    #[test]
    fn a_file_moved_into_a_new_folder_goes_after_the_folder_and_before_its_old_folder_goes() {
        let s = listing(vec![
            dir("new"),
            file("new/f", 7, 20),
            file("new/moved", 9, 30),
            file("d", 1, 1),
        ]);
        let r = listing(vec![
            dir("old"),
            dir("old/sub"),
            file("old/sub/f", 7, 20),
            file("old/gone", 2, 2),
            dir("d"),
            file("d/moved", 9, 30),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        delete old/gone
        move folder old/sub -> new
        move d/moved -> new/moved
        rmdir old
        rmdir d
        copy d 1
        finish new changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn a_folder_moved_whole_is_one_move() {
        let tree = |top: &str| {
            listing(vec![
                dir(top),
                dir(&format!("{top}/x")),
                file(&format!("{top}/x/1"), 1, 1),
                file(&format!("{top}/2"), 2, 1),
                file(&format!("{top}/3"), 3, 1),
                file("stays", 4, 1),
            ])
        };
        insta::assert_snapshot!(render(&plan(&tree("photos-2020"), &tree("photos"))), @r"
        move folder photos -> photos-2020
        finish . changed=false
        ");
        // A folder renamed with its parent: the outermost moves.
        let s = listing(vec![
            dir("archive"),
            dir("archive/2020"),
            file("archive/2020/1", 1, 1),
            file("archive/2020/2", 2, 1),
        ]);
        let r = listing(vec![
            dir("work"),
            dir("work/2020"),
            file("work/2020/1", 1, 1),
            file("work/2020/2", 2, 1),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        move folder work -> archive
        finish . changed=false
        ");
    }

    #[test]
    fn a_folder_moved_with_changes_inside_moves_then_changes_in_its_new_place() {
        let s = listing(vec![
            dir("b"),
            file("b/1", 1, 1),
            file("b/2", 2, 1),
            file("b/changed", 3, 5),
            file("b/new", 6, 1),
            dir("b/d2f"),
            file("b/d2f/x", 7, 1),
            file("b/out-of-it", 8, 1),
        ]);
        let r = listing(vec![
            dir("a"),
            file("a/1", 1, 1),
            file("a/2", 2, 1),
            file("a/changed", 3, 4),
            file("a/gone", 4, 1),
            file("a/d2f", 5, 1),
            dir("a/sub"),
            file("a/sub/out-of-it", 8, 1),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        move folder a -> b
        delete b/gone
        delete b/d2f
        mkdir b/d2f
        move b/sub/out-of-it -> b/out-of-it
        rmdir b/sub
        update b/changed 3
        copy b/d2f/x 7
        copy b/new 6
        finish b/d2f changed=false
        finish b changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn swapped_names_are_compared_in_place_and_chains_end_byte_equal() {
        // Swapped names: each path is in both listings, so metadata or
        // content decide there, as for any file.
        let s = listing(vec![file("a", 5, 10), file("b", 5, 10)]);
        let contents = SameContent::default();
        let o = DiffOptions {
            checksum: true,
            ..opts()
        };
        insta::assert_snapshot!(render(&diff(&s, &s.clone(), &contents, o)), @r"
        update a 5
        update b 5
        finish . changed=false
        ");
        // a -> b, b -> c: b is compared in place (different: updated),
        // c is new (copied) and a gone.
        let s = listing(vec![file("b", 1, 1), file("c", 2, 2)]);
        let r = listing(vec![file("a", 1, 1), file("b", 2, 2)]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        delete a
        update b 1
        copy c 2
        finish . changed=false
        ");
    }

    #[test]
    fn ambiguous_pairs_move_only_where_content_agrees() {
        let s = listing(vec![file("p", 5, 10), file("q", 5, 10), file("u", 6, 10)]);
        let r = listing(vec![file("x", 5, 10), file("y", 5, 10), file("z", 6, 11)]);
        let none = SameContent::default();
        insta::assert_snapshot!(render(&diff_seeing(&s, &r, &none, opts(), true)), @r"
        delete z
        move x -> p
        move y -> q
        copy u 6
        finish . changed=false
        ");
        insta::assert_snapshot!(render(&diff_seeing(&s, &r, &none, opts(), false)), @r"
        delete z
        delete y
        delete x
        copy p 5
        copy q 5
        copy u 6
        finish . changed=false
        ");
    }

    #[test]
    fn a_move_onto_a_path_that_is_a_folder_in_the_replica_is_not_a_move() {
        let s = listing(vec![file("d", 5, 10)]);
        let r = listing(vec![dir("d"), file("d/x", 1, 1), file("old", 5, 10)]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        delete old
        delete d/x
        rmdir d
        copy d 5
        finish . changed=false
        ");
    }

    #[test]
    fn excluded_temporary_or_unlisted_entries_never_move() {
        // `logs/f` is excluded in the replica (a `.syncignore` there), so
        // it is kept; `keep/f` is new and copied.
        let mut s = listing(vec![
            dir("locked"),
            dir("keep"),
            file("keep/f", 1, 1),
            file("from-temp", 2, 2),
            file("locked/new", 3, 3),
        ]);
        s.incomplete.push(RelPath::from_str_lossy("locked"));
        let r = listing(vec![
            dir("logs"),
            excluded(file("logs/f", 1, 1)),
            file(".treesync-tmp-0000000000000099-1", 2, 2),
            dir("locked"),
            file("old", 3, 3),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        warn logs (folder kept: it still holds excluded or unreadable entries)
        delete old
        stale .treesync-tmp-0000000000000099-1
        mkdir keep
        copy from-temp 2
        copy keep/f 1
        copy locked/new 3
        finish locked changed=false
        finish keep changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn a_move_into_an_excluded_folder_is_a_deletion_and_out_of_one_a_copy() {
        // `keep/f` moved to `logs/f`, which the source's rules exclude (so
        // the source listing leaves it out); and `logs/g`, excluded and
        // kept in the replica, moved to `keep/g`.
        let s = listing(vec![dir("keep"), file("keep/g", 2, 2), dir("logs")]);
        let r = listing(vec![
            dir("keep"),
            file("keep/f", 1, 1),
            dir("logs"),
            excluded(file("logs/g", 2, 2)),
        ]);
        insta::assert_snapshot!(render(&plan(&s, &r)), @r"
        delete keep/f
        copy keep/g 2
        finish keep changed=false
        ");
    }

    #[test]
    fn moves_are_not_deletions_for_the_guard() {
        let s = listing(vec![
            dir("all-renamed"),
            file("all-renamed/1", 1, 1),
            file("all-renamed/2", 2, 2),
        ]);
        let r = listing(vec![dir("all"), file("all/1", 1, 1), file("all/2", 2, 2)]);
        let o = DiffOptions {
            max_delete: MaxDelete::Count(0),
            ..opts()
        };
        let p = diff(&s, &r, &SameContent::default(), o);
        assert_eq!(p.guard, None);
        insta::assert_snapshot!(render(&p), @r"
        move folder all -> all-renamed
        finish . changed=false
        ");
        // Nanoseconds apart on a replica that keeps them: not the same
        // file, so a copy and a deletion, which the guard withholds.
        let mut s = listing(vec![file("new", 5, 10)]);
        s.entries[1].meta.mtime.nanos = 999;
        let r = listing(vec![file("old", 5, 10)]);
        let p = diff(&s, &r, &SameContent::default(), o);
        assert_eq!(p.guard.map(|g| g.would_delete), Some(1));
        assert_eq!(
            render(&p),
            "GUARD would_delete=1 managed=1 limit=0\ncopy new 5\nfinish . changed=false\n"
        );
    }

    #[test]
    fn names_shifted_with_equal_metadata_are_not_taken_for_a_move() {
        // b -> c, a -> b, both files of one size and time: `c` is not `a`.
        let mut s = listing(vec![file("b", 5, 10), file("c", 5, 10)]);
        let mut r = listing(vec![file("a", 5, 10), file("b", 5, 10)]);
        for e in s.entries.iter_mut().chain(r.entries.iter_mut()) {
            e.meta.mtime.nanos = 250_000_000;
        }
        let none = SameContent::default();
        // Doubtful, so compared by content: found different.
        insta::assert_snapshot!(render(&diff_seeing(&s, &r, &none, opts(), false)), @r"
        delete a
        copy c 5
        finish . changed=false
        ");
    }

    #[test]
    fn a_move_that_did_not_happen_last_time_is_planned_as_a_copy() {
        let s = listing(vec![
            dir("new"),
            file("new/1", 1, 1),
            file("new/2", 2, 1),
            file("g", 3, 1),
        ]);
        let r = listing(vec![
            dir("old"),
            file("old/1", 1, 1),
            file("old/2", 2, 1),
            file("f", 3, 1),
        ]);
        let search = moves::search(
            &s,
            &r,
            moves::SearchOptions {
                fs: &FsCaps::default(),
                temps: &TempTokens::default(),
                checksum: false,
                seen: &[],
                racy: &Default::default(),
            },
        );
        let mut pairs = search.resolve(|_| true);
        let p = RelPath::from_str_lossy;
        pairs.failed = [(p("old"), p("new")), (p("f"), p("g"))]
            .into_iter()
            .collect();
        insta::assert_snapshot!(render(&super::diff(&s, &r, &SameContent::default(), &pairs, opts())), @r"
        delete f
        mkdir new
        move old/1 -> new/1
        move old/2 -> new/2
        rmdir old
        copy g 3
        finish new changed=false
        finish . changed=false
        ");
    }

    #[test]
    fn no_renames_copies_and_deletes() {
        let s = listing(vec![dir("a"), file("a/new.txt", 5, 10)]);
        let r = listing(vec![dir("a"), file("a/old.txt", 5, 10)]);
        let o = DiffOptions {
            renames: false,
            ..opts()
        };
        insta::assert_snapshot!(render(&diff(&s, &r, &SameContent::default(), o)), @r"
        delete a/old.txt
        copy a/new.txt 5
        finish a changed=false
        ");
    }
}
