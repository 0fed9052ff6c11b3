//! The replica's side of a scan, from one recursive listing of the store.
//!
//! A listing gives each object's key, size and ETag. An object whose size
//! and ETag are what the records say (`state.rs`) takes its mtime and
//! SHA-1 from the record: no request. Any other object's metadata is read
//! (one HEAD each, many in flight), and recorded, so the next listing
//! needs none either.
//!
//! Folders are the prefixes of the keys, and marker objects `FOLDER/`.
//! A folder has no metadata of its own in a store: it is given the source
//! folder's, so that only its presence is compared. Entries are marked
//! excluded by the source's rules (`--exclude` and the `.syncignore` files
//! of the source folders), as the walk marks a local replica's.

use super::state::Record;
use super::{
    bare_etag, parse_mtime, timestamp_of, Remote, Store, MTIME_KEY, SHA1_KEY, STATE_PREFIX,
};
use crate::contract::model::{Digest, Entry, EntryKind, Listing, Meta};
use crate::contract::options::SyncOptions;
use crate::contract::relpath::RelPath;
use crate::contract::stop::StopFlag;
use crate::fs::root::Root;
use crate::fs::rules::{read_ignore_file, Rules};
use futures::{StreamExt as _, TryStreamExt as _};
use std::collections::{HashMap, HashSet};

/// The name of the rules' files, as the walk reads them.
const IGNORE_FILE: &[u8] = b".syncignore";

/// One object as listed.
struct Listed {
    key: String,
    size: u64,
    etag: String,
    last_modified: Option<std::time::SystemTime>,
}

impl Remote {
    /// Lists the replica and returns it as a `Listing` beside `source`
    /// (the source's listing of this tick, walked from `source_root`).
    /// An `Err` is the reason the tick cannot run: nothing is planned
    /// against a replica that could not be listed whole.
    pub fn list(
        &self,
        source: &Listing,
        source_root: &Root,
        opts: &SyncOptions,
        stop: &StopFlag,
    ) -> Result<Listing, String> {
        let op = match &self.store {
            Store::S3(op) => op,
            Store::Sftp(s) => {
                let mut listing = self.block_on(s.list(stop, !opts.dry_run))?;
                mark_excluded(&mut listing, source, source_root, opts);
                return Ok(listing);
            }
        };
        let (objects, markers) = self.list_objects(op, stop)?;
        // What the records cannot vouch for is read once.
        let unknown: Vec<&Listed> = {
            let records = self.records();
            objects
                .iter()
                .filter(|o| {
                    !records
                        .get(&o.key)
                        .is_some_and(|r| r.size == o.size && !o.etag.is_empty() && r.etag == o.etag)
                })
                .collect()
        };
        let read = self.read_metadata(op, &unknown);
        let mut records = self.records();
        for (o, found) in unknown.iter().zip(read) {
            let (mtime, sha1) = match found {
                Ok(meta) => meta,
                Err(e) => return Err(format!("read the metadata of {}: {e}", o.key)),
            };
            let mtime = mtime
                .or_else(|| o.last_modified.map(timestamp_of))
                .unwrap_or_default();
            let record = Record {
                size: o.size,
                etag: o.etag.clone(),
                mtime,
                sha1,
            };
            records.insert(o.key.clone(), record);
        }
        let listed: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        records.retain(|k| listed.contains(k));
        let mut entries = Vec::with_capacity(objects.len() + markers.len());
        let mut folders: HashSet<RelPath> = HashSet::new();
        for o in &objects {
            let Some(path) = RelPath::new(o.key.as_bytes()) else {
                continue;
            };
            let Some(r) = records.get(&o.key) else {
                continue;
            };
            folders.extend(ancestors(&path));
            entries.push(Entry {
                path,
                kind: EntryKind::File,
                meta: Meta {
                    size: o.size,
                    mtime: r.mtime,
                    ctime: r.mtime,
                    perm: 0o644,
                    nlink: 1,
                    ..Meta::default()
                },
                excluded: false,
            });
        }
        drop(records);
        for m in markers {
            if let Some(path) = RelPath::new(m.as_bytes()) {
                folders.extend(ancestors(&path));
                folders.insert(path);
            }
        }
        // A name that is both an object and a prefix is listed as the
        // folder; the object is left alone (it cannot be a file of a tree).
        entries.retain(|e| !folders.contains(&e.path));
        let source_meta = |path: &RelPath| source.get(path).map(|e| e.meta);
        for path in folders {
            let meta = source_meta(&path).unwrap_or_default();
            entries.push(dir_entry(path, meta));
        }
        if let Some(root) = source.root() {
            entries.push(dir_entry(RelPath::root(), root.meta));
        }
        let mut listing = Listing {
            entries,
            incomplete: Vec::new(),
        };
        listing.sort();
        mark_excluded(&mut listing, source, source_root, opts);
        Ok(listing)
    }

    /// Every object below the replica root (not ours), and the folder
    /// markers (without their `/`).
    fn list_objects(
        &self,
        op: &opendal::Operator,
        stop: &StopFlag,
    ) -> Result<(Vec<Listed>, Vec<String>), String> {
        self.block_on(async {
            let mut lister = op
                .lister_with("")
                .recursive(true)
                .await
                .map_err(|e| super::describe(&e))?;
            let (mut objects, mut markers) = (Vec::new(), Vec::new());
            while let Some(entry) = lister.try_next().await.map_err(|e| super::describe(&e))? {
                if stop.is_requested() {
                    return Err("interrupted".to_string());
                }
                let path = entry.path();
                if path.is_empty() || path == "/" || path.starts_with(STATE_PREFIX) {
                    continue;
                }
                if let Some(folder) = path.strip_suffix('/') {
                    markers.push(folder.to_string());
                    continue;
                }
                let meta = entry.metadata();
                objects.push(Listed {
                    key: path.to_string(),
                    size: meta.content_length(),
                    etag: bare_etag(meta.etag()),
                    last_modified: meta.last_modified().map(Into::into),
                });
            }
            Ok((objects, markers))
        })
    }

    /// The stored mtime and SHA-1 of each object, many requests at once.
    #[allow(clippy::type_complexity)]
    fn read_metadata(
        &self,
        op: &opendal::Operator,
        objects: &[&Listed],
    ) -> Vec<Result<(Option<crate::contract::model::Timestamp>, Option<Digest>), String>> {
        if objects.is_empty() {
            return Vec::new();
        }
        self.block_on(async {
            futures::stream::iter(objects.iter().map(|o| async move {
                let meta = op.stat(&o.key).await.map_err(|e| super::describe(&e))?;
                let user = meta.user_metadata();
                let get = |k: &str| user.as_ref().and_then(|u| u.get(k));
                let mtime = get(MTIME_KEY).and_then(parse_mtime);
                let sha1 = get(SHA1_KEY).and_then(super::state::unhex).map(Digest);
                Ok((mtime, sha1))
            }))
            .buffered(super::REQUESTS_IN_FLIGHT)
            .collect()
            .await
        })
    }

    /// The SHA-1 stored with the object at `key`, if the records have one.
    pub fn stored_sha1(&self, key: &str) -> Option<Digest> {
        self.records().get(key).and_then(|r| r.sha1)
    }
}

/// The folders above `path`, the root left out.
fn ancestors(path: &RelPath) -> impl Iterator<Item = RelPath> {
    std::iter::successors(path.parent(), RelPath::parent).filter(|p| !p.is_root())
}

fn dir_entry(path: RelPath, meta: Meta) -> Entry {
    Entry {
        path,
        kind: EntryKind::Dir,
        meta,
        excluded: false,
    }
}

/// Marks the entries the source's rules exclude: the rules of a folder are
/// those of the source folder at the same path (the store's own
/// `.syncignore` objects are not read); below an excluded folder,
/// everything is excluded.
fn mark_excluded(listing: &mut Listing, source: &Listing, source_root: &Root, opts: &SyncOptions) {
    let has_rules_file = |folder: &RelPath| {
        source
            .get(&folder.join(IGNORE_FILE))
            .is_some_and(|e| e.kind == EntryKind::File)
    };
    let rules_of = |folder: &RelPath, inherited: &Rules| -> Rules {
        let extra: &[String] = if folder.is_root() {
            &opts.excludes
        } else {
            &[]
        };
        if !has_rules_file(folder) && extra.is_empty() {
            return inherited.clone();
        }
        let text = match has_rules_file(folder) {
            true => source_root.open_dir(folder).and_then(read_ignore_file).ok(),
            false => None,
        };
        inherited.with_folder(folder, text.as_deref(), extra).0
    };
    // Folders on the way down: (path, rules in force inside, excluded).
    let mut stack: Vec<(RelPath, Rules, bool)> = Vec::new();
    let mut cache: HashMap<RelPath, Rules> = HashMap::new();
    for e in &mut listing.entries {
        if e.path.is_root() {
            let rules = rules_of(&e.path, &Rules::none());
            stack.push((e.path.clone(), rules, false));
            continue;
        }
        while stack
            .last()
            .is_some_and(|(folder, _, _)| !e.path.starts_with(folder))
        {
            stack.pop();
        }
        let (rules, inside_excluded) = match stack.last() {
            Some((_, rules, ex)) => (rules.clone(), *ex),
            None => (Rules::none(), false),
        };
        let is_dir = e.kind.is_dir();
        e.excluded = inside_excluded || rules.is_excluded(&e.path, is_dir);
        if is_dir {
            let inner = cache
                .entry(e.path.clone())
                .or_insert_with(|| rules_of(&e.path, &rules))
                .clone();
            stack.push((e.path.clone(), inner, e.excluded));
        }
    }
}
