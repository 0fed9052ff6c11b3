//! treesync: keep a replica folder equal to a source folder.

mod cli;
mod config;
mod lock;
mod pipeline;
mod shutdown;

use clap::Parser;
use cli::Cli;
use config::Config;
use treesync_stages::logger::Logger;

fn main() {
    let cli = Cli::parse();
    std::process::exit(run(cli));
}

fn run(cli: Cli) -> i32 {
    let fatal = |msg: &dyn std::fmt::Display| {
        eprintln!("treesync: {msg}");
        pipeline::exit::FATAL
    };
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("treesync: {e}");
            return e.exit_code();
        }
    };
    // A dry run writes nothing under the replica: no folder, no lock.
    let _lock = if config.sync.dry_run {
        None
    } else {
        if config.replica_missing {
            if let Err(e) = std::fs::create_dir(&config.sync.replica) {
                return fatal(&format!(
                    "cannot create replica {}: {e}",
                    config.sync.replica.display()
                ));
            }
        }
        match lock::acquire(&config.sync.replica) {
            Ok(l) => Some(l),
            Err(e) => return fatal(&e),
        }
    };
    let logger = match Logger::open(&config.log) {
        Ok(l) => l,
        Err(e) => {
            return fatal(&format!(
                "cannot open log file {}: {e}",
                config.log.file.display()
            ))
        }
    };
    actix::System::new().block_on(pipeline::run(config, logger))
}
