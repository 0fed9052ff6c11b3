//! Hard links: which source files are names of one inode, and what each
//! name's replica entry needs so that the replica's names group the same
//! way. Pure, for the Differ; the listings carry every entry's inode and
//! link count, so nothing here touches a filesystem.
//!
//! A group is the files of the source listing that share an inode (only
//! files with more than one link are looked at, so a tree without hard
//! links costs one comparison an entry). In each group one name leads:
//! the first, in path order, whose replica file is already the source's
//! (same content, and not shared with a name of another source file), or
//! else the first name, which the plan writes as it would any file. Every
//! other name follows: it is already a name of the leader's replica file,
//! or it becomes one (`Op::Link`, after the leader is written).
//!
//! Breaking a group is mirrored too: a replica file whose names belong to
//! different source files is kept by the first of those (in path order)
//! and rewritten for the others (`Role::Part`), so that changing one can
//! never change the other. Names the source lacks (to be deleted) and
//! links outside the replica's listing do not count.

use crate::contract::model::{EntryKind, FileId, Listing};
use std::collections::HashMap;

/// What a source file's name needs beyond the ordinary comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Its replica file is shared with a name of another source file: it
    /// is rewritten (a new inode), even if its content is equal.
    Part,
    /// Another name of the group whose leader is the source file at index
    /// `to`. `linked`: the replica already has it as a name of the
    /// leader's file, which the plan leaves as it is: nothing to do.
    Follow { to: usize, linked: bool },
}

/// The roles of the source files that have one (by source index); files
/// not in it are planned as ever.
#[derive(Debug, Default)]
pub struct Roles(HashMap<usize, Role>);

impl Roles {
    pub fn get(&self, source_index: usize) -> Option<Role> {
        self.0.get(&source_index).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Finds the roles. `replica_of(i)`: the replica entry (index in
/// `replica`) that the source file at `i` is compared with, if any;
/// `unchanged(i, j)`: that replica file needs no new content. `join`:
/// the source's groups are mirrored; without (`--no-hard-links`), no
/// name is linked, and only the parting of replica names that are
/// different files in the source is found.
pub fn roles(
    source: &Listing,
    replica: &Listing,
    replica_of: impl Fn(usize) -> Option<usize>,
    unchanged: impl Fn(usize, usize) -> bool,
    join: bool,
) -> Roles {
    let groups = match join {
        true => shared(source),
        false => Vec::new(),
    };
    let names = shared(replica);
    if groups.is_empty() && names.is_empty() {
        return Roles::default();
    }
    let source_of = |j: usize| {
        let e = &replica.entries[j];
        source
            .entries
            .binary_search_by(|s| s.path.cmp(&e.path))
            .ok()
            .filter(|&i| source.entries[i].kind == EntryKind::File)
    };
    // Each shared replica inode belongs to the source file of its first
    // name that the source has: names of one source file may share it
    // (also without joining: they are that file's content either way).
    let identity = |i: usize| source.entries[i].meta.id;
    let owner: HashMap<FileId, FileId> = names
        .iter()
        .filter_map(|(id, js)| {
            let first = js.iter().find_map(|&j| source_of(j))?;
            Some((*id, identity(first)))
        })
        .collect();
    let file_at = |j: usize| Some(&replica.entries[j]).filter(|r| r.kind == EntryKind::File);
    // The replica file of source file `i` is shared with another source
    // file's name.
    let entangled = |i: usize| {
        replica_of(i)
            .and_then(file_at)
            .and_then(|r| owner.get(&r.meta.id))
            .is_some_and(|o| *o != identity(i))
    };
    let mut roles = HashMap::new();
    for (_, members) in &groups {
        let good = |&i: &usize| {
            replica_of(i).is_some_and(|j| file_at(j).is_some() && unchanged(i, j)) && !entangled(i)
        };
        let found = members.iter().copied().find(good);
        // Else a name the replica has nothing else at (a folder there may
        // be one the plan cannot remove): the others wait for the leader.
        let free = |&i: &usize| replica_of(i).is_none_or(|j| file_at(j).is_some());
        let leader = found
            .or_else(|| members.iter().copied().find(free))
            .unwrap_or(members[0]);
        if found.is_none() && entangled(leader) {
            roles.insert(leader, Role::Part);
        }
        let leader_inode = found
            .and_then(&replica_of)
            .and_then(file_at)
            .map(|r| r.meta.id);
        for &m in members.iter().filter(|&&m| m != leader) {
            let inode = replica_of(m).and_then(file_at).map(|r| r.meta.id);
            let linked = leader_inode.is_some() && inode == leader_inode;
            roles.insert(m, Role::Follow { to: leader, linked });
        }
    }
    // Files alone in the source whose replica file has names of others.
    for (_, js) in &names {
        for i in js.iter().filter_map(|&j| source_of(j)) {
            if !roles.contains_key(&i) && entangled(i) {
                roles.insert(i, Role::Part);
            }
        }
    }
    Roles(roles)
}

/// The files of `listing` sharing an inode, with the inode, each group in
/// listing order; inodes with one name in the listing are left out. By
/// sorting, not a map of groups: a tree whose files all have other names
/// outside it (`cp -al` snapshots) makes no group, and costs a sort.
fn shared(listing: &Listing) -> Vec<(FileId, Vec<usize>)> {
    let mut named: Vec<(FileId, usize)> = listing
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.meta.nlink > 1 && e.kind == EntryKind::File)
        .map(|(i, e)| (e.meta.id, i))
        .collect();
    named.sort_unstable();
    named
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|run| run.len() > 1)
        .map(|run| (run[0].0, run.iter().map(|&(_, i)| i).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::model::{Entry, Meta};
    use crate::contract::relpath::RelPath;

    /// A listing of files `(path, inode)`; inodes named twice get nlink 2.
    fn listing(files: &[(&str, u64)]) -> Listing {
        let count = |ino: u64| files.iter().filter(|(_, i)| *i == ino).count() as u32;
        let mut l = Listing {
            entries: files
                .iter()
                .map(|(p, ino)| Entry {
                    path: RelPath::from_str_lossy(p),
                    kind: EntryKind::File,
                    meta: Meta {
                        nlink: count(*ino),
                        id: FileId { dev: 1, ino: *ino },
                        ..Meta::default()
                    },
                    excluded: false,
                })
                .collect(),
            incomplete: Vec::new(),
        };
        l.sort();
        l
    }

    /// Roles by path, with every replica file unchanged unless its path
    /// is in `changed`.
    fn roles_of(source: &Listing, replica: &Listing, changed: &[&str]) -> Vec<String> {
        let replica_of = |i: usize| {
            let p = &source.entries[i].path;
            replica.entries.binary_search_by(|e| e.path.cmp(p)).ok()
        };
        let unchanged =
            |i: usize, _| !changed.contains(&source.entries[i].path.to_string().as_str());
        let roles = roles(source, replica, replica_of, unchanged, true);
        let mut out: Vec<String> = (0..source.entries.len())
            .filter_map(|i| {
                let p = &source.entries[i].path;
                Some(match roles.get(i)? {
                    Role::Part => format!("{p} part"),
                    Role::Follow { to, linked } => {
                        format!("{p} -> {} linked={linked}", source.entries[to].path)
                    }
                })
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_tree_without_links_has_no_roles() {
        let s = listing(&[("a", 1), ("b", 2)]);
        let r = listing(&[("a", 11), ("b", 12)]);
        assert!(roles_of(&s, &r, &[]).is_empty());
    }

    #[test]
    fn new_names_follow_the_first() {
        let s = listing(&[("a", 1), ("d/b", 1), ("e/c", 1)]);
        let r = listing(&[]);
        assert_eq!(
            roles_of(&s, &r, &[]),
            ["d/b -> a linked=false", "e/c -> a linked=false"]
        );
    }

    #[test]
    fn the_leader_is_the_first_name_already_right() {
        // The replica has only `d/b`, equal: `a` links to it, not the
        // other way round (no copy of the content).
        let s = listing(&[("a", 1), ("d/b", 1)]);
        let r = listing(&[("d/b", 7)]);
        assert_eq!(roles_of(&s, &r, &[]), ["a -> d/b linked=false"]);
    }

    #[test]
    fn linked_names_stay_and_a_changed_leader_relinks_them() {
        let s = listing(&[("a", 1), ("b", 1)]);
        let r = listing(&[("a", 7), ("b", 7)]);
        assert_eq!(roles_of(&s, &r, &[]), ["b -> a linked=true"]);
        // The content changed: `a` is rewritten (a new inode), so `b` is
        // linked to the new one.
        assert_eq!(roles_of(&s, &r, &["a", "b"]), ["b -> a linked=false"]);
    }

    #[test]
    fn joining_a_group_links_the_copy() {
        let s = listing(&[("a", 1), ("b", 1)]);
        let r = listing(&[("a", 7), ("b", 8)]);
        assert_eq!(roles_of(&s, &r, &[]), ["b -> a linked=false"]);
    }

    #[test]
    fn breaking_a_group_rewrites_all_but_the_first() {
        let s = listing(&[("a", 1), ("b", 2), ("c", 3)]);
        let r = listing(&[("a", 7), ("b", 7), ("c", 7)]);
        assert_eq!(roles_of(&s, &r, &[]), ["b part", "c part"]);
    }

    #[test]
    fn a_group_split_in_two_keeps_one_inode_for_the_first() {
        let s = listing(&[("a", 1), ("b", 1), ("c", 2), ("d", 2)]);
        let r = listing(&[("a", 7), ("b", 7), ("c", 7), ("d", 7)]);
        assert_eq!(
            roles_of(&s, &r, &[]),
            ["b -> a linked=true", "c part", "d -> c linked=false"]
        );
    }

    #[test]
    fn a_name_where_the_replica_has_a_folder_does_not_lead() {
        let s = listing(&[("a", 1), ("b", 1)]);
        let mut r = listing(&[]);
        r.entries.push(Entry {
            path: RelPath::from_str_lossy("a"),
            kind: EntryKind::Dir,
            meta: Meta::default(),
            excluded: false,
        });
        assert_eq!(roles_of(&s, &r, &[]), ["a -> b linked=false"]);
    }

    #[test]
    fn without_joining_only_names_of_different_files_part() {
        let s = listing(&[("a", 1), ("b", 1), ("c", 2)]);
        let r = listing(&[("a", 7), ("b", 7), ("c", 7)]);
        let replica_of = |i: usize| {
            let p = &s.entries[i].path;
            r.entries.binary_search_by(|e| e.path.cmp(p)).ok()
        };
        let got = roles(&s, &r, replica_of, |_, _| true, false);
        let c = s
            .entries
            .iter()
            .position(|e| e.path.as_bytes() == b"c")
            .unwrap();
        assert_eq!(got.0.len(), 1);
        assert_eq!(got.get(c), Some(Role::Part));
    }

    #[test]
    fn names_the_source_lacks_do_not_entangle() {
        let s = listing(&[("a", 1)]);
        let r = listing(&[("a", 7), ("old", 7)]);
        assert!(roles_of(&s, &r, &[]).is_empty());
    }
}
