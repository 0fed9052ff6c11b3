//! The command line: usage errors, `--help`, `--dry-run`, terminal
//! verbosity.

mod common;

use common::*;
use std::ffi::OsString;

fn args(sb: &Sandbox, before: &[&str], after: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = before.iter().map(OsString::from).collect();
    v.push(sb.src.clone().into());
    v.push(sb.dst.clone().into());
    v.extend(after.iter().map(OsString::from));
    v
}

#[test]
fn usage_errors_exit_2_and_touch_nothing() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![], vec!["0"]),
        (vec![], vec!["abc"]),
        (vec![], vec!["-5"]),
        (vec![], vec!["1.5"]),
        (vec![], vec!["0s"]),
        (vec![], vec!["500ms"]),
        (vec![], vec!["5x"]),
        (vec![], vec!["10", "extra"]),
        (vec!["--no-such-option"], vec![]),
        (vec!["--once", "--max-delete", "101%"], vec![]),
        (vec!["--once", "--max-delete", "half"], vec![]),
        (vec!["--once", "--max-delete", "-1"], vec![]),
        (vec!["--once", "--log-format", "xml"], vec![]),
        (vec!["--rescan", "soon"], vec!["5"]),
        (vec!["--jobs", "many"], vec![]),
    ];
    for (before, after) in cases {
        let a = args(&sb, &before, &after);
        let run = sb.run(&a);
        assert_eq!(
            run.code,
            Some(2),
            "args {before:?} SRC DST {after:?}\n{}",
            run.dump()
        );
        assert!(
            !run.stderr.trim().is_empty(),
            "a usage error says why: {a:?}"
        );
        assert!(!exists(&sb.dst), "args {a:?} created the replica");
    }
    // Missing operands.
    let run = sb.run_raw(&["--once".as_ref(), sb.src.as_os_str()]);
    assert_eq!(run.code, Some(2), "{}", run.dump());
    let run = sb.run_raw::<&str>(&[]);
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(!exists(&sb.dst));
}

#[test]
fn help_mentions_every_option() {
    let sb = Sandbox::new();
    for flag in ["--help", "-h"] {
        let run = sb.run_raw(&[flag]);
        run.expect_code(0);
        let text = format!("{}{}", run.stdout, run.stderr);
        for opt in [
            "--once",
            "--log-file",
            "--log-format",
            "--exclude",
            "--checksum",
            "--dry-run",
            "--fsync",
            "--delete-excluded",
            "--max-delete",
            "--no-watch",
            "--rescan",
            "--jobs",
            "--quiet",
            "--verbose",
            "--generate",
            "SOURCE",
            "REPLICA",
            "INTERVAL",
        ] {
            assert!(text.contains(opt), "{flag} does not mention {opt}:\n{text}");
        }
    }
}

#[test]
fn dry_run_does_not_create_a_missing_replica() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    file(&sb.src, "d/b.txt", "bb");
    symlink(&sb.src, "l", "a.txt");
    let run = sb.sync(&["--dry-run"]);
    run.expect_code(0).no_errors();
    assert!(!exists(&sb.dst), "--dry-run created the replica");
    for (m, p) in [
        ("copy", "a.txt"),
        ("mkdir", "d"),
        ("copy", "d/b.txt"),
        ("symlink", "l"),
    ] {
        let e = run.get(m, p);
        assert!(e.dry_run(), "no dry_run:true on {e:?}");
    }
    assert_eq!(run.get("copy", "d/b.txt").u64("bytes"), Some(2));
    run.tick();
}

#[test]
fn dry_run_writes_nothing_and_plans_what_a_real_run_does() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "alpha\n");
    file(&sb.src, "b.txt", "bravo\n");
    file(&sb.src, "dir/c.txt", "charlie\n");
    freeze_dirs(&sb.src, DIR_TIME);
    sb.sync(&[]).expect_code(0);
    file_with(
        &sb.src,
        "a.txt",
        "alpha, changed\n",
        0o644,
        (1_700_000_000, 0),
    );
    remove(&sb.s("b.txt"));
    file(&sb.src, "new/n.txt", "n");
    set_mode(&sb.s("dir/c.txt"), 0o600);
    file(sb.root(), "dst/.treesync-tmp-1-1", "stale");
    let everything = |root: &std::path::Path| -> Vec<(String, u64, i128, i128)> {
        let mut v: Vec<_> = walk(root)
            .into_iter()
            .map(|(p, _)| {
                let n = node_at(&p);
                (n.path, n.ino, n.mtime_ns, n.ctime_ns)
            })
            .collect();
        v.sort();
        v
    };
    let before = everything(&sb.dst);
    let before_root = identities(&sb.dst).remove(0);

    let dry = sb.sync(&["--dry-run"]);
    dry.expect_code(0).no_errors();
    assert_eq!(
        everything(&sb.dst),
        before,
        "--dry-run wrote under the replica"
    );
    assert_eq!(identities(&sb.dst).remove(0), before_root);
    let ops: Vec<&Entry> = dry.log.iter().filter(|e| e.path.is_some()).collect();
    assert!(!ops.is_empty());
    for e in ops {
        assert!(e.dry_run(), "no dry_run:true on {e:?}");
    }

    let real = sb.sync(&[]);
    real.expect_code(0).no_errors();
    assert_eq!(dry.changes(), real.changes(), "dry run and real run differ");
    sb.assert_mirror();
}

#[test]
fn dry_run_applies_the_guard() {
    let sb = Sandbox::new();
    sb.mirror_then_remove_15_of_20();
    let run = sb.sync(&["--dry-run"]);
    run.expect_code(4);
    assert!(run.errors().iter().any(|e| e.str("op") == Some("guard")));
    assert!(run.entries("delete").is_empty());
    assert!(exists(&sb.d("f00.txt")));
}

fn verbosity_tree(sb: &Sandbox) {
    file(&sb.src, "zebra-unique-name.txt", "z");
    file(&sb.src, "dir/okapi-unique-name.txt", "o");
    fifo(&sb.src, "pipe-unique-name");
}

#[test]
fn default_terminal_shows_operations_and_warnings() {
    let sb = Sandbox::new();
    verbosity_tree(&sb);
    let run = sb.sync(&[]);
    run.expect_code(0);
    for name in [
        "zebra-unique-name.txt",
        "okapi-unique-name.txt",
        "pipe-unique-name",
    ] {
        assert!(
            run.stderr.contains(name),
            "stderr lacks {name}:\n{}",
            run.stderr
        );
    }
    assert!(run.stdout.trim().is_empty() || !run.stdout.contains("zebra"));
}

#[test]
fn quiet_hides_operations_but_the_log_file_has_them() {
    for flag in ["--quiet", "-q"] {
        let sb = Sandbox::new();
        verbosity_tree(&sb);
        let run = sb.sync(&[flag]);
        run.expect_code(0);
        for name in [
            "zebra-unique-name.txt",
            "okapi-unique-name.txt",
            "pipe-unique-name",
        ] {
            assert!(
                !run.stderr.contains(name) && !run.stdout.contains(name),
                "{flag} printed {name}:\n{}",
                run.stderr
            );
        }
        assert!(run.has("copy", "zebra-unique-name.txt"));
        assert!(run.has("copy", "dir/okapi-unique-name.txt"));
        assert!(run.has("mkdir", "dir"));
        assert!(run.has("skip", "pipe-unique-name"));
        run.tick();
    }
}

#[test]
fn verbose_adds_to_the_terminal_only() {
    let sb = Sandbox::new();
    verbosity_tree(&sb);
    let quiet_dst = sb.path("dst-default");
    let normal = sb.run(&["--once".as_ref(), sb.src.as_os_str(), quiet_dst.as_os_str()]);
    normal.expect_code(0);
    for flag in ["--verbose", "-v"] {
        let dst = sb.path(format!("dst{flag}"));
        let run = sb.run(&[
            "--once".as_ref(),
            flag.as_ref(),
            sb.src.as_os_str(),
            dst.as_os_str(),
        ]);
        run.expect_code(0);
        assert!(run.stderr.contains("zebra-unique-name.txt"));
        assert!(run.stderr.len() >= normal.stderr.len(), "{flag} shows less");
        // Same log entries (detail never goes to the file).
        assert_eq!(run.ops_text(), normal.ops_text());
        assert_same_nodes(
            &listing_except(&sb.src, &["pipe-unique-name"]),
            &listing(&dst),
            "source (-) vs replica (+)",
        );
    }
}

#[test]
fn fsync_gives_the_same_result() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    file(&sb.src, "d/b.txt", "b");
    let run = sb.sync(&["--fsync"]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
}

#[test]
fn once_with_an_interval_syncs_once() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    let run = sb.run(&args(&sb, &["--once"], &["5"]));
    run.expect_code(0).no_errors();
    assert_eq!(run.entries("tick").len(), 1);
    sb.assert_mirror();
}

#[test]
fn dry_run_with_a_missing_source_exits_1() {
    let sb = Sandbox::new();
    let missing = sb.path("missing");
    let run = sb.run(&[
        "--once".as_ref(),
        "--dry-run".as_ref(),
        missing.as_os_str(),
        sb.dst.as_os_str(),
    ]);
    run.expect_code(1);
    assert!(!exists(&sb.dst));
}

#[test]
fn dry_run_creates_no_state_in_an_existing_replica() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    file(&sb.dst, "old.txt", "old");
    let before: Vec<_> = walk(&sb.dst).into_iter().map(|(p, _)| p).collect();
    let root_before = identities(&sb.dst).remove(0);
    let run = sb.sync(&["--dry-run", "--adopt"]);
    run.expect_code(0).no_errors();
    assert!(
        !exists(&sb.d(".treesync")),
        "--dry-run created the state folder"
    );
    let after: Vec<_> = walk(&sb.dst).into_iter().map(|(p, _)| p).collect();
    assert_eq!(before, after);
    assert_eq!(identities(&sb.dst).remove(0), root_before);
    assert!(run.get("copy", "a.txt").dry_run());
    assert!(run.get("delete", "old.txt").dry_run());
}

/// Under systemd with its output in the journal (`JOURNAL_STREAM` names
/// standard error), terminal lines carry no time of their own: the
/// journal stamps them. Elsewhere they start with the time.
#[test]
fn terminal_lines_in_the_journal_carry_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a\n");
    let run_with = |journal: bool| {
        let err_path = sb.path(format!("stderr-{journal}"));
        let err = std::fs::File::create(&err_path).unwrap();
        let meta = err.metadata().unwrap();
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["--once", "--log-file"])
            .arg(sb.next_log())
            .arg(&sb.src)
            .arg(sb.path(format!("dst-{journal}")))
            .stderr(err);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        assert!(cmd.status().unwrap().success());
        std::fs::read_to_string(err_path).unwrap()
    };
    let plain = run_with(false);
    let journal = run_with(true);
    let copy_line = |text: &str| {
        text.lines()
            .find(|l| l.contains("copy"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        copy_line(&journal).trim_start().starts_with("INFO copy"),
        "{journal}"
    );
    assert!(!copy_line(&plain).starts_with("INFO"), "{plain}");
    assert!(copy_line(&plain).contains("INFO copy"), "{plain}");
}

/// Every `--[a-z-]+` in `text`.
fn long_options(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let name: String = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        if !name.is_empty() {
            found.insert(format!("--{name}"));
        }
        rest = &rest[at + 2 + name.len()..];
    }
    found
}

#[test]
fn man_page_lists_every_option_of_help() {
    let sb = Sandbox::new();
    let help = sb.run_raw(&["--help"]);
    help.expect_code(0);
    let options = long_options(&help.stdout);
    assert!(options.len() > 20, "too few options in --help: {options:?}");
    let run = sb.run_raw(&["--generate", "man"]);
    run.expect_code(0);
    assert!(run.stderr.is_empty(), "{}", run.dump());
    assert!(
        run.stdout.contains(".TH"),
        "not a man page:\n{}",
        run.stdout
    );
    // roff writes a minus sign as `\-`.
    let man = run.stdout.replace("\\-", "-");
    for opt in &options {
        assert!(man.contains(opt.as_str()), "the man page lacks {opt}");
    }
}

#[test]
fn bash_completion_loads() {
    let sb = Sandbox::new();
    let script = format!(
        "source <('{}' --generate complete-bash) && complete -p treesync",
        bin()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(sb.root())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("complete ") && l.ends_with(" treesync")),
        "no complete line: {stdout}"
    );
}

#[test]
fn zsh_and_fish_completions_name_treesync() {
    let sb = Sandbox::new();
    for kind in ["complete-zsh", "complete-fish"] {
        let run = sb.run_raw(&["--generate", kind]);
        run.expect_code(0);
        assert!(run.stdout.contains("treesync"), "{kind}: {}", run.dump());
        assert!(run.stdout.contains("--dry-run") || run.stdout.contains("dry-run"));
    }
}

#[test]
fn generate_touches_nothing_and_refuses_unknown_kinds() {
    let sb = Sandbox::new();
    let run = sb.run_raw(&["--generate", "man"]);
    run.expect_code(0);
    assert!(!exists(&sb.path("treesync.log")), "--generate wrote a log");
    assert!(!exists(&sb.dst));
    for bad in [&["--generate", "pdf"][..], &["--generate"]] {
        let run = sb.run_raw(bad);
        assert_eq!(run.code, Some(2), "{bad:?}\n{}", run.dump());
        assert!(run.stdout.is_empty(), "{bad:?} printed {}", run.stdout);
    }
    // Alone: it does not run a sync beside its output.
    let run = sb.run_raw(&[
        "--generate".as_ref(),
        "man".as_ref(),
        sb.src.as_os_str(),
        sb.dst.as_os_str(),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(!exists(&sb.dst));
    assert!(!exists(&sb.path("treesync.log")));
}
