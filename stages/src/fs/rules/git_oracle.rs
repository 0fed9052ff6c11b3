//! `.syncignore` against git: random trees and random rules, the files the
//! rules keep (walked as the walker does: the deepest folder decides, an
//! excluded folder is not entered) compared with the files
//! `git ls-files --others --exclude-per-directory=.syncignore` lists in the
//! same tree. Git runs without any configuration of the machine; without
//! git the tests print "skipped: git not installed" and pass.
//!
//! The grammar covers comments, `!`, leading and trailing `/`, `**/`,
//! `/**`, `a**/b`, escapes (`\#`, `\!`, `\ `, `\*`, a final `\`), trailing
//! spaces, braces, brackets (negated, ranges, reversed ranges, `]` first,
//! POSIX classes, unclosed), unclosed braces, on names made of `{}[]!*?#,^-`,
//! space, backslash, `é` and letters. Left out, as the documented
//! exceptions: lines that are not UTF-8 and bracket ranges with a non-ASCII
//! end.

use super::Rules;
use crate::contract::relpath::RelPath;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small seeded generator (splitmix64): the cases are the same each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Characters of names (and of the literal parts of patterns).
const NAME_CHARS: &[&str] = &[
    "a", "a", "b", "b", "c", "{", "}", "[", "]", "!", "*", "?", "#", ",", "^", "-", " ", "\\", "é",
    ".",
];

fn name(rng: &mut Rng) -> String {
    loop {
        let len = 1 + rng.below(3);
        let n: String = (0..len).map(|_| rng.pick(NAME_CHARS)).collect();
        if !matches!(n.as_str(), "." | ".." | ".git") {
            return n;
        }
    }
}

/// A random tree: a few folders, a few files in each, `.syncignore` files in
/// some folders (always at the root), whose lines are drawn from the grammar
/// or made from a path below their folder, so that many of them match.
/// Returns the rule files written, for the report.
fn random_tree(rng: &mut Rng, root: &Path) -> Vec<(PathBuf, String)> {
    let mut folders = vec![PathBuf::new()];
    for _ in 0..1 + rng.below(4) {
        let parent = folders[rng.below(folders.len())].clone();
        folders.push(parent.join(name(rng)));
    }
    for folder in &folders {
        fs::create_dir_all(root.join(folder)).unwrap();
    }
    // Every entry, with whether it is a folder.
    let mut entries: Vec<(PathBuf, bool)> =
        folders[1..].iter().map(|f| (f.clone(), true)).collect();
    for folder in &folders {
        for _ in 0..rng.below(5) {
            let path = folder.join(name(rng));
            if !root.join(&path).exists() {
                fs::write(root.join(&path), b"x").unwrap();
                entries.push((path, false));
            }
        }
    }
    let mut rules = Vec::new();
    for folder in &folders {
        if !folder.as_os_str().is_empty() && !rng.chance(40) {
            continue;
        }
        let below: Vec<_> = entries
            .iter()
            .filter_map(|(p, dir)| Some((p.strip_prefix(folder).ok()?, *dir)))
            .filter(|(p, _)| !p.as_os_str().is_empty())
            .collect();
        let text: String = (0..1 + rng.below(5))
            .map(|_| {
                let l = if below.is_empty() || rng.chance(40) {
                    line(rng)
                } else {
                    let (path, dir) = below[rng.below(below.len())];
                    line_for(rng, path, dir)
                };
                l + "\n"
            })
            .collect();
        fs::write(root.join(folder).join(".syncignore"), &text).unwrap();
        rules.push((folder.clone(), text));
    }
    rules
}

/// A line made from `path`: its name alone, or its whole path (anchored),
/// or a `**/` and its last components, with characters turned into
/// wildcards, brackets or escapes here and there.
fn line_for(rng: &mut Rng, path: &Path, dir: bool) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|c| c.to_str().unwrap().to_string())
        .collect();
    let mut l = String::new();
    match rng.below(6) {
        0 | 1 => l.push('!'),
        2 => l.push_str("\\#"),
        _ => {}
    }
    let from = match rng.below(4) {
        0 => parts.len() - 1,
        1 => {
            l.push_str("**/");
            rng.below(parts.len())
        }
        2 => {
            l.push('/');
            0
        }
        _ => 0,
    };
    for (k, part) in parts[from..].iter().enumerate() {
        if k > 0 {
            l.push('/');
        }
        if rng.chance(10) {
            l.push_str(rng.pick(&["*", "**"]));
            continue;
        }
        for c in part.chars() {
            match rng.below(20) {
                0 => l.push('?'),
                1 => l.push('*'),
                2 => l.push_str(&format!("[{c}]")),
                3 => l.push_str(&format!("[!{c}]")),
                4 => l.push_str("**"),
                5..=7 => l.push_str(&format!("\\{c}")),
                _ if "*?[\\".contains(c) && rng.chance(70) => l.push_str(&format!("\\{c}")),
                _ => l.push(c),
            }
        }
    }
    if dir && rng.chance(50) {
        l.push('/');
    } else if dir && rng.chance(30) {
        l.push_str("/**");
    }
    if rng.chance(10) {
        l.push_str(rng.pick(&[" ", "  ", "\\ "]));
    }
    l
}

/// One `.syncignore` line of the grammar.
fn line(rng: &mut Rng) -> String {
    let mut l = String::new();
    match rng.below(12) {
        0 => l.push('#'),
        1 | 2 => l.push('!'),
        3 => l.push_str("\\!"),
        4 => l.push_str("\\#"),
        _ => {}
    }
    match rng.below(8) {
        0 => l.push('/'),
        1 => l.push_str("**/"),
        2 => l.push_str("/**/"),
        _ => {}
    }
    let segments = 1 + rng.below(3);
    for s in 0..segments {
        if s > 0 {
            l.push_str(if rng.chance(90) { "/" } else { "\\/" });
        }
        segment(rng, &mut l);
    }
    match rng.below(12) {
        0 | 1 => l.push('/'),
        2 => l.push_str("/**"),
        3 => l.push(' '),
        4 => l.push_str("\\ "),
        5 => l.push_str("  "),
        6 => l.push('\\'),
        7 => l.push_str("\\/"),
        _ => {}
    }
    l
}

fn segment(rng: &mut Rng, l: &mut String) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(14) {
            0 => l.push('*'),
            1 => l.push_str("**"),
            2 => l.push('?'),
            3 | 4 => class(rng, l),
            5 => {
                l.push('{');
                l.push_str(rng.pick(&["a", "a,b", "b,", ""]));
                if rng.chance(70) {
                    l.push('}');
                }
            }
            6 => {
                l.push('\\');
                l.push_str(rng.pick(NAME_CHARS));
            }
            _ => l.push_str(rng.pick(NAME_CHARS)),
        }
    }
}

/// A bracket expression, sometimes unclosed.
fn class(rng: &mut Rng, l: &mut String) {
    l.push('[');
    match rng.below(6) {
        0 => l.push('!'),
        1 => l.push('^'),
        _ => {}
    }
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            0 => l.push_str(rng.pick(&["a-c", "z-a", "!-b", " -#", "]-b", "a-]", "\\]-a", "b-a"])),
            1 => l.push_str(rng.pick(&[
                "[:alpha:]",
                "[:punct:]",
                "[:space:]",
                "[:digit:]",
                "[:bogus:]",
                "[:",
                "[::]",
                "[:]",
            ])),
            2 => {
                l.push('\\');
                l.push_str(rng.pick(&["]", "\\", "a", "-"]));
            }
            // A single non-ASCII member is exact (a range end is not).
            3 => l.push('é'),
            _ => l.push_str(rng.pick(&["a", "b", "]", "!", "^", "-", "{", "*", " ", "#", "/"])),
        }
    }
    if rng.chance(90) {
        l.push(']');
    }
}

/// The regular files the rules keep, as the walker decides.
fn kept_by_rules(root: &Path) -> BTreeSet<Vec<u8>> {
    fn walk(root: &Path, rel: &RelPath, inherited: &Rules, out: &mut BTreeSet<Vec<u8>>) {
        let dir = rel.under(root);
        let text = fs::read(dir.join(".syncignore")).ok();
        let (rules, errors) = inherited.with_folder(rel, text.as_deref(), &[]);
        assert!(errors.is_empty(), "{errors:?}");
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if rel.is_root() && name == ".git" {
                continue;
            }
            let path = rel.join(name.as_bytes());
            let kind = entry.file_type().unwrap();
            if rules.is_excluded(&path, kind.is_dir()) {
                continue;
            }
            if kind.is_dir() {
                walk(root, &path, &rules, out);
            } else if kind.is_file() {
                out.insert(path.as_bytes().to_vec());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, &RelPath::root(), &Rules::none(), &mut out);
    out
}

/// Git, with no configuration but its defaults, on one repository whose
/// work tree is given per call.
struct Git {
    dir: tempfile::TempDir,
}

impl Git {
    /// `None` when git is not installed.
    fn new() -> Option<Git> {
        let dir = tempfile::tempdir().unwrap();
        let status = git().arg("init").arg("-q").arg(dir.path()).status().ok()?;
        assert!(status.success(), "git init failed");
        Some(Git { dir })
    }

    /// What `ls-files` lists in `tree`: the files git does not ignore.
    fn not_ignored(&self, tree: &Path) -> BTreeSet<Vec<u8>> {
        let out = git()
            .arg("--git-dir")
            .arg(self.dir.path().join(".git"))
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
}

fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    c
}

fn show(set: &BTreeSet<Vec<u8>>) -> Vec<String> {
    set.iter()
        .map(|p| format!("{:?}", String::from_utf8_lossy(p)))
        .collect()
}

/// Compares one tree with what git keeps of it; on a difference, the report
/// names every rule file. Returns how many files the rules left out.
fn compare(
    theirs: &BTreeSet<Vec<u8>>,
    tree: &Path,
    rules: &[(PathBuf, String)],
    case: &str,
) -> usize {
    let ours = kept_by_rules(tree);
    if &ours != theirs {
        panic!(
            "{case}: treesync and git differ\nrules: {rules:#?}\nonly treesync keeps: {:?}\nonly git keeps: {:?}\nboth keep: {:?}",
            show(&ours.difference(theirs).cloned().collect()),
            show(&theirs.difference(&ours).cloned().collect()),
            show(&ours.intersection(theirs).cloned().collect()),
        );
    }
    all_files(tree) - ours.len()
}

fn all_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            match e.file_type().unwrap() {
                t if t.is_dir() && e.file_name() != ".git" => all_files(&e.path()),
                t if t.is_file() => 1,
                _ => 0,
            }
        })
        .sum()
}

#[test]
fn random_rules_keep_what_git_keeps() {
    let Some(git) = Git::new() else {
        println!("skipped: git not installed");
        return;
    };
    // Each case is a folder of one tree, which git reads in one call: with
    // no rules above them, the cases cannot see each other's.
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x0005_eed0_f9e7);
    let cases: Vec<_> = (0..CASES)
        .map(|case| {
            let tree = tmp.path().join(format!("case{case}"));
            let rules = random_tree(&mut rng, &tree);
            (tree, rules)
        })
        .collect();
    let listed = git.not_ignored(tmp.path());
    let mut excluding = 0;
    for (case, (tree, rules)) in cases.iter().enumerate() {
        let prefix = format!("case{case}/");
        let theirs = listed
            .iter()
            .filter_map(|p| Some(p.strip_prefix(prefix.as_bytes())?.to_vec()))
            .collect();
        if compare(&theirs, tree, rules, &prefix) > 0 {
            excluding += 1;
        }
    }
    println!("{excluding} of {CASES} cases left files out");
    assert!(
        excluding > CASES / 2,
        "the grammar must exclude often enough to test anything"
    );
}

const CASES: usize = 400;

/// Each line of the known differences alone, on one tree of matching names.
#[test]
fn known_differences_keep_what_git_keeps() {
    let Some(git) = Git::new() else {
        println!("skipped: git not installed");
        return;
    };
    let names = [
        "a", "b", "ab", "abc", "{a,b}", "{a", "a}", "z", "y", "-", "]", "[", "[a", "x ", "x",
        "x\\", "#a", "!a", "a*", "\\", "é", "aé", "A", "5", "\t", "ü", "b\u{7f}", "\u{1}",
        "c\u{b}", "\u{c}", "\r",
    ];
    let folders = ["", "a", "ab", "abx", "a/b", "ab/x", "d/{a,b}", "d/e/f"];
    let lines = [
        "{a,b}",
        "{a",
        "a}",
        "{a,b}/",
        "[z-a]",
        "[!z-a]",
        "[a-]",
        "[]a]",
        "[!]a]",
        "[]",
        "[a",
        "a**/b",
        "ab**/c",
        "ab**",
        "a/b**",
        "**a",
        "a**",
        "***/b",
        "/**",
        "**/",
        "a/**/",
        "x\\ ",
        "x ",
        "x\\",
        "\\#a",
        "\\!a",
        "!a",
        "!/a",
        "#a",
        "a/b",
        "/a",
        "d/**/f",
        "d/**",
        "**/b",
        "[[:alpha:]]",
        "[[:digit:]]",
        "[[:space:]]",
        "[[:punct:]]",
        "[[:upper:]]",
        "[[:bogus:]]",
        "[[:]",
        "[[:alpha:]-]",
        "[\\]]",
        "[a\\-z]",
        "a\\*",
        "\\*",
        "?",
        "??",
        "a?",
        "[é]",
        "?é",
        "a\\/",
        "a\\/b",
        "a/**\\/b",
        "//a",
        "a//",
        "[/]",
        "a[/]b",
        "[!/]",
        "[!a]",
        "[[:blank:]]",
        "[[:cntrl:]]",
        "[[:graph:]]",
        "[[:print:]]",
        "[[:lower:]]",
        "[[:alnum:]]",
        "[[:xdigit:]]",
        "[!é]",
        "??",
        "???",
        "[é]?",
        "?[é]",
        "[!é]?",
        "?[!é]",
        "c[[:space:]]",
        "c[[:cntrl:]]",
    ];
    let tmp = tempfile::tempdir().unwrap();
    for folder in folders {
        fs::create_dir_all(tmp.path().join(folder)).unwrap();
    }
    for folder in folders {
        let dir = tmp.path().join(folder);
        for n in names {
            let path = dir.join(n);
            if !path.exists() {
                fs::write(path, b"x").unwrap();
            }
        }
    }
    for line in lines {
        for negated_after in [false, true] {
            let text = if negated_after {
                format!("*\n!{line}\n")
            } else {
                format!("{line}\n")
            };
            fs::write(tmp.path().join(".syncignore"), &text).unwrap();
            let theirs = git.not_ignored(tmp.path());
            compare(&theirs, tmp.path(), &[(PathBuf::new(), text.clone())], line);
        }
    }
}
