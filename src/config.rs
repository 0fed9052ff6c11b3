//! Turns the command line into a validated configuration: canonical roots
//! that do not contain each other, a usable log path, the stage options.

use crate::cli::{Cli, LogFormatArg};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use treesync_stages::contract::options::{Groups, SyncOptions};
use treesync_stages::contract::relpath::RelPath;
use treesync_stages::fs::backup::BackupDir;
use treesync_stages::fs::rules::Rules;
use treesync_stages::log::logger::{LogConfig, LogFormat, Verbosity};
use treesync_stages::remote::address::ReplicaUrl;
use treesync_stages::remote::sftp::SftpOptionsCli;
use treesync_stages::remote::{Remote, RemoteError, RemoteOptions};

/// Everything the pipeline needs, checked.
#[derive(Debug)]
pub struct Config {
    pub sync: SyncOptions,
    pub log: LogConfig,
    /// `None`: one sync.
    pub interval: Option<Duration>,
    /// Full rescan period in watch mode.
    pub rescan: Duration,
    /// `--on-tick`: the command run after each tick, and its time-out.
    pub on_tick: Option<(String, Duration)>,
    /// The replica root does not exist yet (it is created unless dry run).
    pub replica_missing: bool,
}

/// Fatal problems found before any sync (exit status 1).
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("source folder {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error("source {0} is not a folder")]
    SourceNotDir(PathBuf),
    #[error("replica {path}: {source}")]
    Replica { path: PathBuf, source: io::Error },
    #[error("replica {0} exists and is not a folder")]
    ReplicaNotDir(PathBuf),
    #[error("the parent folder of replica {path} is missing or unusable: {source}")]
    ReplicaParent { path: PathBuf, source: io::Error },
    #[error("replica {replica} and source {source_dir} must not contain each other")]
    Nested {
        source_dir: PathBuf,
        replica: PathBuf,
    },
    #[error("log file {path}: its folder is missing or unusable: {source}")]
    LogDir { path: PathBuf, source: io::Error },
    #[error(
        "log file {0} is inside the replica, where the mirror would delete it; put it elsewhere"
    )]
    LogInReplica(PathBuf),
    #[error("replica {0} is not empty and was never synced by treesync; pass --adopt to sync into it (its files that the source lacks will be deleted)")]
    NotAdopted(PathBuf),
    #[error("backup folder {path}: {source}")]
    BackupDir { path: PathBuf, source: io::Error },
    #[error("backup folder {path} is inside the {which} {root}; put it outside both roots")]
    BackupInRoot {
        path: PathBuf,
        which: &'static str,
        root: PathBuf,
    },
    /// `--backup-keep` prunes old folders in DIR: a root below it could
    /// be pruned, and a root's files are never DIR's to remove.
    #[error("the {which} {root} is inside backup folder {path}; put the backup folder outside both roots")]
    RootInBackup {
        path: PathBuf,
        which: &'static str,
        root: PathBuf,
    },
    #[error("backup folder {path} is not on the filesystem of replica {replica}: old versions are moved there, never copied; choose a folder on the replica's filesystem")]
    BackupOtherFs { path: PathBuf, replica: PathBuf },
    #[error("backup folder {path} cannot keep old versions: its filesystem makes no hard links ({source})")]
    BackupNoLinks { path: PathBuf, source: io::Error },
    #[error("cannot find the current folder: {0}")]
    Cwd(io::Error),
    #[error("{0}")]
    BadExclude(String),
    /// A remote replica's address or options that cannot be used.
    #[error("{0}")]
    RemoteUsage(String),
    /// A remote replica that cannot be reached or used.
    #[error("{0}")]
    Remote(String),
    #[error("replica {0} is not empty and was never synced by treesync from this machine; pass --adopt to sync into it (what the source lacks will be deleted there)")]
    RemoteNotAdopted(String),
    /// Never seen from the command line: clap asks for both first.
    #[error("SOURCE and REPLICA are required")]
    NoRoots,
}

impl ConfigError {
    /// Bad patterns are usage errors; everything else is fatal.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::BadExclude(_) | ConfigError::NoRoots | ConfigError::RemoteUsage(_) => 2,
            _ => 1,
        }
    }
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let (_, bad) = Rules::none().with_folder(&RelPath::root(), None, &cli.exclude);
        if let Some(e) = bad.first() {
            return Err(ConfigError::BadExclude(e.to_string()));
        }
        let (source, replica) = cli.roots().ok_or(ConfigError::NoRoots)?;
        let cwd = std::env::current_dir().map_err(ConfigError::Cwd)?;
        let source = canonical_source(&cwd.join(source))?;
        let remote = match ReplicaUrl::parse(&replica.to_string_lossy()) {
            Some(url) => Some(connect(&cli, url.map_err(ConfigError::RemoteUsage)?)?),
            None if cli.s3_endpoint.is_some() || cli.s3_region.is_some() => {
                return Err(ConfigError::RemoteUsage(
                    "--s3-endpoint and --s3-region are for an s3:// REPLICA".into(),
                ))
            }
            None if cli.sftp_key.is_some() || cli.sftp_known_hosts.is_some() => {
                return Err(ConfigError::RemoteUsage(
                    "--sftp-key and --sftp-known-hosts are for an sftp:// REPLICA".into(),
                ))
            }
            None => None,
        };
        let log_file = canonical_log_path(&cwd.join(&cli.log_file))?;
        let (replica, replica_missing) = match &remote {
            Some(remote) => (PathBuf::from(&remote.address), false),
            None => {
                let (replica, missing) = canonical_replica(&cwd.join(replica))?;
                check_not_nested(&source, &replica, missing)?;
                if is_inside(&log_file, &replica) {
                    return Err(ConfigError::LogInReplica(log_file));
                }
                // A folder treesync never synced into may be the wrong
                // one: its files would be overwritten and deleted. A dry
                // run shows a plan only for what a real run would do, so
                // it is refused alike.
                if !missing && !cli.adopt && never_synced(&replica) {
                    return Err(ConfigError::NotAdopted(replica));
                }
                (replica, missing)
            }
        };
        // What a store cannot do: renames are not server-side, links and
        // attributes are not stored, and each tick lists it whole (its
        // changes are not watched, and the source's alone would not do).
        let remote_off = remote.is_some();
        // A log inside the source changes every tick: leave it out.
        // A remote replica's local state too, when it lies in the source.
        let state_dir = remote.as_ref().map(|r| r.state_dir.clone());
        let hidden = [Some(&log_file), state_dir.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| p.strip_prefix(&source).ok())
            .filter_map(|rel| RelPath::new(rel.as_os_str().as_bytes()))
            .collect();
        let jobs = cli
            .jobs
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        // A dry run changes nothing, so each tick must plan everything again:
        // narrowing ticks to what changed would hide what is still to do.
        let watch = cli.interval.is_some()
            && !cli.once
            && !cli.no_watch
            && !cli.dry_run
            && !cli.verify
            && !remote_off;
        let backup = match &cli.backup_dir {
            Some(dir) => Some(backup_dir(
                &cwd.join(dir),
                &source,
                &replica,
                cli.backup_keep,
                cli.dry_run,
            )?),
            None => None,
        };
        let as_root = rustix::process::geteuid().is_root();
        let mut sync = SyncOptions {
            source,
            replica,
            checksum: cli.checksum || cli.verify,
            dry_run: cli.dry_run || cli.verify,
            verify: cli.verify,
            delete_excluded: cli.delete_excluded,
            one_file_system: cli.one_file_system,
            // Every replica-only entry is a difference to report: no guard.
            max_delete: match cli.verify {
                true => treesync_stages::contract::options::MaxDelete::Percent(100),
                false => cli.max_delete,
            },
            renames: !cli.no_renames && !remote_off,
            hard_links: !cli.no_hard_links && !remote_off,
            xattrs: !cli.no_xattrs && !remote_off,
            acls: !cli.no_acls && !remote_off,
            attrs_sweep: false,
            jobs,
            excludes: cli.exclude,
            hidden,
            preserve_owner: as_root && !remote_off,
            groups: if as_root {
                Groups::default()
            } else {
                Groups::of_this_process()
            },
            fsync: cli.fsync,
            watch,
            fresh_replica: replica_missing,
            verbose: cli.verbose,
            // Recorded once the replica exists and is locked.
            identity: None,
            modify_window: cli.modify_window,
            replica_fs: Default::default(),
            hooks: Default::default(),
            remote: remote.map(Arc::new),
        };
        if let Some(backup) = backup {
            sync.hooks.push(Arc::new(backup));
        }
        let log = LogConfig {
            file: log_file,
            format: log_format(cli.log_format),
            terminal: if cli.quiet {
                Verbosity::Quiet
            } else if cli.verbose {
                Verbosity::Verbose
            } else {
                Verbosity::Normal
            },
            // `-q` keeps the terminal for errors and summaries.
            progress: !cli.quiet,
            max_size: (cli.log_max_size > 0).then_some(cli.log_max_size),
        };
        Ok(Config {
            sync,
            log,
            interval: if cli.once || cli.verify {
                None
            } else {
                cli.interval
            },
            rescan: cli.rescan,
            on_tick: cli.on_tick.map(|cmd| (cmd, cli.on_tick_timeout)),
            replica_missing,
        })
    }
}

/// The client of a remote replica, checked: usable options, and a store
/// with objects that this machine never synced into is adopted only with
/// `--adopt` (adopting deletes what the source lacks).
fn connect(cli: &Cli, url: ReplicaUrl) -> Result<Remote, ConfigError> {
    if cli.backup_dir.is_some() {
        return Err(ConfigError::RemoteUsage(format!(
            "--backup-dir keeps old versions on the replica's filesystem: it cannot be used with replica {url}"
        )));
    }
    let options = RemoteOptions {
        s3_endpoint: cli.s3_endpoint.clone(),
        s3_region: cli.s3_region.clone(),
        sftp: SftpOptionsCli {
            key: cli.sftp_key.clone(),
            known_hosts: cli.sftp_known_hosts.clone(),
        },
    };
    let remote = Remote::connect(url, &options).map_err(|e| match e {
        RemoteError::Config(m) => ConfigError::RemoteUsage(m),
        e => ConfigError::Remote(e.to_string()),
    })?;
    if !cli.adopt && !remote.synced_before() {
        match remote.is_empty() {
            Ok(true) => {}
            Ok(false) => return Err(ConfigError::RemoteNotAdopted(remote.address.clone())),
            Err(e) => return Err(ConfigError::Remote(e.to_string())),
        }
    }
    Ok(remote)
}

/// The replica holds entries but no state folder: treesync never synced
/// into it. One that cannot be listed is left to the sync to report.
fn never_synced(replica: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(replica) else {
        return false;
    };
    let mut any = false;
    for entry in entries.flatten() {
        if entry.file_name().as_bytes() == treesync_stages::contract::model::STATE_DIR
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            return false;
        }
        any = true;
    }
    any
}

pub fn log_format(arg: LogFormatArg) -> LogFormat {
    match arg {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    }
}

fn canonical_source(path: &Path) -> Result<PathBuf, ConfigError> {
    let canon = path.canonicalize().map_err(|source| ConfigError::Source {
        path: path.to_path_buf(),
        source,
    })?;
    if !canon.is_dir() {
        return Err(ConfigError::SourceNotDir(path.to_path_buf()));
    }
    Ok(canon)
}

/// The canonical replica path, and whether it is still to be created.
fn canonical_replica(path: &Path) -> Result<(PathBuf, bool), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let canon = path.canonicalize().map_err(|source| ConfigError::Replica {
                path: path.to_path_buf(),
                source,
            })?;
            Ok((canon, false))
        }
        Ok(_) => Err(ConfigError::ReplicaNotDir(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                // A dangling link: creating the replica would write through it.
                return Err(ConfigError::ReplicaNotDir(path.to_path_buf()));
            }
            Ok((
                canonical_child(path).map_err(|source| ConfigError::ReplicaParent {
                    path: path.to_path_buf(),
                    source,
                })?,
                true,
            ))
        }
        Err(source) => Err(ConfigError::Replica {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `path` with its parent canonical; the parent must be an existing folder.
fn canonical_child(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent.canonicalize()?;
    if !parent.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
    }
    Ok(parent.join(name))
}

/// Where the log's lines will really go: a link at the log's own name is
/// followed by every write, so it is resolved too (a dangling one is
/// refused, since creating the log would make its target).
fn canonical_log_path(path: &Path) -> Result<PathBuf, ConfigError> {
    let err = |source| ConfigError::LogDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => path.canonicalize().map_err(err),
        _ => canonical_child(path).map_err(err),
    }
}

/// Checks and opens `--backup-dir`: outside both roots (by name and by
/// identity), on the replica's filesystem (old versions are moved there,
/// so it must be the same `st_dev`), created when missing unless this is
/// a dry run. A missing replica is judged by its parent, where it will be
/// made.
fn backup_dir(
    path: &Path,
    source: &Path,
    replica: &Path,
    keep: Option<Duration>,
    dry_run: bool,
) -> Result<BackupDir, ConfigError> {
    let err = |source| ConfigError::BackupDir {
        path: path.to_path_buf(),
        source,
    };
    let (canon, missing) = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => (path.canonicalize().map_err(err)?, false),
        Ok(_) => return Err(err(io::ErrorKind::NotADirectory.into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                // A dangling link: making the folder would follow it.
                return Err(err(io::ErrorKind::NotADirectory.into()));
            }
            (canonical_child(path).map_err(err)?, true)
        }
        Err(e) => return Err(err(e)),
    };
    for (which, root) in [("source", source), ("replica", replica)] {
        if is_inside(&canon, root) {
            return Err(ConfigError::BackupInRoot {
                path: path.to_path_buf(),
                which,
                root: root.to_path_buf(),
            });
        }
        if is_inside(root, &canon) {
            return Err(ConfigError::RootInBackup {
                path: path.to_path_buf(),
                which,
                root: root.to_path_buf(),
            });
        }
    }
    let dev = |p: &Path| {
        let existing = p.ancestors().find(|a| a.exists()).unwrap_or(p);
        std::fs::metadata(existing).map(|m| m.dev()).map_err(err)
    };
    if dev(&canon)? != dev(replica)? {
        return Err(ConfigError::BackupOtherFs {
            path: path.to_path_buf(),
            replica: replica.to_path_buf(),
        });
    }
    if missing && !dry_run {
        std::fs::create_dir(&canon).map_err(err)?;
    }
    if !dry_run {
        keeps_hard_links(&canon).map_err(|source| ConfigError::BackupNoLinks {
            path: path.to_path_buf(),
            source,
        })?;
    }
    BackupDir::open(&canon, keep, dry_run).map_err(err)
}

/// An update keeps the old version by giving it a second name in the
/// backup folder (a hard link): a filesystem without hard links (FAT,
/// exFAT) could keep no version of an update, so it is found out at start
/// with a throwaway file, not at every update.
fn keeps_hard_links(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".treesync-link-probe-{}", std::process::id()));
    let second = dir.join(format!(".treesync-link-probe-{}-2", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let linked = std::fs::hard_link(&probe, &second);
    let _ = std::fs::remove_file(&second);
    let _ = std::fs::remove_file(&probe);
    linked
}

/// Whether `path` lies inside the folder `root`, by name or by identity:
/// a bind mount, or a filesystem that ignores case, gives one folder
/// several names.
fn is_inside(path: &Path, root: &Path) -> bool {
    if path.starts_with(root) {
        return true;
    }
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(root_id) = id(root) else {
        return false;
    };
    path.ancestors().skip(1).any(|a| id(a) == Some(root_id))
}

/// Refuses roots inside one another, by path and by identity (a bind
/// mount makes one folder reachable under two paths).
fn check_not_nested(
    source: &Path,
    replica: &Path,
    replica_missing: bool,
) -> Result<(), ConfigError> {
    let nested = || ConfigError::Nested {
        source_dir: source.to_path_buf(),
        replica: replica.to_path_buf(),
    };
    if source.starts_with(replica) || replica.starts_with(source) {
        return Err(nested());
    }
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let replica_start = if replica_missing {
        replica.parent().unwrap_or(replica)
    } else {
        replica
    };
    let source_id = id(source);
    if replica_start.ancestors().any(|a| id(a) == source_id) {
        return Err(nested());
    }
    if !replica_missing {
        let replica_id = id(replica);
        if source.ancestors().any(|a| id(a) == replica_id) {
            return Err(nested());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["treesync"];
        argv.extend_from_slice(args);
        Config::from_cli(Cli::parse_from(argv))
    }

    #[test]
    fn exclude_patterns_read_as_git_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        std::fs::create_dir(&s).unwrap();
        let (s, r) = (s.to_str().unwrap(), r.to_str().unwrap());
        assert!(config(&[s, r, "--exclude", "*.o", "--exclude", "!keep.o"]).is_ok());
        // Git has no malformed pattern: a reversed range is empty, an
        // unclosed bracket matches nothing, braces are literal.
        for odd in ["[z-a]", "[abc", "{a,b", "a**/b", "x\\"] {
            assert!(config(&[s, r, "--exclude", odd]).is_ok(), "{odd}");
        }
        assert_eq!(ConfigError::BadExclude("x".into()).exit_code(), 2);
    }

    #[test]
    fn nested_roots_are_refused_both_ways() {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path().join("s");
        std::fs::create_dir_all(s.join("inner")).unwrap();
        let (s_str, inner) = (s.to_str().unwrap(), s.join("inner"));
        let log = tmp.path().join("log");
        let log = log.to_str().unwrap();
        assert!(matches!(
            config(&[s_str, inner.to_str().unwrap(), "--log-file", log]),
            Err(ConfigError::Nested { .. })
        ));
        assert!(matches!(
            config(&[inner.to_str().unwrap(), s_str, "--log-file", log]),
            Err(ConfigError::Nested { .. })
        ));
        let missing_inside = s.join("new");
        assert!(matches!(
            config(&[s_str, missing_inside.to_str().unwrap(), "--log-file", log]),
            Err(ConfigError::Nested { .. })
        ));
    }

    #[test]
    fn log_file_inside_source_is_hidden_and_inside_replica_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        std::fs::create_dir_all(s.join("logs")).unwrap();
        std::fs::create_dir_all(&r).unwrap();
        let in_source = s.join("logs/t.log");
        let c = config(&[
            s.to_str().unwrap(),
            r.to_str().unwrap(),
            "--log-file",
            in_source.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(c.sync.hidden, vec![RelPath::from_str_lossy("logs/t.log")]);
        let in_replica = r.join("t.log");
        assert!(matches!(
            config(&[
                s.to_str().unwrap(),
                r.to_str().unwrap(),
                "--log-file",
                in_replica.to_str().unwrap()
            ]),
            Err(ConfigError::LogInReplica(_))
        ));
        // A link to a file in the replica, or a second name of its folder.
        let link = tmp.path().join("t.log");
        std::os::unix::fs::symlink(&in_replica, &link).unwrap();
        let dangling = config(&[
            s.to_str().unwrap(),
            r.to_str().unwrap(),
            "--log-file",
            link.to_str().unwrap(),
        ]);
        assert!(
            matches!(dangling, Err(ConfigError::LogDir { .. })),
            "{dangling:?}"
        );
        std::fs::write(&in_replica, b"").unwrap();
        let alias = tmp.path().join("alias");
        std::os::unix::fs::symlink(&r, &alias).unwrap();
        for log in [link, alias.join("t.log")] {
            let c = config(&[
                s.to_str().unwrap(),
                r.to_str().unwrap(),
                "--log-file",
                log.to_str().unwrap(),
            ]);
            assert!(
                matches!(c, Err(ConfigError::LogInReplica(_))),
                "{log:?}: {c:?}"
            );
        }
    }

    #[test]
    fn missing_source_and_missing_replica_parent_are_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let (log, missing) = (log.to_str().unwrap(), tmp.path().join("nope"));
        let r = tmp.path().join("r");
        assert!(matches!(
            config(&[
                missing.to_str().unwrap(),
                r.to_str().unwrap(),
                "--log-file",
                log
            ]),
            Err(ConfigError::Source { .. })
        ));
        let deep = tmp.path().join("nope/r");
        assert!(matches!(
            config(&[
                tmp.path().to_str().unwrap(),
                deep.to_str().unwrap(),
                "--log-file",
                log
            ]),
            Err(ConfigError::ReplicaParent { .. })
        ));
        std::fs::create_dir(tmp.path().join("s")).unwrap();
        let c = config(&[
            tmp.path().join("s").to_str().unwrap(),
            r.to_str().unwrap(),
            "--log-file",
            log,
            "7",
        ])
        .unwrap();
        assert!(c.replica_missing);
        assert_eq!(c.interval, Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_backup_dir_inside_a_root_or_missing_its_parent_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        std::fs::create_dir_all(s.join("in")).unwrap();
        std::fs::create_dir_all(&r).unwrap();
        std::os::unix::fs::symlink(&r, tmp.path().join("alias")).unwrap();
        let log = tmp.path().join("log");
        let with = |dir: &Path| {
            config(&[
                s.to_str().unwrap(),
                r.to_str().unwrap(),
                "--adopt",
                "--log-file",
                log.to_str().unwrap(),
                "--backup-dir",
                dir.to_str().unwrap(),
            ])
        };
        for inside in [
            s.join("in"),
            s.clone(),
            r.join("new"),
            tmp.path().join("alias/b"),
        ] {
            let err = with(&inside).unwrap_err();
            assert!(matches!(err, ConfigError::BackupInRoot { .. }), "{err}");
            assert_eq!(err.exit_code(), 1);
        }
        assert!(!r.join("new").exists());
        // A folder holding a root: its pruning could take the root.
        let err = with(tmp.path()).unwrap_err();
        assert!(matches!(err, ConfigError::RootInBackup { .. }), "{err}");
        assert_eq!(err.exit_code(), 1);
        let err = with(&tmp.path().join("no/such")).unwrap_err();
        assert!(matches!(err, ConfigError::BackupDir { .. }), "{err}");
        // Beside the roots: made when missing.
        let ok = with(&tmp.path().join("versions")).unwrap();
        assert!(!ok.sync.hooks.is_empty());
        assert!(tmp.path().join("versions").is_dir());
    }

    #[test]
    fn quiet_turns_the_progress_bar_off() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        std::fs::create_dir(&s).unwrap();
        let log = tmp.path().join("log");
        let base = [s.to_str().unwrap(), r.to_str().unwrap(), "--log-file"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.push(log.to_str().unwrap());
            args.extend_from_slice(extra);
            config(&args).unwrap().log.progress
        };
        assert!(with(&[]));
        assert!(with(&["-v"]));
        assert!(!with(&["-q"]));
        assert!(!with(&["--quiet"]));
    }
}
