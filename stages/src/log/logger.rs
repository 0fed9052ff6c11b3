//! Logger: owns the slog drains, the log file and the terminal (standard
//! error), and takes `LogEvent` and `FlushLog` from every stage.
//!
//! Runs on the async thread, so its `LogEvent` handler only decides where
//! the event goes, formats it (`log_format`) and hands it to a slog-async
//! drain; the writing happens on the drains' own threads. Both drains block
//! when their queue is full rather than drop entries: a log that loses
//! lines cannot be trusted. `FlushLog` closes the async drains (joining
//! their threads, so everything sent before is written when it returns) and
//! switches to synchronous drains, so events that still arrive are written,
//! not lost.
//!
//! The log file gets every event but `-v` detail, whatever the terminal
//! shows. A write error on the log file is reported on standard error once
//! until a line is written again; logging goes on, each later line is tried
//! again, and the lines lost are counted: `FlushLog` answers with the
//! count, and a run that lost any ends with exit status 3.
//!
//! The terminal also has the progress bar of long ticks (`progress`): every
//! event passes through it, a timer on this actor refreshes it while a tick
//! writes, and every write to standard error goes above it.

use crate::contract::messages::{FlushLog, Level, LogEvent, LogHealth, LogValue, Verb};
use crate::log::log_format;
use crate::log::progress::{Above, AboveBar, Progress, REFRESH};
use actix::{Actor, AsyncContext, Context, Handler, SpawnHandle};
use slog::{BorrowedKV, Drain, Never, OwnedKVList, Record, RecordLocation, RecordStatic, KV};
use slog_async::{Async, AsyncGuard, OverflowStrategy};
use slog_term::{FullFormat, TermDecorator};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

pub use crate::log::log_format::LogFormat;

/// What the terminal shows (`-q`, default, `-v`); the log file does not
/// depend on it.
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
    /// A progress bar for long syncs, if standard error is a terminal.
    pub progress: bool,
    /// `--log-max-size`: past this many bytes the file is rotated to
    /// `.1` (and `.1` to `.2`, up to `.5`, the oldest dropped); `None`
    /// never. Only a regular file is rotated.
    pub max_size: Option<u64>,
}

/// How many rotated files are kept beside the log file (`.1` to `.5`).
pub const KEPT_ROTATIONS: u32 = 5;

/// The default of `--log-max-size`: 64 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 20;

/// Asks the Logger to open its file again by path: after a rename by
/// logrotate (`SIGHUP`), lines go to the new file, not the renamed one.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct ReopenLog;

/// Opens the log file for appending, creating it if missing. It must be a
/// regular file or a character device (`/dev/null`, a terminal): a fifo
/// would block the open, and later every line, until someone read it.
pub fn open_log_file(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let not_a_file = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a fifo or a socket would hold up the sync)",
        )
    };
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        // A fifo without a reader.
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) {
                not_a_file()
            } else {
                e
            }
        })?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_char_device()) {
        return Err(not_a_file());
    }
    // Writes to a regular file never block; the flag goes all the same.
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::APPEND)?;
    Ok(file)
}

/// Entries queued per drain before a sender waits. Large enough that a
/// burst of operations rarely makes the async thread wait on the disk.
const QUEUE_LEN: usize = 4096;

/// `-q`: errors and tick summaries; default: everything but detail; `-v`:
/// everything.
pub fn shows_on_terminal(v: Verbosity, ev: &LogEvent) -> bool {
    match v {
        Verbosity::Quiet => ev.level() == Level::Error || ev.verb == Verb::Tick,
        Verbosity::Normal => ev.level() != Level::Debug,
        Verbosity::Verbose => true,
    }
}

/// Every operation, warning, error and tick; `-v` detail is for the
/// terminal only.
pub fn goes_to_file(ev: &LogEvent) -> bool {
    ev.level() != Level::Debug
}

pub struct Logger {
    format: LogFormat,
    terminal: Verbosity,
    /// Shared with the file drain thread; kept to write synchronously once
    /// the async drains are closed.
    file: Arc<FileDrain>,
    sinks: Sinks,
    progress: Progress,
    /// The timer that refreshes the bar while a tick writes.
    refresh: Option<SpawnHandle>,
}

impl Logger {
    /// Opens (appends to, creating it if missing) the log file and builds
    /// both drains. The error is the one from opening the file; the caller
    /// adds the path.
    pub fn open(cfg: &LogConfig) -> io::Result<Logger> {
        let progress = Progress::on_stderr(cfg.progress);
        let file = open_log_file(&cfg.file)?;
        let file = Arc::new(FileDrain::new(
            file,
            cfg.file.clone(),
            cfg.max_size,
            progress.above(),
        ));
        Ok(Logger {
            format: cfg.format,
            terminal: cfg.terminal,
            sinks: Sinks::asynchronous(file.clone(), progress.above()),
            file,
            progress,
            refresh: None,
        })
    }

    /// For writers of standard error outside the Logger (the signal
    /// notices), so that their lines do not cut through the bar.
    pub fn above(&self) -> Above {
        self.progress.above()
    }

    /// Lets the bar follow the event; starts its refresh timer when a tick
    /// with files to write begins, stops it when the tick ends.
    fn follow(&mut self, ev: &LogEvent, ctx: &mut Context<Self>) {
        let started = self.progress.observe(ev, Instant::now());
        if started && self.refresh.is_none() {
            let timer = ctx.run_interval(REFRESH, |logger, _| {
                logger.progress.refresh(Instant::now());
            });
            self.refresh = Some(timer);
        }
        if !self.progress.tracking() {
            self.stop_refresh(ctx);
        }
    }

    fn stop_refresh(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.refresh.take() {
            ctx.cancel_future(timer);
        }
    }

    fn log(&self, ev: &LogEvent) {
        if goes_to_file(ev) {
            // The time is taken here, not on the drain thread, so it is
            // when the event happened even if the queue is long.
            let line = log_format::file_line(self.format, SystemTime::now(), ev);
            emit(&self.sinks.file, ev.level(), &line, &());
        }
        if shows_on_terminal(self.terminal, ev) {
            if ev.verb == Verb::Tick {
                // People read the summary; the log file keeps the fields.
                let summary = log_format::tick_summary(ev);
                emit(&self.sinks.terminal, ev.level(), &summary, &());
            } else {
                emit(
                    &self.sinks.terminal,
                    ev.level(),
                    ev.verb.as_str(),
                    &TermFields(ev),
                );
            }
        }
    }

    /// Writes out and closes the async drains; later events are written
    /// synchronously.
    fn flush(&mut self) {
        self.progress.end();
        let direct = Sinks::synchronous(self.file.clone(), self.progress.above());
        std::mem::replace(&mut self.sinks, direct).close();
    }
}

impl Actor for Logger {
    type Context = Context<Self>;
}

impl Handler<LogEvent> for Logger {
    type Result = ();

    fn handle(&mut self, msg: LogEvent, ctx: &mut Context<Self>) {
        // Before the line is queued: the summary's line finds the bar gone.
        self.follow(&msg, ctx);
        self.log(&msg);
    }
}

impl Handler<ReopenLog> for Logger {
    type Result = ();

    fn handle(&mut self, _msg: ReopenLog, _: &mut Context<Self>) {
        self.file.reopen();
    }
}

impl Handler<FlushLog> for Logger {
    type Result = LogHealth;

    fn handle(&mut self, _msg: FlushLog, ctx: &mut Context<Self>) -> LogHealth {
        self.stop_refresh(ctx);
        self.flush();
        LogHealth {
            lost: self.file.lost.load(Ordering::Relaxed),
        }
    }
}

/// The two destinations, either behind slog-async threads or direct.
struct Sinks {
    file: slog::Logger,
    terminal: slog::Logger,
    /// Empty for direct sinks. Declared after the loggers so that they drop
    /// first when the actor is dropped without a flush: the guards then end
    /// and join the drain threads.
    guards: Vec<AsyncGuard>,
}

impl Sinks {
    fn asynchronous(file: Arc<FileDrain>, above: Above) -> Sinks {
        let (file_drain, file_guard) = async_drain(file, "treesync-log-file");
        let (term_drain, term_guard) = async_drain(terminal_drain(above), "treesync-log-term");
        Sinks {
            file: slog::Logger::root(file_drain.ignore_res(), slog::o!()),
            terminal: slog::Logger::root(term_drain.ignore_res(), slog::o!()),
            guards: vec![file_guard, term_guard],
        }
    }

    /// Returns once every entry queued before is written: each guard sends
    /// the drain thread a last message behind them and joins it.
    fn close(self) {
        let Sinks {
            file,
            terminal,
            guards,
        } = self;
        drop((file, terminal));
        drop(guards);
    }

    fn synchronous(file: Arc<FileDrain>, above: Above) -> Sinks {
        // The terminal formatter is not `Sync`; a mutex makes it usable
        // without its own thread.
        let terminal = Mutex::new(terminal_drain(above)).ignore_res();
        Sinks {
            file: slog::Logger::root(file, slog::o!()),
            terminal: slog::Logger::root(terminal, slog::o!()),
            guards: Vec::new(),
        }
    }
}

/// `Block`, not the default `DropAndReport`: nothing may be lost.
fn async_drain<D>(drain: D, name: &str) -> (Async, AsyncGuard)
where
    D: Drain<Ok = (), Err = Never> + Send + 'static,
{
    Async::new(drain)
        .chan_size(QUEUE_LEN)
        .overflow_strategy(OverflowStrategy::Block)
        .thread_name(name.to_string())
        .build_with_guard()
}

/// Human-readable lines on standard error, in colour on a terminal, above
/// the progress bar. A closed standard error must not stop the sync, hence
/// `ignore_res`.
fn terminal_drain(above: Above) -> impl Drain<Ok = (), Err = Never> + Send + 'static {
    let decorator = TermDecorator::new().stderr().build();
    let format = FullFormat::new(decorator);
    let format = match stderr_is_journal() {
        // The journal stamps every line itself.
        true => format.use_custom_timestamp(|_: &mut dyn Write| Ok(())),
        false => format.use_local_timestamp(),
    };
    AboveBar::new(above, format.build()).ignore_res()
}

/// Standard error is the systemd journal: `JOURNAL_STREAM` (which systemd
/// sets for a service whose output goes there) names its device and inode.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr()).is_ok_and(|st| names_stream(&value, st.st_dev, st.st_ino))
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` names this stream.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// Location of every record: our records do not come from `slog::info!`
/// call sites, and no drain here prints it.
static LOCATION: RecordLocation = RecordLocation {
    file: file!(),
    line: 0,
    column: 0,
    function: "",
    module: module_path!(),
};

/// Builds the record by hand rather than with `slog::log!`, whose level
/// must be a constant and which drops debug records in release builds
/// (`-v` detail must still show).
fn emit(logger: &slog::Logger, level: Level, msg: &str, kv: &dyn KV) {
    let rs = RecordStatic {
        location: &LOCATION,
        tag: "",
        level: slog_level(level),
    };
    logger.log(&Record::new(&rs, &format_args!("{msg}"), BorrowedKV(kv)));
}

fn slog_level(level: Level) -> slog::Level {
    match level {
        Level::Debug => slog::Level::Debug,
        Level::Info => slog::Level::Info,
        Level::Warn => slog::Level::Warning,
        Level::Error => slog::Level::Error,
    }
}

/// The terminal's key-value pairs: the path, then the fields, then the dry
/// run mark, every string escaped like the text log.
struct TermFields<'a>(&'a LogEvent);

impl KV for TermFields<'_> {
    fn serialize(&self, _record: &Record, ser: &mut dyn slog::Serializer) -> slog::Result {
        let ev = self.0;
        if let Some(path) = &ev.path {
            ser.emit_str("path", &log_format::text_path(path))?;
        }
        for (key, value) in &ev.fields {
            match value {
                LogValue::U64(n) => ser.emit_u64(key, *n)?,
                LogValue::Bool(b) => ser.emit_bool(key, *b)?,
                LogValue::Str(_) | LogValue::Bytes(_) => {
                    ser.emit_str(key, &log_format::text_value(value))?
                }
            }
        }
        if ev.dry_run {
            ser.emit_bool("dry_run", true)?;
        }
        Ok(())
    }
}

/// Writes each record's message (an already formatted line) to the log
/// file with one `write_all`. Unbuffered on purpose: in interval mode a
/// buffered tail could sit unwritten between ticks, and an `O_APPEND` write
/// per line keeps lines whole.
struct FileDrain {
    file: Mutex<Open>,
    path: PathBuf,
    max_size: Option<u64>,
    /// Set at a write error and cleared by the next line written, so that
    /// a run of failures is reported once.
    failed: AtomicBool,
    /// Lines not written.
    lost: AtomicU64,
    /// The last write stopped inside a line.
    torn: AtomicBool,
    /// The report goes to standard error, above the progress bar.
    above: Above,
}

/// The log file as open now, and its size as far as we wrote it.
struct Open {
    file: File,
    size: u64,
}

impl Open {
    fn new(file: File) -> Open {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Open { file, size }
    }
}

impl FileDrain {
    fn new(file: File, path: PathBuf, max_size: Option<u64>, above: Above) -> FileDrain {
        FileDrain {
            file: Mutex::new(Open::new(file)),
            path,
            max_size,
            failed: AtomicBool::new(false),
            lost: AtomicU64::new(0),
            torn: AtomicBool::new(false),
            above,
        }
    }

    fn report(&self, err: &io::Error) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        if !self.failed.swap(true, Ordering::Relaxed) {
            self.above.say(format_args!(
                "treesync: cannot write to the log file: {err}; \
                     the sync goes on, each line is tried again, and the exit status will be 3"
            ));
        }
    }
}

impl Drain for FileDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record, _values: &OwnedKVList) -> Result<(), Never> {
        // A line cut short by a failed write is ended before the next one,
        // so that one operation stays one line.
        let mut line = if self.torn.load(Ordering::Relaxed) {
            String::from("\n")
        } else {
            String::new()
        };
        write!(line, "{}", record.msg()).expect("formatting into a String");
        line.push('\n');
        match self.write_line(line.as_bytes()) {
            Ok(()) => {
                self.torn.store(false, Ordering::Relaxed);
                self.failed.store(false, Ordering::Relaxed);
            }
            Err(err) => self.report(&err),
        }
        Ok(())
    }
}

impl FileDrain {
    /// Opens the file again by its path (`ReopenLog`); on failure lines go
    /// on to the file open now, and the failure is reported.
    fn reopen(&self) {
        let mut open = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match open_log_file(&self.path) {
            Ok(file) => *open = Open::new(file),
            Err(e) => self.above.say(format_args!(
                "treesync: cannot open the log file {} again: {e}; lines go on to the file open before",
                self.path.display()
            )),
        }
    }

    /// Moves the full file to `.1` (the older ones one number up, the
    /// oldest dropped) and opens a new one. A character device or a file
    /// that cannot be renamed is written on as it is.
    fn rotate(&self, open: &mut Open) {
        // Only a log file named as such: not a device, and not a link
        // (`/dev/stdout` names a shell's redirect target, which is not
        // ours to rename).
        let is_file = open.file.metadata().is_ok_and(|m| m.is_file())
            && std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_file());
        if !is_file {
            open.size = 0;
            return;
        }
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..KEPT_ROTATIONS).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if let Err(e) = std::fs::rename(&self.path, numbered(1)) {
            self.above.say(format_args!(
                "treesync: cannot rotate the log file {}: {e}; it grows on",
                self.path.display()
            ));
            open.size = 0;
            return;
        }
        match open_log_file(&self.path) {
            Ok(file) => *open = Open::new(file),
            Err(e) => {
                // Lines go on to the renamed file rather than nowhere.
                self.above.say(format_args!(
                    "treesync: cannot open a new log file {}: {e}",
                    self.path.display()
                ));
                open.size = 0;
            }
        }
    }

    /// `write_all`, noting a line left half written; rotates first when
    /// the line would take the file past its limit.
    fn write_line(&self, mut bytes: &[u8]) -> io::Result<()> {
        let mut open = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let full = |open: &Open| {
            self.max_size
                .is_some_and(|max| open.size > 0 && open.size + bytes.len() as u64 > max)
        };
        if full(&open) {
            self.rotate(&mut open);
        }
        let mut started = false;
        while !bytes.is_empty() {
            match (&open.file).write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    started = true;
                    open.size += n as u64;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if started {
                        self.torn.store(true, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::relpath::RelPath;

    fn event(verb: Verb) -> LogEvent {
        LogEvent::op(verb, &RelPath::from_str_lossy("a/b"))
    }

    #[test]
    fn terminal_filter_follows_verbosity() {
        let cases = [
            (Verb::Copy, [false, true, true]),
            (Verb::Skip, [false, true, true]),
            (Verb::Warn, [false, true, true]),
            (Verb::Error, [true, true, true]),
            (Verb::Tick, [true, true, true]),
            (Verb::Detail("compare"), [false, false, true]),
        ];
        let levels = [Verbosity::Quiet, Verbosity::Normal, Verbosity::Verbose];
        for (verb, expected) in cases {
            for (v, want) in levels.iter().zip(expected) {
                assert_eq!(shows_on_terminal(*v, &event(verb)), want, "{verb:?} {v:?}");
            }
        }
    }

    #[test]
    fn file_gets_everything_but_detail() {
        assert!(goes_to_file(&event(Verb::Copy)));
        assert!(goes_to_file(&event(Verb::Error)));
        assert!(goes_to_file(&LogEvent::new(Verb::Tick, None)));
        assert!(!goes_to_file(&event(Verb::Detail("compare"))));
    }

    fn config(dir: &tempfile::TempDir, format: LogFormat) -> LogConfig {
        LogConfig {
            file: dir.path().join("treesync.log"),
            format,
            terminal: Verbosity::Quiet,
            progress: false,
            max_size: None,
        }
    }

    fn read_lines(cfg: &LogConfig) -> Vec<String> {
        let text = std::fs::read_to_string(&cfg.file).expect("read log");
        text.lines().map(str::to_string).collect()
    }

    fn numbered(i: u64) -> LogEvent {
        event(Verb::Copy).with_u64("bytes", i)
    }

    #[actix_rt::test]
    async fn flush_writes_every_event_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config(&dir, LogFormat::Json);
        let addr = Logger::open(&cfg).expect("open log").start();
        for i in 0..2000 {
            addr.do_send(numbered(i));
        }
        // Detail never reaches the file.
        addr.do_send(event(Verb::Detail("compare")));
        addr.send(FlushLog).await.expect("flush");
        let lines = read_lines(&cfg);
        assert_eq!(lines.len(), 2000);
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            assert_eq!(v["msg"], "copy");
            assert_eq!(v["bytes"].as_u64(), Some(i as u64), "{line}");
        }
    }

    #[actix_rt::test]
    async fn a_full_log_file_is_rotated_and_at_most_five_old_ones_are_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = LogConfig {
            max_size: Some(2000),
            ..config(&dir, LogFormat::Json)
        };
        let addr = Logger::open(&cfg).expect("open log").start();
        for i in 0..400 {
            addr.do_send(numbered(i));
        }
        addr.send(FlushLog).await.expect("flush");
        let numbered_file = |n: u32| dir.path().join(format!("treesync.log.{n}"));
        for n in 1..=KEPT_ROTATIONS {
            let len = std::fs::metadata(numbered_file(n))
                .expect("rotated file")
                .len();
            assert!(len <= 2000 && len > 1000, ".{n}: {len} bytes");
        }
        assert!(!numbered_file(KEPT_ROTATIONS + 1).exists());
        // Lines stay whole and in order: the newest file ends with the
        // last line, and `.1` ends just before the current file starts.
        let bytes_of = |line: &str| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            v["bytes"].as_u64().expect("bytes")
        };
        let current = read_lines(&cfg);
        assert_eq!(current.last().map(|l| bytes_of(l)), Some(399));
        let older = std::fs::read_to_string(numbered_file(1)).expect("read .1");
        let last_older = older.lines().last().map(bytes_of).expect("a line");
        assert_eq!(last_older + 1, bytes_of(&current[0]));
    }

    #[test]
    fn the_journal_is_known_by_its_device_and_inode() {
        assert!(names_stream("64769:1234", 64769, 1234));
        assert!(!names_stream("64769:1234", 64769, 1235));
        assert!(!names_stream("", 0, 0));
        assert!(!names_stream("x:y", 0, 0));
    }

    #[actix_rt::test]
    async fn reopen_writes_to_a_new_file_after_the_old_one_was_renamed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config(&dir, LogFormat::Json);
        let addr = Logger::open(&cfg).expect("open log").start();
        addr.do_send(numbered(1));
        addr.send(FlushLog).await.expect("flush");
        // logrotate: rename, then SIGHUP (here the message it leads to).
        let moved = dir.path().join("treesync.log.old");
        std::fs::rename(&cfg.file, &moved).expect("rename");
        addr.send(ReopenLog).await.expect("reopen");
        addr.do_send(numbered(2));
        addr.send(FlushLog).await.expect("flush");
        assert_eq!(read_lines(&cfg).len(), 1);
        assert!(read_lines(&cfg)[0].contains("\"bytes\":2"));
        let old = std::fs::read_to_string(&moved).expect("read old");
        assert_eq!(old.lines().count(), 1);
    }

    #[actix_rt::test]
    async fn lines_that_cannot_be_written_are_counted() {
        // `/dev/full` takes the open and fails every write with ENOSPC, as
        // a full log filesystem does.
        let cfg = LogConfig {
            file: "/dev/full".into(),
            format: LogFormat::Text,
            terminal: Verbosity::Quiet,
            progress: false,
            // A character device is never rotated.
            max_size: Some(10),
        };
        let addr = Logger::open(&cfg).expect("open /dev/full").start();
        for i in 0..3 {
            addr.do_send(numbered(i));
        }
        let health = addr.send(FlushLog).await.expect("flush");
        assert_eq!(health.lost, 3);
        addr.do_send(numbered(4));
        let health = addr.send(FlushLog).await.expect("second flush");
        assert_eq!(health.lost, 4, "lines after the flush count too");
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = Logger::open(&config(&dir, LogFormat::Text))
            .expect("open")
            .start();
        ok.do_send(numbered(1));
        assert_eq!(ok.send(FlushLog).await.expect("flush").lost, 0);
    }

    #[actix_rt::test]
    async fn events_after_a_flush_are_still_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config(&dir, LogFormat::Text);
        std::fs::write(&cfg.file, "earlier run\n").expect("seed log");
        let addr = Logger::open(&cfg).expect("open log").start();
        addr.do_send(numbered(1));
        addr.send(FlushLog).await.expect("flush");
        addr.do_send(numbered(2));
        addr.send(FlushLog).await.expect("second flush");
        let lines = read_lines(&cfg);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "earlier run", "the file is appended to");
        assert!(
            lines[1].ends_with(" INFO copy path=a/b bytes=1"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(" INFO copy path=a/b bytes=2"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn log_file_in_a_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = LogConfig {
            file: dir.path().join("missing").join("treesync.log"),
            format: LogFormat::Text,
            terminal: Verbosity::Normal,
            progress: false,
            max_size: None,
        };
        let err = Logger::open(&cfg).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::NotFound));
    }
}
