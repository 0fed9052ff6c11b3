//! End-to-end: a replica in an S3 bucket, on moto's S3 server (the real
//! protocol on 127.0.0.1, no mock of it), read back with rclone where it is
//! installed. The request log of the server says what each sync cost.

mod common;

use common::servers::Moto;
use common::{dir, file, file_with, rewrite, symlink, Run, Sandbox};
use std::ffi::OsStr;
use std::process::Command;

/// One bucket on one server, and where the records of the replica live.
struct Bucket {
    moto: Moto,
    url: String,
    state: tempfile::TempDir,
}

impl Bucket {
    fn new(bucket: &str, prefix: &str) -> Option<Bucket> {
        let moto = Moto::start()?;
        moto.create_bucket(bucket);
        Some(Bucket {
            url: format!("s3://{bucket}/{prefix}"),
            moto,
            state: tempfile::tempdir().expect("state folder"),
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.moto.env();
        env.push((
            "XDG_STATE_HOME",
            self.state.path().to_string_lossy().into_owned(),
        ));
        env
    }

    /// `treesync --once <extra> --s3-endpoint E SRC s3://...`.
    fn sync(&self, sb: &Sandbox, extra: &[&str]) -> Run {
        let endpoint = self.moto.endpoint();
        let src = sb.src.to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec!["--once", "--s3-endpoint", &endpoint];
        args.extend(extra);
        args.push(&src);
        args.push(&self.url);
        let env = self.env();
        let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
        sb.run_with_env(&env, &args)
    }

    /// Requests since the last call, as `METHOD path` without queries'
    /// upload ids, one per line (the lock object's are left out).
    fn requests(&self) -> Vec<String> {
        let seen = self.moto.requests();
        self.moto.reset_requests();
        seen.into_iter()
            .map(|(m, p)| format!("{m} {p}"))
            .filter(|r| !r.contains("/.treesync/lock"))
            .collect()
    }

    /// rclone with a remote `moto:` for this server, `stdin` fed to it;
    /// `None` where rclone is not installed. Its requests are not counted.
    fn rclone(&self, args: &[&str], stdin: &[u8]) -> Option<String> {
        use std::io::Write;
        let mut cmd = Command::new("rclone");
        cmd.args(args);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        // Debian's rclone 1.60 cannot use a custom CA bundle with its own
        // transport, and the endpoint is plain HTTP anyway.
        cmd.env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG_MOTO_TYPE", "s3")
            .env("RCLONE_CONFIG_MOTO_PROVIDER", "Other")
            .env("RCLONE_CONFIG_MOTO_ENV_AUTH", "true")
            .env("RCLONE_CONFIG_MOTO_REGION", "us-east-1")
            .env("RCLONE_CONFIG_MOTO_ENDPOINT", self.moto.endpoint())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(_) => {
                eprintln!("skipped: rclone not installed");
                return None;
            }
        };
        let mut input = child.stdin.take().expect("rclone's stdin");
        input.write_all(stdin).expect("write to rclone");
        drop(input);
        let out = child.wait_with_output().expect("rclone ran");
        assert!(
            out.status.success(),
            "rclone {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.moto.reset_requests();
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The replica's address for rclone.
    fn rclone_url(&self) -> String {
        format!(
            "moto:{}",
            self.url.strip_prefix("s3://").expect("an s3 url")
        )
    }

    /// `rclone lsl` of the replica: `size mtime path` lines, sorted by
    /// path.
    fn rclone_lsl(&self) -> Option<String> {
        let out = self.rclone(&["lsl", &self.rclone_url()], b"")?;
        let mut lines: Vec<String> = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        lines.sort_by(|a, b| a.rsplit(' ').next().cmp(&b.rsplit(' ').next()));
        Some(lines.join("\n"))
    }
}

/// Content and request kinds of a run, where the exact requests vary
/// (part numbers, upload ids): `METHOD key` with the query cut.
fn kinds(requests: &[String]) -> Vec<String> {
    let mut v: Vec<String> = requests
        .iter()
        .map(|r| match r.split_once('?') {
            Some((head, q)) if q.starts_with("list-type") => format!("{head}?list"),
            Some((head, q)) if q.starts_with("uploads") => format!("{head}?uploads"),
            Some((head, q)) if q.starts_with("partNumber") => format!("{head}?part"),
            Some((head, q)) if q.starts_with("uploadId") => format!("{head}?complete"),
            Some((head, _)) => head.to_string(),
            None => r.clone(),
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn tree(sb: &Sandbox) {
    file(&sb.src, "a.txt", "alpha");
    file(&sb.src, "d/b.txt", "bravo");
    // Larger than one part: a multipart upload.
    let big: Vec<u8> = (0..9 << 20).map(|i: u32| (i % 251) as u8).collect();
    file_with(&sb.src, "d/e/big.bin", big, 0o644, (1_600_000_000, 5));
    dir(&sb.src, "empty");
    symlink(&sb.src, "ln", "a.txt");
    common::freeze_dirs(&sb.src, common::DIR_TIME);
}

#[test]
fn a_bucket_gets_the_tree_then_a_sync_with_nothing_to_do_costs_one_listing() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("mirror", "home/me") else {
        return;
    };
    tree(&sb);
    let run = b.sync(&sb, &[]);
    run.expect_code(0);
    insta::assert_snapshot!(run.ops_text(), @r"
    copy a.txt
    copy d/b.txt
    copy d/e/big.bin
    mkdir d
    mkdir d/e
    mkdir empty
    skip ln
    ");
    let skip = run.find("skip", "ln").expect("the link's skip");
    assert_eq!(
        skip.str("reason"),
        Some("a symbolic link: remote replicas hold none")
    );
    // Objects, the empty folder's marker, the large file in parts.
    let made = kinds(&b.requests());
    for kind in [
        "PUT /mirror/home/me/a.txt",
        "PUT /mirror/home/me/empty/",
        "POST /mirror/home/me/d/e/big.bin?uploads",
        "PUT /mirror/home/me/d/e/big.bin?part",
        "POST /mirror/home/me/d/e/big.bin?complete",
    ] {
        assert!(made.contains(&kind.to_string()), "{kind} in {made:#?}");
    }
    assert!(
        !made.iter().any(|r| r.contains("/d/") && r.ends_with("d/")),
        "folders with objects need no marker: {made:#?}"
    );
    // rclone reads the times treesync stored, to the nanosecond.
    if let Some(lsl) = b.rclone_lsl() {
        insta::assert_snapshot!(lsl, @r"
        5 2020-09-13 12:26:40.123456789 a.txt
        5 2020-09-13 12:26:40.123456789 d/b.txt
        9437184 2020-09-13 12:26:40.000000005 d/e/big.bin
        ");
    }

    // Nothing changed: one listing, no request for any object.
    b.requests();
    let run = b.sync(&sb, &[]);
    run.expect_code(0);
    assert!(run.changes().is_empty(), "{}", run.dump());
    let spent = b.requests();
    assert_eq!(
        spent,
        ["GET /mirror?list-type=2&prefix=home/me/"],
        "{spent:#?}"
    );
}

#[test]
fn changes_deletions_and_an_emptied_folder_reach_the_bucket() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("churn", "p") else {
        return;
    };
    file(&sb.src, "keep.txt", "same");
    file(&sb.src, "edit.txt", "old");
    file(&sb.src, "gone.txt", "bye");
    file(&sb.src, "sub/only.txt", "last one");
    b.sync(&sb, &[]).expect_code(0);
    rewrite(&sb.s("edit.txt"), "new content");
    std::fs::remove_file(sb.s("gone.txt")).unwrap();
    std::fs::remove_file(sb.s("sub/only.txt")).unwrap();
    file(&sb.src, "new.txt", "hello");
    b.requests();
    let run = b.sync(&sb, &[]);
    run.expect_code(0);
    insta::assert_snapshot!(run.ops_text(), @r"
    copy new.txt
    delete gone.txt
    delete sub/only.txt
    update edit.txt
    ");
    let spent = kinds(&b.requests());
    // `sub` is still in the source, empty: its marker keeps it.
    assert!(
        spent.contains(&"PUT /churn/p/sub/".to_string()),
        "{spent:#?}"
    );
    assert!(!spent.iter().any(|r| r.starts_with("HEAD")), "{spent:#?}");
    if let Some(lsl) = b.rclone_lsl() {
        assert!(lsl.contains("11 ") && lsl.ends_with("new.txt"), "{lsl}");
        assert!(!lsl.contains("gone.txt"), "{lsl}");
    }
    // And the next sync has nothing to do.
    let run = b.sync(&sb, &[]);
    assert!(run.changes().is_empty(), "{}", run.dump());
}

#[test]
fn a_bucket_written_by_rclone_is_adopted_by_reading_each_objects_metadata_once() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("adopt", "x") else {
        return;
    };
    file(&sb.src, "one.txt", "1");
    file(&sb.src, "dir/two.txt", "22");
    let src = sb.src.to_string_lossy().into_owned();
    if b.rclone(&["copy", &src, &b.rclone_url()], b"").is_none() {
        return;
    }
    // Objects this machine never wrote: refused without --adopt.
    let run = b.sync(&sb, &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("is not empty and was never synced") && run.stderr.contains("--adopt"),
        "{}",
        run.dump()
    );
    b.requests();
    // Adopted: rclone's mtimes are read (one HEAD an object), nothing
    // is uploaded again.
    let run = b.sync(&sb, &["--adopt"]);
    run.expect_code(0);
    assert!(run.changes().is_empty(), "{}", run.dump());
    let spent = kinds(&b.requests());
    assert_eq!(
        spent,
        [
            "GET /adopt?list",
            "HEAD /adopt/x/dir/two.txt",
            "HEAD /adopt/x/one.txt"
        ],
        "{spent:#?}"
    );
}

#[test]
fn dry_run_sends_no_write_and_the_guard_withholds_deletions() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("guard", "g") else {
        return;
    };
    for i in 0..20 {
        file(&sb.src, format!("f{i:02}.txt"), "x");
    }
    b.sync(&sb, &[]).expect_code(0);
    for i in 0..15 {
        std::fs::remove_file(sb.s(format!("f{i:02}.txt"))).unwrap();
    }
    file(&sb.src, "new.txt", "n");
    b.requests();
    // A dry run lists, and writes nothing: not even the lock object.
    let run = b.sync(&sb, &["--dry-run"]);
    run.expect_code(4);
    assert_eq!(run.entries("delete").len(), 0, "{}", run.dump());
    assert!(run.entries("copy").iter().all(|e| e.dry_run()));
    let all = b.moto.requests();
    assert!(
        all.iter().all(|(m, _)| m == "GET"),
        "a dry run wrote: {all:#?}"
    );
    b.moto.reset_requests();
    // 15 of 20 is over the default 50%: the copy is done, the deletions
    // are not.
    let run = b.sync(&sb, &[]);
    run.expect_code(4);
    assert!(run.find("copy", "new.txt").is_some(), "{}", run.dump());
    assert!(
        !b.requests().iter().any(|r| r.starts_with("DELETE")),
        "deleted despite the guard"
    );
    let run = b.sync(&sb, &["--max-delete", "100%"]);
    run.expect_code(0);
    assert_eq!(run.entries("delete").len(), 15, "{}", run.dump());
}

#[test]
fn a_missing_bucket_or_missing_credentials_stop_before_any_sync() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("exists", "p") else {
        return;
    };
    file(&sb.src, "a", "a");
    let run = Bucket {
        url: "s3://nosuchbucket/p".into(),
        ..b
    };
    let out = run.sync(&sb, &[]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("s3://nosuchbucket/p") && out.stderr.contains("NoSuchBucket"),
        "{}",
        out.dump()
    );
    // No credentials at all: said so, and nothing else is tried.
    let endpoint = run.moto.endpoint();
    let src = sb.src.to_string_lossy().into_owned();
    let state = run.state.path().to_string_lossy().into_owned();
    let out = sb.run_with_env(
        &[
            ("AWS_ACCESS_KEY_ID", OsStr::new("")),
            ("AWS_SECRET_ACCESS_KEY", OsStr::new("")),
            ("AWS_EC2_METADATA_DISABLED", OsStr::new("true")),
            ("HOME", OsStr::new(&state)),
            ("XDG_STATE_HOME", OsStr::new(&state)),
        ],
        &["--once", "--s3-endpoint", &endpoint, &src, "s3://exists/p"],
    );
    out.expect_code(1);
    assert!(out.stderr.contains("s3://exists/p"), "{}", out.dump());
    // Bad addresses and options are usage errors.
    let out = sb.run_raw(&["--once", &src, "s3://b/../x"]);
    out.expect_code(2);
    let out = sb.run_raw(&["--once", "--s3-endpoint", "http://x", &src, "/tmp/local"]);
    out.expect_code(2);
    assert!(out.stderr.contains("s3://"), "{}", out.stderr);
}

#[test]
fn a_second_process_on_the_same_bucket_is_refused_by_the_lock_object() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("locked", "p") else {
        return;
    };
    file(&sb.src, "a", "a");
    b.sync(&sb, &[]).expect_code(0);
    // Another machine's lock: a lock object naming another host.
    let lock = format!("{}/.treesync/lock", b.rclone_url());
    if b.rclone(&["rcat", &lock], b"host=elsewhere\npid=1\n")
        .is_none()
    {
        return;
    }
    let run = b.sync(&sb, &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("host elsewhere, pid 1") && run.stderr.contains(".treesync/lock"),
        "{}",
        run.dump()
    );
    // Removed by hand (the message says so), the lock is free again.
    b.rclone(&["deletefile", &lock], b"");
    b.sync(&sb, &[]).expect_code(0);
    let left = b
        .rclone(&["lsf", "-R", &b.rclone_url()], b"")
        .unwrap_or_default();
    assert!(
        !left.contains(".treesync"),
        "the lock object stayed: {left}"
    );
}

/// Polls `ready` (the log of a run in the background) until it holds.
fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let end = std::time::Instant::now() + common::DEADLINE * 3;
    while !ready() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Bucket {
    /// `treesync <args> SRC s3://...` in the background.
    fn spawn(&self, sb: &Sandbox, args: &[&str]) -> common::Running {
        let log = sb.next_log();
        let mut cmd = Command::new(common::bin());
        cmd.arg("--log-file")
            .arg(&log)
            .args([
                "--log-format",
                "json",
                "--s3-endpoint",
                &self.moto.endpoint(),
            ])
            .args(args)
            .arg(&sb.src)
            .arg(&self.url)
            .current_dir(sb.tmp.path());
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        common::Running::start(cmd, log)
    }
}

#[test]
fn a_store_that_stops_answering_mid_sync_fails_the_rest_fast_and_deletes_nothing() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("outage", "p") else {
        return;
    };
    // Few enough that the errors on the terminal fit the pipe's buffer
    // (the harness reads the output once the process is done).
    for i in 0..120 {
        file(&sb.src, format!("d{}/f{i:03}", i % 10), format!("{i}"));
    }
    let mut run = b.spawn(&sb, &["--once", "-j", "1"]);
    wait_for(|| run.log().iter().any(|e| e.msg == "copy"), "a first copy");
    let Bucket { moto, state, .. } = b;
    drop(moto);
    let started = std::time::Instant::now();
    let done = run.wait();
    done.expect_code(3);
    // Each request waits out its retries once; the store is then taken as
    // down and the rest fail at once, not each after its own retries.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let errors = done.entries("error");
    assert!(errors.len() > 10, "{}", done.dump());
    assert!(
        errors.iter().any(|e| e
            .str("error")
            .is_some_and(|m| m.contains("stopped answering"))),
        "{}",
        done.dump()
    );
    assert!(done.entries("delete").is_empty());
    drop(state);
}

#[test]
fn a_store_unreachable_at_a_tick_is_a_vanished_root_and_the_run_goes_on() {
    let sb = Sandbox::new();
    let Some(b) = Bucket::new("gone", "p") else {
        return;
    };
    file(&sb.src, "a", "a");
    // Interval 1 s: the positional INTERVAL comes after the roots.
    let log = sb.next_log();
    let mut cmd = Command::new(common::bin());
    cmd.arg("--log-file")
        .arg(&log)
        .args(["--log-format", "json", "--s3-endpoint", &b.moto.endpoint()])
        .arg(&sb.src)
        .arg(&b.url)
        .arg("1")
        .current_dir(sb.tmp.path());
    for (k, v) in b.env() {
        cmd.env(k, v);
    }
    let mut run = common::Running::start(cmd, log);
    run.wait_ticks(1);
    let Bucket { moto, state, .. } = b;
    drop(moto);
    wait_for(
        || {
            run.log().iter().any(|e| {
                e.msg == "error"
                    && e.str("op") == Some("root")
                    && e.str("error")
                        .is_some_and(|m| m.contains("cannot be listed"))
            })
        },
        "an error op=root for the unreachable store",
    );
    assert!(run.is_running(), "the run goes on");
    let done = run.stop("TERM");
    done.expect_code(0);
    assert!(done.entries("delete").is_empty());
    drop(state);
}
