//! Running as a systemd service: the readiness protocol and the unit file.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Under `Type=notify` treesync says READY once running, WATCHDOG while
/// alive (at half `WATCHDOG_USEC`), and STOPPING at the stop signal.
#[test]
fn systemd_hears_ready_the_watchdog_and_stopping() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a\n");
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = sb.next_log();
    // systemd names the watched process in WATCHDOG_PID: the shell's pid,
    // which `exec` hands on to treesync.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
        bin(),
        "--log-format",
        "json",
        "--log-file",
    ])
    .arg(&log)
    .arg(&sb.src)
    .arg(&sb.dst)
    .arg("1")
    .env("NOTIFY_SOCKET", &socket_path)
    .env("WATCHDOG_USEC", "200000")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut r = Running::start(cmd, log);
    let mut heard = Vec::new();
    let listen_until = |want: &str, heard: &mut Vec<String>| {
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while start.elapsed() < DEADLINE {
            if heard.iter().any(|m| m.lines().any(|l| l == want)) {
                return;
            }
            if let Ok(n) = socket.recv(&mut buf) {
                heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        panic!("no {want} within {DEADLINE:?}: heard {heard:?}");
    };
    listen_until("READY=1", &mut heard);
    listen_until("WATCHDOG=1", &mut heard);
    r.wait_ticks(1);
    r.signal("TERM");
    listen_until("STOPPING=1", &mut heard);
    let run = r.wait();
    run.expect_code(0).no_errors();
    sb.assert_mirror();
}

/// The unit file in `contrib/` is one systemd accepts.
#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let sb = Sandbox::new();
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/treesync@.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    // An instance of the template, with the binary where it is built.
    let instance = sb.path("treesync@test.service");
    std::fs::write(&instance, unit.replace("/usr/local/bin/treesync", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
