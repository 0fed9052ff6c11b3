//! `.syncignore` rules, `--exclude`, `--delete-excluded`, and the ignore
//! files that must not count.

mod common;

use common::*;

/// Source paths of the `ignore` fixture that its rules exclude.
const EXCLUDED: &[&str] = &[
    "a.log",
    "build",
    "docs/a/b/draft.md",
    "docs/a/draft.md",
    "docs/draft.md",
    "nested/build",
    "sub/b.log",
    "sub/inner/secret.txt",
    "sub/secret.txt",
    "top-only.txt",
];

fn ignore_sandbox() -> Sandbox {
    let sb = Sandbox::with_fixture("ignore");
    file(&sb.src, "nested/build/x.o", "folder-only rule, any depth\n");
    file(&sb.src, "nested/keep.c", "kept\n");
    file(&sb.src, ".hidden", "hidden files are synced\n");
    freeze_dirs(&sb.src, DIR_TIME);
    sb
}

fn mentions_excluded(run: &Run) -> Vec<(String, String)> {
    run.ops()
        .into_iter()
        .filter(|(_, p)| EXCLUDED.iter().any(|x| is_at_or_below(p, x)))
        .collect()
}

#[test]
fn syncignore_rules_exclude_paths_and_are_mirrored_themselves() {
    let sb = ignore_sandbox();
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert_same_nodes(
        &listing_except(&sb.src, EXCLUDED),
        &listing(&sb.dst),
        "source less excluded (-) vs replica (+)",
    );
    insta::assert_snapshot!("ignore_replica", tree(&sb.dst));
    assert_eq!(mentions_excluded(&run), vec![], "{}", run.dump());
    for kept in [
        ".syncignore",
        "sub/.syncignore",
        "keep.log",
        "sub/sub-keep.log",
        "sub/build",
        "sub/top-only.txt",
        "secret.txt",
        "other/draft.md",
        "docs/a/b/final.md",
        ".hidden",
    ] {
        assert!(run.has("copy", kept), "no copy of {kept}\n{}", run.dump());
    }

    // Nothing left to do.
    let run = sb.sync(&[]);
    run.expect_code(0);
    assert_eq!(run.changes(), vec![], "{}", run.dump());
}

#[test]
fn excluded_entries_in_the_replica_are_kept_unless_delete_excluded() {
    let sb = ignore_sandbox();
    file(&sb.dst, "a.log", "replica's own log\n");
    file(&sb.dst, "build/old.o", "old build output\n");
    file(&sb.dst, "sub/secret.txt", "replica's secret\n");
    file(&sb.dst, "docs/draft.md", "replica's draft\n");

    let run = sb.sync(&["--adopt"]);
    run.expect_code(0).no_errors();
    assert_eq!(mentions_excluded(&run), vec![], "{}", run.dump());
    assert_eq!(read(&sb.d("a.log")), b"replica's own log\n");
    assert_eq!(read(&sb.d("build/old.o")), b"old build output\n");
    assert!(!exists(&sb.d("build/out.o")), "excluded: not copied");
    assert_eq!(read(&sb.d("sub/secret.txt")), b"replica's secret\n");
    assert_eq!(read(&sb.d("docs/draft.md")), b"replica's draft\n");
    assert_same_nodes(
        &listing_except(&sb.src, EXCLUDED),
        &listing_except(&sb.dst, EXCLUDED),
        "managed part",
    );

    let run = sb.sync(&["--delete-excluded"]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[
        ("delete", "a.log"),
        ("delete", "build/old.o"),
        ("delete", "docs/draft.md"),
        ("delete", "sub/secret.txt"),
        ("rmdir", "build"),
    ]);
    assert!(run.index("delete", "build/old.o") < run.index("rmdir", "build"));
    assert_same_nodes(
        &listing_except(&sb.src, EXCLUDED),
        &listing(&sb.dst),
        "source less excluded (-) vs replica (+)",
    );
}

#[test]
fn exclude_options_act_as_root_rules() {
    let sb = Sandbox::new();
    for f in [
        "a.tmp",
        "b/c.tmp",
        "cache/x",
        "sub/cache/y",
        "keep.txt",
        "anch",
        "sub/anch",
        "sub/cachefile",
    ] {
        file(&sb.src, f, f);
    }
    freeze_dirs(&sb.src, DIR_TIME);
    let run = sb.sync(&[
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache/",
        "--exclude",
        "/anch",
    ]);
    run.expect_code(0).no_errors();
    let excluded = ["a.tmp", "b/c.tmp", "cache", "sub/cache", "anch"];
    assert_same_nodes(
        &listing_except(&sb.src, &excluded),
        &listing(&sb.dst),
        "source less excluded (-) vs replica (+)",
    );
    assert!(exists(&sb.d("sub/anch")) && exists(&sb.d("sub/cachefile")));
    assert!(exists(&sb.d("b")), "the folder itself is not excluded");
}

#[test]
fn exclude_options_come_after_the_root_syncignore() {
    let sb = Sandbox::new();
    file(&sb.src, ".syncignore", "*.log\n");
    file(&sb.src, "a.log", "a");
    file(&sb.src, "b.log", "b");
    file(&sb.src, "c.txt", "c");
    freeze_dirs(&sb.src, DIR_TIME);
    let run = sb.sync(&["--exclude", "!b.log", "--exclude", "c.txt"]);
    run.expect_code(0).no_errors();
    assert!(!exists(&sb.d("a.log")));
    assert!(
        exists(&sb.d("b.log")),
        "a later --exclude negation re-includes"
    );
    assert!(!exists(&sb.d("c.txt")));
}

#[test]
fn gitignore_and_other_ignore_files_are_not_honoured() {
    let sb = Sandbox::new();
    // The sandbox itself looks like a git repository with rules.
    dir(sb.root(), ".git/info");
    file(sb.root(), ".gitignore", "*.txt\nsrc/\n");
    file(&sb.src, ".gitignore", "*.txt\nignored-by-git/\n*.md\n");
    file(&sb.src, ".ignore", "*.dat\n");
    file(&sb.src, ".rgignore", "*.rs\n");
    file(&sb.src, ".git/info/exclude", "*.bin\n");
    file(&sb.src, ".git/HEAD", "ref: refs/heads/main\n");
    file(&sb.src, "x.txt", "x");
    file(&sb.src, "ignored-by-git/y", "y");
    file(&sb.src, "readme.md", "r");
    file(&sb.src, "data.dat", "d");
    file(&sb.src, "code.rs", "c");
    file(&sb.src, "blob.bin", "b");
    freeze_dirs(&sb.src, DIR_TIME);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    for f in [
        ".gitignore",
        "x.txt",
        "ignored-by-git/y",
        "data.dat",
        "blob.bin",
        ".git/HEAD",
    ] {
        assert!(run.has("copy", f), "no copy of {f}\n{}", run.dump());
    }
}

#[test]
fn a_deleted_folder_holding_excluded_entries_stays_with_a_warning() {
    let sb = Sandbox::new();
    file(&sb.src, ".syncignore", "*.log\n");
    file(&sb.src, "olddir/a.txt", "a");
    file(&sb.src, "olddir/deep/b.txt", "b");
    file(&sb.src, "other.txt", "o");
    freeze_dirs(&sb.src, DIR_TIME);
    sb.sync(&[]).expect_code(0);
    file(&sb.dst, "olddir/deep/x.log", "excluded, replica only");

    remove(&sb.s("olddir"));
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    assert!(!exists(&sb.d("olddir/a.txt")));
    assert!(!exists(&sb.d("olddir/deep/b.txt")));
    assert_eq!(read(&sb.d("olddir/deep/x.log")), b"excluded, replica only");
    assert!(run.has("delete", "olddir/a.txt"), "{}", run.dump());
    assert!(run.has("delete", "olddir/deep/b.txt"), "{}", run.dump());
    assert!(!run.has("rmdir", "olddir") && !run.has("rmdir", "olddir/deep"));
    let warned: Vec<_> = run
        .entries("warn")
        .into_iter()
        .filter(|e| e.path.as_deref().is_some_and(|p| p.starts_with("olddir")))
        .collect();
    assert!(
        !warned.is_empty(),
        "a warn for the kept folder\n{}",
        run.dump()
    );

    // With --delete-excluded the folder goes.
    let run = sb.sync(&["--delete-excluded"]);
    run.expect_code(0).no_errors();
    assert!(!exists(&sb.d("olddir")));
    assert!(run.has("rmdir", "olddir"));
    sb.assert_mirror();
}

#[test]
fn a_newly_excluded_file_stays_in_the_replica() {
    let sb = Sandbox::new();
    file(&sb.src, "notes.txt", "n");
    file(&sb.src, "d/deep.txt", "d");
    freeze_dirs(&sb.src, DIR_TIME);
    sb.sync(&[]).expect_code(0);
    file(&sb.src, "d/.syncignore", "*.txt\n");
    file(&sb.src, ".syncignore", "notes.txt\n");
    freeze_dirs(&sb.src, DIR_TIME);
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    run.assert_changes(&[("copy", ".syncignore"), ("copy", "d/.syncignore")]);
    assert!(exists(&sb.d("notes.txt")) && exists(&sb.d("d/deep.txt")));
}

#[test]
fn the_global_git_excludes_file_is_not_honoured() {
    let sb = Sandbox::new();
    let home = sb.path("home");
    file(
        &home,
        ".gitconfig",
        "[core]\n\texcludesFile = ~/global-ignore\n",
    );
    file(&home, "global-ignore", "*.txt\n");
    file(&home, ".config/git/ignore", "*.md\n");
    file(&sb.src, "a.txt", "a");
    file(&sb.src, "b.md", "b");
    file(&sb.src, ".git/HEAD", "ref: refs/heads/main\n");
    freeze_dirs(&sb.src, DIR_TIME);
    let args = ["--once".as_ref(), sb.src.as_os_str(), sb.dst.as_os_str()];
    let run = sb.run_with_env(
        &[
            ("HOME", home.as_os_str()),
            ("XDG_CONFIG_HOME", home.join(".config").as_os_str()),
        ],
        &args,
    );
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert!(run.has("copy", "a.txt") && run.has("copy", "b.md"));
}

#[test]
fn a_syncignore_above_the_source_root_does_not_count() {
    let sb = Sandbox::new();
    file(sb.root(), ".syncignore", "*.txt\nsrc/\n");
    file(&sb.src, "a.txt", "a");
    let run = sb.sync(&[]);
    run.expect_code(0).no_errors();
    sb.assert_mirror();
    assert!(run.has("copy", "a.txt"));
}

/// A `.syncignore` that cannot be read as a regular file: what it would
/// have excluded must not reach the replica, and nothing is deleted there.
fn unreadable_rules_withhold(make_unreadable: impl FnOnce(&Sandbox), as_user: bool) {
    let sb = Sandbox::new();
    file(&sb.src, "top.txt", "synced\n");
    file(&sb.src, "keys/id.key", "secret\n");
    file(&sb.src, "keys/private/notes", "secret\n");
    file(&sb.src, "keys/ok.txt", "would be copied\n");
    file(&sb.src, "keys/.syncignore", "*.key\nprivate/\n");
    let sync = |sb: &Sandbox| {
        if as_user {
            sb.sync_as_user(&[])
        } else {
            Some(sb.sync(&[]))
        }
    };
    let Some(first) = sync(&sb) else {
        eprintln!("skipped: root without setpriv");
        return;
    };
    first.expect_code(0);
    // The rules change so that the replica's copy must go, then become
    // unreadable: neither the new copies nor the deletion may happen.
    file(&sb.src, "keys/new.txt", "new\n");
    remove(&sb.s("keys/ok.txt"));
    make_unreadable(&sb);
    let run = sync(&sb).expect("ran the first time");
    run.expect_code(3);
    let err = run.get("error", "keys/.syncignore");
    assert_eq!(err.str("op"), Some("rules"), "{err:?}");
    for never in ["keys/id.key", "keys/private", "keys/new.txt"] {
        assert!(!exists(&sb.d(never)), "{never} reached the replica");
    }
    assert!(
        exists(&sb.d("keys/ok.txt")),
        "deleted below unreadable rules"
    );
    assert!(run.entries("copy").is_empty() && run.entries("delete").is_empty());
}

#[test]
fn a_syncignore_replaced_by_a_fifo_withholds_its_folder() {
    unreadable_rules_withhold(
        |sb| {
            remove(&sb.s("keys/.syncignore"));
            fifo(&sb.src, "keys/.syncignore");
        },
        false,
    );
}

#[test]
fn a_syncignore_replaced_by_a_symlink_withholds_its_folder() {
    unreadable_rules_withhold(
        |sb| {
            let elsewhere = file(sb.root(), "elsewhere-rules", "nothing\n");
            remove(&sb.s("keys/.syncignore"));
            symlink(&sb.src, "keys/.syncignore", &elsewhere);
        },
        false,
    );
}

#[test]
fn a_syncignore_with_a_line_that_is_not_utf8_withholds_its_folder() {
    unreadable_rules_withhold(
        |sb| {
            file(&sb.src, "keys/.syncignore", b"*.key\nprivate/\n\xff\n");
        },
        false,
    );
}

#[test]
fn a_syncignore_the_user_cannot_read_withholds_its_folder() {
    unreadable_rules_withhold(|sb| set_mode(&sb.s("keys/.syncignore"), 0o000), true);
}
