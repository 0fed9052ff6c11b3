//! Remote replicas: an S3-compatible bucket (AWS S3, MinIO, Ceph RGW,
//! Garage, B2, R2) through OpenDAL, or a folder on an SFTP server
//! (`sftp.rs`).
//!
//! Everything above the plan is the same as for a local replica: the
//! source is walked as always, and the replica's side of the scan is one
//! recursive listing of the bucket (`listing.rs`), turned into the same
//! `Listing` the Differ compares. The Applier carries out the plan through
//! `ops::RemoteOps`, the remote implementation of the `Replica` trait.
//!
//! How a bucket holds a tree:
//! - a file is an object; its source mtime is kept in the user metadata
//!   `mtime`, in rclone's format (seconds, a dot and the nanoseconds with
//!   trailing zeros cut), so a bucket written by either tool reads right
//!   in the other; its SHA-1 in `sha1`;
//! - folders exist by the objects below them; an empty one is a marker
//!   object `FOLDER/`;
//! - permissions, owners, links and attributes are not stored: the caps of
//!   an object store say so (`caps()`), and source links are `skip`;
//! - an upload is one PUT, or a multipart upload in parallel parts for
//!   large files: either is visible only once complete.
//!
//! What treesync wrote is recorded on this machine (`state.rs`), so a tick
//! with nothing to do costs one listing and no request per object.

pub mod address;
pub mod listing;
pub mod ops;
pub mod sftp;
pub mod state;

use crate::contract::model::{Digest, Timestamp};
use crate::fs::replica_fs::FsCaps;
use address::ReplicaUrl;
use opendal::layers::RetryLayer;
use opendal::{ErrorKind, Operator};
use state::Records;
use std::collections::HashMap;
use std::fmt;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How to reach a remote replica, from the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteOptions {
    /// `--s3-endpoint`: the store's URL (MinIO, Ceph, ...); AWS without.
    pub s3_endpoint: Option<String>,
    /// `--s3-region`; else `AWS_REGION`, `AWS_DEFAULT_REGION`, the
    /// profile's, or `us-east-1`.
    pub s3_region: Option<String>,
    /// `--sftp-key`, `--sftp-known-hosts`.
    pub sftp: sftp::SftpOptionsCli,
}

/// The user metadata keys of an object (rclone's `mtime`).
pub const MTIME_KEY: &str = "mtime";
pub const SHA1_KEY: &str = "sha1";

/// The folder of treesync's own objects in the replica (the lock).
pub const STATE_PREFIX: &str = ".treesync/";

/// Parts of a multipart upload: S3's smallest part, so that an upload
/// holds about `PART * (PARTS_IN_FLIGHT + 2)` (the parts in flight, the
/// one being read, the one the client is cutting), whatever the file's
/// size up to `PART * MAX_PARTS` (48 GiB); larger files take larger parts
/// (`part_size`).
pub const PART: usize = 5 << 20;
pub const PARTS_IN_FLIGHT: usize = 4;

/// S3's limit on the parts of one upload.
pub const MAX_PARTS: u64 = 10_000;

/// The part size for a file of `size` bytes: `PART`, or for files too
/// large for `MAX_PARTS` of those, the smallest whole number of MiB that
/// fits.
pub fn part_size(size: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(PART as u64) as usize
}

/// Requests in flight at once for uploads, deletions and metadata reads:
/// a store across a network answers each in tens of milliseconds.
pub const REQUESTS_IN_FLIGHT: usize = 16;

/// Files in flight at once on an SFTP connection. Each file is four or
/// more requests answered in turn (open, write with set times, close,
/// rename) through ssh, so the connection idles unless many files
/// overlap: 64 took an initial sync of 10,000 small files from 5.6 s to
/// 2.6-3.0 s against a local sshd, where 96 and more gained nothing
/// (bench/sftp.sh, BENCHMARKS.md run J).
pub const SFTP_FILES_IN_FLIGHT: usize = 64;

/// The most bytes of file content held in memory by the uploads in
/// flight together: a small file is read whole before its PUT, a large
/// one holds up to `PARTS_IN_FLIGHT + 2` parts (see `PART`). With the
/// program's own 20 MiB, a sync stays under 64 MiB.
pub const UPLOAD_MEMORY: u64 = 40 << 20;

/// A remote replica, connected: the store's client, the runtime it runs
/// on, and the records of what was written.
pub struct Remote {
    pub url: ReplicaUrl,
    /// The address as given, for messages and the state folder's name.
    pub address: String,
    store: Store,
    /// The S3 client without retries: for removing the lock at the end,
    /// which must not keep a stopping run waiting on a store that is down
    /// (a lock left by a run of this host that ended is taken over).
    bare: Option<Operator>,
    rt: tokio::runtime::Runtime,
    records: Mutex<Records>,
    /// Where the records and the local lock are kept.
    pub state_dir: PathBuf,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The client of the store.
enum Store {
    S3(Operator),
    Sftp(sftp::SftpStore),
}

/// Why a remote replica cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Config(String),
    #[error("replica {address}: {message}")]
    Store { address: String, message: String },
}

impl Remote {
    /// Builds the client for `url`; nothing is sent yet.
    pub fn connect(url: ReplicaUrl, opts: &RemoteOptions) -> Result<Remote, RemoteError> {
        // The HTTP client the stores' services use (once a process).
        opendal::install_default();
        let address = url.to_string();
        let config = |message: String| RemoteError::Config(format!("replica {address}: {message}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("treesync-remote")
            .enable_all()
            .build()
            .map_err(|e| config(format!("cannot start the network runtime: {e}")))?;
        let (store, bare, endpoint) = match &url {
            ReplicaUrl::S3 { bucket, prefix } => {
                let (op, bare, endpoint) = s3_operator(bucket, prefix, opts).map_err(config)?;
                (Store::S3(op), Some(bare), endpoint)
            }
            ReplicaUrl::Sftp {
                user,
                host,
                port,
                path,
            } => {
                let connected = rt.block_on(sftp::SftpStore::connect(
                    user.as_deref(),
                    host,
                    *port,
                    path,
                    &opts.sftp,
                ));
                let store = connected.map_err(|message| RemoteError::Store {
                    address: address.clone(),
                    message,
                })?;
                (Store::Sftp(store), None, String::new())
            }
        };
        let state_dir = state::state_dir(&address, &endpoint).ok_or_else(|| {
            config(
                "neither XDG_STATE_HOME nor HOME is set: no place for the replica's local state"
                    .into(),
            )
        })?;
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            config(format!(
                "cannot create its local state folder {}: {e}",
                state_dir.display()
            ))
        })?;
        let records = Mutex::new(Records::load(&state_dir));
        Ok(Remote {
            url,
            address,
            store,
            bare,
            rt,
            records,
            state_dir,
        })
    }

    /// What an object store keeps: content and mtimes, to the nanosecond
    /// (in metadata); no permissions, owners, links or attributes. An SFTP
    /// server keeps permissions too, and mtimes to the second.
    pub fn caps(&self) -> FsCaps {
        if let Store::Sftp(_) = self.store {
            return FsCaps {
                case_insensitive: false,
                normalizes_unicode: false,
                keeps_perms: true,
                keeps_owners: false,
                symlinks: false,
                hard_links: false,
                xattrs: false,
                acls: false,
                granularity_ns: 1_000_000_000,
                mtime_window_ns: 999_999_999,
                owners_lost: false,
            };
        }
        FsCaps {
            case_insensitive: false,
            normalizes_unicode: false,
            keeps_perms: false,
            keeps_owners: false,
            symlinks: false,
            hard_links: false,
            xattrs: false,
            acls: false,
            granularity_ns: 1,
            mtime_window_ns: 0,
            owners_lost: false,
        }
    }

    /// Runs a request (or several) to completion from a stage's thread.
    fn block_on<F: IntoFuture>(&self, f: F) -> F::Output {
        self.rt.block_on(f.into_future())
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves the records if they changed; they only save requests, so a
    /// failure is the caller's to report as a warning.
    pub fn save_records(&self) -> std::io::Result<()> {
        self.records().save(&self.state_dir)
    }

    /// Whether the replica holds no object (markers aside from our own
    /// state): a replica never synced must be adopted explicitly.
    pub fn is_empty(&self) -> Result<bool, RemoteError> {
        let op = match &self.store {
            Store::S3(op) => op,
            Store::Sftp(s) => {
                return self
                    .block_on(s.is_empty())
                    .map_err(|message| RemoteError::Store {
                        address: self.address.clone(),
                        message,
                    })
            }
        };
        let found = self.block_on(async {
            let mut lister = op.lister_with("").recursive(true).limit(8).await?;
            use futures::TryStreamExt as _;
            while let Some(entry) = lister.try_next().await? {
                let path = entry.path();
                if !path.is_empty() && path != "/" && !path.starts_with(STATE_PREFIX) {
                    return Ok::<_, opendal::Error>(false);
                }
            }
            Ok(true)
        });
        found.map_err(|e| self.store_error(&e))
    }

    /// Whether treesync synced into this replica before: from this
    /// machine (its records) for a store, or at all (its `.treesync`
    /// folder) on an SFTP server.
    pub fn synced_before(&self) -> bool {
        match &self.store {
            Store::S3(_) => !self.records().is_empty(),
            Store::Sftp(s) => self.block_on(s.has_state()),
        }
    }

    /// How many operations the Applier runs at once on this store.
    pub fn requests_in_flight(&self) -> usize {
        match self.store {
            Store::S3(_) => REQUESTS_IN_FLIGHT,
            Store::Sftp(_) => SFTP_FILES_IN_FLIGHT,
        }
    }

    /// The error as said to the user: what went wrong, with a hint for
    /// the usual causes; never the credentials.
    pub fn store_error(&self, e: &opendal::Error) -> RemoteError {
        RemoteError::Store {
            address: self.address.clone(),
            message: describe(e),
        }
    }

    /// Takes the lock object (or file on SFTP) `.treesync/lock`: created
    /// only where none exists. One left by a process of this host that is
    /// gone is taken over.
    pub fn lock(self: &Arc<Self>) -> Result<RemoteLock, RemoteError> {
        let host = hostname();
        let body = format!("host={host}\npid={}\n", std::process::id());
        let fail = |message: String| RemoteError::Store {
            address: self.address.clone(),
            message,
        };
        for _ in 0..2 {
            let held = match self.try_lock(&body)? {
                None => {
                    return Ok(RemoteLock {
                        remote: self.clone(),
                    })
                }
                Some(held) => held,
            };
            let field = |name: &str| {
                held.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or("?")
                    .to_string()
            };
            let (their_host, pid) = (field("host"), field("pid"));
            let gone = their_host == host
                && pid
                    .parse::<u32>()
                    .is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
            if !gone {
                return Err(fail(format!("another treesync (host {their_host}, pid {pid}) is already syncing into it (its lock {STATE_PREFIX}lock; if none is running there, delete it)")));
            }
            // Left by a run of ours that ended without removing it.
            self.unlock();
        }
        Err(fail("cannot take the lock".into()))
    }

    /// Creates the lock unless it exists: `Some(its content)` if it does.
    fn try_lock(&self, body: &str) -> Result<Option<String>, RemoteError> {
        let key = format!("{STATE_PREFIX}lock");
        match &self.store {
            Store::S3(op) => {
                let put = self.block_on(
                    op.write_with(&key, body.to_string().into_bytes())
                        .if_not_exists(true),
                );
                match put {
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == ErrorKind::ConditionNotMatch => {
                        let held = self
                            .block_on(op.read(&key))
                            .map(|b| String::from_utf8_lossy(&b.to_vec()).into_owned())
                            .unwrap_or_default();
                        Ok(Some(held))
                    }
                    Err(e) => Err(self.store_error(&e)),
                }
            }
            Store::Sftp(s) => match self.block_on(s.lock(body)) {
                Ok(()) => Ok(None),
                Err((true, held)) => Ok(Some(held)),
                Err((false, message)) => Err(RemoteError::Store {
                    address: self.address.clone(),
                    message: format!("cannot take the lock {STATE_PREFIX}lock: {message}"),
                }),
            },
        }
    }

    fn unlock(&self) {
        match &self.store {
            Store::S3(op) => {
                let op = self.bare.as_ref().unwrap_or(op);
                let _ = self.block_on(op.delete(&format!("{STATE_PREFIX}lock")));
            }
            Store::Sftp(s) => self.block_on(s.unlock()),
        }
    }
}

/// The lock, removed when dropped.
pub struct RemoteLock {
    remote: Arc<Remote>,
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        self.remote.unlock();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The S3 client for a bucket and prefix; with the endpoint it talks to.
fn s3_operator(
    bucket: &str,
    prefix: &str,
    opts: &RemoteOptions,
) -> Result<(Operator, Operator, String), String> {
    let region = opts
        .s3_region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = opts
        .s3_endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(format!(
            "--s3-endpoint {endpoint}: expected http://HOST[:PORT] or https://..."
        ));
    }
    // Credentials come from the environment (AWS_ACCESS_KEY_ID, ...) and
    // the profile files, never from the command line.
    let builder = opendal::services::S3::default()
        .bucket(bucket)
        .root(&format!("/{prefix}"))
        .region(&region)
        .endpoint(&endpoint);
    let bare = Operator::new(builder).map_err(|e| describe(&e))?;
    let op = bare.clone().layer(
        RetryLayer::new()
            .with_jitter()
            .with_max_times(4)
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5)),
    );
    Ok((op, bare, endpoint))
}

/// A store's error in a line: the kind in words, the message, and a hint
/// where the cause is usually the same.
pub fn describe(e: &opendal::Error) -> String {
    let hint = match e.kind() {
        ErrorKind::PermissionDenied => {
            " (check the credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and its files)"
        }
        ErrorKind::NotFound => " (does the bucket exist?)",
        _ => "",
    };
    let mut message = e.message().trim().to_string();
    if message.is_empty() {
        message = e.kind().to_string();
    }
    // "send http request" says little; the cause below it (a connection
    // refused, a name not resolved) says what to fix.
    let mut cause = std::error::Error::source(e);
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    if let Some(last) = last.filter(|l| !message.contains(l.as_str())) {
        message = format!("{message}: {last}");
    }
    // S3 puts its answer in XML (or OpenDAL in its own debug form): its
    // code and message say it best.
    let code =
        xml_field(&message, "<Code>", "</Code>").or_else(|| xml_field(&message, "code: \"", "\""));
    let text = xml_field(&message, "<Message>", "</Message>")
        .or_else(|| xml_field(&message, "message: \"", "\""));
    if let (Some(code), Some(text)) = (code, text) {
        message = format!("{code}: {text}");
    }
    if e.is_temporary() || e.is_persistent() {
        format!("{message}{hint} (after retries)")
    } else {
        format!("{message}{hint}")
    }
}

/// The text between `open` and the next `close`.
fn xml_field<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = start + text[start..].find(close)?;
    Some(&text[start..end])
}

/// rclone's format of a time in metadata: `secs` or `secs.nanos`, the
/// nanoseconds without trailing zeros.
pub fn format_mtime(t: Timestamp) -> String {
    let (secs, nanos) = (t.secs, t.nanos);
    if nanos == 0 {
        return secs.to_string();
    }
    let frac = format!("{nanos:09}");
    format!("{secs}.{}", frac.trim_end_matches('0'))
}

/// Reads rclone's format (and plain RFC 3339, which rclone also takes).
pub fn parse_mtime(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<opendal::raw::Timestamp>() {
        let st: std::time::SystemTime = ts.into();
        return Some(timestamp_of(st));
    }
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse().ok()?;
    Some(Timestamp::new(secs, nanos))
}

pub fn timestamp_of(t: std::time::SystemTime) -> Timestamp {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timestamp::new(d.as_secs() as i64, d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
            match nanos {
                0 => Timestamp::new(-secs, 0),
                n => Timestamp::new(-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// The user metadata treesync writes with an object.
pub fn object_metadata(mtime: Timestamp, sha1: Option<Digest>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(MTIME_KEY.to_string(), format_mtime(mtime));
    if let Some(d) = sha1 {
        m.insert(SHA1_KEY.to_string(), state::hex(&d.0));
    }
    m
}

/// An ETag without its quotes.
pub fn bare_etag(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimes_are_in_rclones_format_both_ways() {
        let cases = [
            (Timestamp::new(1_700_000_000, 0), "1700000000"),
            (Timestamp::new(1_700_000_000, 500_000_000), "1700000000.5"),
            (
                Timestamp::new(1_700_000_000, 123_456_789),
                "1700000000.123456789",
            ),
            (Timestamp::new(1_700_000_000, 1), "1700000000.000000001"),
        ];
        for (t, text) in cases {
            assert_eq!(format_mtime(t), text);
            assert_eq!(parse_mtime(text), Some(t), "{text}");
        }
        assert_eq!(
            parse_mtime("2023-11-14T22:13:20.25Z"),
            Some(Timestamp::new(1_700_000_000, 250_000_000))
        );
        for bad in ["", "x", "1.2.3", "1.1234567890", "1.-5"] {
            assert_eq!(parse_mtime(bad), None, "{bad}");
        }
    }

    #[test]
    fn store_errors_say_the_code_and_message_of_the_xml() {
        let e = opendal::Error::new(
            ErrorKind::PermissionDenied,
            "<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>The key is wrong</Message></Error>",
        );
        let text = describe(&e);
        assert!(
            text.starts_with("InvalidAccessKeyId: The key is wrong"),
            "{text}"
        );
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
        let e = opendal::Error::new(
            ErrorKind::NotFound,
            "S3Error { code: \"NoSuchBucket\", message: \"The specified bucket does not exist\", resource: \"\" }",
        );
        let text = describe(&e);
        assert!(
            text.starts_with("NoSuchBucket: The specified bucket does not exist"),
            "{text}"
        );
    }
}
