//! Load cases, scaled down: a folder of 10,000 files, a 200-level tree, a
//! tree deeper than PATH_MAX and a 64 MiB file. Each one is synced by the
//! binary, the replica is compared with the source through directory
//! handles (full paths of the deep tree do not fit in PATH_MAX), and a
//! second run must log nothing but its `tick`. Full-size figures come from
//! `bench/load.sh`.

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use serde_json::Value;
use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_treesync");

/// One `--once` run: its exit code and the highest `VmHWM` (peak resident
/// set, KiB) seen while polling it.
struct Run {
    code: Option<i32>,
    peak_kib: u64,
    log: Vec<Value>,
}

fn sync(src: &Path, dst: &Path, log: &Path) -> Run {
    let mut child = Command::new(BIN)
        .args(["--once", "-q", "--log-format", "json", "--log-file"])
        .arg(log)
        .arg(src)
        .arg(dst)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn treesync");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let status = loop {
        if let Ok(text) = fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait().expect("wait treesync") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let log = fs::read_to_string(log)
        .expect("log file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    Run {
        code: status.code(),
        peak_kib,
        log,
    }
}

/// First sync: exit 0, replica equal to source (returns the tree's depth and
/// file count); second sync: exit 0 and only a `tick` with zero counts.
fn sync_twice(tmp: &Path, src: &Path, dst: &Path) -> (Run, usize, usize) {
    let first = sync(src, dst, &tmp.join("first.log"));
    assert_eq!(first.code, Some(0), "first sync: {:?}", first.log);
    assert!(
        first.log.iter().all(|e| e["level"] == "INFO"),
        "first sync logged a problem: {:?}",
        first
            .log
            .iter()
            .filter(|e| e["level"] != "INFO")
            .collect::<Vec<_>>()
    );
    let (depth, files) = compare_trees(src, dst);
    let second = sync(src, dst, &tmp.join("second.log"));
    assert_eq!(second.code, Some(0), "second sync: {:?}", second.log);
    assert_only_tick(&second.log);
    (first, depth, files)
}

fn assert_only_tick(log: &[Value]) {
    let others: Vec<_> = log.iter().filter(|e| e["msg"] != "tick").collect();
    assert!(
        others.is_empty(),
        "a sync with nothing to do logged {others:?}"
    );
    assert_eq!(log.len(), 1, "one tick expected: {log:?}");
    for verb in [
        "mkdir", "copy", "update", "meta", "symlink", "move", "delete", "rmdir",
    ] {
        assert_eq!(log[0][verb], 0, "tick counts {verb}: {}", log[0]);
    }
    assert_eq!(log[0]["errors"], 0, "tick: {}", log[0]);
}

// ---------------------------------------------------------------------------
// Trees through directory handles
// ---------------------------------------------------------------------------

fn open_dir(at: impl AsFd, name: &CStr) -> OwnedFd {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open folder {name:?}: {e}"))
}

fn open_root(path: &Path) -> OwnedFd {
    open_dir(
        rustix::fs::CWD,
        &CString::new(path.as_os_str().as_encoded_bytes()).unwrap(),
    )
}

fn create_file(at: impl AsFd, name: &CStr, content: &[u8]) {
    let fd = rustix::fs::openat(
        at,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap_or_else(|e| panic!("create {name:?}: {e}"));
    File::from(fd).write_all(content).expect("write");
}

/// Names in a folder, `.` and `..` left out; at a replica root also the
/// tool's own `.treesync/`.
fn names(dir: &OwnedFd, replica_root: bool) -> Vec<CString> {
    let mut out: Vec<CString> = Dir::read_from(dir)
        .expect("read folder")
        .map(|e| e.expect("folder entry").file_name().to_owned())
        .filter(|n| {
            let b = n.to_bytes();
            b != b"." && b != b".." && !(replica_root && b == b".treesync")
        })
        .collect();
    out.sort();
    out
}

fn same_content(a: OwnedFd, b: OwnedFd) -> bool {
    let (mut a, mut b) = (File::from(a), File::from(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut ba);
        if n != read_full(&mut b, &mut bb) || ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Compares two trees walked through directory handles: names, types,
/// permission bits, file sizes, mtimes (ns) and contents, link targets.
/// Returns the depth of the deepest folder and the number of files.
fn compare_trees(src: &Path, dst: &Path) -> (usize, usize) {
    let (mut depth, mut files) = (0, 0);
    let mut stack = vec![(open_root(src), open_root(dst), String::new(), 0usize)];
    while let Some((s, d, rel, level)) = stack.pop() {
        depth = depth.max(level);
        let sn = names(&s, false);
        let dn = names(&d, level == 0);
        assert_eq!(sn, dn, "entries of {rel:?} differ");
        for name in sn {
            let path = format!("{rel}/{}", name.to_string_lossy());
            let ss = rustix::fs::statat(&s, &name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let ds = rustix::fs::statat(&d, &name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let kind = FileType::from_raw_mode(ss.st_mode);
            assert_eq!(kind, FileType::from_raw_mode(ds.st_mode), "type of {path}");
            assert_eq!(ss.st_mode & 0o7777, ds.st_mode & 0o7777, "mode of {path}");
            match kind {
                FileType::Directory => {
                    stack.push((open_dir(&s, &name), open_dir(&d, &name), path, level + 1))
                }
                FileType::Symlink => assert_eq!(
                    rustix::fs::readlinkat(&s, &name, Vec::new()).unwrap(),
                    rustix::fs::readlinkat(&d, &name, Vec::new()).unwrap(),
                    "target of {path}"
                ),
                FileType::RegularFile => {
                    files += 1;
                    assert_eq!(ss.st_size, ds.st_size, "size of {path}");
                    assert_eq!(
                        (ss.st_mtime, ss.st_mtime_nsec),
                        (ds.st_mtime, ds.st_mtime_nsec),
                        "mtime of {path}"
                    );
                    let open = |at: &OwnedFd| {
                        rustix::fs::openat(
                            at,
                            &name,
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .unwrap()
                    };
                    assert!(same_content(open(&s), open(&d)), "content of {path}");
                }
                other => panic!("unexpected {other:?} at {path}"),
            }
        }
    }
    (depth, files)
}

/// Builds `levels` nested folders named by `name` through handles only,
/// with a small file at every level and a `leaf` file at the bottom.
fn build_deep(root: &Path, levels: usize, name: impl Fn(usize) -> String) {
    fs::create_dir(root).unwrap();
    let mut dir = open_root(root);
    for level in 0..levels {
        create_file(&dir, c"f", format!("level {level}\n").as_bytes());
        let n = CString::new(name(level)).unwrap();
        rustix::fs::mkdirat(&dir, &n, Mode::from_raw_mode(0o755)).unwrap();
        dir = open_dir(&dir, &n);
    }
    create_file(
        &dir,
        c"leaf",
        format!("leaf at depth {levels}\n").as_bytes(),
    );
}

fn sandbox() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("treesync-load-")
        .tempdir()
        .expect("temp dir");
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    (tmp, src, dst)
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

#[test]
fn ten_thousand_files_in_one_folder() {
    let (tmp, src, dst) = sandbox();
    let one = src.join("one");
    fs::create_dir_all(&one).unwrap();
    for i in 0..10_000usize {
        let body = vec![b'a' + (i % 26) as u8; i % 300];
        fs::write(one.join(format!("file-{i:05}.txt")), body).unwrap();
    }
    let (first, depth, files) = sync_twice(tmp.path(), &src, &dst);
    assert_eq!((depth, files), (1, 10_000));
    let copies = first.log.iter().filter(|e| e["msg"] == "copy").count();
    assert_eq!(copies, 10_000);
}

#[test]
fn tree_of_200_levels() {
    let (tmp, src, dst) = sandbox();
    build_deep(&src, 200, |level| format!("d{level:03}"));
    let (_, depth, files) = sync_twice(tmp.path(), &src, &dst);
    assert_eq!((depth, files), (200, 201));
}

#[test]
fn tree_deeper_than_path_max() {
    let (tmp, src, dst) = sandbox();
    // 300 levels of 20-byte names: paths below the root reach 6,300 bytes,
    // past PATH_MAX (4096), so the tree exists only through handles.
    build_deep(&src, 300, |level| format!("level-{level:04}-xxxxxxxxx"));
    assert_eq!(format!("level-{:04}-xxxxxxxxx", 0).len(), 20);
    let (_, depth, files) = sync_twice(tmp.path(), &src, &dst);
    assert_eq!((depth, files), (300, 301));
    // The deepest file, reached one component at a time.
    let mut dir = open_root(&dst);
    for level in 0..300 {
        dir = open_dir(
            &dir,
            &CString::new(format!("level-{level:04}-xxxxxxxxx")).unwrap(),
        );
    }
    let leaf = rustix::fs::openat(&dir, c"leaf", OFlags::RDONLY, Mode::empty()).unwrap();
    let mut text = String::new();
    File::from(leaf).read_to_string(&mut text).unwrap();
    assert_eq!(text, "leaf at depth 300\n");
}

/// 64 MiB of pseudo-random data (xorshift), so no two blocks are equal.
fn write_random(path: &Path, mib: usize, mut seed: u64) {
    let mut f = File::create(path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
}

#[test]
fn file_of_64_mib_is_streamed() {
    const MIB: usize = 64;
    let (tmp, src, dst) = sandbox();
    fs::create_dir(&src).unwrap();
    let big = src.join("big.bin");
    write_random(&big, MIB, 0x9E37_79B9_7F4A_7C15);
    let (first, _, files) = sync_twice(tmp.path(), &src, &dst);
    assert_eq!(files, 1);
    // Contents are streamed: the process never holds the file.
    eprintln!("peak RSS, copy of {MIB} MiB: {} KiB", first.peak_kib);
    assert!(first.peak_kib > 0, "no sample of the copying process");
    assert!(
        first.peak_kib < (MIB as u64 * 1024) / 2,
        "peak RSS {} KiB while copying a {MIB} MiB file",
        first.peak_kib
    );

    // 1 MiB changed in the middle, same size, new mtime: one update.
    let mut f = fs::OpenOptions::new().write(true).open(&big).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start((MIB as u64 / 2) << 20)).unwrap();
    f.write_all(&[0x5a; 1 << 20]).unwrap();
    drop(f);
    let later = filetime::FileTime::from_unix_time(1_900_000_000, 42);
    filetime::set_file_mtime(&big, later).unwrap();
    let third = sync(&src, &dst, &tmp.path().join("third.log"));
    assert_eq!(third.code, Some(0), "{:?}", third.log);
    let ops: Vec<_> = third
        .log
        .iter()
        .map(|e| e["msg"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["update", "tick"], "{:?}", third.log);
    eprintln!("peak RSS, update of {MIB} MiB: {} KiB", third.peak_kib);
    assert!(
        third.peak_kib < (MIB as u64 * 1024) / 2,
        "peak RSS {} KiB while updating a {MIB} MiB file",
        third.peak_kib
    );
    compare_trees(&src, &dst);
    let fourth = sync(&src, &dst, &tmp.path().join("fourth.log"));
    assert_eq!(fourth.code, Some(0));
    assert_only_tick(&fourth.log);
}
