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
//!
//! A line means what it means to git (`git ls-files --others
//! --exclude-per-directory=.syncignore` lists exactly the files mirrored).
//! The `ignore` crate's own reading of a line differs from git's: braces
//! are alternatives, `[z-a]` and an unclosed `[` or `{` are errors, `a**/b`
//! and `\/` are read its own way. So no line reaches it as written: each is
//! parsed here as git parses it (`git_line`, after git's dir.c and
//! wildmatch.c) and handed over as one or two lines in which every literal
//! character is escaped, so that the crate's parser has nothing left to
//! interpret but what git means:
//!
//! - trailing spaces are cut as git cuts them, `\` escapes any character,
//!   `\!` and `\#` included (git has no other rule for those), a final
//!   unpaired `\` matches nothing;
//! - `!` negates, one trailing `/` makes a folder-only rule, a `/` anywhere
//!   else (even escaped, or inside brackets) anchors the pattern at its
//!   folder; an unanchored pattern is given with an explicit `**/` prefix,
//!   an anchored one with a leading `/`;
//! - `{`, `}` and `,` are literal characters, escaped;
//! - a bracket expression is evaluated as wildmatch does (`]` first is a
//!   member, `!` or `^` negates, `\` escapes, `-` between two members is a
//!   range and a reversed one is empty, `[:alpha:]` and the other POSIX
//!   classes in their ASCII meaning) into a set of bytes, written back as a
//!   plain class (or a literal, or `?` for a negated empty set); a class
//!   never matches `/`; a set that cannot match, an unclosed `[` or an
//!   unknown `[:name:]` makes a pattern that matches nothing, so the line
//!   is dropped;
//! - `**` is recursive only where git says so: after the start of the
//!   pattern or a `/` and before its end or a `/`; elsewhere it is `*`.
//!   Git matches the literal start of an anchored pattern (up to its first
//!   wildcard) separately, so a `**` right after it counts as starting the
//!   pattern even after a letter: `ab**/c` matches `abc`, `ab/c` and
//!   `abx/y/c`, given to the crate as the two lines `/abc` and `/ab*/**/c`
//!   (consecutive lines of one kind are a union).
//!
//! The walk needs nothing more: it never enters an excluded folder, so a
//! `!` line cannot bring back a file below one, as in git, and the
//! `.syncignore` files are entries like any other (git lists them too).
//!
//! Two constructs cannot be expressed through the crate's patterns and are
//! the documented exceptions (README, `.syncignore`): a line that is not
//! valid UTF-8 is an error, and a bracket range with a non-ASCII end.

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
            if let Err(e) = add_git_line(&mut builder, line) {
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
            Ok(line) => add_git_line(builder, line).map_err(|e| e.to_string()),
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

/// Adds one line of gitignore syntax to `builder` with git's meaning (see
/// the module comment): as the lines `git_line` turns it into.
fn add_git_line(builder: &mut GitignoreBuilder, line: &str) -> Result<(), ignore::Error> {
    for glob in git_line(line.as_bytes()) {
        builder.add_line(None, &glob)?;
    }
    Ok(())
}

/// One pattern element, as wildmatch reads it.
#[derive(Clone, Debug, PartialEq)]
enum Token {
    Lit(u8),
    /// `?`: one byte, never `/`.
    Any,
    /// `*`, or a `**` that is not recursive: bytes up to a `/`.
    Star,
    /// A recursive `**/`: nothing, or anything that ends with a `/`.
    Rec,
    /// A recursive `**` at the end: anything.
    All,
    Class(Class),
}

/// A bracket expression: the ASCII bytes it holds, and the non-ASCII
/// characters its members belong to (whose UTF-8 bytes git takes as members
/// one by one, as the crate does with a character in a class).
#[derive(Clone, Debug, PartialEq)]
struct Class {
    negated: bool,
    ascii: u128,
    other: Vec<char>,
}

/// Turns a line of gitignore syntax into the lines that, read by the
/// `ignore` crate, mean what git means by it: none for a comment, a blank
/// line or a pattern that can match nothing; two where a `**` after the
/// literal start of an anchored pattern needs a union.
fn git_line(line: &[u8]) -> Vec<String> {
    if line.first() == Some(&b'#') {
        return Vec::new();
    }
    let line = trim_trailing_spaces(line);
    let (negated, rest) = match line.strip_prefix(b"!") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (dir_only, rest) = match rest.strip_suffix(b"/") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    // Git anchors on any `/` byte left, escaped or in brackets alike.
    let anchored = rest.contains(&b'/');
    let pattern = if anchored {
        rest.strip_prefix(b"/").unwrap_or(rest)
    } else {
        rest
    };
    // Paths never end with a `/`: such a pattern matches nothing.
    if pattern.is_empty() || pattern.ends_with(b"/") {
        return Vec::new();
    }
    let Some(tokens) = wildmatch_tokens(pattern, anchored) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for glob in globs(&tokens) {
        let mut out = String::new();
        if negated {
            out.push('!');
        }
        // An explicit anchor either way: the crate adds nothing, and a
        // pattern that starts with `!` or `#` never starts the line.
        out.push_str(if anchored { "/" } else { "**/" });
        out.push_str(&glob);
        if dir_only {
            out.push('/');
        }
        lines.push(out);
    }
    lines
}

/// Git's `trim_trailing_spaces`: unescaped trailing spaces go (not tabs); a
/// line that ends with an unpaired `\` keeps them all.
fn trim_trailing_spaces(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    let mut last_space = None;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' => {
                last_space.get_or_insert(i);
            }
            b'\\' => {
                i += 1;
                if i == line.len() {
                    return line;
                }
                last_space = None;
            }
            _ => last_space = None,
        }
        i += 1;
    }
    if let Some(at) = last_space {
        end = at;
    }
    &line[..end]
}

/// Reads a pattern (negation, anchoring `/` and folder-only `/` removed) as
/// wildmatch does; `None` when it can match nothing (a final unpaired `\`,
/// an unclosed `[`, an unknown `[:name:]`).
fn wildmatch_tokens(pattern: &[u8], anchored: bool) -> Option<Vec<Token>> {
    // An anchored pattern's literal start is compared apart; wildmatch sees
    // the rest, so its first wildcard starts a pattern (`**` left boundary).
    let literal_start = pattern
        .iter()
        .position(|b| b"*?[\\".contains(b))
        .unwrap_or(pattern.len());
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' => {
                tokens.push(Token::Lit(*pattern.get(i + 1)?));
                i += 2;
            }
            b'?' => {
                tokens.push(Token::Any);
                i += 1;
            }
            b'[' => {
                let (class, next) = bracket(pattern, i)?;
                tokens.push(Token::Class(class));
                i = next;
            }
            b'*' => {
                let start = i;
                while pattern.get(i) == Some(&b'*') {
                    i += 1;
                }
                // A basename pattern is matched without WM_PATHNAME, where
                // every run of stars is `*` (a name holds no `/`).
                let left = start == literal_start || pattern[start - 1] == b'/';
                if anchored && i - start >= 2 && left {
                    match (pattern.get(i), pattern.get(i + 1)) {
                        (None, _) => {
                            tokens.push(Token::All);
                            continue;
                        }
                        (Some(b'/'), _) => {
                            tokens.push(Token::Rec);
                            i += 1;
                            continue;
                        }
                        // `**\/` crosses folders but has no empty form:
                        // anything, then `/`.
                        (Some(b'\\'), Some(b'/')) => {
                            tokens.extend([Token::Star, Token::Lit(b'/'), Token::Rec]);
                            i += 2;
                            continue;
                        }
                        _ => {}
                    }
                }
                tokens.push(Token::Star);
            }
            b => {
                tokens.push(Token::Lit(b));
                i += 1;
            }
        }
    }
    Some(tokens)
}

/// The bracket expression that opens at `pattern[open]`, evaluated as
/// wildmatch's `[` case does, and the index after its `]`; `None` when it
/// is unclosed or names an unknown class (git then matches nothing).
fn bracket(pattern: &[u8], open: usize) -> Option<(Class, usize)> {
    let mut class = Class {
        negated: false,
        ascii: 0,
        other: Vec::new(),
    };
    let mut i = open + 1;
    if matches!(pattern.get(i), Some(b'!' | b'^')) {
        class.negated = true;
        i += 1;
    }
    // The previous member, start of a range; 0 after a range or a class.
    let mut prev: u8 = 0;
    loop {
        let b = *pattern.get(i)?;
        let mut member = b;
        if b == b'\\' {
            i += 1;
            member = *pattern.get(i)?;
            class.add(pattern, i);
        } else if b == b'-' && prev != 0 && pattern.get(i + 1).is_some_and(|&n| n != b']') {
            i += 1;
            if pattern[i] == b'\\' {
                i += 1;
            }
            let hi = *pattern.get(i)?;
            class.add_range(pattern, prev, hi, i);
            member = 0;
        } else if b == b'[' && pattern.get(i + 1) == Some(&b':') {
            let name_start = i + 2;
            let close = name_start + pattern[name_start..].iter().position(|&c| c == b']')?;
            if close > name_start && pattern[close - 1] == b':' {
                class.ascii |= posix_class(&pattern[name_start..close - 1])?;
                i = close;
                member = 0;
            } else {
                // Not `[:name:]`: the `[` is a member, and reading goes on
                // right after it.
                class.ascii |= 1 << b'[';
            }
        } else {
            class.add(pattern, i);
        }
        prev = member;
        i += 1;
        if *pattern.get(i)? == b']' {
            return Some((class, i + 1));
        }
    }
}

/// The ASCII bytes of a POSIX class as git's wildmatch defines it (`ISASCII`
/// and git's own ctype).
fn posix_class(name: &[u8]) -> Option<u128> {
    let set = |f: fn(u8) -> bool| (0u8..128).filter(|&b| f(b)).fold(0u128, |s, b| s | 1 << b);
    Some(match name {
        b"alnum" => set(|b| b.is_ascii_alphanumeric()),
        b"alpha" => set(|b| b.is_ascii_alphabetic()),
        b"blank" => set(|b| b == b' ' || b == b'\t'),
        b"cntrl" => set(|b| b.is_ascii_control()),
        b"digit" => set(|b| b.is_ascii_digit()),
        b"graph" => set(|b| b.is_ascii_graphic()),
        b"lower" => set(|b| b.is_ascii_lowercase()),
        b"print" => set(|b| b.is_ascii_graphic() || b == b' '),
        b"punct" => set(|b| b.is_ascii_punctuation()),
        b"space" => set(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')),
        b"upper" => set(|b| b.is_ascii_uppercase()),
        b"xdigit" => set(|b| b.is_ascii_hexdigit()),
        _ => return None,
    })
}

impl Class {
    /// Adds the member `pattern[at]`: an ASCII byte, or the character that
    /// a non-ASCII byte starts (its other bytes follow as members too).
    fn add(&mut self, pattern: &[u8], at: usize) {
        let b = pattern[at];
        if b.is_ascii() {
            self.ascii |= 1 << b;
        } else if let Some(c) = char_at(pattern, at) {
            self.other.push(c);
        }
    }

    /// Adds the bytes `lo..=hi` (none if reversed); a non-ASCII end adds
    /// its character instead (the documented exception).
    fn add_range(&mut self, pattern: &[u8], lo: u8, hi: u8, hi_at: usize) {
        for b in lo..=hi.min(127) {
            self.ascii |= 1 << b;
        }
        if !hi.is_ascii() {
            let start = (0..=hi_at)
                .rev()
                .find(|&j| pattern[j] >= 0xc0 || pattern[j].is_ascii());
            if let Some(c) = start.and_then(|j| char_at(pattern, j)) {
                self.other.push(c);
            }
        }
    }
}

/// The character that starts at `pattern[at]`, if one does.
fn char_at(pattern: &[u8], at: usize) -> Option<char> {
    let end = (at + 4).min(pattern.len());
    (at + 1..=end)
        .find_map(|e| std::str::from_utf8(&pattern[at..e]).ok())
        .and_then(|s| s.chars().next())
        .filter(|c| !c.is_ascii())
}

/// The crate's globs for `tokens` (their union): one, or two where a
/// recursive `**` follows a literal character rather than a `/`, which the
/// crate cannot read (it would take `ab**` as `ab*`). Empty when a bracket
/// expression can match nothing.
fn globs(tokens: &[Token]) -> Vec<String> {
    let mut globs = vec![String::new()];
    let mut literal = Vec::new();
    for (k, token) in tokens.iter().enumerate() {
        if let Token::Lit(b) = token {
            literal.push(*b);
            continue;
        }
        let mut text = String::new();
        push_literal(&mut text, &std::mem::take(&mut literal));
        let at_boundary = k == 0 || tokens[k - 1] == Token::Lit(b'/');
        let choices: Vec<String> = match token {
            Token::Lit(_) => unreachable!(),
            Token::Any => vec![format!("{text}?")],
            Token::Star => vec![format!("{text}*")],
            Token::Rec if at_boundary => vec![format!("{text}**/")],
            // `ab(.*/)?c`: `abc`, or `ab`, anything, `/`, `c`.
            Token::Rec => vec![text.clone(), format!("{text}*/**/")],
            Token::All if at_boundary => vec![format!("{text}**")],
            Token::All => vec![format!("{text}*"), format!("{text}*/**")],
            Token::Class(class) => match class_glob(class) {
                Some(glob) => vec![format!("{text}{glob}")],
                None => return Vec::new(),
            },
        };
        globs = globs
            .iter()
            .flat_map(|g| choices.iter().map(move |c| format!("{g}{c}")))
            .collect();
    }
    let mut text = String::new();
    push_literal(&mut text, &literal);
    globs.iter_mut().for_each(|g| g.push_str(&text));
    globs
}

/// Appends literal bytes, every ASCII character but letters, digits and `/`
/// escaped (a `\` as `[\]`, so that no glob ends with a `\` before the
/// folder-only `/`).
fn push_literal(out: &mut String, bytes: &[u8]) {
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '\\' => out.push_str("[\\]"),
            c if c.is_ascii_alphanumeric() || c == '/' || !c.is_ascii() => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
}

/// A bracket expression in the crate's syntax, which has no escapes in
/// brackets: `]` goes first, `-` first or last, and a non-negated class
/// never starts with `!` or `^`; a single member is a literal. `None` when
/// it matches nothing.
fn class_glob(class: &Class) -> Option<String> {
    // Wildmatch never matches `/` with a class; names hold no NUL.
    let mut ascii = class.ascii & !(1 << b'/') & !1;
    let members = ascii.count_ones() as usize + class.other.len();
    if members == 0 {
        return class.negated.then(|| "?".to_string());
    }
    if !class.negated && members == 1 && class.other.is_empty() {
        let mut out = String::new();
        push_literal(&mut out, &[ascii.trailing_zeros() as u8]);
        return Some(out);
    }
    let close = ascii & 1 << b']' != 0;
    let dash = ascii & 1 << b'-' != 0;
    ascii &= !(1 << b']' | 1 << b'-');
    let mut pieces: Vec<String> = class.other.iter().map(|c| c.to_string()).collect();
    let mut b = 0u8;
    while b < 128 {
        if ascii & 1 << b == 0 {
            b += 1;
            continue;
        }
        let lo = b;
        while b < 127 && ascii & 1 << (b + 1) != 0 {
            b += 1;
        }
        pieces.push(if lo == b {
            char::from(lo).to_string()
        } else {
            format!("{}-{}", char::from(lo), char::from(b))
        });
        b += 1;
    }
    let mut out = String::from(if class.negated { "[!" } else { "[" });
    if close {
        out.push(']');
    } else if dash {
        out.push('-');
    } else if !class.negated {
        // `[!` or `[^` would negate: lead with another member; only `!`
        // and `^` themselves are left as a brace alternative.
        let leads_ok = |p: &String| !p.starts_with(['!', '^']);
        match pieces.iter().position(leads_ok) {
            Some(k) => {
                let lead = pieces.remove(k);
                pieces.insert(0, lead);
            }
            None => {
                let range = pieces.iter().position(|p| p.len() > 1);
                match range {
                    Some(k) => {
                        // `!-#` becomes `"-#` first and `!` later.
                        let p = pieces.remove(k);
                        let lo = p.as_bytes()[0];
                        let rest = p[1..].trim_start_matches('-');
                        let hi = rest.as_bytes()[0];
                        let first = if lo + 1 == hi {
                            char::from(hi).to_string()
                        } else {
                            format!("{}-{}", char::from(lo + 1), char::from(hi))
                        };
                        pieces.insert(0, first);
                        pieces.push(char::from(lo).to_string());
                    }
                    None => return Some("{\\!,\\^}".to_string()),
                }
            }
        }
    }
    for p in &pieces {
        out.push_str(p);
    }
    if close && dash {
        out.push('-');
    }
    out.push(']');
    Some(out)
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
mod git_oracle;

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
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.starts_with("line 2:"), "{errors:?}");
        assert!(r.is_excluded(&p("d/ok"), false));
        assert!(
            r.is_excluded(&p("d/z"), false),
            "a reversed range is empty, as in git: `[z-a]` is `z`"
        );
    }

    #[test]
    fn lines_mean_what_they_mean_to_git() {
        let r = rules(&[(
            "",
            "{a,b}\n[z-a]\nab**/c\nx\\ \n\\#h\n[q\n{r\n[!]]/\n[[:digit:]]\n",
        )]);
        let excluded = |s: &str| r.is_excluded(&p(s), false);
        assert!(
            excluded("{a,b}") && !excluded("a") && !excluded("b"),
            "braces are literal"
        );
        assert!(excluded("z") && !excluded("y"), "a reversed range is empty");
        for path in ["abc", "ab/c", "abx/c", "ab/x/y/c"] {
            assert!(excluded(path), "{path}: `**` after the literal start");
        }
        assert!(!excluded("ab/x") && !excluded("xab/c"));
        assert!(
            excluded("x ") && !excluded("x"),
            "an escaped trailing space stays"
        );
        assert!(excluded("#h"));
        assert!(
            !excluded("[q") && !excluded("q"),
            "an unclosed `[` matches nothing"
        );
        assert!(excluded("{r"), "an unclosed `{{` is literal");
        assert!(r.is_excluded(&p("k"), true) && !r.is_excluded(&p("]"), true));
        assert!(excluded("d/7") && !excluded("d/x"));
    }

    #[test]
    fn git_lines_become_escaped_globs() {
        let g = |line: &str| git_line(line.as_bytes());
        assert_eq!(g("{a,b}"), ["**/\\{a\\,b\\}"]);
        assert_eq!(g("!/ab**/c/"), ["!/abc/", "!/ab*/**/c/"]);
        assert_eq!(g("a/**"), ["/a/**"]);
        assert_eq!(g("[z-a]"), ["**/z"]);
        assert_eq!(g("[!z-a]"), ["**/[!z]"]);
        assert_eq!(g("a/[!/]"), ["/a/?"]);
        assert_eq!(g("[]a-c-]"), ["**/[]a-c-]"]);
        assert_eq!(g("[!^]"), ["**/[!^]"]);
        assert_eq!(g("[\\!^]"), ["**/{\\!,\\^}"]);
        assert_eq!(g("x\\"), Vec::<String>::new());
        assert_eq!(g("a\\/"), Vec::<String>::new());
        assert_eq!(g("[[:bogus:]]"), Vec::<String>::new());
        assert_eq!(g("x\\\\ "), ["**/x[\\]"]);
        assert_eq!(g("# comment"), Vec::<String>::new());
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
