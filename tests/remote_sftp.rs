//! End-to-end: a replica on an SFTP server, OpenSSH's sshd on 127.0.0.1
//! with a key made for the test. The server serves this machine's
//! filesystem, so the replica it writes is inspected directly.

mod common;

use common::servers::Sshd;
use common::{dir, file, file_with, rewrite, set_mode, symlink, tree, Run, Sandbox};
use std::os::unix::fs::MetadataExt;

/// `treesync --once <extra> --sftp-key K --sftp-known-hosts H SRC sftp://...`
/// into `sb.dst` (an absolute path on the server).
fn sync(sb: &Sandbox, sshd: &Sshd, extra: &[&str]) -> Run {
    let key = sshd.key_path().to_string_lossy().into_owned();
    let known = sshd.known_hosts().to_string_lossy().into_owned();
    sync_with(sb, sshd, &key, &known, extra)
}

fn sync_with(sb: &Sandbox, sshd: &Sshd, key: &str, known: &str, extra: &[&str]) -> Run {
    let url = url(sb, sshd);
    let src = sb.src.to_string_lossy().into_owned();
    let state = sb.path("state").to_string_lossy().into_owned();
    let mut args = vec!["--once", "--sftp-key", key, "--sftp-known-hosts", known];
    args.extend(extra);
    args.push(&src);
    args.push(&url);
    sb.run_with_env(&[("XDG_STATE_HOME", state.as_ref())], &args)
}

fn url(sb: &Sandbox, sshd: &Sshd) -> String {
    format!(
        "sftp://{}@127.0.0.1:{}/{}",
        sshd.user(),
        sshd.port(),
        sb.dst.display()
    )
}

#[test]
fn a_tree_goes_up_with_its_times_and_modes_and_a_second_sync_does_nothing() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha");
    file_with(
        &sb.src,
        "bin/run.sh",
        "#!/bin/sh\n",
        0o755,
        (1_600_000_000, 0),
    );
    file_with(&sb.src, "secret", "s", 0o600, (1_500_000_000, 0));
    // Over one write request: sent in several, its times after them.
    let big = "0123456789abcdef".repeat(20_000);
    file_with(&sb.src, "big.bin", &big, 0o640, (1_400_000_000, 0));
    dir(&sb.src, "empty");
    symlink(&sb.src, "ln", "a.txt");
    set_mode(&sb.s("empty"), 0o700);
    common::freeze_dirs(&sb.src, common::DIR_TIME);
    let run = sync(&sb, &sshd, &[]);
    run.expect_code(0);
    insta::assert_snapshot!(run.ops_text(), @r"
    copy a.txt
    copy big.bin
    copy bin/run.sh
    copy secret
    mkdir bin
    mkdir empty
    skip ln
    ");
    // Times to the second (SFTP's), modes exact, no temporaries left.
    let replica = tree(&sb.dst);
    assert!(!replica.contains(".treesync-tmp"), "{replica}");
    for (rel, mode, secs) in [
        ("a.txt", 0o644, common::FILE_TIME.0),
        ("bin/run.sh", 0o755, 1_600_000_000),
        ("secret", 0o600, 1_500_000_000),
        ("big.bin", 0o640, 1_400_000_000),
        ("empty", 0o700, common::DIR_TIME.0),
        ("bin", 0o755, common::DIR_TIME.0),
    ] {
        let md = std::fs::metadata(sb.d(rel)).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "{rel}");
        assert_eq!(md.mtime(), secs, "{rel}");
    }
    assert_eq!(std::fs::read(sb.d("a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(sb.d("big.bin")).unwrap(), big.as_bytes());

    let run = sync(&sb, &sshd, &[]);
    run.expect_code(0);
    assert!(run.changes().is_empty(), "{}", run.dump());

    // Changes, a new mode, deletions.
    rewrite(&sb.s("a.txt"), "changed");
    set_mode(&sb.s("secret"), 0o640);
    std::fs::remove_file(sb.s("bin/run.sh")).unwrap();
    let run = sync(&sb, &sshd, &[]);
    run.expect_code(0);
    insta::assert_snapshot!(run.ops_text(), @r"
    delete bin/run.sh
    meta secret
    skip ln
    update a.txt
    ");
    assert_eq!(std::fs::read(sb.d("a.txt")).unwrap(), b"changed");
    let mode = std::fs::metadata(sb.d("secret")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o640);
    assert!(!sb.d("bin/run.sh").exists());
}

#[test]
fn an_unknown_host_key_is_refused_with_its_fingerprint() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let sb = Sandbox::new();
    file(&sb.src, "a", "a");
    let empty = sb.path("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let key = sshd.key_path().to_string_lossy().into_owned();
    let run = sync_with(&sb, &sshd, &key, &empty.to_string_lossy(), &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("host key") && run.stderr.contains(sshd.host_fingerprint()),
        "{}\nwanted {}",
        run.dump(),
        sshd.host_fingerprint()
    );
    assert!(!sb.dst.exists(), "nothing is made on a host not trusted");
}

#[test]
fn a_key_the_server_refuses_is_a_clear_error_and_a_dry_run_writes_nothing() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let sb = Sandbox::new();
    file(&sb.src, "a", "a");
    let other = sb.path("other_key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let known = sshd.known_hosts().to_string_lossy().into_owned();
    let run = sync_with(&sb, &sshd, &other.to_string_lossy(), &known, &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("refused by 127.0.0.1") && run.stderr.contains("--sftp-key"),
        "{}",
        run.dump()
    );

    std::fs::create_dir(&sb.dst).unwrap();
    let run = sync(&sb, &sshd, &["--dry-run"]);
    run.expect_code(0);
    assert!(
        run.find("copy", "a").is_some_and(|e| e.dry_run()),
        "{}",
        run.dump()
    );
    assert_eq!(std::fs::read_dir(&sb.dst).unwrap().count(), 0);
}
