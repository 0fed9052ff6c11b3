//! `--config FILE`: several folder pairs in one process.
//!
//! The file is TOML. Keys before the first table are options for every
//! pair; each `[[sync]]` table is one pair: `source`, `replica`, an
//! optional `interval` and `name`, and any other option of the command
//! line under its long name. Each pair is read as a command line (the
//! options given beside `--config`, the file's global keys, the table's
//! keys, then SOURCE REPLICA [INTERVAL]) by the same parser, so an option
//! means the same in both places and is checked the same way.

use crate::cli::Cli;
use clap::Parser;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why a configuration file cannot be used: exit 2, naming the line.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("configuration file {path}, line {line}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("configuration file {path} has no [[sync]] table: nothing to mirror")]
    Empty { path: PathBuf },
    #[error("pairs {a} and {b} overlap ({what}): one would mirror the other's files, or both write one replica")]
    Overlap { a: String, b: String, what: String },
}

/// One pair: its name (the table's `name`, else its number from 1) and
/// its command line, parsed.
pub struct Pair {
    pub name: String,
    pub cli: Cli,
}

/// Reads the pairs of `path`; `given` is the rest of the command line
/// (without the program's name and `--config FILE`).
pub fn read(path: &Path, given: &[OsString]) -> Result<Vec<Pair>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FileError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let at = |line: usize, message: String| FileError::At {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut global = Vec::new();
    let mut tables = Vec::new();
    for (key, value) in &table {
        if key == "sync" {
            let Some(list) = value.as_array() else {
                return Err(at(
                    line_of(&text, key, 0),
                    "`sync` must be [[sync]] tables".into(),
                ));
            };
            for (i, t) in list.iter().enumerate() {
                match t.as_table() {
                    Some(t) => tables.push(t),
                    None => return Err(at(line_of(&text, "[[sync]]", i), "not a table".into())),
                }
            }
        } else {
            global.extend(option_args(key, value).map_err(|m| at(line_of(&text, key, 0), m))?);
        }
    }
    if tables.is_empty() {
        return Err(FileError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut pairs = Vec::new();
    for (i, t) in tables.into_iter().enumerate() {
        let header = nth_line(&text, "[[sync]]", i);
        let mut args: Vec<OsString> = vec!["treesync".into()];
        args.extend(given.iter().cloned());
        args.extend(global.iter().cloned());
        let mut roots = Vec::new();
        let mut name = (i + 1).to_string();
        for (key, value) in t {
            let line = line_after(&text, key, header);
            match key.as_str() {
                "name" => match value.as_str() {
                    Some(n) => name = n.to_string(),
                    None => return Err(at(line, "`name` must be a string".into())),
                },
                "source" | "replica" | "interval" => {}
                // One process, one log and one terminal for every pair.
                "log-file" | "log-format" | "log-max-size" | "quiet" | "verbose" | "jobs" => {
                    return Err(at(
                        line,
                        format!("`{key}` applies to every pair: set it before the first [[sync]]"),
                    ))
                }
                _ => args.extend(option_args(key, value).map_err(|m| at(line, m))?),
            }
        }
        for key in ["source", "replica", "interval"] {
            match t.get(key) {
                Some(toml::Value::String(s)) => roots.push(OsString::from(s)),
                Some(toml::Value::Integer(n)) if key == "interval" => {
                    roots.push(n.to_string().into())
                }
                Some(_) => {
                    let line = line_after(&text, key, header);
                    return Err(at(line, format!("`{key}` must be a string")));
                }
                None if key == "interval" => {}
                None => return Err(at(header, format!("[[sync]] {name} has no `{key}`"))),
            }
        }
        // Options before the roots, so that `--` style values stay theirs.
        args.push("--".into());
        args.extend(roots);
        let cli = Cli::try_parse_from(&args).map_err(|e| {
            let message = e.render().to_string();
            let message = message
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            at(header, format!("[[sync]] {name}: {message}"))
        })?;
        pairs.push(Pair { name, cli });
    }
    Ok(pairs)
}

/// Refuses pairs of which one's replica is, holds, or is inside another's
/// source or replica.
pub fn check_overlaps(roots: &[(String, PathBuf, PathBuf)]) -> Result<(), FileError> {
    let nested = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    for (i, (a, a_src, a_rep)) in roots.iter().enumerate() {
        for (b, b_src, b_rep) in &roots[i + 1..] {
            let what = if nested(a_rep, b_rep) {
                "their replicas"
            } else if nested(a_rep, b_src) {
                "the first's replica and the second's source"
            } else if nested(b_rep, a_src) {
                "the second's replica and the first's source"
            } else {
                continue;
            };
            return Err(FileError::Overlap {
                a: a.clone(),
                b: b.clone(),
                what: what.into(),
            });
        }
    }
    Ok(())
}

/// `key = value` as command-line words: `true` is the flag, `false`
/// nothing, a string or number its value, an array the option once per
/// item.
fn option_args(key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = OsString::from(format!("--{key}"));
    let word = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(OsString::from(s)),
        toml::Value::Integer(n) => Ok(n.to_string().into()),
        toml::Value::Float(f) => Ok(f.to_string().into()),
        _ => Err(format!(
            "`{key}`: expected a string, a number or true/false"
        )),
    };
    Ok(match value {
        toml::Value::Boolean(true) => vec![flag],
        toml::Value::Boolean(false) => Vec::new(),
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                out.push(flag.clone());
                out.push(word(item)?);
            }
            out
        }
        other => vec![flag, word(other)?],
    })
}

/// The line (from 1) of the `n`th line starting with `start` (trimmed),
/// else 1.
fn nth_line(text: &str, start: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(start))
        .nth(n)
        .map_or(1, |(i, _)| i + 1)
}

fn line_of(text: &str, key: &str, n: usize) -> usize {
    nth_line(text, key, n)
}

/// The first line from `after` on that starts with `key`.
fn line_after(text: &str, key: &str, after: usize) -> usize {
    text.lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| l.trim_start().starts_with(key))
        .map_or(after, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("pairs.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn tables_are_command_lines_with_the_global_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "checksum = true\nexclude = [\"*.tmp\"]\n\n[[sync]]\nname = \"docs\"\nsource = \"/a\"\nreplica = \"/b\"\ninterval = 60\n\n[[sync]]\nsource = \"/c\"\nreplica = \"/d\"\nno-renames = true\n",
        );
        let pairs = read(&p, &["--dry-run".into()]).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].name, "docs");
        assert_eq!(pairs[1].name, "2");
        let (a, b) = (&pairs[0].cli, &pairs[1].cli);
        assert!(a.checksum && b.checksum && a.dry_run && b.dry_run);
        assert_eq!(a.exclude, ["*.tmp"]);
        assert_eq!(a.interval, Some(std::time::Duration::from_secs(60)));
        assert!(b.interval.is_none() && b.no_renames && !a.no_renames);
        assert_eq!(b.source.as_deref(), Some(Path::new("/c")));
    }

    #[test]
    fn a_bad_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[[sync]]\nsource = \"/a\"\nreplica = \"/b\"\nno-such-option = true\n",
                "line 1",
                "no-such-option",
            ),
            ("[[sync]]\nsource = \"/a\"\n", "line 1", "replica"),
            ("x = [\n", "line 1", "TOML"),
            ("checksum = true\n", "", "no [[sync]]"),
            (
                "[[sync]]\nsource = \"/a\"\nreplica = \"/b\"\nmax-delete = \"lots\"\n",
                "line 1",
                "max-delete",
            ),
            (
                "[[sync]]\nsource = \"/a\"\nreplica = \"/b\"\nlog-file = \"x\"\n",
                "line 4",
                "every pair",
            ),
        ];
        for (text, line, what) in cases {
            let e = read(&write(&dir, text), &[]).err().expect(text).to_string();
            assert!(e.contains(line) && e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn overlapping_pairs_are_refused() {
        let pair = |n: &str, s: &str, r: &str| (n.to_string(), PathBuf::from(s), PathBuf::from(r));
        assert!(check_overlaps(&[pair("a", "/s1", "/r1"), pair("b", "/s2", "/r2")]).is_ok());
        for (second, what) in [
            (pair("b", "/s2", "/r1/sub"), "replicas"),
            (pair("b", "/r1", "/r2"), "source"),
            (pair("b", "/s2", "/s1/in"), "source"),
        ] {
            let e = check_overlaps(&[pair("a", "/s1", "/r1"), second]).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
    }
}
