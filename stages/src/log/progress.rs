//! The progress bar on the terminal, for syncs that take more than a moment.
//!
//! Used by the Logger, which owns standard error: it feeds every `LogEvent`
//! to `Progress::observe` and, while a tick has files to write, calls
//! `Progress::refresh` on a timer. Nothing here is a stage and nothing is
//! sent: the totals come from the Differ's `plan` detail event (`copies`,
//! `bytes`), the progress from the `copy` and `update` events (their
//! `bytes`), and the `tick` event ends it. A failed copy counts as a file
//! done; a copy skipped while running (the source changed) is not counted,
//! so such a tick's bar stops short of full, until the summary clears it.
//!
//! The bar appears only once a tick's writing has lasted `SHOW_AFTER`, so
//! short syncs and idle watch ticks never draw it, and it is cleared before
//! the tick's summary. Standard error has one more writer, the slog-term
//! drain on its slog-async thread: it writes through `AboveBar`, which runs
//! each write with the bar cleared and redraws it after, under the bar's own
//! lock, so a line and the bar never interleave whichever thread draws.
//!
//! Whether to show and what to show are plain functions of the counts and
//! the elapsed time (`show_due`, `message`); the draw target is injected,
//! so tests pass an in-memory terminal and the time, and nothing sleeps.

use crate::contract::messages::{Fact, LogEvent, Verb};
use crate::log::log_format::human_bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use slog::{Drain, OwnedKVList, Record};
use std::time::{Duration, Instant};

/// A tick's writing must last this long before the bar is drawn: a bar
/// that flashes for a fraction of a second is noise.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

/// How often the Logger refreshes the bar while a tick writes. The message
/// (rate, time left) changes even when no file finishes: one large file
/// can take minutes.
pub const REFRESH: Duration = Duration::from_millis(200);

/// The bar keeps a fixed width so that it does not jump; the message is
/// cut at the terminal's edge, its least useful part (the rate) last.
const TEMPLATE: &str = "[{bar:20}] {wide_msg}";

/// The bar's length: it shows a share, not a count.
const BAR_STEPS: u64 = 1000;

/// What one tick has to write, and what it has written so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickWork {
    /// Files to copy or update.
    pub files: u64,
    /// Their size, as the scan saw it.
    pub bytes: u64,
    pub files_done: u64,
    pub bytes_done: u64,
}

impl TickWork {
    /// The work announced by the Differ's plan (`Fact::PlanReady`); `None`
    /// for any other event and for a plan that writes no file (nothing to
    /// show).
    pub fn from_plan(ev: &LogEvent) -> Option<TickWork> {
        let Some(Fact::PlanReady { files, bytes }) = ev.fact else {
            return None;
        };
        (files > 0).then(|| TickWork {
            files,
            bytes,
            ..TickWork::default()
        })
    }

    /// Counts a finished copy or update, or one that failed
    /// (`Fact::OpDone`).
    pub fn count(&mut self, ev: &LogEvent) {
        let Some(Fact::OpDone(done)) = ev.fact else {
            return;
        };
        if done.write && matches!(done.verb, Verb::Copy | Verb::Update | Verb::Error) {
            self.files_done += 1;
            self.bytes_done += done.bytes;
        }
    }

    /// How far the writing is, from 0 to 1: the lesser of the files' and
    /// the bytes' shares, since either can be what takes the time (a few
    /// large files, or many small ones that each cost a create and a
    /// rename). A file that grew since the scan cannot go past 1.
    pub fn share_done(&self) -> f64 {
        share(self.files_done, self.files).min(share(self.bytes_done, self.bytes))
    }

    /// The time left if the rates so far hold: the longer of the files'
    /// and the bytes' estimates, for the same reason. `None` while one
    /// with something left has not moved yet.
    pub fn time_left(&self, elapsed: Duration) -> Option<Duration> {
        let secs = elapsed.as_secs_f64();
        let left = |done: u64, total: u64| {
            let rest = total.saturating_sub(done);
            if rest == 0 {
                Some(0.0)
            } else if done == 0 || secs <= 0.0 {
                None
            } else {
                Some(rest as f64 * secs / done as f64)
            }
        };
        let files = left(self.files_done, self.files)?;
        let bytes = left(self.bytes_done, self.bytes)?;
        Some(Duration::from_secs_f64(files.max(bytes)))
    }
}

fn share(done: u64, total: u64) -> f64 {
    if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    }
}

/// Whether the bar should appear `elapsed` after the tick's plan: only
/// for work that has lasted `SHOW_AFTER` and is not finished.
pub fn show_due(work: &TickWork, elapsed: Duration) -> bool {
    elapsed >= SHOW_AFTER && work.files_done < work.files
}

/// The text beside the bar, e.g.
/// `120/2000 files, 1.2 GB/4.0 GB, 3:39 left, 85.7 MB/s`. The time left is
/// `TickWork::time_left`, left out while unknown; the rate is the average
/// since the plan, in bytes (files when there are no bytes to write).
pub fn message(work: &TickWork, elapsed: Duration) -> String {
    let mut out = format!("{}/{} files", work.files_done, work.files);
    if work.bytes > 0 {
        out.push_str(&format!(
            ", {}/{}",
            human_bytes(work.bytes_done as f64),
            human_bytes(work.bytes as f64)
        ));
    }
    if let Some(left) = work.time_left(elapsed) {
        out.push_str(&format!(", {} left", clock(left)));
    }
    let secs = elapsed.as_secs_f64();
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    if work.bytes > 0 {
        out.push_str(&format!(", {}/s", human_bytes(per_sec(work.bytes_done))));
    } else {
        out.push_str(&format!(", {:.0} files/s", per_sec(work.files_done)));
    }
    out
}

/// `0:35`, `4:05`, `2:03:00`: short, as the line is.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 3600 {
        format!("{}:{:02}", s / 60, s % 60)
    } else {
        format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    }
}

/// The bar of the tick in flight. One `ProgressBar` for the Logger's life,
/// hidden between its appearances: the terminal drain holds a clone of it
/// (`AboveBar`), so it must stay the same object.
pub struct Progress {
    bar: ProgressBar,
    /// Where a shown bar draws; `None`: never draw (`-q`, not a terminal).
    target: Option<Box<dyn Fn() -> ProgressDrawTarget + Send>>,
    /// The tick's work and when its plan arrived.
    tick: Option<(TickWork, Instant)>,
    shown: bool,
}

impl Progress {
    /// A bar on standard error if `wanted` and standard error is a terminal
    /// (indicatif also stays hidden where `TERM` is `dumb`).
    pub fn on_stderr(wanted: bool) -> Progress {
        use std::io::IsTerminal;
        if wanted && std::io::stderr().is_terminal() {
            Progress::with_target(ProgressDrawTarget::stderr)
        } else {
            Progress::off()
        }
    }

    /// Never draws; `AboveBar` writes straight through.
    pub fn off() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
            target: None,
            tick: None,
            shown: false,
        }
    }

    /// Draws on what `target` makes, each time the bar appears.
    pub fn with_target(target: impl Fn() -> ProgressDrawTarget + Send + 'static) -> Progress {
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        // Dropped while shown (the actor stopped without a flush), the bar
        // is erased rather than left on the screen.
        let bar = ProgressBar::hidden()
            .with_style(style)
            .with_finish(ProgressFinish::AndClear);
        Progress {
            bar,
            target: Some(Box::new(target)),
            tick: None,
            shown: false,
        }
    }

    /// A handle for other writers of standard error.
    pub fn above(&self) -> Above {
        Above(self.bar.clone())
    }

    /// Follows one event: a `plan` with files to write starts tracking a
    /// tick (returns `true`: the caller then refreshes every `REFRESH`
    /// while `tracking()`), a `tick` ends it, file operations count.
    pub fn observe(&mut self, ev: &LogEvent, now: Instant) -> bool {
        if self.target.is_none() {
            return false;
        }
        if ev.verb == Verb::Tick {
            self.end();
            return false;
        }
        if let Some(work) = TickWork::from_plan(ev) {
            self.end();
            self.tick = Some((work, now));
            return true;
        }
        if let Some((work, _)) = &mut self.tick {
            work.count(ev);
        }
        false
    }

    pub fn tracking(&self) -> bool {
        self.tick.is_some()
    }

    /// Shows the bar once it is due, and brings a shown one up to date.
    pub fn refresh(&mut self, now: Instant) {
        let (Some((work, started)), Some(target)) = (&self.tick, &self.target) else {
            return;
        };
        let elapsed = now.saturating_duration_since(*started);
        self.bar.set_message(message(work, elapsed));
        self.bar.set_length(BAR_STEPS);
        self.bar
            .set_position((work.share_done() * BAR_STEPS as f64).round() as u64);
        if !self.shown && show_due(work, elapsed) {
            self.bar.set_draw_target(target());
            self.bar.force_draw();
            self.shown = true;
        }
    }

    /// The tick is over (or the log is being closed): erase the bar if it
    /// was drawn and forget the tick.
    pub fn end(&mut self) {
        self.tick = None;
        if self.shown {
            self.shown = false;
            self.bar.finish_and_clear();
            self.bar.set_draw_target(ProgressDrawTarget::hidden());
            self.bar.reset();
        }
    }
}

/// Lets another writer of standard error put its text above the bar.
#[derive(Clone)]
pub struct Above(ProgressBar);

impl Above {
    /// Runs `write` with the bar erased, then draws it again. With no bar
    /// shown, only takes the bar's lock.
    pub fn write<R>(&self, write: impl FnOnce() -> R) -> R {
        self.0.suspend(write)
    }

    /// Writes one line to standard error above the bar. A standard error
    /// that cannot be written (a hung-up terminal) is ignored, never a
    /// panic that would take the bar's lock and the Logger with it.
    pub fn say(&self, line: std::fmt::Arguments<'_>) {
        self.write(|| {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{line}");
        })
    }

    /// Erases the bar for good, when the process exits without the
    /// Logger's flush: nothing of it is left on the screen.
    pub fn erase(&self) {
        self.0.finish_and_clear();
    }
}

/// A terminal drain whose lines go above the bar instead of through it.
pub struct AboveBar<D> {
    above: Above,
    inner: D,
}

impl<D> AboveBar<D> {
    pub fn new(above: Above, inner: D) -> AboveBar<D> {
        AboveBar { above, inner }
    }
}

impl<D: Drain> Drain for AboveBar<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<D::Ok, D::Err> {
        self.above.write(|| self.inner.log(record, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::messages::OpDone;
    use crate::contract::relpath::RelPath;
    use indicatif::TermLike;
    use std::io;
    use std::sync::{Arc, Mutex};

    fn plan(copies: u64, bytes: u64) -> LogEvent {
        LogEvent::new(Verb::Detail("plan"), None)
            .with_u64("ops", copies + 3)
            .with_u64("copies", copies)
            .with_u64("bytes", bytes)
            .with_fact(Fact::PlanReady {
                files: copies,
                bytes,
            })
    }

    fn done(verb: Verb, write: bool, bytes: u64) -> Fact {
        Fact::OpDone(OpDone { verb, write, bytes })
    }

    fn op(verb: Verb, bytes: u64) -> LogEvent {
        let write = matches!(verb, Verb::Copy | Verb::Update);
        LogEvent::op(verb, &RelPath::from_str_lossy("a/b"))
            .with_u64("bytes", bytes)
            .with_fact(done(verb, write, bytes))
    }

    fn tick() -> LogEvent {
        LogEvent::new(Verb::Tick, None).with_u64("seq", 1)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_plan_gives_the_totals() {
        let work = TickWork::from_plan(&plan(3, 300)).expect("work");
        assert_eq!((work.files, work.bytes), (3, 300));
        assert_eq!(TickWork::from_plan(&plan(0, 0)), None, "nothing to write");
        assert_eq!(TickWork::from_plan(&op(Verb::Copy, 1)), None);
        let compare = LogEvent::new(Verb::Detail("compare"), None).with_u64("copies", 3);
        assert_eq!(TickWork::from_plan(&compare), None);
    }

    #[test]
    fn copies_updates_and_their_failures_count() {
        let mut work = TickWork::from_plan(&plan(4, 1000)).expect("work");
        work.count(&op(Verb::Copy, 100));
        work.count(&op(Verb::Update, 50));
        work.count(&LogEvent::error(None, "copy", "disk full").with_fact(done(
            Verb::Error,
            true,
            0,
        )));
        work.count(&LogEvent::error(None, "delete", "busy").with_fact(done(Verb::Error, false, 0)));
        // The text alone counts for nothing.
        work.count(&LogEvent::op(Verb::Copy, &RelPath::from_str_lossy("t")).with_u64("bytes", 7));
        work.count(&op(Verb::Meta, 0));
        work.count(&LogEvent::op(Verb::Mkdir, &RelPath::from_str_lossy("d")));
        assert_eq!((work.files_done, work.bytes_done), (3, 150));
    }

    #[test]
    fn the_bar_shows_the_share_behind() {
        let mut work = TickWork::from_plan(&plan(4, 1000)).expect("work");
        work.count(&op(Verb::Copy, 900));
        assert_eq!(work.share_done(), 0.25, "one large file of four");
        work.count(&op(Verb::Copy, 10));
        work.count(&op(Verb::Copy, 10));
        assert_eq!(work.share_done(), 0.75, "small files, bytes behind");
        work.count(&op(Verb::Copy, 500));
        assert_eq!(work.share_done(), 1.0, "a grown file stops at the end");
        let mut empty = TickWork::from_plan(&plan(4, 0)).expect("work");
        empty.count(&op(Verb::Copy, 0));
        assert_eq!(empty.share_done(), 0.25);
    }

    #[test]
    fn time_left_follows_the_slower_share() {
        let mut work = TickWork::from_plan(&plan(100, 1000)).expect("work");
        assert_eq!(work.time_left(secs(1.0)), None, "nothing written yet");
        // The large files went first: bytes are nearly done, files not.
        work.files_done = 10;
        work.bytes_done = 900;
        assert_eq!(work.time_left(secs(2.0)), Some(secs(18.0)));
        // Then the other way round.
        work.files_done = 90;
        work.bytes_done = 100;
        assert_eq!(work.time_left(secs(2.0)), Some(secs(18.0)));
        // A large file still running, nothing of its bytes counted yet.
        let mut big = TickWork::from_plan(&plan(3, 1000)).expect("work");
        big.files_done = 2;
        assert_eq!(big.time_left(secs(2.0)), None);
    }

    #[test]
    fn shown_only_for_work_that_lasts() {
        let mut work = TickWork::from_plan(&plan(2, 10)).expect("work");
        assert!(!show_due(&work, secs(0.0)));
        assert!(!show_due(&work, secs(0.99)));
        assert!(show_due(&work, secs(1.0)));
        work.count(&op(Verb::Copy, 5));
        work.count(&op(Verb::Copy, 5));
        assert!(
            !show_due(&work, secs(5.0)),
            "all written: nothing to wait for"
        );
    }

    #[test]
    fn message_gives_files_bytes_rate_and_time_left() {
        let mut work = TickWork::from_plan(&plan(2000, 4_000_000_000)).expect("work");
        assert_eq!(
            message(&work, secs(0.0)),
            "0/2000 files, 0 B/4.0 GB, 0 B/s",
            "no time left before a rate is known"
        );
        work.files_done = 120;
        work.bytes_done = 1_200_000_000;
        assert_eq!(
            message(&work, secs(14.0)),
            "120/2000 files, 1.2 GB/4.0 GB, 3:39 left, 85.7 MB/s"
        );
        let mut small = TickWork::from_plan(&plan(20_000, 0)).expect("work");
        small.files_done = 5_000;
        assert_eq!(
            message(&small, secs(2.0)),
            "5000/20000 files, 0:06 left, 2500 files/s"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(clock(secs(0.4)), "0:00");
        assert_eq!(clock(secs(59.0)), "0:59");
        assert_eq!(clock(secs(245.0)), "4:05");
        assert_eq!(clock(secs(7385.0)), "2:03:05");
    }

    #[test]
    fn the_template_parses() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }

    /// A terminal that records what is done to it, one entry per call, and
    /// the lines written "by another writer" in between.
    #[derive(Clone, Debug, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        fn push(&self, entry: String) {
            self.0.lock().expect("screen lock").push(entry);
        }

        fn entries(&self) -> Vec<String> {
            self.0.lock().expect("screen lock").clone()
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().expect("screen lock"))
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, n: usize) -> io::Result<()> {
            self.push(format!("up {n}"));
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> io::Result<()> {
            self.push(format!("down {n}"));
            Ok(())
        }
        fn move_cursor_right(&self, _n: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _n: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.push(format!("bar {}", s.trim_end()));
            Ok(())
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            if !s.is_empty() {
                self.push(format!("bar {}", s.trim_end()));
            }
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            self.push("clear".into());
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn on_screen() -> (Progress, Screen) {
        let screen = Screen::default();
        let target = screen.clone();
        let progress =
            Progress::with_target(move || ProgressDrawTarget::term_like(Box::new(target.clone())));
        (progress, screen)
    }

    fn bar_drawn(entries: &[String]) -> bool {
        entries.iter().any(|e| e.starts_with("bar ["))
    }

    #[test]
    fn a_short_tick_draws_nothing() {
        let (mut progress, screen) = on_screen();
        let t0 = Instant::now();
        assert!(progress.observe(&plan(2, 100), t0));
        progress.refresh(t0 + secs(0.5));
        progress.observe(&op(Verb::Copy, 50), t0 + secs(0.6));
        progress.observe(&op(Verb::Copy, 50), t0 + secs(0.7));
        progress.refresh(t0 + secs(0.7));
        progress.observe(&tick(), t0 + secs(0.8));
        assert!(!progress.tracking());
        assert_eq!(screen.entries(), Vec::<String>::new());
    }

    #[test]
    fn a_long_tick_shows_the_bar_and_its_summary_clears_it() {
        let (mut progress, screen) = on_screen();
        let t0 = Instant::now();
        progress.observe(&plan(2, 1000), t0);
        progress.observe(&op(Verb::Copy, 250), t0 + secs(0.5));
        progress.refresh(t0 + secs(1.0));
        let shown = screen.take();
        let line = shown
            .iter()
            .find(|e| e.starts_with("bar ["))
            .expect("drawn");
        assert!(
            line.ends_with("] 1/2 files, 250 B/1.0 kB, 0:03 left, 250 B/s"),
            "{line}"
        );
        assert!(line.starts_with("bar [=====> "), "a quarter: {line}");
        progress.observe(&tick(), t0 + secs(2.0));
        let cleared = screen.take();
        assert!(cleared.contains(&"clear".to_string()), "{cleared:?}");
        assert!(!bar_drawn(&cleared), "{cleared:?}");
        // Hidden again: the next tick starts from nothing.
        progress.observe(&plan(1, 10), t0 + secs(3.0));
        progress.refresh(t0 + secs(3.5));
        assert_eq!(screen.entries(), Vec::<String>::new());
    }

    #[test]
    fn lines_from_other_writers_go_above_the_bar() {
        let (mut progress, screen) = on_screen();
        let above = progress.above();
        above.write(|| screen.push("line before".into()));
        let t0 = Instant::now();
        progress.observe(&plan(3, 0), t0);
        progress.refresh(t0 + secs(1.5));
        screen.take();
        above.write(|| screen.push("line".into()));
        let around = screen.take();
        let at = around.iter().position(|e| e == "line").expect("written");
        assert!(
            around[..at].contains(&"clear".to_string()) && !bar_drawn(&around[..at]),
            "erased, not drawn, before the line: {around:?}"
        );
        assert!(bar_drawn(&around[at..]), "drawn again below: {around:?}");
        progress.end();
        screen.take();
        above.write(|| screen.push("line after".into()));
        assert_eq!(screen.entries(), vec!["line after".to_string()]);
    }

    #[test]
    fn the_drain_writes_through_the_bar() {
        let (mut progress, screen) = on_screen();
        let t0 = Instant::now();
        progress.observe(&plan(3, 0), t0);
        progress.refresh(t0 + secs(1.5));
        screen.take();
        struct Recorder(Screen);
        impl Drain for Recorder {
            type Ok = ();
            type Err = slog::Never;
            fn log(&self, record: &Record, _: &OwnedKVList) -> Result<(), slog::Never> {
                self.0.push(format!("line {}", record.msg()));
                Ok(())
            }
        }
        let drain = AboveBar::new(progress.above(), Recorder(screen.clone()));
        let logger = slog::Logger::root(drain.fuse(), slog::o!());
        slog::info!(logger, "copy");
        let around = screen.take();
        let at = around
            .iter()
            .position(|e| e == "line copy")
            .expect("written");
        assert!(around[..at].contains(&"clear".to_string()), "{around:?}");
        assert!(bar_drawn(&around[at..]), "{around:?}");
    }

    #[test]
    fn off_follows_nothing() {
        let mut progress = Progress::off();
        let t0 = Instant::now();
        assert!(!progress.observe(&plan(5, 5), t0));
        progress.refresh(t0 + secs(10.0));
        assert!(!progress.tracking());
        assert_eq!(progress.above().write(|| 7), 7);
    }
}
