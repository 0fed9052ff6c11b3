//! Logger: owns the slog drains (terminal and log file), takes `LogEvent`
//! and `FlushLog`.
//! (stub: to be written)

use crate::messages::{FlushLog, LogEvent};
use actix::{Actor, Context, Handler};
use std::io;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub file: PathBuf,
    pub format: LogFormat,
    pub terminal: Verbosity,
}

pub struct Logger {}

impl Logger {
    /// Opens (appends to) the log file and builds both drains.
    pub fn open(_cfg: &LogConfig) -> io::Result<Logger> {
        todo!("logger")
    }
}

impl Actor for Logger {
    type Context = Context<Self>;
}

impl Handler<LogEvent> for Logger {
    type Result = ();

    fn handle(&mut self, _msg: LogEvent, _ctx: &mut Context<Self>) {}
}

impl Handler<FlushLog> for Logger {
    type Result = ();

    fn handle(&mut self, _msg: FlushLog, _ctx: &mut Context<Self>) {}
}
