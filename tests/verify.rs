//! `--verify`: both trees read in full and compared, every difference an
//! error, nothing changed.

mod common;

use common::*;
use std::fs;

fn flip_first_byte_keeping_size_and_mtime(path: &std::path::Path) {
    let mtime = mtime_of(path);
    let mut bytes = read(path);
    bytes[0] ^= 1;
    fs::write(path, bytes).unwrap();
    set_mtime(path, mtime);
}

#[test]
fn verify_finds_rot_and_every_other_difference_and_changes_nothing() {
    let sb = Sandbox::new();
    file(&sb.src, "d/a.txt", "alpha\n");
    file(&sb.src, "b.txt", "bravo\n");
    file(&sb.src, "c.txt", "charlie\n");
    sb.sync(&[]).expect_code(0).no_errors();

    let run = sb.sync(&["--verify"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[]);
    assert!(!run.tick().dry_run(), "{}", run.dump());

    // A flipped byte behind a right size and mtime: only reading finds it.
    flip_first_byte_keeping_size_and_mtime(&sb.d("d/a.txt"));
    file(&sb.dst, "extra.txt", "not in the source\n");
    remove(&sb.d("c.txt"));
    set_mode(&sb.d("b.txt"), 0o600);
    let before = listing(&sb.dst);
    let rotten = read(&sb.d("d/a.txt"));

    let run = sb.sync(&["--verify"]);
    run.expect_code(3);
    let mut found: Vec<(String, String)> = run
        .errors()
        .iter()
        .map(|e| {
            assert_eq!(e.str("op"), Some("verify"), "{}", run.dump());
            (e.path.clone().unwrap(), e.str("error").unwrap().to_string())
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("b.txt".into(), "times, permissions or owner differ".into()),
            ("c.txt".into(), "missing in the replica".into()),
            ("d/a.txt".into(), "content differs".into()),
            ("extra.txt".into(), "in the replica only".into()),
        ],
        "{}",
        run.dump()
    );
    assert_eq!(run.tick().u64("errors"), Some(4));
    // Nothing was repaired.
    assert_eq!(listing(&sb.dst), before);
    assert_eq!(read(&sb.d("d/a.txt")), rotten);

    // A sync with --checksum repairs it; verify agrees then.
    sb.sync(&["--checksum"]).expect_code(0).no_errors();
    sb.sync(&["--verify"]).expect_code(0).no_errors();
    sb.assert_mirror();
}

#[test]
fn verify_is_one_sync_even_with_an_interval() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a\n");
    sb.sync(&[]).expect_code(0);
    let args = [
        "--verify".as_ref(),
        sb.src.as_os_str(),
        sb.dst.as_os_str(),
        "1".as_ref(),
    ];
    let run = sb.run(&args);
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("tick").len(), 1, "{}", run.dump());
}
