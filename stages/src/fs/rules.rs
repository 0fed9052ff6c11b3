//! `.syncignore` rules, in gitignore syntax, matched with the `ignore`
//! crate's gitignore matcher and nothing else (no `.gitignore`, no global
//! git configuration, hidden files are not special).
//!
//! The rules in force for an entry are the stack of `.syncignore` files from
//! the root down to its folder; the deepest folder whose rules match the
//! entry decides, so a `!pattern` in a subfolder un-ignores what a parent
//! ignored. `--exclude` lines count as if they were appended to the root's
//! `.syncignore`.
//!
//! Patterns are matched against the path relative to the folder that holds
//! them, taken as a slice of the entry's `RelPath`: matching needs neither
//! real paths nor allocations. A folder without a `.syncignore` shares its
//! parent's stack, and a tree without rules has an empty stack, which the
//! walker checks once per folder instead of matching every entry.

use crate::contract::relpath::RelPath;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, Mode, OFlags};
use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

/// The rules in force in one folder: its own layer on top of its parents'.
/// Cloning is cheap (a shared pointer).
#[derive(Clone, Default)]
pub struct Rules(Option<Arc<Layer>>);

/// The rules one folder adds.
struct Layer {
    /// The folder whose `.syncignore` these are; patterns are relative to it.
    folder: RelPath,
    matcher: Gitignore,
    parent: Rules,
}

/// One line that could not be turned into a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// True for a line of the `.syncignore` file, false for an `--exclude`.
    pub in_file: bool,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Rules {
    /// No rules in force: nothing is excluded.
    pub fn none() -> Self {
        Rules(None)
    }

    /// True when no folder on the way down had any rule.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The rules in force in `folder`: these ones, plus the folder's own
    /// `.syncignore` content (`file`, if it has one) and `extra` lines after
    /// it. Lines that cannot be parsed are left out and reported; the others
    /// still apply.
    pub fn with_folder(
        &self,
        folder: &RelPath,
        file: Option<&[u8]>,
        extra: &[String],
    ) -> (Rules, Vec<RuleError>) {
        let mut errors = Vec::new();
        // The builder's root only names the rules; matching never strips it
        // because candidates are relative paths (see `is_excluded`).
        let mut builder = GitignoreBuilder::new(virtual_root(folder));
        if let Some(text) = file {
            add_file_lines(&mut builder, text, &mut errors);
        }
        for line in extra {
            if let Err(e) = builder.add_line(None, line) {
                errors.push(RuleError {
                    in_file: false,
                    message: format!("--exclude {line:?}: {e}"),
                });
            }
        }
        let matcher = match builder.build() {
            Ok(m) => m,
            Err(e) => {
                errors.push(RuleError {
                    in_file: file.is_some(),
                    message: format!("cannot build the rules: {e}"),
                });
                return (self.clone(), errors);
            }
        };
        if matcher.is_empty() {
            // Keep "no rules" cheap: a folder whose file holds only comments
            // shares its parent's stack.
            return (self.clone(), errors);
        }
        let layer = Layer {
            folder: folder.clone(),
            matcher,
            parent: self.clone(),
        };
        (Rules(Some(Arc::new(layer))), errors)
    }

    /// True when the rules in force exclude `path` (which lies below every
    /// folder of the stack): the deepest folder whose rules match decides.
    pub fn is_excluded(&self, path: &RelPath, is_dir: bool) -> bool {
        let mut rules = self;
        while let Some(layer) = &rules.0 {
            let below = relative_to(path, &layer.folder);
            match layer
                .matcher
                .matched(Path::new(OsStr::from_bytes(below)), is_dir)
            {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => rules = &layer.parent,
            }
        }
        false
    }
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut rules = self;
        while let Some(layer) = &rules.0 {
            list.entry(&(&layer.folder, layer.matcher.len()));
            rules = &layer.parent;
        }
        list.finish()
    }
}

/// Feeds the lines of a `.syncignore` to `builder` as git reads them: `\n`
/// or `\r\n` line ends, a leading byte order mark ignored.
fn add_file_lines(builder: &mut GitignoreBuilder, text: &[u8], errors: &mut Vec<RuleError>) {
    let text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text);
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let lineno = i + 1;
        let result = match std::str::from_utf8(raw) {
            Ok(line) => builder
                .add_line(None, line)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(_) => Err("not valid UTF-8".to_string()),
        };
        if let Err(message) = result {
            errors.push(RuleError {
                in_file: true,
                message: format!("line {lineno}: {message}"),
            });
        }
    }
}

/// `/` + the folder: a name for the rules that no relative candidate path
/// can start with.
fn virtual_root(folder: &RelPath) -> std::path::PathBuf {
    let mut root = Vec::with_capacity(folder.as_bytes().len() + 1);
    root.push(b'/');
    root.extend_from_slice(folder.as_bytes());
    OsStr::from_bytes(&root).into()
}

/// The part of `path` below `folder`, as a slice (no allocation).
fn relative_to<'a>(path: &'a RelPath, folder: &RelPath) -> &'a [u8] {
    debug_assert!(path.starts_with(folder) && path != folder);
    let bytes = path.as_bytes();
    if folder.is_root() {
        bytes
    } else {
        &bytes[folder.as_bytes().len() + 1..]
    }
}

/// Reads the `.syncignore` of the folder `dir`. Never follows a link; opens
/// non-blocking so that a fifo swapped in under that name cannot hang the
/// walk.
pub fn read_ignore_file(dir: impl AsFd) -> io::Result<Vec<u8>> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd: OwnedFd = rfs::openat(dir, c".syncignore", flags, Mode::empty())?;
    let stat = rfs::fstat(&fd)?;
    if rfs::FileType::from_raw_mode(stat.st_mode) != rfs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = Vec::with_capacity(stat.st_size.max(0) as usize);
    std::fs::File::from(fd).read_to_end(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::from_str_lossy(s)
    }

    fn rules(layers: &[(&str, &str)]) -> Rules {
        let mut r = Rules::none();
        for (folder, text) in layers {
            let (next, errors) = r.with_folder(&p(folder), Some(text.as_bytes()), &[]);
            assert!(errors.is_empty(), "{errors:?}");
            r = next;
        }
        r
    }

    #[test]
    fn no_rules_exclude_nothing() {
        let r = Rules::none();
        assert!(r.is_empty());
        assert!(!r.is_excluded(&p("a"), false));
        let (r, errors) = r.with_folder(&RelPath::root(), Some(b"# only a comment\n\n"), &[]);
        assert!(errors.is_empty());
        assert!(r.is_empty(), "a file without patterns adds no layer");
    }

    #[test]
    fn unanchored_patterns_match_at_any_depth() {
        let r = rules(&[("", "*.tmp\n")]);
        assert!(r.is_excluded(&p("x.tmp"), false));
        assert!(r.is_excluded(&p("a/b/x.tmp"), false));
        assert!(!r.is_excluded(&p("a/b/x.txt"), false));
    }

    #[test]
    fn anchored_patterns_match_only_at_their_folder() {
        let root = rules(&[("", "/top\nsub/file\n")]);
        assert!(root.is_excluded(&p("top"), false));
        assert!(root.is_excluded(&p("sub/file"), false));
        let r = rules(&[("", "/top\nsub/file\n"), ("a", "/here\n")]);
        assert!(!r.is_excluded(&p("a/top"), false));
        assert!(!r.is_excluded(&p("a/sub/file"), false));
        assert!(r.is_excluded(&p("a/here"), false));
        assert!(!r.is_excluded(&p("a/b/here"), false));
    }

    #[test]
    fn folder_only_patterns_need_a_folder() {
        let r = rules(&[("", "build/\n")]);
        assert!(r.is_excluded(&p("build"), true));
        assert!(r.is_excluded(&p("x/build"), true));
        assert!(!r.is_excluded(&p("build"), false));
    }

    #[test]
    fn double_star_and_negation() {
        let r = rules(&[("", "logs/**/*.log\n*.bak\n!keep.bak\n")]);
        assert!(r.is_excluded(&p("logs/a/b/x.log"), false));
        assert!(r.is_excluded(&p("logs/x.log"), false));
        assert!(!r.is_excluded(&p("other/x.log"), false));
        assert!(r.is_excluded(&p("a.bak"), false));
        assert!(!r.is_excluded(&p("d/keep.bak"), false));
    }

    #[test]
    fn the_deepest_matching_folder_decides() {
        let r = rules(&[
            ("", "*.log\nsecret\n"),
            ("a", "!important.log\n"),
            ("a/b", "x\n"),
        ]);
        assert!(!r.is_excluded(&p("a/b/important.log"), false));
        assert!(r.is_excluded(&p("a/b/other.log"), false));
        assert!(r.is_excluded(&p("a/b/x"), false));
        assert!(r.is_excluded(&p("a/b/secret"), false));
        // A deeper ignore overrides a parent's whitelist too.
        let r = rules(&[("", "!keep\n"), ("a", "keep\n")]);
        assert!(r.is_excluded(&p("a/keep"), false));
    }

    #[test]
    fn extra_lines_come_after_the_file() {
        let extra = vec!["*.o".to_string(), "!main.c".to_string()];
        let (r, errors) = Rules::none().with_folder(&RelPath::root(), Some(b"*.c\n"), &extra);
        assert!(errors.is_empty());
        assert!(r.is_excluded(&p("x/y.o"), false));
        assert!(r.is_excluded(&p("x/y.c"), false));
        assert!(
            !r.is_excluded(&p("x/main.c"), false),
            "the exclude wins, coming last"
        );
    }

    #[test]
    fn crlf_bom_and_non_utf8_names() {
        let r = rules(&[("", "\u{feff}a.txt\r\ncaf*\r\n")]);
        assert!(r.is_excluded(&p("a.txt"), false));
        let name = RelPath::new(b"d/caf\xe9").unwrap();
        assert!(r.is_excluded(&name, false));
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_applies() {
        let (r, errors) = Rules::none().with_folder(&p("d"), Some(b"ok\n\xff\xfe\n[z-a]\n"), &[]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.starts_with("line 2:"), "{errors:?}");
        assert!(errors[1].message.starts_with("line 3:"), "{errors:?}");
        assert!(r.is_excluded(&p("d/ok"), false));
    }

    #[test]
    fn reads_the_file_through_the_folder_handle() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".syncignore"), b"x\n").unwrap();
        let dir = rfs::open(
            tmp.path(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(read_ignore_file(&dir).unwrap(), b"x\n");
        std::fs::remove_file(tmp.path().join(".syncignore")).unwrap();
        std::os::unix::fs::symlink("elsewhere", tmp.path().join(".syncignore")).unwrap();
        assert!(read_ignore_file(&dir).is_err(), "links are not followed");
    }
}
