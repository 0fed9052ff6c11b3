//! What treesync last wrote to a remote replica, kept on this machine.
//!
//! An object store's listing gives each object's size and ETag but not the
//! source mtime treesync stored in its metadata: reading that would cost a
//! request per object. So each object written (or read once) is recorded
//! here with its size, ETag, mtime and SHA-1; a listing whose size and
//! ETag match the record needs no request at all. A record that disagrees
//! (someone changed the bucket) is dropped and the object's metadata read
//! again.
//!
//! The records live in `$XDG_STATE_HOME/treesync/NAME/` (else
//! `~/.local/state/treesync/NAME/`), NAME made from the replica's address
//! and endpoint, beside the local lock of that replica. They are written
//! whole, through a temporary and a rename, so a crash leaves the old or
//! the new records; lost records cost requests, never correctness.

use crate::contract::model::{Digest, Timestamp};
use sha1::{Digest as _, Sha1};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// One object as last written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub size: u64,
    /// Without quotes; empty when the store gave none.
    pub etag: String,
    pub mtime: Timestamp,
    pub sha1: Option<Digest>,
}

/// The records of one replica, by key (the path below the replica root).
#[derive(Debug, Default)]
pub struct Records {
    map: HashMap<String, Record>,
    dirty: bool,
}

const FILE: &str = "objects";
const HEADER: &str = "treesync-remote-records 1";

impl Records {
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: String, record: Record) {
        if self.map.get(&key) != Some(&record) {
            self.map.insert(key, record);
            self.dirty = true;
        }
    }

    pub fn remove(&mut self, key: &str) {
        if self.map.remove(key).is_some() {
            self.dirty = true;
        }
    }

    /// Keeps only the keys `keep` says are still there.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.map.len();
        self.map.retain(|k, _| keep(k));
        self.dirty |= self.map.len() != before;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The records saved in `dir`; none when there are none or they
    /// cannot be read (they only save requests).
    pub fn load(dir: &Path) -> Records {
        let Ok(text) = std::fs::read_to_string(dir.join(FILE)) else {
            return Records::default();
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Records::default();
        }
        let map = lines.filter_map(parse_line).collect();
        Records { map, dirty: false }
    }

    /// Writes the records to `dir` if they changed since loaded or saved.
    pub fn save(&mut self, dir: &Path) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut keys: Vec<&String> = self.map.keys().collect();
        keys.sort_unstable();
        let mut text = String::with_capacity(64 * keys.len() + 32);
        text.push_str(HEADER);
        text.push('\n');
        for key in keys {
            let r = &self.map[key];
            let sha1 = r.sha1.map(|d| hex(&d.0)).unwrap_or_default();
            let (secs, nanos) = (r.mtime.secs, r.mtime.nanos);
            let _ = writeln!(
                text,
                "{}\t{}\t{}\t{secs}.{nanos:09}\t{sha1}",
                escape(key),
                r.size,
                escape(&r.etag),
            );
        }
        let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        self.dirty = false;
        Ok(())
    }
}

fn parse_line(line: &str) -> Option<(String, Record)> {
    let mut f = line.split('\t');
    let key = unescape(f.next()?)?;
    let size = f.next()?.parse().ok()?;
    let etag = unescape(f.next()?)?;
    let (secs, nanos) = f.next()?.split_once('.')?;
    let mtime = Timestamp::new(secs.parse().ok()?, nanos.parse().ok()?);
    let sha1 = match f.next()? {
        "" => None,
        h => Some(Digest(unhex(h)?)),
    };
    Some((
        key,
        Record {
            size,
            etag,
            mtime,
            sha1,
        },
    ))
}

/// Tabs, newlines and `%` in keys as `%XX`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | '\t' | '\n' | '\r' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = (it.next()? as char).to_digit(16)?;
            let lo = (it.next()? as char).to_digit(16)?;
            bytes.push((hi * 16 + lo) as u8);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn unhex(h: &str) -> Option<[u8; 20]> {
    if h.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The folder of one replica's local state: its name is readable (the
/// address, with other characters as `_`) and unique (a hash of the
/// address and the endpoint, since one bucket name may exist at several).
pub fn state_dir(address: &str, endpoint: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    let readable: String = address
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(80)
        .collect();
    let digest = Sha1::digest(format!("{address}\n{endpoint}").as_bytes());
    Some(
        base.join("treesync")
            .join(format!("{readable}-{}", &hex(&digest)[..12])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_save_and_a_load_with_odd_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = Records::default();
        let rec = Record {
            size: 5,
            etag: "abc\"d".into(),
            mtime: Timestamp::new(1_700_000_000, 5),
            sha1: Some(Digest([7; 20])),
        };
        r.insert("a/tab\there%/new\nline".into(), rec.clone());
        r.insert(
            "plain".into(),
            Record {
                sha1: None,
                ..rec.clone()
            },
        );
        r.save(tmp.path()).unwrap();
        let back = Records::load(tmp.path());
        assert_eq!(back.len(), 2);
        assert_eq!(back.get("a/tab\there%/new\nline"), Some(&rec));
        assert_eq!(back.get("plain").unwrap().sha1, None);
    }

    #[test]
    fn unreadable_records_are_none() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE), "something else\nx\t1").unwrap();
        assert!(Records::load(tmp.path()).is_empty());
    }

    #[test]
    fn state_folders_differ_by_endpoint() {
        std::env::set_var("XDG_STATE_HOME", "/st");
        let a = state_dir("s3://b/p", "http://one").unwrap();
        let b = state_dir("s3://b/p", "http://two").unwrap();
        assert_ne!(a, b);
        let a = a.to_string_lossy();
        assert!(a.starts_with("/st/treesync/s3___b_p-"), "{a}");
    }
}
