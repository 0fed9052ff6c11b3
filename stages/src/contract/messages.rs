//! Every message that crosses stages: the pipeline's contract.
//!
//! ```text
//! Scheduler --ScanTrees--> Scanner --TreesScanned--> Hasher --TreesHashed-->
//! Differ --PlanMade--> Applier --TickFinished--> [tick-end stages] --> Scheduler
//! Scheduler --TicksOver--> (binary)
//! every stage --LogEvent--> Logger
//! ```
//! Commands are imperative, events past tense. Between stages a payload
//! travels in a `Batch` with the tick's context (`TickCx`); a tick that
//! ends, early (a root vanished, nothing changed) or after the Applier,
//! travels on as `TickFinished` through every later stage to the Scheduler
//! (see `stage.rs`).

use crate::contract::model::{Listing, SameContent, TempTokens};
use crate::contract::moves::{MovePairs, Seen};
use crate::contract::plan::Plan;
use crate::contract::relpath::RelPath;
use crate::fs::identity::Roots;
use actix::Message;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What a tick carries from stage to stage besides its payload: which tick
/// it is, when it started, and what its stages counted on the way.
#[derive(Clone, Debug)]
pub struct TickCx {
    /// 1 for the first tick.
    pub seq: u64,
    /// Wall-clock start (UTC), for names and stamps.
    pub started_at: SystemTime,
    /// Monotonic start, for durations.
    pub started: Instant,
    /// Watch mode: what this tick lists (`None` without watching).
    pub scan: Option<ScanMode>,
    /// Errors already logged by the stages this tick went through.
    pub errors: u64,
    /// A stage's own counts (`backup=3`), shown in the `tick` entry.
    pub tallies: Tallies,
    /// Set by the stage actor before each stage runs.
    stop: crate::contract::stop::StopFlag,
}

/// How a watched tick lists the trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanMode {
    pub full: bool,
    /// Folders listed again (0 for a full walk).
    pub rescanned: u64,
}

impl TickCx {
    pub fn new(seq: u64) -> Self {
        TickCx {
            seq,
            started_at: SystemTime::now(),
            started: Instant::now(),
            scan: None,
            errors: 0,
            tallies: Tallies::default(),
            stop: crate::contract::stop::StopFlag::new(),
        }
    }

    /// Asks long work to stop at the next file (Ctrl+C, SIGTERM).
    pub fn stop(&self) -> &crate::contract::stop::StopFlag {
        &self.stop
    }

    pub(crate) fn set_stop(&mut self, stop: &crate::contract::stop::StopFlag) {
        self.stop = stop.clone();
    }

    /// Adds `n` to the stage's own count `key`.
    pub fn count(&mut self, key: &'static str, n: u64) {
        self.tallies.add(key, n);
    }

    /// Moves what the stages counted into the tick's outcome.
    pub fn settle(&mut self, outcome: &mut TickOutcome) {
        outcome.errors += std::mem::take(&mut self.errors);
        for (key, n) in std::mem::take(&mut self.tallies).0 {
            outcome.tallies.add(key, n);
        }
    }
}

/// Counts kept by stages beyond the operations of the log contract, by key,
/// in the order first counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tallies(Vec<(&'static str, u64)>);

impl Tallies {
    pub fn add(&mut self, key: &'static str, n: u64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, m)) => *m += n,
            None => self.0.push((key, n)),
        }
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.iter().find(|(k, _)| *k == key).map(|&(_, n)| n)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().copied()
    }
}

/// One payload of a tick on its way from a stage to the next. A tick's
/// payload is one batch today (`last` set); a stage may later send it in
/// several.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Batch<T> {
    pub cx: TickCx,
    pub body: T,
    /// The tick's last batch for this stage.
    pub last: bool,
}

impl<T> Batch<T> {
    /// The whole of a tick's payload in one batch.
    pub fn whole(cx: TickCx, body: T) -> Self {
        Batch {
            cx,
            body,
            last: true,
        }
    }
}

/// What the stage that ends the data flow (the Applier) sends on: nothing.
/// The tick's outcome travels as `TickFinished`; stages after it see only
/// that.
#[derive(Debug)]
pub enum Done {}

/// Start a tick: scan both trees, completely or where they changed.
#[derive(Debug)]
pub struct ScanTrees {
    pub scope: ScanScope,
    /// What the Watcher saw of the source's renames since the last tick,
    /// in the order it happened (`contract::moves::Seen`).
    pub seen: Vec<Seen>,
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
#[derive(Debug)]
pub struct TreesScanned {
    /// Shared: the Scanner keeps them to update at the next tick.
    pub source: Arc<Listing>,
    /// Empty when the replica does not exist yet (a dry run).
    pub replica: Arc<Listing>,
    /// Set when the listings are only the parts of the trees that changed
    /// (see `scanner::narrowed`): the replica's managed entries in all of
    /// it, the `--max-delete` guard's base.
    pub managed: Option<u64>,
    /// The roots as opened and checked for this tick: later stages use
    /// these handles, never the root paths.
    pub roots: Arc<Roots>,
    /// As in `ScanTrees`: what the move search may take as sure.
    pub seen: Vec<Seen>,
}

/// Content comparisons done where metadata could not decide.
#[derive(Debug)]
pub struct TreesHashed {
    pub source: Arc<Listing>,
    pub replica: Arc<Listing>,
    /// The files a content check found equal; every other file that
    /// needed a check counts as different.
    pub contents: SameContent,
    /// Files the source has under a new name, paired with the replica's
    /// file under the old one (`contract::moves`), doubtful pairs
    /// confirmed by content.
    pub moves: MovePairs,
    /// As in `TreesScanned`.
    pub managed: Option<u64>,
    pub roots: Arc<Roots>,
    /// Runs whose temporaries the replica may hold, as recorded in its
    /// state folder (read with the other state the Hasher reads).
    pub temps: TempTokens,
}

/// The Differ's plan for this tick.
#[derive(Debug)]
pub struct PlanMade {
    pub plan: Plan,
    pub roots: Arc<Roots>,
}

/// One tick ended (completed, aborted or interrupted): the stages after
/// the one that ended it see it on its way to the Scheduler. The context's
/// errors and tallies are already in the outcome (`TickCx::settle`).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TickFinished {
    pub cx: TickCx,
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
    /// Source renames whose two halves inotify paired (move cookie), and
    /// source paths whose entry was replaced, in order (`moves::Seen`).
    pub seen: Vec<Seen>,
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
    /// `move` entries (`move` is a keyword).
    pub moves: u64,
    pub link: u64,
    pub delete: u64,
    pub rmdir: u64,
    pub skip: u64,
    pub warn: u64,
}

impl Counts {
    pub fn changes(&self) -> u64 {
        self.mkdir
            + self.copy
            + self.update
            + self.meta
            + self.symlink
            + self.moves
            + self.link
            + self.delete
            + self.rmdir
    }

    /// The count of `verb`, if it is one the contract counts per tick.
    fn slot(&mut self, verb: Verb) -> Option<&mut u64> {
        Some(match verb {
            Verb::Mkdir => &mut self.mkdir,
            Verb::Copy => &mut self.copy,
            Verb::Update => &mut self.update,
            Verb::Meta => &mut self.meta,
            Verb::Symlink => &mut self.symlink,
            Verb::Move => &mut self.moves,
            Verb::Link => &mut self.link,
            Verb::Delete => &mut self.delete,
            Verb::Rmdir => &mut self.rmdir,
            Verb::Skip => &mut self.skip,
            Verb::Warn => &mut self.warn,
            Verb::Error | Verb::Tick | Verb::Detail(_) | Verb::Other { .. } => return None,
        })
    }

    /// Counts one logged `verb`; false for a verb not counted here.
    pub fn add(&mut self, verb: Verb) -> bool {
        self.slot(verb).map(|n| *n += 1).is_some()
    }

    pub fn merge(&mut self, other: &Counts) {
        for (verb, n) in other.iter() {
            if let Some(mine) = self.slot(verb) {
                *mine += n;
            }
        }
    }

    /// Each counted verb with its count, in the `tick` entry's order.
    pub fn iter(&self) -> impl Iterator<Item = (Verb, u64)> {
        let c = *self;
        Verb::COUNTED.into_iter().map(move |verb| {
            let n = match verb {
                Verb::Mkdir => c.mkdir,
                Verb::Copy => c.copy,
                Verb::Update => c.update,
                Verb::Meta => c.meta,
                Verb::Symlink => c.symlink,
                Verb::Move => c.moves,
                Verb::Link => c.link,
                Verb::Delete => c.delete,
                Verb::Rmdir => c.rmdir,
                Verb::Skip => c.skip,
                _ => c.warn,
            };
            (verb, n)
        })
    }
}

/// Exit statuses of the command-line contract.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FATAL: i32 = 1;
    pub const FAILED_OPS: i32 = 3;
    pub const GUARD: i32 = 4;
    pub const INTERRUPTED: i32 = 130;
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
    /// Counts of stages beyond the contract's verbs (`TickCx::count`).
    pub tallies: Tallies,
}

impl TickOutcome {
    /// The `tick` log entry: counts per verb, the stages' own counts,
    /// bytes, errors, time; in watch mode how the trees were listed.
    pub fn summary(&self, cx: &TickCx, elapsed: Duration) -> LogEvent {
        let mut ev = LogEvent::new(Verb::Tick, None).with_u64("seq", cx.seq);
        for (verb, n) in self.counts.iter() {
            ev = ev.with_u64(verb.as_str(), n);
        }
        for (key, n) in self.tallies.iter().chain(cx.tallies.iter()) {
            ev = ev.with_u64(key, n);
        }
        ev = ev
            .with_u64("bytes", self.bytes)
            .with_u64("errors", self.errors + cx.errors)
            .with_u64("elapsed_ms", elapsed.as_millis() as u64);
        if self.guard_tripped {
            ev = ev.with("guard", LogValue::Bool(true));
        }
        if self.interrupted {
            ev = ev.with("interrupted", LogValue::Bool(true));
        }
        if let Some(scan) = cx.scan {
            let mode = if scan.full { "full" } else { "incremental" };
            ev = ev
                .with_str("mode", mode)
                .with_u64("rescanned", scan.rescanned);
        }
        ev
    }

    /// The exit status this tick alone would give a `--once` run: 1 (a
    /// root gone), 130 (stopped), 4 (guard), 3 (failed operations), 0.
    pub fn once_status(&self) -> i32 {
        if self.aborted.is_some() {
            exit::FATAL
        } else if self.interrupted {
            exit::INTERRUPTED
        } else if self.guard_tripped {
            exit::GUARD
        } else if self.errors > 0 {
            exit::FAILED_OPS
        } else {
            exit::OK
        }
    }
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
    Move,
    /// A file made another name of a file already in the replica.
    Link,
    Delete,
    Rmdir,
    Skip,
    Error,
    Warn,
    Tick,
    /// Verbose-only detail, shown with `-v`; never in the log file.
    Detail(&'static str),
    /// A verb a stage adds to the log (`backup`), with its level. A stage
    /// counts its own with `TickCx::count` to show them in the `tick` entry.
    Other {
        name: &'static str,
        level: Level,
    },
}

impl Verb {
    /// The verbs counted per tick, in the `tick` entry's order.
    pub const COUNTED: [Verb; 11] = [
        Verb::Mkdir,
        Verb::Copy,
        Verb::Update,
        Verb::Meta,
        Verb::Symlink,
        Verb::Move,
        Verb::Link,
        Verb::Delete,
        Verb::Rmdir,
        Verb::Skip,
        Verb::Warn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Mkdir => "mkdir",
            Verb::Copy => "copy",
            Verb::Update => "update",
            Verb::Meta => "meta",
            Verb::Symlink => "symlink",
            Verb::Move => "move",
            Verb::Link => "link",
            Verb::Delete => "delete",
            Verb::Rmdir => "rmdir",
            Verb::Skip => "skip",
            Verb::Error => "error",
            Verb::Warn => "warn",
            Verb::Tick => "tick",
            Verb::Detail(what) => what,
            Verb::Other { name, .. } => name,
        }
    }

    pub fn level(self) -> Level {
        match self {
            Verb::Skip | Verb::Warn => Level::Warn,
            Verb::Error => Level::Error,
            Verb::Detail(_) => Level::Debug,
            Verb::Other { level, .. } => level,
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
            LogValue::Bytes(b) => f.write_str(&crate::contract::relpath::escape_bytes(b)),
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
    /// What the entry tells in typed form, for those that count rather
    /// than print (the progress bar, the Applier's tally).
    pub fact: Option<Fact>,
}

/// Facts that travel with a log entry as typed values: the entry's text is
/// written from them, never parsed back into them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    /// The Differ's plan: the files it copies or updates, and their size.
    PlanReady { files: u64, bytes: u64 },
    /// One operation of the plan is over.
    OpDone(OpDone),
}

/// What one operation came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpDone {
    /// The verb logged: the operation's own, or `skip`, or `error`.
    pub verb: Verb,
    /// The operation writes a file's content (`copy`, `update`), whether
    /// it succeeded or not.
    pub write: bool,
    /// Bytes written.
    pub bytes: u64,
}

impl LogEvent {
    pub fn new(verb: Verb, path: Option<RelPath>) -> Self {
        LogEvent {
            verb,
            path,
            fields: Vec::new(),
            dry_run: false,
            fact: None,
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

    pub fn with_fact(mut self, fact: Fact) -> Self {
        self.fact = Some(fact);
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_entry_takes_the_stages_counts_and_a_new_verb_its_level() {
        let mut cx = TickCx::new(4);
        cx.scan = Some(ScanMode {
            full: false,
            rescanned: 2,
        });
        cx.errors = 1;
        cx.count("backup", 2);
        let mut outcome = TickOutcome::default();
        outcome.counts.add(Verb::Copy);
        outcome.bytes = 10;
        cx.count("backup", 1);
        cx.settle(&mut outcome);
        assert_eq!(
            (outcome.errors, outcome.tallies.get("backup")),
            (1, Some(3))
        );
        let ev = outcome.summary(&cx, Duration::from_millis(7));
        let keys: Vec<String> = ev.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            keys.join(" "),
            "seq=4 mkdir=0 copy=1 update=0 meta=0 symlink=0 move=0 link=0 delete=0 rmdir=0 skip=0 warn=0 \
             backup=3 bytes=10 errors=1 elapsed_ms=7 mode=incremental rescanned=2"
        );
        let backup = Verb::Other {
            name: "backup",
            level: Level::Info,
        };
        assert_eq!((backup.as_str(), backup.level()), ("backup", Level::Info));
        assert!(!Counts::default().add(backup));
    }
}
