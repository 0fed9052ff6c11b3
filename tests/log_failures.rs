//! A log that cannot be written: the sync goes on, standard error says
//! why, and the exit status says the log is incomplete.

mod common;

use common::mounts::Mounted;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_log_that_cannot_be_written_makes_a_once_sync_exit_3() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a\n");
    file(&sb.src, "sub/b.txt", "b\n");
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    let run = sb.run_raw(&[
        "--once".as_ref(),
        "--log-file".as_ref(),
        "/dev/full".as_ref(),
        sb.src.as_os_str(),
        sb.dst.as_os_str(),
    ]);
    assert_eq!(run.code, Some(3), "{}", run.dump());
    assert!(
        run.stderr.contains("cannot write to the log file"),
        "{}",
        run.stderr
    );
    // The sync itself went on.
    assert_eq!(read(&sb.d("sub/b.txt")), b"b\n");
}

/// A tmpfs of a few KiB, full: the log file there can be opened but not
/// written.
fn full_disk(dir: &std::path::Path) -> Result<Mounted, String> {
    let disk = Mounted::tmpfs(dir, "16k")?;
    let _ = std::fs::write(disk.dir.join("filler"), vec![0u8; 64 << 10]);
    std::fs::write(disk.dir.join("treesync.log"), b"").map_err(|e| e.to_string())?;
    Ok(disk)
}

/// `treesync --log-format json --log-file LOG SRC DST 1` in the background
/// (the sandbox's own helpers read a log of their choosing; this one may be
/// on a full disk).
fn spawn_logging_to(sb: &Sandbox, log: &std::path::Path) -> std::process::Child {
    Command::new(bin())
        .args(["--log-format", "json", "--log-file"])
        .arg(log)
        .arg(&sb.src)
        .arg(&sb.dst)
        .arg("1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn treesync")
}

/// Waits for an outcome on disk (the log may be unwritable: no line to
/// wait for).
fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_interval_run_with_a_full_log_disk_goes_on_and_exits_3() {
    let sb = Sandbox::new();
    let disk = match full_disk(&sb.path("logfs")) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: a full log disk: {why}");
            return;
        }
    };
    file(&sb.src, "first.txt", "1\n");
    let mut child = spawn_logging_to(&sb, &disk.dir.join("treesync.log"));
    until("the first copy", || exists(&sb.d("first.txt")));
    // Later ticks still sync with the log still failing.
    file(&sb.src, "second.txt", "2\n");
    until("the second copy", || exists(&sb.d("second.txt")));
    signal(child.id(), "TERM");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < DEADLINE, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(
        stderr.matches("cannot write to the log file").count(),
        1,
        "reported once while it keeps failing: {stderr}"
    );
}

#[test]
fn a_fifo_as_the_log_file_is_refused_at_once_and_never_hangs() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a\n");
    let log = fifo(sb.root(), "log.fifo");
    let run = sb.run_raw(&[
        "--once".as_ref(),
        "--log-file".as_ref(),
        log.as_os_str(),
        sb.src.as_os_str(),
        sb.dst.as_os_str(),
    ]);
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
}

#[test]
fn a_line_cut_short_by_a_full_disk_never_runs_into_the_next() {
    let sb = Sandbox::new();
    let disk = match Mounted::tmpfs(&sb.path("logfs"), "16k") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: a full log disk: {why}");
            return;
        }
    };
    for i in 0..80 {
        file(&sb.src, format!("f{i:02}"), "x\n");
    }
    // One page of room (tmpfs counts pages): the line that crosses its end
    // is cut short.
    let filler = disk.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 12 * 1024]).unwrap();
    let log = disk.dir.join("treesync.log");
    let mut child = spawn_logging_to(&sb, &log);
    until("the first sync", || exists(&sb.d("f79")));
    // Room again: the lines of the next syncs are written.
    std::fs::remove_file(&filler).unwrap();
    file(&sb.src, "later", "y\n");
    until("a line after the room came back", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"later\""))
    });
    signal(child.id(), "TERM");
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        assert!(
            line.matches("\"ts\":").count() <= 1,
            "two entries on one line: {line}"
        );
    }
    assert!(
        text.lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["path"] == "later")),
        "{text}"
    );
}
