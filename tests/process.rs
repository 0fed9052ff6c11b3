//! Interval mode: ticks, signals, the one-process-per-replica lock, roots
//! that vanish while running.

mod common;

use common::*;

fn small_tree(sb: &Sandbox) {
    file(&sb.src, "a.txt", "alpha\n");
    file(&sb.src, "b.txt", "bravo\n");
    file(&sb.src, "dir/c.txt", "charlie\n");
    file(&sb.src, "dir/sub/deep.txt", "deep\n");
}

fn has(entries: &[Entry], msg: &str, path: &str) -> bool {
    entries.iter().any(|e| e.is(msg, path))
}

/// Ticks are numbered 1, 2, 3... and each agrees with its entries.
fn check_ticks(log: &[Entry]) {
    let ticks: Vec<&Entry> = log.iter().filter(|e| e.msg == "tick").collect();
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(t.u64("seq"), Some(i as u64 + 1), "tick numbering: {t:?}");
        check_tick_counts(t, log);
    }
    // Never two ticks at once: each starts after the previous one ended
    // (a millisecond of rounding either way).
    for w in ticks.windows(2) {
        assert!(
            tick_start_ms(w[1]) + 2 >= ts_ms(&w[0].ts),
            "ticks overlap: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

fn follows_changes(extra: &[&str]) {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", extra);
    r.wait_ticks(1);
    sb.assert_mirror();
    let n = r.ticks();
    let first = tick_ops(&r.log(), 1);
    assert!(
        first.contains(&("copy".into(), "dir/sub/deep.txt".into())),
        "{first:?}"
    );

    file(&sb.src, "a.txt", "alpha, longer now\n");
    file(&sb.src, "new.txt", "new\n");
    remove(&sb.s("b.txt"));
    file(&sb.src, "newdir/x.txt", "x\n");
    file_with(
        &sb.src,
        "dir/sub/deep.txt",
        "DEEP\n",
        0o600,
        (1_700_000_000, 5),
    );
    set_mtime(&sb.s("dir/c.txt"), (1_700_000_001, 6));

    r.wait_fresh_tick();
    sb.assert_mirror();
    let run = r.stop("INT");
    run.expect_code(0);
    let later = after_tick(&run.log, n);
    for (m, p) in [
        ("update", "a.txt"),
        ("copy", "new.txt"),
        ("delete", "b.txt"),
        ("mkdir", "newdir"),
        ("copy", "newdir/x.txt"),
        ("update", "dir/sub/deep.txt"),
        ("meta", "dir/c.txt"),
    ] {
        assert!(
            has(&later, m, p),
            "no `{m} {p}` after tick {n}\n{}",
            run.dump()
        );
    }
    assert_eq!(
        run.log.last().map(|e| e.msg.as_str()),
        Some("tick"),
        "the log ends with the last tick (flushed on stop)\n{}",
        run.dump()
    );
    check_ticks(&run.log);
}

#[test]
fn interval_mode_follows_changes_and_stops_on_sigint() {
    follows_changes(&[]);
}

#[test]
fn interval_mode_without_watching_follows_changes() {
    follows_changes(&["--no-watch"]);
}

#[test]
fn sigterm_stops_an_interval_run_with_status_zero() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(2);
    let run = r.stop("TERM");
    run.expect_code(0);
    assert_eq!(run.log.last().map(|e| e.msg.as_str()), Some("tick"));
    check_ticks(&run.log);
    sb.assert_mirror();
}

/// A hang-up never ends the run; it opens the log file again by path, as
/// logrotate expects after renaming it.
#[test]
fn a_hang_up_does_not_end_an_interval_run_and_opens_the_log_again() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let rotated = r.log_path.with_extension("rotated");
    std::fs::rename(&r.log_path, &rotated).unwrap();
    r.signal("HUP");
    file(&sb.src, "after-hangup.txt", "still mirrored\n");
    r.wait_fresh_tick();
    assert!(r.is_running(), "a hang-up ended the run");
    let run = r.stop("TERM");
    run.expect_code(0);
    assert!(run.stderr.contains("hang-up signal"), "{}", run.dump());
    // The lines after the hang-up are in a new file at the path.
    assert!(run.has("copy", "after-hangup.txt"), "{}", run.dump());
    let old = read_log(&rotated);
    assert!(old.iter().any(|e| e.msg == "tick"));
    assert!(!old
        .iter()
        .any(|e| e.path.as_deref() == Some("after-hangup.txt")));
    sb.assert_mirror();
}

#[test]
fn the_log_file_is_rotated_past_its_size() {
    let sb = Sandbox::new();
    for i in 0..60 {
        file(&sb.src, format!("f{i:02}"), "x\n");
    }
    let run = sb.sync(&["--log-max-size", "1K"]);
    run.expect_code(0).no_errors();
    // 62 lines of about 60 bytes: rotated at each KiB, five kept.
    let path = run.log_path.clone().unwrap();
    let numbered = |n: u32| {
        let mut p = path.clone().into_os_string();
        p.push(format!(".{n}"));
        std::path::PathBuf::from(p)
    };
    for n in 1..=5 {
        let len = std::fs::metadata(numbered(n)).map(|m| m.len());
        assert!(
            len.as_ref().is_ok_and(|&l| l <= 1024 && l > 0),
            ".{n}: {len:?}"
        );
    }
    assert!(!numbered(6).exists());
    assert_eq!(run.log.last().map(|e| e.msg.as_str()), Some("tick"));
    let bad = sb.sync(&["--log-max-size", "lots"]);
    bad.expect_code(2);
}

#[test]
fn watched_ticks_report_their_mode() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    file(&sb.src, "dir/sub/more.txt", "more\n");
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0);
    let ticks = run.entries("tick");
    assert!(
        ticks.iter().any(|t| t.str("mode") == Some("incremental")),
        "watching never narrowed a tick\n{}",
        run.dump()
    );
    assert_eq!(
        ticks[0].str("mode"),
        Some("full"),
        "the first tick is a full scan"
    );
    for t in &ticks {
        assert!(
            matches!(t.str("mode"), Some("full" | "incremental")),
            "tick without a valid mode: {t:?}"
        );
        assert!(
            t.u64("rescanned").is_some(),
            "tick without `rescanned`: {t:?}"
        );
    }
    sb.assert_mirror();
}

#[test]
fn valid_intervals_are_accepted() {
    for interval in ["90", "5m", "1h30m", "60s"] {
        let sb = Sandbox::new();
        small_tree(&sb);
        let mut r = sb.spawn_interval(interval, &[]);
        r.wait_ticks(1);
        let run = r.stop("INT");
        run.expect_code(0);
        assert_eq!(
            run.entries("tick").len(),
            1,
            "interval {interval}\n{}",
            run.dump()
        );
        sb.assert_mirror();
    }
}

#[test]
fn a_second_process_on_the_same_replica_is_refused() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut first = sb.spawn_interval("5m", &[]);
    first.wait_ticks(1);

    file(&sb.src, "later.txt", "written while the first one runs\n");
    let second = sb.sync(&[]);
    second.expect_code(1);
    assert!(
        second.stderr.contains(&first.pid.to_string()),
        "the message names the running process (pid {})\n{}",
        first.pid,
        second.dump()
    );
    assert!(!exists(&sb.d("later.txt")), "the refused run wrote nothing");
    // Another source into the same replica is refused as well.
    let other = sb.path("other-src");
    file(&other, "z.txt", "z");
    let third = sb.run(&["--once".as_ref(), other.as_os_str(), sb.dst.as_os_str()]);
    third.expect_code(1);
    assert!(!exists(&sb.d("z.txt")));

    // The same replica through a link is the same replica.
    let alias = symlink(sb.root(), "dst-alias", &sb.dst);
    let fourth = sb.run(&["--once".as_ref(), sb.src.as_os_str(), alias.as_os_str()]);
    fourth.expect_code(1);
    assert!(!exists(&sb.d("later.txt")));

    first.stop("INT").expect_code(0);
    // Released on exit.
    sb.sync(&[]).expect_code(0);
    assert!(exists(&sb.d("later.txt")));
}

#[test]
fn a_lock_left_by_a_killed_process_does_not_block() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut first = sb.spawn_interval("5m", &[]);
    first.wait_ticks(1);
    first.kill();
    file(&sb.src, "later.txt", "l");
    sb.sync(&[]).expect_code(0);
    sb.assert_mirror();
}

#[test]
fn a_vanished_source_logs_errors_and_deletes_nothing() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let before = listing(&sb.dst);
    let n = r.ticks();
    std::fs::rename(&sb.src, sb.path("src.gone")).unwrap();
    r.wait_fresh_tick();
    assert!(r.is_running(), "the process keeps running");
    assert_same_nodes(&before, &listing(&sb.dst), "replica before (-) / after (+)");
    let run = r.stop("INT");
    run.expect_code(0);
    let later = after_tick(&run.log, n);
    let errors: Vec<&Entry> = later.iter().filter(|e| e.msg == "error").collect();
    assert!(
        !errors.is_empty(),
        "each tick logs an error\n{}",
        run.dump()
    );
    assert!(
        errors.iter().all(|e| e.path.is_none()),
        "a vanished root has no path"
    );
    assert!(!later.iter().any(|e| CHANGE_VERBS.contains(&e.msg.as_str())));
}

#[test]
fn a_vanished_replica_is_not_recreated() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let n = r.ticks();
    std::fs::rename(&sb.dst, sb.path("dst.gone")).unwrap();
    file(&sb.src, "new.txt", "n");
    r.wait_fresh_tick();
    assert!(r.is_running(), "the process keeps running");
    assert!(
        !exists(&sb.dst),
        "a vanished replica root is never recreated"
    );
    let gone = sb.path("dst.gone");
    assert!(
        !exists(&gone.join("new.txt")),
        "nothing written through the old handle"
    );
    let run = r.stop("INT");
    run.expect_code(0);
    let later = after_tick(&run.log, n);
    assert!(later.iter().any(|e| e.msg == "error"), "{}", run.dump());
    assert!(!later.iter().any(|e| CHANGE_VERBS.contains(&e.msg.as_str())));
}

#[test]
fn a_guard_trip_in_interval_mode_still_stops_with_zero() {
    let sb = Sandbox::new();
    sb.mirror_then_remove_15_of_20();
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(2);
    let run = r.stop("INT");
    run.expect_code(0);
    assert!(
        run.errors().iter().any(|e| e.str("op") == Some("guard")),
        "{}",
        run.dump()
    );
    assert!(exists(&sb.d("f00.txt")));
    assert!(run.entries("delete").is_empty());
}

#[test]
fn interval_mode_sees_files_in_new_and_moved_folders() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    dir(&sb.src, "fresh");
    r.wait_fresh_tick();
    sb.assert_mirror();
    // A file in the folder created since the last tick.
    file(&sb.src, "fresh/inner.txt", "inner\n");
    file(&sb.src, "fresh/deeper/more.txt", "more\n");
    r.wait_fresh_tick();
    sb.assert_mirror();
    // A folder moved within the source, then changed at its new place.
    std::fs::rename(sb.s("dir"), sb.s("fresh/moved")).unwrap();
    r.wait_fresh_tick();
    sb.assert_mirror();
    file(&sb.src, "fresh/moved/sub/after-move.txt", "after\n");
    r.wait_fresh_tick();
    sb.assert_mirror();
    let run = r.stop("INT");
    run.expect_code(0);
    check_ticks(&run.log);
}

#[test]
fn a_log_file_inside_the_source_is_never_mirrored_in_interval_mode() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let log = sb.s("logs/treesync.jsonl");
    dir(&sb.src, "logs");
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--log-file")
        .arg(&log)
        .arg("--log-format")
        .arg("json")
        .arg(&sb.src)
        .arg(&sb.dst)
        .arg("1");
    let mut r = Running::start(cmd, log.clone());
    r.wait_ticks(3);
    let run = r.stop("INT");
    run.expect_code(0);
    assert!(exists(&sb.d("logs")));
    assert!(!exists(&sb.d("logs/treesync.jsonl")));
    assert!(
        !run.log
            .iter()
            .any(|e| e.path.as_deref() == Some("logs/treesync.jsonl")),
        "{}",
        run.dump()
    );
    // After the first tick nothing changes (the log growing is not a change).
    let later = after_tick(&run.log, 1);
    assert!(
        !later.iter().any(|e| CHANGE_VERBS.contains(&e.msg.as_str())
            && e.path.as_deref() != Some("logs")
            && e.path.as_deref() != Some(".")),
        "{}",
        run.dump()
    );
}

#[test]
fn changed_ignore_rules_take_effect_in_interval_mode() {
    let sb = Sandbox::new();
    small_tree(&sb);
    file(&sb.src, ".syncignore", "*.log\n");
    file(&sb.src, "deep/dir/old.log", "excluded from the start\n");
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    assert!(!exists(&sb.d("deep/dir/old.log")));
    assert!(exists(&sb.d("deep/dir")));

    // A new rule: a new matching file is left out, the synced one kept.
    file(&sb.src, "dir/.syncignore", "*.txt\n");
    file(&sb.src, "dir/new.txt", "new, excluded\n");
    r.wait_fresh_tick();
    assert!(!exists(&sb.d("dir/new.txt")));
    assert!(
        exists(&sb.d("dir/c.txt")),
        "an excluded entry already there is kept"
    );

    // Rules removed: what they excluded appears, though it did not change.
    remove(&sb.s(".syncignore"));
    remove(&sb.s("dir/.syncignore"));
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0);
    assert!(exists(&sb.d("deep/dir/old.log")), "{}", run.dump());
    assert!(exists(&sb.d("dir/new.txt")), "{}", run.dump());
    sb.assert_mirror();
}

fn repairs_the_replica(extra: &[&str]) {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", extra);
    r.wait_ticks(1);
    // The replica changed behind treesync's back.
    remove(&sb.d("dir/sub/deep.txt"));
    file(&sb.dst, "intruder.txt", "not in the source");
    let start = std::time::Instant::now();
    while start.elapsed() < DEADLINE {
        r.wait_fresh_tick();
        if exists(&sb.d("dir/sub/deep.txt")) && !exists(&sb.d("intruder.txt")) {
            break;
        }
    }
    let run = r.stop("INT");
    run.expect_code(0);
    sb.assert_mirror();
}

#[test]
fn without_watching_each_tick_repairs_the_replica() {
    repairs_the_replica(&["--no-watch"]);
}

#[test]
fn watching_repairs_the_replica_from_its_events_alone() {
    // The default rescan period is an hour: only the replica's own events
    // can bring the repair within the test's deadline.
    repairs_the_replica(&[]);
}

#[test]
fn the_periodic_rescan_repairs_the_replica() {
    repairs_the_replica(&["--rescan", "2s"]);
}

/// A tmpfs mounted on a folder for the length of a test (root only).
struct Mount(std::path::PathBuf, bool);

impl Mount {
    fn tmpfs(at: &std::path::Path) -> Option<Mount> {
        if !is_root_user() {
            return None;
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "treesync-test"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf(), true))
    }

    /// Lazy unmount: the folder shows what is under it again at once.
    fn unmount(&mut self) {
        if self.1 {
            let st = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status()
                .unwrap();
            assert!(st.success(), "umount failed");
            self.1 = false;
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn an_unmounted_source_never_wipes_the_replica() {
    let sb = Sandbox::new();
    let Some(mut m) = Mount::tmpfs(&sb.src) else {
        eprintln!("skipped: cannot mount");
        return;
    };
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let before = listing(&sb.dst);
    let n = r.ticks();
    m.unmount(); // SOURCE is now the empty folder below the mount point
    r.wait_fresh_tick();
    assert!(r.is_running());
    let after = listing(&sb.dst);
    let run = r.stop("INT");
    run.expect_code(0);
    assert_same_nodes(&before, &after, "replica before (-) / after (+)");
    let later = after_tick(&run.log, n);
    assert!(later.iter().any(|e| e.msg == "error"), "{}", run.dump());
    assert!(!later.iter().any(|e| CHANGE_VERBS.contains(&e.msg.as_str())));
}

#[test]
fn an_unmounted_replica_is_not_written_to() {
    let sb = Sandbox::new();
    std::fs::create_dir(&sb.dst).unwrap();
    let Some(mut m) = Mount::tmpfs(&sb.dst) else {
        eprintln!("skipped: cannot mount");
        return;
    };
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let n = r.ticks();
    m.unmount(); // REPLICA is now the empty folder below the mount point
    file(&sb.src, "new.txt", "n");
    r.wait_fresh_tick();
    assert!(r.is_running());
    let run = r.stop("INT");
    run.expect_code(0);
    let under: Vec<_> = std::fs::read_dir(&sb.dst).unwrap().flatten().collect();
    assert!(under.is_empty(), "written under the mount point: {under:?}");
    let later = after_tick(&run.log, n);
    assert!(later.iter().any(|e| e.msg == "error"), "{}", run.dump());
}

#[test]
fn watched_metadata_changes_of_files_folders_and_the_root_are_seen() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    set_mode(&sb.s("a.txt"), 0o600);
    set_mtime(&sb.s("dir/c.txt"), (1_700_000_000, 1));
    set_mode(&sb.s("dir/sub"), 0o700);
    set_mtime(&sb.s("dir"), (1_600_000_000, 2));
    set_mode(&sb.src, 0o750);
    set_mtime(&sb.src, (1_600_000_000, 3));
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0);
    sb.assert_mirror();
    for p in ["a.txt", "dir/c.txt", "dir/sub", "dir"] {
        assert!(run.has("meta", p), "no meta {p}\n{}", run.dump());
    }
}

#[test]
fn watched_folders_moved_in_and_out_of_the_source_are_seen() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let outside = sb.path("outside");
    file(&outside, "tree/x/y/f.txt", "moved in\n");
    file(&outside, "tree/g.txt", "g\n");
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    std::fs::rename(outside.join("tree"), sb.s("tree")).unwrap();
    std::fs::rename(sb.s("dir"), outside.join("dir")).unwrap();
    r.wait_fresh_tick();
    sb.assert_mirror();
    // Changes below the folder that came in are seen too.
    file(&sb.src, "tree/x/y/f.txt", "moved in, then changed\n");
    file(&sb.src, "tree/x/y/new.txt", "new\n");
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0);
    sb.assert_mirror();
}

#[test]
fn watched_bursts_of_new_folders_are_followed() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    for i in 0..5 {
        file(&sb.src, format!("burst/x{i}/y/z/f.txt"), format!("{i}\n"));
    }
    r.wait_fresh_tick();
    sb.assert_mirror();
    // The folders created in the burst are watched: later changes show.
    for i in 0..5 {
        file(
            &sb.src,
            format!("burst/x{i}/y/z/f.txt"),
            format!("{i}, changed\n"),
        );
        file(&sb.src, format!("burst/x{i}/y/z/g.txt"), "g\n");
    }
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0);
    sb.assert_mirror();
    check_ticks(&run.log);
}

#[test]
fn one_source_can_feed_two_replicas_at_once() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let dst2 = sb.path("dst2");
    let mut a = sb.spawn_interval("1", &[]);
    let mut b = sb.spawn(&[
        sb.src.as_os_str(),
        dst2.as_os_str(),
        std::ffi::OsStr::new("1"),
    ]);
    a.wait_ticks(1);
    b.wait_ticks(1);
    file(&sb.src, "later.txt", "later\n");
    a.wait_fresh_tick();
    b.wait_fresh_tick();
    a.stop("INT").expect_code(0);
    b.stop("INT").expect_code(0);
    sb.assert_mirror();
    assert_same_tree(&sb.src, &dst2);
}

#[test]
fn interval_dry_run_never_creates_the_replica() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &["--dry-run"]);
    r.wait_ticks(2);
    let run = r.stop("INT");
    run.expect_code(0);
    assert!(!exists(&sb.dst));
    assert!(run
        .log
        .iter()
        .filter(|e| e.path.is_some())
        .all(Entry::dry_run));
    assert!(run.log.iter().any(|e| e.is("copy", "a.txt")));
}

#[test]
fn interval_checksum_catches_a_hidden_change_between_ticks() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &["--checksum"]);
    r.wait_ticks(1);
    let n = r.ticks();
    let t = mtime_of(&sb.s("a.txt"));
    rewrite(&sb.s("a.txt"), "ALPHA\n");
    set_mtime(&sb.s("a.txt"), t);
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0);
    assert!(
        has(&after_tick(&run.log, n), "update", "a.txt"),
        "{}",
        run.dump()
    );
    sb.assert_mirror();
}

#[test]
fn tick_timestamps_are_the_current_utc_time() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let before = now_ms();
    // A local time zone far from UTC must not leak into `ts`.
    let run = sb.run_with_env(
        &[("TZ", std::ffi::OsStr::new("IST-5:30"))],
        &["--once".as_ref(), sb.src.as_os_str(), sb.dst.as_os_str()],
    );
    let after = now_ms();
    run.expect_code(0);
    for e in &run.log {
        let t = ts_ms(&e.ts);
        assert!(
            t >= before - 1 && t <= after + 1,
            "ts {} not in the run",
            e.ts
        );
    }
}

#[test]
fn text_log_lines_start_with_a_utc_timestamp() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let log = sb.path("text.log");
    let before = now_ms();
    let mut cmd = std::process::Command::new(bin());
    cmd.env("TZ", "IST-5:30")
        .stderr(std::process::Stdio::null())
        .arg("--once")
        .arg("--log-file")
        .arg(&log)
        .arg(&sb.src)
        .arg(&sb.dst);
    let st = cmd.status().unwrap();
    let after = now_ms();
    assert!(st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines() {
        let ts = line.split_whitespace().next().unwrap_or("");
        assert_eq!(
            ts.len(),
            24,
            "line does not start with an RFC 3339 ts: {line}"
        );
        let t = ts_ms(ts);
        assert!(t >= before - 1 && t <= after + 1, "ts not UTC now: {line}");
    }
}

#[test]
fn a_replica_folder_swapped_for_a_link_while_watching_is_not_written_through() {
    let sb = Sandbox::new();
    small_tree(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let outside = sb.path("outside");
    file(&outside, "c.txt", "outside c\n");
    file(&outside, "sub/deep.txt", "outside deep\n");
    let before = identities(&outside);
    remove(&sb.d("dir"));
    symlink(&sb.dst, "dir", &outside);
    // A change in the source below that folder.
    file(&sb.src, "dir/c.txt", "charlie, changed\n");
    file(&sb.src, "dir/sub/new.txt", "new\n");
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    let run = r.stop("INT");
    run.expect_code(0);
    assert_eq!(
        identities(&outside),
        before,
        "written through a link\n{}",
        run.dump()
    );
    sb.assert_mirror();
}

#[test]
fn a_stale_lock_naming_a_live_unrelated_process_does_not_block() {
    // After a crash and a reboot the pid in a stale lock may belong to
    // another process; only a running treesync holds the replica.
    let sb = Sandbox::new();
    small_tree(&sb);
    sb.sync(&[]).expect_code(0);
    let state = sb.d(".treesync");
    let me = std::process::id().to_string();
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        let name = e.file_name();
        if e.file_type().unwrap().is_file() && name.to_string_lossy().contains("lock") {
            std::fs::write(e.path(), format!("{me}\n")).unwrap();
        }
    }
    file(&sb.src, "later.txt", "l");
    let run = sb.sync(&[]);
    run.expect_code(0);
    sb.assert_mirror();
}
