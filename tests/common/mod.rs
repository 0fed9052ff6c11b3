//! Harness for the end-to-end tests: sandboxes with a SOURCE and a REPLICA,
//! tree builders, a listing of a tree that never follows links, and a
//! parser for the JSON log that checks every line against the log contract.

#![allow(dead_code)]

pub mod mounts;
pub mod servers;

use filetime::FileTime;
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_treesync")
}

/// How long any awaited event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Default times given to fixture entries so that listings are stable.
pub const FILE_TIME: (i64, u32) = (1_600_000_000, 123_456_789);
pub const DIR_TIME: (i64, u32) = (1_500_000_000, 987_654_321);

/// Operation verbs of the log contract (entries that carry a `path`).
pub const OP_VERBS: [&str; 10] = [
    "mkdir", "copy", "update", "meta", "symlink", "move", "delete", "rmdir", "skip", "warn",
];
/// Verbs that change the replica.
pub const CHANGE_VERBS: [&str; 9] = [
    "mkdir", "copy", "update", "meta", "symlink", "move", "link", "delete", "rmdir",
];

// ---------------------------------------------------------------------------
// Sandbox
// ---------------------------------------------------------------------------

/// A temporary folder holding `src/` (created), `dst/` (not created) and
/// the log files, which live outside both roots.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub dst: PathBuf,
    runs: Cell<u32>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let tmp = tempfile::Builder::new()
            .prefix("treesync-e2e-")
            .tempdir_in(std::env::temp_dir())
            .expect("temp dir");
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).expect("create src");
        set_mode(&src, 0o755);
        Sandbox {
            tmp,
            src,
            dst,
            runs: Cell::new(0),
        }
    }

    /// A sandbox whose source is a copy of `fixtures/<name>`, normalized:
    /// files 0o644 with `FILE_TIME`, folders 0o755 with `DIR_TIME`.
    pub fn with_fixture(name: &str) -> Sandbox {
        let sb = Sandbox::new();
        copy_fixture(name, &sb.src);
        sb
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// A path in the sandbox, outside both roots.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn s(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.src.join(rel)
    }

    pub fn d(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dst.join(rel)
    }

    /// A fresh log file path for the next run.
    pub fn next_log(&self) -> PathBuf {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        self.tmp.path().join(format!("log-{n}.jsonl"))
    }

    /// Mirrors 20 files, then removes 15 of them from the source: a sync
    /// now would delete 75% of the replica, over the default guard (50%).
    pub fn mirror_then_remove_15_of_20(&self) {
        for i in 0..20 {
            file(&self.src, format!("f{i:02}.txt"), "x");
        }
        self.sync(&[]).expect_code(0);
        for i in 0..15 {
            remove(&self.s(format!("f{i:02}.txt")));
        }
    }

    /// `treesync --once SRC DST <extra>` with a fresh JSON log.
    pub fn sync(&self, extra: &[&str]) -> Run {
        let mut args: Vec<OsString> = vec!["--once".into()];
        args.extend(extra.iter().map(OsString::from));
        args.push(self.src.clone().into());
        args.push(self.dst.clone().into());
        self.run(&args)
    }

    /// Runs the binary with `args` plus `--log-file <fresh> --log-format json`.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        let (cmd, log) = self.command(args);
        run_command(cmd, Some(log))
    }

    /// The binary with `args` plus `--log-file <fresh> --log-format json`,
    /// run in the sandbox; and that log's path.
    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> (Command, PathBuf) {
        let log = self.next_log();
        let mut cmd = Command::new(bin());
        cmd.arg("--log-file")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .current_dir(self.tmp.path());
        (cmd, log)
    }

    /// Runs `prefix... treesync --log-file <fresh> --log-format json args...`
    /// (a prefix such as `setpriv ...` to change the user).
    pub fn run_with_prefix<S: AsRef<OsStr>>(&self, prefix: &[&str], args: &[S]) -> Run {
        let log = self.next_log();
        let mut cmd = Command::new(prefix[0]);
        let program = if prefix[0] == "setpriv" {
            user_bin()
        } else {
            PathBuf::from(bin())
        };
        cmd.args(&prefix[1..])
            .arg(program)
            .arg("--log-file")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .current_dir(self.tmp.path());
        run_command(cmd, Some(log))
    }

    /// Like `run`, with extra environment variables.
    pub fn run_with_env<S: AsRef<OsStr>>(&self, env: &[(&str, &OsStr)], args: &[S]) -> Run {
        let log = self.next_log();
        let mut cmd = Command::new(bin());
        cmd.arg("--log-file")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .current_dir(self.tmp.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_command(cmd, Some(log))
    }

    /// Runs the binary with exactly `args` (no log options added).
    pub fn run_raw<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        let mut cmd = Command::new(bin());
        cmd.args(args).current_dir(self.tmp.path());
        run_command(cmd, None)
    }

    /// Starts `treesync <args> SRC DST <interval>` in the background with a
    /// fresh JSON log.
    pub fn spawn_interval(&self, interval: &str, extra: &[&str]) -> Running {
        let mut args: Vec<OsString> = extra.iter().map(OsString::from).collect();
        args.push(self.src.clone().into());
        args.push(self.dst.clone().into());
        args.push(interval.into());
        self.spawn(&args)
    }

    /// Starts the binary with `args` plus the log options, in the background.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Running {
        let (cmd, log) = self.command(args);
        Running::start(cmd, log)
    }

    /// Renames `from` to `to` in the source (`mv`), making `to`'s folders.
    pub fn mv(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) {
        let to = self.s(to);
        ensure_parent(&to);
        fs::rename(self.s(from), to).expect("rename in the source");
    }

    /// Source and replica hold the same entries with the same metadata.
    pub fn assert_mirror(&self) {
        assert_same_tree(&self.src, &self.dst);
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Copies `fixtures/<name>` into `dest` (which must exist) and normalizes
/// modes and times; folder times are set last.
pub fn copy_fixture(name: &str, dest: &Path) {
    let opts = fs_extra::dir::CopyOptions::new().content_only(true);
    fs_extra::dir::copy(fixture_dir(name), dest, &opts).expect("copy fixture");
    normalize(dest);
}

/// Files 0o644 with `FILE_TIME`, folders 0o755 with `DIR_TIME` (the root
/// included), links `FILE_TIME`.
pub fn normalize(root: &Path) {
    for (path, md) in walk(root) {
        let ft = md.file_type();
        if ft.is_file() {
            set_mode(&path, 0o644);
            set_mtime(&path, FILE_TIME);
        } else if ft.is_symlink() {
            set_mtime(&path, FILE_TIME);
        } else if ft.is_dir() {
            set_mode(&path, 0o755);
        }
    }
    freeze_dirs(root, DIR_TIME);
}

/// Sets every folder's mtime below and at `root` (deepest first).
pub fn freeze_dirs(root: &Path, t: (i64, u32)) {
    let mut dirs: Vec<PathBuf> = walk(root)
        .into_iter()
        .filter(|(_, md)| md.file_type().is_dir())
        .map(|(p, _)| p)
        .collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in dirs {
        set_mtime(&d, t);
    }
    set_mtime(root, t);
}

/// Every entry below `root` (not `root` itself), never following links.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => panic!("read_dir {}: {e}", dir.display()),
        };
        for ent in rd {
            let ent = ent.expect("dir entry");
            let p = ent.path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            if md.file_type().is_dir() {
                stack.push(p.clone());
            }
            out.push((p, md));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Tree builders
// ---------------------------------------------------------------------------

fn ensure_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        make_dirs(parent);
    }
}

/// `create_dir_all`, giving each folder it creates mode 0o755 whatever
/// the umask, so that listings do not depend on it.
fn make_dirs(path: &Path) {
    let missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| !exists(p))
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(path).expect("create folders");
    for d in missing {
        set_mode(&d, 0o755);
    }
}

/// Writes a file (parents created) with `FILE_TIME` and mode 0o644.
pub fn file(root: &Path, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> PathBuf {
    file_with(root, rel, content, 0o644, FILE_TIME)
}

/// Writes a file with the given mode and mtime.
pub fn file_with(
    root: &Path,
    rel: impl AsRef<Path>,
    content: impl AsRef<[u8]>,
    mode: u32,
    mtime: (i64, u32),
) -> PathBuf {
    let path = root.join(rel);
    ensure_parent(&path);
    if fs::symlink_metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o200 == 0) {
        set_mode(&path, 0o600);
    }
    fs::write(&path, content).expect("write file");
    set_mode(&path, mode);
    set_mtime(&path, mtime);
    path
}

/// Rewrites a file's content in place (same inode), keeping its mode.
pub fn rewrite(path: &Path, content: impl AsRef<[u8]>) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open for rewrite");
    f.write_all(content.as_ref()).expect("rewrite");
}

pub fn dir(root: &Path, rel: impl AsRef<Path>) -> PathBuf {
    let path = root.join(rel);
    make_dirs(&path);
    path
}

pub fn symlink(root: &Path, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> PathBuf {
    let path = root.join(rel);
    ensure_parent(&path);
    std::os::unix::fs::symlink(target, &path).expect("symlink");
    set_mtime(&path, FILE_TIME);
    path
}

pub fn fifo(root: &Path, rel: impl AsRef<Path>) -> PathBuf {
    let path = root.join(rel);
    ensure_parent(&path);
    let st = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
    assert!(st.success(), "mkfifo failed");
    path
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Sets mtime (and atime) without following a link.
pub fn set_mtime(path: &Path, (secs, nanos): (i64, u32)) {
    let t = FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).expect("set times");
}

pub fn remove(path: &Path) {
    let md = fs::symlink_metadata(path).expect("lstat for remove");
    if md.is_dir() {
        fs::remove_dir_all(path).expect("remove dir");
    } else {
        fs::remove_file(path).expect("remove file");
    }
}

/// A path from raw bytes (for names that are not UTF-8).
pub fn bpath(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

pub fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).expect("lstat").ino()
}

pub fn mtime_of(path: &Path) -> (i64, u32) {
    let md = fs::symlink_metadata(path).expect("lstat");
    (md.mtime(), md.mtime_nsec() as u32)
}

pub fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("lstat").mode() & 0o7777
}

pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Files above this size are not hashed by listings.
pub const BIG_FILE: u64 = 64 << 20;

pub fn sha1_hex(bytes: &[u8]) -> String {
    hex(&Sha1::digest(bytes))
}

pub fn sha1_file(path: &Path) -> String {
    try_sha1_file(path).unwrap_or_else(|| panic!("cannot read {}", path.display()))
}

fn try_sha1_file(path: &Path) -> Option<String> {
    if fs::metadata(path).ok()?.len() > BIG_FILE {
        // Too slow to hash in a test: compare such files with `same_content`.
        return Some("(large file, not hashed)".into());
    }
    let mut f = fs::File::open(path).ok()?;
    let mut h = Sha1::new();
    std::io::copy(&mut f, &mut h).ok()?;
    Some(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------

/// One entry of a tree, as `lstat` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Relative path, escaped (`.` for the root).
    pub path: String,
    pub kind: &'static str,
    pub size: Option<u64>,
    pub sha1: Option<String>,
    pub mtime_ns: i128,
    pub mode: u32,
    pub target: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub ctime_ns: i128,
}

impl Node {
    /// `path kind size sha1 mtime(ns) mode target`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {:04o} {}",
            self.path,
            self.kind,
            self.size.map_or("-".into(), |s| s.to_string()),
            self.sha1.as_deref().unwrap_or("-"),
            self.mtime_ns,
            self.mode,
            self.target.as_deref().unwrap_or("-"),
        )
    }

    /// The line plus owner, for comparing two trees on the same machine.
    pub fn line_with_owner(&self) -> String {
        format!("{} {}:{}", self.line(), self.uid, self.gid)
    }
}

/// Escapes a name for listings: valid UTF-8 kept except control
/// characters, invalid bytes as `\xNN`.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.push_str(&c.escape_default().to_string());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The log form of a path: valid UTF-8 as it is, invalid bytes as `\xNN`.
pub fn log_path(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

fn node(root: &Path, path: &Path, md: &fs::Metadata) -> Node {
    let rel = path.strip_prefix(root).expect("below root");
    let rel_bytes = rel.as_os_str().as_bytes();
    let ft = md.file_type();
    let (kind, size, sha1, target) = if ft.is_file() {
        let sha = try_sha1_file(path).unwrap_or_else(|| "unreadable".into());
        ("file", Some(md.len()), Some(sha), None)
    } else if ft.is_dir() {
        ("dir", None, None, None)
    } else if ft.is_symlink() {
        let t = fs::read_link(path).expect("readlink");
        (
            "symlink",
            None,
            None,
            Some(escape_name(t.as_os_str().as_bytes())),
        )
    } else {
        use std::os::unix::fs::FileTypeExt;
        let k = if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "device"
        };
        (k, None, None, None)
    };
    Node {
        path: if rel_bytes.is_empty() {
            ".".into()
        } else {
            escape_name(rel_bytes)
        },
        kind,
        size,
        sha1,
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        mode: md.mode() & 0o7777,
        target,
        uid: md.uid(),
        gid: md.gid(),
        ino: md.ino(),
        ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
    }
}

/// The node of one path (named by its full path).
pub fn node_at(path: &Path) -> Node {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut n = node(path, path, &md);
    n.path = path.display().to_string();
    n
}

/// Every entry at and below `root`, sorted by path, skipping `.treesync`
/// at the root. Links are never followed.
pub fn listing(root: &Path) -> Vec<Node> {
    let md = fs::symlink_metadata(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let mut out = vec![node(root, root, &md)];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for ent in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let ent = ent.expect("dir entry");
            let p = ent.path();
            if d == root && ent.file_name() == ".treesync" {
                continue;
            }
            let md = fs::symlink_metadata(&p).expect("lstat");
            if md.file_type().is_dir() {
                stack.push(p.clone());
            }
            out.push(node(root, &p, &md));
        }
    }
    out.sort_by(|a, b| path_key(&a.path).cmp(&path_key(&b.path)));
    out
}

fn path_key(p: &str) -> Vec<&str> {
    if p == "." {
        Vec::new()
    } else {
        p.split('/').collect()
    }
}

/// The listing without the entries at or below any of `paths`.
pub fn listing_except(root: &Path, paths: &[&str]) -> Vec<Node> {
    listing(root)
        .into_iter()
        .filter(|n| !paths.iter().any(|p| is_at_or_below(&n.path, p)))
        .collect()
}

pub fn is_at_or_below(path: &str, top: &str) -> bool {
    path == top || path.starts_with(&format!("{top}/"))
}

/// Snapshot form of a listing: one line per entry.
pub fn render(nodes: &[Node]) -> String {
    let mut s = String::new();
    for n in nodes {
        s.push_str(&n.line());
        s.push('\n');
    }
    s
}

/// Snapshot form of a tree.
pub fn tree(root: &Path) -> String {
    render(&listing(root))
}

fn render_owned(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(Node::line_with_owner).collect()
}

/// Compares two listings (with owners) and panics with a readable diff.
pub fn assert_same_nodes(left: &[Node], right: &[Node], what: &str) {
    let l = render_owned(left);
    let r = render_owned(right);
    if l != r {
        let ls: BTreeSet<&String> = l.iter().collect();
        let rs: BTreeSet<&String> = r.iter().collect();
        let mut msg = format!("{what}: listings differ\n");
        for x in ls.difference(&rs) {
            msg.push_str(&format!("  - {x}\n"));
        }
        for x in rs.difference(&ls) {
            msg.push_str(&format!("  + {x}\n"));
        }
        panic!("{msg}");
    }
}

/// The replica equals the source (less `.treesync` at the root).
pub fn assert_same_tree(src: &Path, dst: &Path) {
    assert_same_nodes(&listing(src), &listing(dst), "source (-) vs replica (+)");
}

/// Identity of every entry: path, inode, mtime and ctime.
pub fn identities(root: &Path) -> Vec<(String, u64, i128, i128)> {
    listing(root)
        .into_iter()
        .map(|n| (n.path, n.ino, n.mtime_ns, n.ctime_ns))
        .collect()
}

/// Every path below `root` whose name starts with `.treesync-tmp-`.
pub fn temporaries(root: &Path) -> Vec<PathBuf> {
    if !exists(root) {
        return Vec::new();
    }
    walk(root)
        .into_iter()
        .filter(|(p, _)| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b".treesync-tmp-"))
        })
        .map(|(p, _)| p)
        .collect()
}

// ---------------------------------------------------------------------------
// Runs and the log
// ---------------------------------------------------------------------------

/// One JSON log line.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ts: String,
    pub level: String,
    pub msg: String,
    pub path: Option<String>,
    pub fields: Map<String, Value>,
}

impl Entry {
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    pub fn dry_run(&self) -> bool {
        self.fields.get("dry_run") == Some(&Value::Bool(true))
    }

    pub fn is(&self, msg: &str, path: &str) -> bool {
        self.msg == msg && self.path.as_deref() == Some(path)
    }

    /// The exact bytes of `path` or of a byte-valued field (`from`, `to`,
    /// `target`), as a consumer reads them: from `KEY_b64` when the line
    /// has it (the name is not UTF-8), else from `KEY` itself.
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(b64) = self.str(&format!("{key}_b64")) {
            return Some(decode_b64(b64).expect("checked by parse_line"));
        }
        let text = if key == "path" {
            self.path.as_deref()
        } else {
            self.str(key)
        };
        text.map(|t| t.as_bytes().to_vec())
    }
}

/// Standard base64 (RFC 4648) with padding; `None` if `text` is not that.
pub fn decode_b64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let data = text.trim_end_matches('=');
    if text.len() - data.len() > 2 {
        return None;
    }
    let (mut bits, mut held, mut out) = (0u32, 0, Vec::new());
    for c in data.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)?;
        bits = bits << 6 | v as u32;
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
    }
    Some(out)
}

fn is_rfc3339_utc_ms(ts: &str) -> bool {
    // 2024-01-02T03:04:05.678Z
    let b = ts.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
}

/// Parses one JSON log line and checks it against the log contract.
pub fn parse_line(line: &str) -> Entry {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
    let Value::Object(mut fields) = v else {
        panic!("log line is not an object: {line}");
    };
    let take = |fields: &mut Map<String, Value>, k: &str| -> Option<String> {
        fields.remove(k).map(|v| match v {
            Value::String(s) => s,
            other => panic!("`{k}` is not a string in {line}: {other}"),
        })
    };
    let ts = take(&mut fields, "ts").unwrap_or_else(|| panic!("no `ts` in {line}"));
    let level = take(&mut fields, "level").unwrap_or_else(|| panic!("no `level` in {line}"));
    let msg = take(&mut fields, "msg").unwrap_or_else(|| panic!("no `msg` in {line}"));
    let path = take(&mut fields, "path");
    let e = Entry {
        ts,
        level,
        msg,
        path,
        fields,
    };
    check_contract(&e, line);
    e
}

fn check_contract(e: &Entry, line: &str) {
    assert!(
        is_rfc3339_utc_ms(&e.ts),
        "`ts` is not RFC 3339 UTC with milliseconds: {line}"
    );
    let want_level = match e.msg.as_str() {
        "mkdir" | "copy" | "update" | "meta" | "symlink" | "move" | "link" | "delete" | "rmdir"
        | "backup" | "prune" | "tick" => "INFO",
        "skip" | "warn" => "WARN",
        "error" => "ERROR",
        other => panic!("unknown verb `{other}` in the log file: {line}"),
    };
    assert_eq!(e.level, want_level, "level of {line}");
    // `KEY_b64` spells the exact bytes of a `KEY` that is not UTF-8: `KEY`
    // is there too, lossy, and the bytes are not UTF-8.
    for (key, value) in &e.fields {
        let Some(of) = key.strip_suffix("_b64") else {
            continue;
        };
        let lossy = if of == "path" {
            e.path.as_deref()
        } else {
            e.str(of)
        };
        assert!(lossy.is_some(), "`{key}` without `{of}`: {line}");
        let bytes = value
            .as_str()
            .and_then(decode_b64)
            .unwrap_or_else(|| panic!("`{key}` is not base64: {line}"));
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "`{key}` for a UTF-8 value: {line}"
        );
        assert_eq!(
            log_path(&bytes),
            lossy.unwrap(),
            "`{key}` and `{of}` differ: {line}"
        );
    }
    match e.msg.as_str() {
        "tick" => {
            assert!(e.path.is_none(), "a tick has no path: {line}");
            for k in ["seq", "bytes", "errors", "elapsed_ms"] {
                assert!(e.u64(k).is_some(), "tick without numeric `{k}`: {line}");
            }
        }
        "error" => {
            assert!(e.str("op").is_some(), "error without `op`: {line}");
            assert!(e.str("error").is_some(), "error without `error`: {line}");
        }
        // A stamp folder of `--backup-keep` is no path of the roots.
        "prune" => {
            assert!(e.path.is_none(), "prune has no path: {line}");
            assert!(e.str("to").is_some(), "prune without `to`: {line}");
        }
        // Warnings about watching concern the whole run, not a path (like
        // the entries about a whole tick).
        "warn" if e.path.is_none() => {
            assert!(e.str("reason").is_some(), "warn without reason: {line}");
        }
        verb => {
            let p = e
                .path
                .as_deref()
                .unwrap_or_else(|| panic!("`{verb}` without a path: {line}"));
            assert!(
                !p.is_empty() && !p.starts_with('/') && !p.ends_with('/'),
                "path must be relative with / separators: {line}"
            );
            match verb {
                "copy" | "update" => {
                    assert!(e.u64("bytes").is_some(), "{verb} without `bytes`: {line}")
                }
                "symlink" => assert!(e.str("target").is_some(), "symlink without target: {line}"),
                "move" => {
                    let from = e.str("from");
                    assert!(
                        from.is_some_and(|f| !f.is_empty() && !f.starts_with('/')),
                        "move without a relative `from`: {line}"
                    );
                }
                "backup" => assert!(e.str("to").is_some(), "backup without `to`: {line}"),
                "link" => {
                    let to = e.str("to");
                    assert!(
                        to.is_some_and(|t| !t.is_empty() && !t.starts_with('/')),
                        "link without a relative `to`: {line}"
                    );
                }
                "skip" | "warn" => {
                    assert!(e.str("reason").is_some(), "{verb} without reason: {line}")
                }
                _ => {}
            }
        }
    }
}

pub fn parse_log(text: &str) -> Vec<Entry> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}

pub fn read_log(path: &Path) -> Vec<Entry> {
    match fs::read(path) {
        Ok(b) => parse_log(&String::from_utf8(b).expect("the JSON log is UTF-8")),
        Err(_) => Vec::new(),
    }
}

/// A finished run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub log_path: Option<PathBuf>,
    pub log: Vec<Entry>,
}

fn run_command(mut cmd: Command, log: Option<PathBuf>) -> Run {
    cmd.stdin(Stdio::null());
    let out = spawn_and_wait(cmd);
    finish(out, log)
}

fn finish(out: Output, log: Option<PathBuf>) -> Run {
    let entries = log.as_deref().map(read_log).unwrap_or_default();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        log_path: log,
        log: entries,
    }
}

/// Runs to completion, killing the process if it outlives the deadline.
fn spawn_and_wait(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn treesync");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("wait for treesync"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("treesync (pid {pid}) did not finish within 60 s");
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the run on failure.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit status\n{}",
            self.dump()
        );
        self
    }

    pub fn dump(&self) -> String {
        let log = self
            .log_path
            .as_deref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default();
        format!(
            "exit: {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}\n--- log ---\n{}",
            self.code, self.stderr, self.stdout, log
        )
    }

    /// The only `tick` entry of this run (a `--once` sync has exactly one),
    /// checked against the operation entries.
    pub fn tick(&self) -> &Entry {
        let ticks: Vec<&Entry> = self.log.iter().filter(|e| e.msg == "tick").collect();
        assert_eq!(ticks.len(), 1, "expected one tick entry\n{}", self.dump());
        let t = ticks[0];
        check_tick_counts(t, &self.log);
        t
    }

    /// `(msg, path)` of every entry that has a path, in log order.
    pub fn ops(&self) -> Vec<(String, String)> {
        self.log
            .iter()
            .filter_map(|e| e.path.as_ref().map(|p| (e.msg.clone(), p.clone())))
            .collect()
    }

    /// The `(msg, path)` set, sorted, one per line, for snapshots.
    pub fn ops_text(&self) -> String {
        let mut v = self.ops();
        v.sort();
        v.into_iter()
            .map(|(m, p)| format!("{m} {}\n", escape_name(p.as_bytes())))
            .collect()
    }

    /// Only the replica-changing operations, sorted.
    pub fn changes(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .ops()
            .into_iter()
            .filter(|(m, _)| CHANGE_VERBS.contains(&m.as_str()))
            .collect();
        v.sort();
        v
    }

    pub fn entries(&self, msg: &str) -> Vec<&Entry> {
        self.log.iter().filter(|e| e.msg == msg).collect()
    }

    pub fn find(&self, msg: &str, path: &str) -> Option<&Entry> {
        self.log.iter().find(|e| e.is(msg, path))
    }

    /// The entry `msg path`, which must be there.
    pub fn get(&self, msg: &str, path: &str) -> &Entry {
        self.find(msg, path)
            .unwrap_or_else(|| panic!("no `{msg} {path}` entry\n{}", self.dump()))
    }

    pub fn has(&self, msg: &str, path: &str) -> bool {
        self.find(msg, path).is_some()
    }

    /// Index in the log of `msg path`.
    pub fn index(&self, msg: &str, path: &str) -> usize {
        self.log
            .iter()
            .position(|e| e.is(msg, path))
            .unwrap_or_else(|| panic!("no `{msg} {path}` entry\n{}", self.dump()))
    }

    pub fn errors(&self) -> Vec<&Entry> {
        self.entries("error")
    }

    /// Asserts the log holds no `error` entry.
    pub fn no_errors(&self) -> &Run {
        assert!(
            self.errors().is_empty(),
            "unexpected errors\n{}",
            self.dump()
        );
        self
    }

    /// Asserts every given `(msg, path)` is the exact set of replica changes.
    pub fn assert_changes(&self, want: &[(&str, &str)]) {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        want.sort();
        assert_eq!(self.changes(), want, "replica changes\n{}", self.dump());
    }
}

/// The entries of the `seq`th tick (1-based): those after the previous
/// tick entry, up to and including its own tick entry.
pub fn tick_entries(log: &[Entry], seq: usize) -> Vec<Entry> {
    let mut seen = 0;
    let mut out = Vec::new();
    for e in log {
        if seen + 1 == seq {
            out.push(e.clone());
        }
        if e.msg == "tick" {
            seen += 1;
        }
    }
    out
}

/// `(msg, path)` of the operations of the `seq`th tick, sorted.
pub fn tick_ops(log: &[Entry], seq: usize) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = tick_entries(log, seq)
        .into_iter()
        .filter_map(|e| e.path.map(|p| (e.msg, p)))
        .collect();
    v.sort();
    v
}

/// Entries after the `n`th tick entry.
pub fn after_tick(log: &[Entry], n: usize) -> Vec<Entry> {
    let mut seen = 0;
    let mut out = Vec::new();
    for e in log {
        if seen >= n {
            out.push(e.clone());
        }
        if e.msg == "tick" {
            seen += 1;
        }
    }
    out
}

/// A tick's per-verb counts and bytes agree with the entries before it
/// (since the previous tick).
pub fn check_tick_counts(tick: &Entry, entries: &[Entry]) {
    let pos = entries
        .iter()
        .position(|e| std::ptr::eq(e, tick))
        .expect("tick in entries");
    let start = entries[..pos]
        .iter()
        .rposition(|e| e.msg == "tick")
        .map_or(0, |i| i + 1);
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut bytes = 0;
    for e in &entries[start..pos] {
        *counts.entry(e.msg.as_str()).or_default() += 1;
        if e.msg == "copy" || e.msg == "update" {
            bytes += e.u64("bytes").unwrap_or(0);
        }
    }
    for verb in CHANGE_VERBS.iter().chain(&["skip", "warn", "backup"]) {
        let n = counts.get(verb).copied().unwrap_or(0);
        match tick.u64(verb) {
            Some(c) => assert_eq!(c, n, "tick count `{verb}` vs entries: {tick:?}"),
            None => assert_eq!(n, 0, "tick has no `{verb}` count but {n} entries: {tick:?}"),
        }
    }
    assert_eq!(tick.u64("bytes"), Some(bytes), "tick bytes: {tick:?}");
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Milliseconds since the epoch of an RFC 3339 UTC `ts` with milliseconds.
pub fn ts_ms(ts: &str) -> i64 {
    assert!(is_rfc3339_utc_ms(ts), "bad ts {ts}");
    let n = |a: usize, b: usize| -> i64 { ts[a..b].parse().expect("digits") };
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19);
    secs * 1000 + n(20, 23)
}

/// When a tick started: its end time less its duration.
pub fn tick_start_ms(tick: &Entry) -> i64 {
    ts_ms(&tick.ts) - tick.u64("elapsed_ms").unwrap_or(0) as i64
}

// ---------------------------------------------------------------------------
// Background processes
// ---------------------------------------------------------------------------

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A treesync process running in the background.
pub struct Running {
    pub child: Option<Child>,
    pub pid: u32,
    pub log_path: PathBuf,
}

impl Running {
    pub fn start(mut cmd: Command, log: PathBuf) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn treesync");
        Running {
            pid: child.id(),
            child: Some(child),
            log_path: log,
        }
    }

    pub fn log(&self) -> Vec<Entry> {
        read_log(&self.log_path)
    }

    /// Raw log text, tolerating a half-written last line.
    fn complete_entries(&self) -> Vec<Entry> {
        let Ok(bytes) = fs::read(&self.log_path) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let upto = text.rfind('\n').map_or(0, |i| i + 1);
        parse_log(&text[..upto])
    }

    pub fn ticks(&self) -> usize {
        self.complete_entries()
            .iter()
            .filter(|e| e.msg == "tick")
            .count()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until the log holds at least `n` tick entries.
    pub fn wait_ticks(&mut self, n: usize) {
        let start = Instant::now();
        loop {
            if self.ticks() >= n {
                return;
            }
            if !self.is_running() {
                let run = self.wait();
                panic!("treesync ended before tick {n}\n{}", run.dump());
            }
            if start.elapsed() > DEADLINE {
                let run = self.kill();
                panic!("no tick {n} within {DEADLINE:?}\n{}", run.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a tick that started after this call (with a margin for
    /// filesystem events to arrive): changes made before it are in it.
    pub fn wait_fresh_tick(&mut self) {
        let after = now_ms() + 200;
        let start = Instant::now();
        loop {
            let fresh = self
                .complete_entries()
                .iter()
                .filter(|e| e.msg == "tick")
                .any(|t| tick_start_ms(t) >= after);
            if fresh {
                return;
            }
            if !self.is_running() {
                let run = self.wait();
                panic!("treesync ended before a fresh tick\n{}", run.dump());
            }
            if start.elapsed() > DEADLINE {
                let run = self.kill();
                panic!("no fresh tick within {DEADLINE:?}\n{}", run.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid, sig);
    }

    /// Waits for the process to exit (deadline, then kill -9).
    pub fn wait(&mut self) -> Run {
        let mut child = self.child.take().expect("process already waited for");
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() > DEADLINE => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("wait");
                    let run = finish(out, Some(self.log_path.clone()));
                    panic!("treesync did not exit within {DEADLINE:?}\n{}", run.dump());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("wait: {e}"),
            }
        }
        let out = child.wait_with_output().expect("collect output");
        finish(out, Some(self.log_path.clone()))
    }

    /// Sends `sig` and waits for the exit.
    pub fn stop(&mut self, sig: &str) -> Run {
        self.signal(sig);
        self.wait()
    }

    pub fn kill(&mut self) -> Run {
        self.signal("KILL");
        self.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------

pub fn is_root_user() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The prefix that runs a command as an unprivileged user when running as
/// root (where permission bits do not deny), if `setpriv` is there.
pub fn user_prefix() -> Option<Vec<&'static str>> {
    if is_root_user() && has_setpriv() {
        Some(vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
    } else {
        None
    }
}

pub const NOBODY: u32 = 65534;

/// The binary at a path the unprivileged user can reach: the build's own
/// when every folder above it lets others through, else a link (or copy)
/// of it in the temp folder.
pub fn user_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let own = PathBuf::from(bin());
        let reachable = own
            .ancestors()
            .skip(1)
            .all(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
        if reachable {
            return own;
        }
        let md = fs::metadata(&own).expect("the binary");
        let dir = std::env::temp_dir().join(format!("treesync-e2e-bin-{}", md.ino()));
        let _ = fs::create_dir(&dir);
        set_mode(&dir, 0o755);
        let there = dir.join("treesync");
        if fs::metadata(&there).map(|m| m.ino()).ok() != Some(md.ino()) {
            let staged = dir.join(format!("treesync.{}", std::process::id()));
            if fs::hard_link(&own, &staged).is_err() {
                fs::copy(&own, &staged).expect("copy the binary");
            }
            set_mode(&staged, 0o755);
            fs::rename(&staged, &there).expect("place the binary");
        }
        there
    })
    .clone()
}

/// Gives every entry at and below `root` to `uid` (group too).
pub fn chown_tree(root: &Path, uid: u32) {
    if !exists(root) {
        return;
    }
    std::os::unix::fs::lchown(root, Some(uid), Some(uid)).expect("lchown");
    for (p, _) in walk(root) {
        std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).expect("lchown");
    }
}

impl Sandbox {
    /// Runs the binary as an unprivileged user: as root through `setpriv`
    /// (both trees handed to that user first), otherwise directly. `None`
    /// when running as root without `setpriv`.
    pub fn run_as_user<S: AsRef<OsStr>>(&self, args: &[S]) -> Option<Run> {
        if !is_root_user() {
            return Some(self.run(args));
        }
        let prefix = user_prefix()?;
        set_mode(self.root(), 0o777);
        chown_tree(&self.src, NOBODY);
        chown_tree(&self.dst, NOBODY);
        Some(self.run_with_prefix(&prefix, args))
    }

    /// `--once SRC DST <extra>` as an unprivileged user.
    pub fn sync_as_user(&self, extra: &[&str]) -> Option<Run> {
        let mut args: Vec<OsString> = vec!["--once".into()];
        args.extend(extra.iter().map(OsString::from));
        args.push(self.src.clone().into());
        args.push(self.dst.clone().into());
        self.run_as_user(&args)
    }
}

pub fn has_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
