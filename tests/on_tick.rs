//! `--on-tick CMD`: the command after each sync, its input, its
//! environment, and what becomes of one that fails or hangs.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn tick(log: &[Entry]) -> &Entry {
    log.iter().find(|e| e.msg == "tick").expect("a tick entry")
}

fn warns(log: &[Entry]) -> Vec<String> {
    log.iter()
        .filter(|e| e.msg == "warn")
        .map(|e| e.str("reason").unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_command_gets_the_tick_entry_as_json_and_the_environment() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    file(&sb.src, "dir/b.txt", "bravo\n");
    let (input, env) = (sb.path("input.json"), sb.path("env"));
    let cmd = format!(
        "cat > '{}'; echo \"$TREESYNC_SEQ $TREESYNC_ERRORS $TREESYNC_EXIT\" > '{}'",
        input.display(),
        env.display()
    );
    let run = sb.sync(&["--on-tick", &cmd]);
    run.expect_code(0);
    sb.assert_mirror();
    let got: serde_json::Map<String, Value> =
        serde_json::from_slice(&read(&input)).expect("one JSON object");
    let tick = tick(&run.log);
    // The tick entry's keys, in its order; the time so far when it ran.
    let keys: Vec<&String> = got.keys().collect();
    let expected: Vec<&String> = tick.fields.keys().collect();
    assert_eq!(keys, expected);
    for (key, value) in &got {
        if key != "elapsed_ms" {
            assert_eq!(Some(value), tick.fields.get(key), "{key}");
        }
    }
    assert!(got["elapsed_ms"].as_u64() <= tick.u64("elapsed_ms"));
    assert_eq!(
        (got["copy"].as_u64(), got["mkdir"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(String::from_utf8(read(&env)).unwrap(), "1 0 0\n");
}

#[test]
fn the_exit_status_in_the_environment_is_that_of_the_sync() {
    let sb = Sandbox::new();
    sb.mirror_then_remove_15_of_20();
    let out = sb.path("exit");
    let cmd = format!("echo $TREESYNC_EXIT $TREESYNC_ERRORS > '{}'", out.display());
    sb.sync(&["--on-tick", &cmd]).expect_code(4);
    assert_eq!(String::from_utf8(read(&out)).unwrap(), "4 1\n");
}

#[test]
fn watched_ticks_give_mode_and_rescanned_and_every_tick_runs_it() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    let out = sb.path("ticks");
    let cmd = format!("cat >> '{0}'; echo >> '{0}'", out.display());
    let mut running = sb.spawn_interval("1", &["--on-tick", &cmd]);
    running.wait_ticks(2);
    let run = running.stop("INT");
    run.expect_code(0);
    let text = String::from_utf8(read(&out)).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(lines.len() >= 2, "{text}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"].as_u64(), Some(i as u64 + 1), "{text}");
        assert!(
            line["mode"].is_string() && line["rescanned"].is_u64(),
            "{text}"
        );
    }
    assert_eq!(lines[0]["mode"], "full");
}

#[test]
fn a_failing_command_is_a_warn_and_the_sync_goes_on() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    let run = sb.sync(&["--on-tick", "echo oops >&2; exit 5"]);
    run.expect_code(0);
    sb.assert_mirror();
    assert_eq!(
        warns(&run.log),
        ["--on-tick command exited with status 5"],
        "{}",
        run.dump()
    );
    assert_eq!(tick(&run.log).u64("warn"), Some(1));
    assert!(run.stderr.contains("oops"), "{}", run.dump());
}

#[test]
fn a_command_that_hangs_is_cut_at_the_time_out() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    let t0 = Instant::now();
    let run = sb.sync(&["--on-tick", "sleep 30", "--on-tick-timeout", "1"]);
    run.expect_code(0);
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(
        warns(&run.log),
        ["--on-tick command timed out after 1s: killed"],
        "{}",
        run.dump()
    );
    sb.assert_mirror();
}

#[test]
fn ctrl_c_stops_the_run_while_the_command_hangs() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    let started = sb.path("started");
    let cmd = format!("touch '{}'; sleep 30", started.display());
    let mut running = sb.spawn_interval("60", &["--on-tick", &cmd]);
    let t0 = Instant::now();
    while !exists(&started) {
        assert!(t0.elapsed() < DEADLINE, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let run = running.stop("INT");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    run.expect_code(0);
    let reasons = warns(&run.log);
    assert!(
        reasons.iter().any(|r| r.contains("stopped")),
        "{}",
        run.dump()
    );
    assert_eq!(tick(&run.log).u64("seq"), Some(1));
}
