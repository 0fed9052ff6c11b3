//! treesync: keep a replica folder equal to a source folder.

mod cli;
mod config;
mod config_file;
mod lock;
mod pipeline;
mod shutdown;

use clap::Parser;
use cli::Cli;
use config::{Config, ConfigError};
use treesync_stages::contract::messages::LogEvent;
use treesync_stages::fs::identity::RootIdentity;
use treesync_stages::log::log_format;
use treesync_stages::log::logger::Logger;
use treesync_stages::log::logger::{LogConfig, Verbosity};

fn main() {
    fix_mmap_threshold();
    let cli = Cli::parse();
    // Before anything else: no log file, no root is touched.
    if let Some(kind) = cli.generate {
        std::process::exit(generate(kind));
    }
    if let Some(file) = cli.config.clone() {
        std::process::exit(run_pairs(&file));
    }
    std::process::exit(run(cli));
}

/// `--config FILE`: every pair of the file in one process, one log.
fn run_pairs(file: &std::path::Path) -> i32 {
    // The rest of the command line applies to every pair.
    let mut given: Vec<std::ffi::OsString> = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            args.next();
        } else if !a.to_string_lossy().starts_with("--config=") {
            given.push(a);
        }
    }
    let pairs = match config_file::read(file, &given) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("treesync: {e}");
            return 2;
        }
    };
    let mut configs = Vec::new();
    for pair in pairs {
        match Config::from_cli(pair.cli) {
            Ok(c) => configs.push((pair.name, c)),
            Err(e) => {
                eprintln!("treesync: [[sync]] {}: {e}", pair.name);
                return e.exit_code();
            }
        }
    }
    let roots: Vec<_> = configs
        .iter()
        .map(|(n, c)| (n.clone(), c.sync.source.clone(), c.sync.replica.clone()))
        .collect();
    if let Err(e) = config_file::check_overlaps(&roots) {
        eprintln!("treesync: {e}");
        return 2;
    }
    let log = configs[0].1.log.clone();
    let mut prepared = Vec::new();
    let mut locks = Vec::new();
    for (name, config) in configs {
        match prepare(config) {
            Ok((config, lock)) => {
                prepared.push((Some(name), config));
                locks.push(lock);
            }
            Err(status) => return status,
        }
    }
    let status = start(prepared, &log);
    drop(locks);
    status
}

/// `--generate KIND` on standard output: 0, or 1 if it cannot be written
/// (a closed pipe, as in `| head`, is no failure).
fn generate(kind: cli::Generate) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = cli::generate(kind, &mut out).and_then(|()| std::io::Write::flush(&mut out));
    match written {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("treesync: cannot write to standard output: {e}");
            pipeline::exit::FATAL
        }
    }
}

/// Keeps peak memory flat from tick to tick. glibc raises its mmap
/// threshold to the size of any mapped block freed, up to 32 MiB, so after
/// the first tick the walk's large vectors came from the heap: they grew by
/// copying, and the heap never shrank (a 100k-file tree peaked at 40 MiB
/// in the first tick and 72 MiB by the fourth). A fixed threshold turns
/// that adjustment off; blocks of 1 MiB and more are mapped, grown in place
/// and returned when freed.
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn run(cli: Cli) -> i32 {
    // Where fatal errors go besides the terminal, known before the checks:
    // a mirror started by cron has no terminal to show them.
    let fallback_log = LogConfig {
        file: cli.log_file.clone(),
        format: config::log_format(cli.log_format),
        terminal: Verbosity::Quiet,
        progress: false,
        max_size: None,
    };
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            // Never write a log the mirror would delete or into a folder
            // that does not exist.
            if !matches!(
                e,
                ConfigError::LogInReplica(_) | ConfigError::LogDir { .. } | ConfigError::NoRoots
            ) {
                log_fatal(&fallback_log, &e);
            }
            eprintln!("treesync: {e}");
            return e.exit_code();
        }
    };
    let log = config.log.clone();
    match prepare(config) {
        Ok((config, lock)) => {
            let status = start(vec![(None, config)], &log);
            // Held until the run is over.
            drop(lock);
            status
        }
        Err(status) => status,
    }
}

/// Makes the replica (unless a dry run), takes its lock and records the
/// roots' identity; the status to exit with if that fails.
fn prepare(mut config: Config) -> Result<(Config, Held), i32> {
    let fatal = |config: &Config, msg: &dyn std::fmt::Display| {
        log_fatal(&config.log, msg);
        eprintln!("treesync: {msg}");
        pipeline::exit::FATAL
    };
    if let Some(remote) = config.sync.remote.clone() {
        // The local lock (in the replica's state folder) keeps a second
        // process of this machine out before it touches the store; the
        // lock object keeps out other machines. A dry run takes neither.
        let held = match config.sync.dry_run {
            true => Held::default(),
            false => {
                let local = lock::acquire(&remote.state_dir).map_err(|e| fatal(&config, &e))?;
                let object = remote.lock().map_err(|e| fatal(&config, &e))?;
                Held {
                    _local: Some(local),
                    _remote: Some(object),
                }
            }
        };
        match RootIdentity::source_only(&config.sync.source) {
            Ok(identity) => config.sync.identity = Some(identity),
            Err(e) => return Err(fatal(&config, &e)),
        }
        return Ok((config, held));
    }
    // A dry run writes nothing under the replica: no folder, no lock.
    let lock = if config.sync.dry_run {
        None
    } else {
        if config.replica_missing {
            if let Err(e) = std::fs::create_dir(&config.sync.replica) {
                let msg = format!(
                    "cannot create replica {}: {e}",
                    config.sync.replica.display()
                );
                return Err(fatal(&config, &msg));
            }
        }
        match lock::acquire(&config.sync.replica) {
            Ok(l) => Some(l),
            Err(e) => return Err(fatal(&config, &e)),
        }
    };
    // Making the state folder moved the root's mtime: the first sync sets
    // it back as part of that, not as a change of the source.
    if lock.as_ref().is_some_and(|l| l.made_state_dir) {
        config.sync.fresh_replica = true;
    }
    // The folders this run syncs, for good: every tick checks the root
    // paths still name them.
    let sync = &config.sync;
    match RootIdentity::record(&sync.source, &sync.replica, sync.dry_run) {
        Ok(identity) => config.sync.identity = Some(identity),
        Err(e) => return Err(fatal(&config, &e)),
    }
    Ok((
        config,
        Held {
            _local: lock,
            _remote: None,
        },
    ))
}

/// The locks of one replica, held until the run is over.
#[derive(Default)]
struct Held {
    _local: Option<lock::ReplicaLock>,
    _remote: Option<treesync_stages::remote::RemoteLock>,
}

/// Opens the one log and runs the pairs' pipelines to their end.
fn start(pairs: Vec<(Option<String>, Config)>, log: &LogConfig) -> i32 {
    let logger = match Logger::open(log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "treesync: cannot open log file {}: {e}; choose another with --log-file PATH",
                log.file.display()
            );
            return pipeline::exit::FATAL;
        }
    };
    actix::System::new().block_on(pipeline::run_all(pairs, logger))
}

/// Appends a fatal error to the log file, if it can be opened; the error is
/// on the terminal either way.
fn log_fatal(log: &LogConfig, msg: &dyn std::fmt::Display) {
    let line = log_format::file_line(
        log.format,
        std::time::SystemTime::now(),
        &LogEvent::error(None, "start", msg),
    );
    let file = treesync_stages::log::logger::open_log_file(&log.file);
    if let Ok(mut f) = file {
        let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
    }
}
