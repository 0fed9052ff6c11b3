//! `--config FILE`: several folder pairs in one process, one log, one
//! signal for all.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file with two pairs: the sandbox's own, and `s2` into `r2`.
fn two_pairs(sb: &Sandbox, interval: Option<&str>) -> PathBuf {
    let q = |p: &Path| format!("{:?}", p.to_str().unwrap());
    let interval = interval.map_or(String::new(), |i| format!("interval = {i}\n"));
    let text = format!(
        "checksum = true\n\n[[sync]]\nname = \"first\"\nsource = {}\nreplica = {}\n{interval}\n[[sync]]\nname = \"second\"\nsource = {}\nreplica = {}\n{interval}",
        q(&sb.src),
        q(&sb.dst),
        q(&sb.path("s2")),
        q(&sb.path("r2")),
    );
    let path = sb.path("pairs.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn with_config(sb: &Sandbox, file: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["--log-format", "json", "--log-file"])
        .arg(log)
        .arg("--config")
        .arg(file);
    cmd.current_dir(sb.root());
    cmd
}

#[test]
fn two_pairs_converge_in_one_process_and_one_log() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "first pair\n");
    file(&sb.path("s2"), "d/b.txt", "second pair\n");
    let pairs = two_pairs(&sb, None);
    let log = sb.next_log();
    let status = with_config(&sb, &pairs, &log).output().unwrap().status;
    assert_eq!(status.code(), Some(0));
    sb.assert_mirror();
    assert_same_tree(&sb.path("s2"), &sb.path("r2"));
    let entries = read_log(&log);
    let pair_of = |msg: &str, path: &str| {
        entries
            .iter()
            .find(|e| e.msg == msg && e.path.as_deref() == Some(path))
            .and_then(|e| e.str("pair").map(str::to_string))
    };
    assert_eq!(pair_of("copy", "a.txt").as_deref(), Some("first"));
    assert_eq!(pair_of("copy", "d/b.txt").as_deref(), Some("second"));
    let ticks: Vec<_> = entries.iter().filter(|e| e.msg == "tick").collect();
    assert_eq!(ticks.len(), 2);
}

#[test]
fn one_signal_stops_every_pair_of_an_interval_run() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a\n");
    file(&sb.path("s2"), "b.txt", "b\n");
    let pairs = two_pairs(&sb, Some("1"));
    let log = sb.next_log();
    let mut r = Running::start(with_config(&sb, &pairs, &log), log);
    r.wait_ticks(2);
    file(&sb.src, "later-1.txt", "x\n");
    file(&sb.path("s2"), "later-2.txt", "y\n");
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    let run = r.stop("TERM");
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert_same_tree(&sb.path("s2"), &sb.path("r2"));
}

#[test]
fn a_bad_file_or_overlapping_pairs_are_a_usage_error() {
    let sb = Sandbox::new();
    dir(&sb.src, "");
    let bad = sb.path("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[[sync]]\nsource = {:?}\nreplica = {:?}\nno-such-option = true\n",
            sb.src.to_str().unwrap(),
            sb.dst.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = with_config(&sb, &bad, &sb.next_log()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1") && err.contains("no-such-option"),
        "{err}"
    );
    assert!(!exists(&sb.dst));

    // The second pair's replica inside the first's source.
    let q = |p: &Path| format!("{:?}", p.to_str().unwrap());
    let overlap = sb.path("overlap.toml");
    std::fs::write(
        &overlap,
        format!(
            "[[sync]]\nsource = {}\nreplica = {}\n[[sync]]\nsource = {}\nreplica = {}\n",
            q(&sb.src),
            q(&sb.dst),
            q(&sb.path("s2")),
            q(&sb.src.join("inside")),
        ),
    )
    .unwrap();
    dir(&sb.path("s2"), "");
    let out = with_config(&sb, &overlap, &sb.next_log()).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlap"));
    assert!(!exists(&sb.dst) && !exists(&sb.src.join("inside")));
}
