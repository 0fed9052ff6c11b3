//! Every message that crosses stages: the pipeline's contract.
//!
//! ```text
//! Scheduler --ScanTrees--> Scanner --TreesScanned--> Hasher --TreesHashed-->
//! Differ --PlanMade--> Applier --TickFinished--> Scheduler --TicksOver--> (binary)
//! every stage --LogEvent--> Logger
//! ```
//! Commands are imperative, events past tense. A stage that cannot go on
//! with a tick (a root vanished) sends `TickFinished` straight to the
//! Scheduler with the reason.

use crate::identity::Roots;
use crate::model::{Listing, SameContent, TempTokens};
use crate::plan::Plan;
use crate::relpath::RelPath;
use actix::Message;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Which tick a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickInfo {
    /// 1 for the first tick.
    pub seq: u64,
    pub started: Instant,
}

/// Start a tick: scan both trees, completely or where they changed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ScanTrees {
    pub tick: TickInfo,
    pub scope: ScanScope,
    /// Plan over the whole listings even after a partial scan: the last
    /// tick withheld deletions (the guard), and each tick reports them
    /// again until they are resolved.
    pub whole_plan: bool,
}

/// How much of the trees a tick lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanScope {
    /// Walk both trees completely.
    Full,
    /// List only these folders (either side) again; the rest of the last
    /// listing stands. Needs a previous listing; the Scanner walks fully
    /// when it has none.
    Folders(Vec<RelPath>),
}

/// Both trees were listed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TreesScanned {
    pub tick: TickInfo,
    /// Shared: the Scanner keeps them to update at the next tick.
    pub source: Arc<Listing>,
    /// Empty when the replica does not exist yet (a dry run).
    pub replica: Arc<Listing>,
    /// Set when the listings are only the parts of the trees that changed
    /// (see `scanner::narrowed`): the replica's managed entries in all of
    /// it, the `--max-delete` guard's base.
    pub managed: Option<u64>,
    /// Errors already logged while scanning (folders that could not be listed).
    pub errors: u64,
    /// The roots as opened and checked for this tick: later stages use
    /// these handles, never the root paths.
    pub roots: Arc<Roots>,
}

/// Content comparisons done where metadata could not decide.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TreesHashed {
    pub tick: TickInfo,
    pub source: Arc<Listing>,
    pub replica: Arc<Listing>,
    /// The files a content check found equal; every other file that
    /// needed a check counts as different.
    pub contents: SameContent,
    /// As in `TreesScanned`.
    pub managed: Option<u64>,
    pub errors: u64,
    pub roots: Arc<Roots>,
    /// Runs whose temporaries the replica may hold, as recorded in its
    /// state folder (read with the other state the Hasher reads).
    pub temps: TempTokens,
}

/// The Differ's plan for this tick.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct PlanMade {
    pub tick: TickInfo,
    pub plan: Plan,
    /// Errors of earlier stages in this tick, carried into the summary.
    pub errors: u64,
    pub roots: Arc<Roots>,
}

/// One tick ended (completed, aborted or interrupted).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TickFinished {
    pub tick: TickInfo,
    pub outcome: TickOutcome,
}

/// The Watcher saw changes since the last report.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FoldersChanged {
    /// Folders (relative to the roots, either side) whose listing changed.
    pub folders: Vec<RelPath>,
    /// Events may have been lost: only a full rescan is safe.
    pub lost: bool,
    /// Part of the trees is not watched (a watch limit, an error): every
    /// tick from now on must rescan fully.
    pub unwatched: bool,
}

/// Ask the Scheduler to start no new tick; it answers `TicksOver` once the
/// tick in flight (if any) has finished.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopTicks;

/// The Scheduler is done: `--once` finished its sync, or a stop was asked.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TicksOver {
    /// The last tick's outcome, if any tick ran.
    pub last: Option<TickOutcome>,
}

/// Flush and close the log drains; answered once every entry is written,
/// with what could not be.
#[derive(Message, Debug)]
#[rtype(result = "LogHealth")]
pub struct FlushLog;

/// What became of the log file's lines over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, actix::MessageResponse)]
pub struct LogHealth {
    /// Lines that could not be written (a full disk, an I/O error): the
    /// log is incomplete, which the exit status must say.
    pub lost: u64,
}

/// Counts of logged operations, per verb.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub mkdir: u64,
    pub copy: u64,
    pub update: u64,
    pub meta: u64,
    pub symlink: u64,
    pub delete: u64,
    pub rmdir: u64,
    pub skip: u64,
    pub warn: u64,
    /// Old versions kept by `--backup-dir` (not changes of the mirror).
    pub backup: u64,
}

impl Counts {
    pub fn changes(&self) -> u64 {
        self.mkdir + self.copy + self.update + self.meta + self.symlink + self.delete + self.rmdir
    }
}

/// How a tick ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickOutcome {
    pub counts: Counts,
    /// Bytes written by `copy` and `update`.
    pub bytes: u64,
    /// Failed operations (each logged as `error`).
    pub errors: u64,
    /// The deletion guard withheld this tick's deletions.
    pub guard_tripped: bool,
    /// The tick could not run at all (a root vanished); already logged.
    pub aborted: Option<String>,
    /// A stop was asked before the tick finished.
    pub interrupted: bool,
    /// The plan's operations were not carried out (a root could not be
    /// opened, or was another folder than the one scanned; already
    /// logged): what they would have done, only a full walk finds again.
    pub unapplied: bool,
    /// Nothing changed since the last tick: nothing was planned.
    pub idle: bool,
    /// Folders holding an operation that failed or was skipped at run time
    /// (a file changing while copied), or a copy to check again (racy): in
    /// watch mode the next tick lists them again, so the operation is
    /// retried, or the copy compared, without a full walk.
    pub retry: Vec<RelPath>,
}

/// Severity, as the log contract names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `-v` detail: what was compared and why. Not an operation.
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// The message of a log entry: the verbs of the log contract, plus detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Mkdir,
    Copy,
    Update,
    Meta,
    Symlink,
    Delete,
    Rmdir,
    /// An old version moved aside by `--backup-dir` (`path`, `to`).
    Backup,
    Skip,
    Error,
    Warn,
    Tick,
    /// Verbose-only detail, shown with `-v`; never in the log file.
    Detail(&'static str),
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Mkdir => "mkdir",
            Verb::Copy => "copy",
            Verb::Update => "update",
            Verb::Meta => "meta",
            Verb::Symlink => "symlink",
            Verb::Delete => "delete",
            Verb::Rmdir => "rmdir",
            Verb::Backup => "backup",
            Verb::Skip => "skip",
            Verb::Error => "error",
            Verb::Warn => "warn",
            Verb::Tick => "tick",
            Verb::Detail(what) => what,
        }
    }

    pub fn level(self) -> Level {
        match self {
            Verb::Skip | Verb::Warn => Level::Warn,
            Verb::Error => Level::Error,
            Verb::Detail(_) => Level::Debug,
            _ => Level::Info,
        }
    }
}

/// A value of a log entry's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogValue {
    U64(u64),
    Bool(bool),
    Str(String),
    /// Raw bytes (a link target): written like paths, invalid UTF-8 as `\xNN`.
    Bytes(Box<[u8]>),
}

impl fmt::Display for LogValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogValue::U64(n) => write!(f, "{n}"),
            LogValue::Bool(b) => write!(f, "{b}"),
            LogValue::Str(s) => f.write_str(s),
            LogValue::Bytes(b) => f.write_str(&crate::relpath::escape_bytes(b)),
        }
    }
}

/// One log entry: an operation, an error, a warning, a tick summary.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct LogEvent {
    pub verb: Verb,
    /// Relative to the roots; `None` for entries about the whole tick.
    pub path: Option<RelPath>,
    pub fields: Vec<(&'static str, LogValue)>,
    /// Logged by `--dry-run`: planned, not done.
    pub dry_run: bool,
}

impl LogEvent {
    pub fn new(verb: Verb, path: Option<RelPath>) -> Self {
        LogEvent {
            verb,
            path,
            fields: Vec::new(),
            dry_run: false,
        }
    }

    /// An operation on `path`.
    pub fn op(verb: Verb, path: &RelPath) -> Self {
        Self::new(verb, Some(path.clone()))
    }

    /// A failed operation: `op` names what was attempted.
    pub fn error(path: Option<&RelPath>, op: &str, error: impl fmt::Display) -> Self {
        Self::new(Verb::Error, path.cloned())
            .with("op", LogValue::Str(op.to_string()))
            .with("error", LogValue::Str(error.to_string()))
    }

    pub fn with(mut self, key: &'static str, value: LogValue) -> Self {
        self.fields.push((key, value));
        self
    }

    pub fn with_str(self, key: &'static str, value: impl Into<String>) -> Self {
        self.with(key, LogValue::Str(value.into()))
    }

    pub fn with_u64(self, key: &'static str, value: u64) -> Self {
        self.with(key, LogValue::U64(value))
    }

    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    pub fn level(&self) -> Level {
        self.verb.level()
    }

    pub fn field(&self, key: &str) -> Option<&LogValue> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}
