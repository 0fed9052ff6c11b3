//! `.syncignore` equals git, end to end: the binary mirrors a tree whose
//! rules use git's corner cases, and the replica's files are exactly those
//! `git ls-files --others --exclude-per-directory=.syncignore` lists in the
//! source (`.syncignore` files included, which both keep unless a rule
//! excludes them). Git runs without the machine's configuration; without
//! git the tests print "skipped: git not installed" and pass. The random
//! comparison is the unit test `fs::rules::git_oracle`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

/// Names in every folder: wildcard characters, braces, brackets, spaces,
/// backslashes, a non-ASCII letter.
const NAMES: &[&str] = &[
    "a", "b", "ab", "abc", "{a,b}", "{a", "a}", "z", "-", "]", "[", "[a", "x ", "x", "x\\", "#a",
    "!a", "a*", "\\", "é", "aé", "A", "5", "\t", "keep.log", "x.log",
];
const FOLDERS: &[&str] = &[
    "",
    "a",
    "ab",
    "abx",
    "a/b",
    "ab/x",
    "d/{a,b}",
    "d/e/f",
    "logs/2024",
];

/// One case per element: the `.syncignore` files (folder, content).
const CASES: &[&[(&str, &str)]] = &[
    &[("", "{a,b}\n{a\n[z-a]\n[!z-a]/\n[]a]\n[a\n")],
    &[(
        "",
        "a**/b\nab**\n/d/**/f\n**/2024/\nx\\ \nx  \n\\#a\n\\!a\nx\\\n",
    )],
    &[
        ("", "*.log\n/logs/\n!keep.log\n[[:upper:]]\n[[:digit:]]\n"),
        ("a", "!A\n/b/\n?\n.syncignore\n"),
        ("d/e", "!*\n"),
    ],
    &[("", "*\n!*/\n!.syncignore\n!a*\n"), ("ab", "!{a,b}\nx/\n")],
    &[
        ("", "[[:space:]]\n[!a-z]\n\\[*\n*\\]\né\n[é]?\n"),
        ("d", "{a,b}/\n"),
    ],
];

#[test]
fn the_replica_holds_what_git_does_not_ignore() {
    let Some(git_dir) = git_repository() else {
        println!("skipped: git not installed");
        return;
    };
    for (k, rules) in CASES.iter().enumerate() {
        let sb = Sandbox::new();
        for folder in FOLDERS {
            fs::create_dir_all(sb.src.join(folder)).unwrap();
        }
        for folder in FOLDERS {
            for name in NAMES {
                let path = sb.src.join(folder).join(name);
                if !path.exists() {
                    file(&sb.src, path.strip_prefix(&sb.src).unwrap(), "x");
                }
            }
        }
        for (folder, text) in rules.iter() {
            fs::write(sb.src.join(folder).join(".syncignore"), text).unwrap();
        }
        sb.sync(&[]).expect_code(0).no_errors();
        let ours = files(&sb.dst, &sb.dst);
        let theirs = not_ignored(git_dir.path(), &sb.src);
        assert!(
            ours.len() < files(&sb.src, &sb.src).len(),
            "case {k} excludes something"
        );
        assert_eq!(
            show(&ours.difference(&theirs).cloned().collect()),
            Vec::<String>::new(),
            "case {k} {rules:?}: only in the replica"
        );
        assert_eq!(
            show(&theirs.difference(&ours).cloned().collect()),
            Vec::<String>::new(),
            "case {k} {rules:?}: only kept by git"
        );
    }
}

fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    c
}

/// An empty repository outside the trees, used with `--work-tree`; `None`
/// when git is not installed.
fn git_repository() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let status = git().arg("init").arg("-q").arg(dir.path()).status().ok()?;
    assert!(status.success(), "git init failed");
    Some(dir)
}

fn not_ignored(repo: &Path, tree: &Path) -> BTreeSet<Vec<u8>> {
    let out = git()
        .arg("--git-dir")
        .arg(repo.join(".git"))
        .arg("--work-tree")
        .arg(tree)
        .args([
            "ls-files",
            "--others",
            "--exclude-per-directory=.syncignore",
            "-z",
        ])
        .current_dir(tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| p.to_vec())
        .collect()
}

/// The regular files below `dir`, relative to `root` (the replica's state
/// folder left out).
fn files(root: &Path, dir: &Path) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if dir == root && entry.file_name() == ".treesync" {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files(root, &path));
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).unwrap();
            out.insert(rel.as_os_str().as_bytes().to_vec());
        }
    }
    out
}

fn show(set: &BTreeSet<Vec<u8>>) -> Vec<String> {
    set.iter()
        .map(|p| format!("{:?}", String::from_utf8_lossy(p)))
        .collect()
}
