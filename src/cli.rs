//! The command line: clap's derive struct, its doc comments are the help.

use clap::{CommandFactory, Parser, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use treesync_stages::contract::options::MaxDelete;

const EXAMPLES: &str = "\
Examples:
  treesync ~/work /mnt/backup/work 60      mirror now, then every minute, until Ctrl+C
  treesync --once ~/work /mnt/backup/work  mirror once and exit
  treesync --dry-run ~/work /mnt/backup    show what would change, change nothing
  treesync -q --exclude '*.tmp' --exclude 'target/' src/ mirror/ 5m

The replica ends every sync equal to the source, less what .syncignore files
(gitignore syntax, in any folder) and --exclude leave out. Every operation and
error is appended to the log file (treesync.log by default).

With an INTERVAL, syncs start every INTERVAL (never two at once). Between them,
filesystem events on both trees are collected, so that a sync lists only the
folders that changed; a full walk runs at the start, every --rescan period and
whenever events may have been lost. --no-watch walks everything every time.

Exit status: 0 success (and a stop by Ctrl+C or SIGTERM in interval mode),
1 fatal (source missing, roots nested, log file unusable, replica locked),
2 usage error, 3 some operations failed, 4 deletions withheld by --max-delete,
130 a --once sync interrupted.";

/// Keep a replica folder equal to a source folder, once or on an interval.
#[derive(Parser, Debug)]
#[command(name = "treesync", version, about, after_help = EXAMPLES)]
pub struct Cli {
    // SOURCE and REPLICA are required, except by --generate, which is
    // exclusive: clap waives required arguments for an exclusive one; and
    // by --config, whose file names the pairs.
    /// The folder to mirror (must exist).
    #[arg(required_unless_present = "config")]
    pub source: Option<PathBuf>,

    /// The mirror; created if missing (its parent must exist). Or a
    /// bucket of an S3-compatible store, s3://BUCKET[/PREFIX], or a folder
    /// on an SSH server, sftp://[USER@]HOST[:PORT]/PATH (PATH relative to
    /// the login folder; //PATH absolute).
    #[arg(required_unless_present = "config")]
    pub replica: Option<PathBuf>,

    /// Time between syncs: seconds (60) or a duration (5m, 1h30m), at least
    /// 1 s. Omitted: sync once and exit.
    #[arg(value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Sync once and exit, even if an INTERVAL is given.
    #[arg(long)]
    pub once: bool,

    /// Append every operation and error to this file.
    #[arg(long, value_name = "PATH", default_value = "treesync.log")]
    pub log_file: PathBuf,

    /// Rotate the log file once it would pass SIZE (64MiB, 500K, 2G; 0
    /// never): it is renamed to PATH.1 (PATH.1 to PATH.2, and so on up to
    /// PATH.5; the oldest is dropped) and a new one begun. SIGHUP makes
    /// treesync open PATH again (logrotate's convention).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub log_max_size: u64,

    /// Format of the log file: text lines or JSON lines.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,

    /// Leave out paths matching PATTERN (gitignore syntax, as if in a
    /// .syncignore at the source root). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,

    /// Compare file contents by SHA-1 even where size and mtime agree.
    #[arg(long)]
    pub checksum: bool,

    /// Mtimes that differ by at most SECONDS count as equal (fractions
    /// allowed: 0.01, 2). By default the replica's timestamp granularity
    /// is probed (1 s on exFAT, 2 s on FAT); 0 compares exactly.
    #[arg(long, value_name = "SECONDS", value_parser = parse_modify_window)]
    pub modify_window: Option<Duration>,

    /// Show and log what would be done; change nothing under REPLICA.
    #[arg(long)]
    pub dry_run: bool,

    /// Check the replica against the source and change nothing: read both
    /// trees in full (SHA-1 of every file, trusting no cached digest),
    /// compare metadata, links and attributes, and report every difference
    /// as an error (`op=verify`). Exit 0 when the replica is the source's,
    /// 3 when not. One sync, whatever the INTERVAL. The answer to "has my
    /// backup rotted?"
    #[arg(long)]
    pub verify: bool,

    /// Sync into a REPLICA that is not empty and was never synced by
    /// treesync (a copy made with `cp -a`, say): its files that the source
    /// lacks will be deleted. Without it such a replica is refused.
    #[arg(long)]
    pub adopt: bool,

    /// Also delete replica entries that the exclude rules match (by
    /// default they are left alone).
    #[arg(long)]
    pub delete_excluded: bool,

    /// Do not cross filesystem boundaries in SOURCE: a folder where another
    /// filesystem is mounted is mirrored as an empty folder, and nothing
    /// below it is read (as rsync -x)
    #[arg(short = 'x', long)]
    pub one_file_system: bool,

    /// The most one sync may delete: a count (1000) or a percentage of the
    /// replica's files (50%). Above it, nothing is deleted (exit 4);
    /// 100% turns the guard off, 0 forbids deletions.
    #[arg(long, value_name = "N|P%", default_value = "50%")]
    pub max_delete: MaxDelete,

    /// Do not look for files moved or renamed in the source: copy them
    /// again and delete the old copies. By default a replica file that
    /// the source lacks, paired with a new source file of the same size
    /// and mtime (confirmed by SHA-1 where that is not sure), is renamed in
    /// the replica, and a folder whose files moved together is one rename
    /// of the folder (logged as `move`).
    #[arg(long)]
    pub no_renames: bool,

    /// Copy each name of a hard-linked source file as a file of its own.
    /// By default names that are one file in the source (hard links within
    /// SOURCE) are one file in the replica: the first is copied, the
    /// others linked to it (logged as `link`).
    #[arg(long)]
    pub no_hard_links: bool,

    /// Do not mirror extended attributes. By default `user.*` attributes
    /// are mirrored, and `trusted.*` and `security.*` too when running as
    /// root, on files and folders (not on symlinks).
    #[arg(long)]
    pub no_xattrs: bool,

    /// Do not mirror POSIX ACLs. By default access ACLs of files and
    /// folders and default ACLs of folders are mirrored (as `rsync -A`).
    #[arg(long)]
    pub no_acls: bool,

    /// Make each copied file and its folder durable (fsync) before it is
    /// reported. Slower; off by default, as in rsync and cp.
    #[arg(long)]
    pub fsync: bool,

    /// Keep the old version of each file or link that a sync replaces or
    /// deletes, moved to DIR/<sync start, UTC: 2026-05-04T093000.123Z>/<path>.
    /// DIR must be outside SOURCE and REPLICA, hold neither, and be on the replica's
    /// filesystem (nothing is copied); it is created if missing.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// With --backup-dir: at each sync, remove the folders of old versions
    /// older than DURATION (7d, 12h). By default they are all kept.
    #[arg(long, value_name = "DURATION", requires = "backup_dir", value_parser = parse_keep)]
    pub backup_keep: Option<Duration>,

    /// With an s3:// REPLICA: the store's URL (MinIO, Ceph RGW, Garage,
    /// R2, B2...); without it, AWS S3. Credentials come from the AWS
    /// environment variables or profile files, never from the command line.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// With an s3:// REPLICA: the region [default: AWS_REGION, else
    /// us-east-1].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// With an sftp:// REPLICA: the private key to log in with [default:
    /// ssh's own choice: its agent, ~/.ssh/id_*, ~/.ssh/config].
    #[arg(long, value_name = "PATH")]
    pub sftp_key: Option<PathBuf>,

    /// With an sftp:// REPLICA: the known hosts file the server's key is
    /// checked against [default: ssh's own, ~/.ssh/known_hosts]. An unknown
    /// key is refused, with its fingerprint in the message.
    #[arg(long, value_name = "FILE")]
    pub sftp_known_hosts: Option<PathBuf>,

    /// With an INTERVAL: do not watch for filesystem events; every sync
    /// walks both trees completely.
    #[arg(long)]
    pub no_watch: bool,

    /// With an INTERVAL and watching: walk both trees completely this
    /// often (and whenever events may have been lost), as a safety net.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_interval)]
    pub rescan: Duration,

    /// After each sync, run CMD with `sh -c`: the sync's summary (the `tick`
    /// log entry's keys) as one JSON object on its standard input, and
    /// TREESYNC_SEQ, TREESYNC_ERRORS and TREESYNC_EXIT (the exit status of
    /// that sync alone) in its environment. A failure or a run past 60 s
    /// (the command is then killed) is a warning; the sync goes on.
    #[arg(long, value_name = "CMD")]
    pub on_tick: Option<String>,
    /// How long the --on-tick command may run (for tests).
    #[arg(long, hide = true, default_value = "60", value_parser = parse_interval)]
    pub on_tick_timeout: Duration,
    /// Parallel workers for walking, hashing and copying [default: cores].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,

    /// Terminal: only errors and sync summaries, no progress bar (the log
    /// file keeps all).
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Terminal: also show what was compared and why, and the time each
    /// stage of a sync took.
    #[arg(short, long)]
    pub verbose: bool,

    /// Run every folder pair of FILE (TOML) in one process: `[[sync]]`
    /// tables with `source`, `replica`, an optional `interval` and `name`,
    /// and any option of this command line by its long name (`checksum =
    /// true`, `exclude = ["*.tmp"]`); options before the first table apply
    /// to every pair. Options given here apply to every pair too.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["source", "replica", "interval"])]
    pub config: Option<PathBuf>,

    /// Print the man page (roff, treesync.1) or a shell's completion script
    /// on standard output and exit. It takes no other argument.
    #[arg(long, value_enum, value_name = "KIND", exclusive = true)]
    pub generate: Option<Generate>,
}

impl Cli {
    /// SOURCE and REPLICA: clap requires both unless `--generate` is given.
    pub fn roots(&self) -> Option<(&Path, &Path)> {
        Some((self.source.as_deref()?, self.replica.as_deref()?))
    }
}

/// What `--generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// The man page, roff (treesync.1).
    Man,
    /// The bash completion script.
    CompleteBash,
    /// The zsh completion script.
    CompleteZsh,
    /// The fish completion script.
    CompleteFish,
}

/// Writes what `kind` names, from the same command as `--help`.
pub fn generate(kind: Generate, out: &mut dyn Write) -> std::io::Result<()> {
    use clap_complete::Shell;
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let shell = match kind {
        Generate::Man => return clap_mangen::Man::new(cmd).render(out),
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
    };
    // clap_complete panics on a failed write (a closed pipe): it writes to
    // memory, and the caller sees the error of the one write that matters.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// `60`, `90s`, `5m`, `1h30m`: at least one second.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(s.parse().map_err(|_| format!("{s:?} is too large"))?)
    } else {
        humantime::parse_duration(s).map_err(|e| {
            format!("expected seconds (60) or a duration (5m, 1h30m), got {s:?}: {e}")
        })?
    };
    if d < Duration::from_secs(1) {
        return Err(format!("the interval must be at least 1 second, got {s:?}"));
    }
    Ok(d)
}

/// `64MiB`, `500K`, `2G`, `1048576`: a size in bytes, the units binary
/// (K, M, G, with or without `iB` or `B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("expected a size such as 64MiB, 500K or 1048576, got {s:?}");
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// `7d`, `12h`, `90m`: how long old versions are kept, at least 1 s.
pub fn parse_keep(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 7d or 12h, got {s:?}: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!(
            "expected a duration of at least 1 second, got {s:?}"
        ));
    }
    Ok(d)
}

/// `2`, `0.01`: whole or fractional seconds, to the nanosecond.
pub fn parse_modify_window(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected seconds such as 2 or 0.01, got {s:?}");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) || frac.len() > 9 {
        return Err(bad());
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_people_write() {
        assert_eq!(parse_interval("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["0", "", "abc", "-5", "500ms", "1.5"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modify_windows_in_whole_and_fractional_seconds() {
        assert_eq!(parse_modify_window("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_modify_window("0.01"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_modify_window(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_modify_window("0"), Ok(Duration::ZERO));
        for bad in ["", ".", "-1", "1e3", "2s", "0.0000000001", "1.2.3"] {
            assert!(parse_modify_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backup_keep_durations() {
        assert_eq!(parse_keep("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_keep("12h"), Ok(Duration::from_secs(12 * 3600)));
        for bad in ["", "7", "0s", "500ms", "week"] {
            assert!(parse_keep(bad).is_err(), "{bad}");
        }
        assert!(Cli::try_parse_from(["treesync", "a", "b", "--backup-keep", "7d"]).is_err());
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn generate_needs_no_roots_and_the_rest_still_does() {
        let cli = Cli::try_parse_from(["treesync", "--generate", "man"]).expect("parses");
        assert_eq!(cli.generate, Some(Generate::Man));
        assert_eq!(cli.roots(), None);
        let cli = Cli::try_parse_from(["treesync", "a", "b"]).expect("parses");
        assert_eq!(cli.roots(), Some((Path::new("a"), Path::new("b"))));
        for argv in [
            &["treesync"][..],
            &["treesync", "a"],
            &["treesync", "--once"],
        ] {
            let e = Cli::try_parse_from(argv).expect_err("roots are required");
            assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        }
        let e = Cli::try_parse_from(["treesync", "--generate", "man", "a", "b"])
            .expect_err("--generate is alone");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn every_kind_generates_something() {
        for kind in Generate::value_variants() {
            let mut out = Vec::new();
            generate(*kind, &mut out).expect("writes to memory");
            let text = String::from_utf8(out).expect("utf-8");
            assert!(text.contains("treesync"), "{kind:?}");
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_in_bytes_and_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("500K"), Ok(500 << 10));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
