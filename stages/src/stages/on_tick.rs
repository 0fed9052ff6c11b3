//! OnTick: after each tick, however it ended, runs the `--on-tick` command
//! (`sh -c CMD`) with the tick's summary.
//!
//! A `Stage` placed after the Applier: it sees only ends of ticks
//! (`ended`), on a blocking thread. The command gets the `tick` entry's
//! keys as one JSON object on its standard input, and `TREESYNC_SEQ`,
//! `TREESYNC_ERRORS` and `TREESYNC_EXIT` (the status this tick alone would
//! give a `--once` run) in its environment; its output goes where
//! treesync's goes. A command that fails, cannot start or outlives the
//! time-out (then killed with its process group) is a `warn` with the
//! reason, counted in the tick; the sync goes on. A stop (Ctrl+C) kills a
//! command still running at once, so neither the next tick nor the stop
//! ever waits past the time-out.

use crate::contract::messages::{Done, LogEvent, LogValue, TickCx, TickOutcome, Verb};
use crate::contract::stage::{Flow, Stage};
use actix::Recipient;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the command may run by default.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// How often a running command is looked at (its end, the time-out, a stop).
const POLL: Duration = Duration::from_millis(10);

pub struct OnTick {
    command: String,
    timeout: Duration,
    dry_run: bool,
    log: Recipient<LogEvent>,
}

impl OnTick {
    pub fn new(command: String, dry_run: bool, log: Recipient<LogEvent>) -> Self {
        OnTick {
            command,
            timeout: TIMEOUT,
            dry_run,
            log,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the command for one tick; the reason it failed, if it did.
    fn call(&self, outcome: &TickOutcome, cx: &TickCx) -> Result<(), String> {
        let summary = outcome.summary(cx, cx.started.elapsed());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("TREESYNC_SEQ", cx.seq.to_string())
            .env("TREESYNC_ERRORS", outcome.errors.to_string())
            .env("TREESYNC_EXIT", outcome.once_status().to_string())
            .stdin(Stdio::piped())
            // Its own process group: killed whole at the time-out, and
            // not sent the terminal's Ctrl+C (the stop flag handles that).
            .process_group(0)
            .spawn()
            .map_err(|e| format!("--on-tick command could not start: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input is no failure.
            let _ = stdin.write_all(json(&summary, self.dry_run).as_bytes());
        }
        let status = wait(&mut child, self.timeout, cx)?;
        match status.code() {
            Some(0) => Ok(()),
            Some(code) => Err(format!("--on-tick command exited with status {code}")),
            None => Err(format!("--on-tick command ended by a signal ({status})")),
        }
    }
}

/// Waits for `child` until `timeout` or a stop, then kills its group.
fn wait(child: &mut Child, timeout: Duration, cx: &TickCx) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("--on-tick command could not be waited for: {e}")),
        }
        let reason = if cx.stop().is_requested() {
            "stopped: the sync is ending".to_string()
        } else if Instant::now() >= deadline {
            format!("timed out after {}", humantime::format_duration(timeout))
        } else {
            std::thread::sleep(POLL);
            continue;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.wait();
        return Err(format!("--on-tick command {reason}: killed"));
    }
}

/// The `tick` entry's keys and values as one JSON object.
fn json(summary: &LogEvent, dry_run: bool) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in summary.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{key}\":"));
        match value {
            LogValue::U64(_) | LogValue::Bool(_) => out.push_str(&value.to_string()),
            other => {
                out.push('"');
                for c in other.to_string().chars() {
                    match c {
                        '"' | '\\' => out.extend(['\\', c]),
                        c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
        }
    }
    if dry_run {
        out.push_str(",\"dry_run\":true");
    }
    out.push('}');
    out
}

impl Stage for OnTick {
    type In = Done;
    type Out = Done;

    fn name(&self) -> &'static str {
        "on-tick"
    }

    fn run(&mut self, input: Done, _: &mut TickCx) -> Flow<Done> {
        match input {}
    }

    fn ended(&mut self, mut outcome: TickOutcome, cx: &mut TickCx) -> TickOutcome {
        if let Err(reason) = self.call(&outcome, cx) {
            let event = LogEvent::new(Verb::Warn, None).with_str("reason", reason);
            outcome.counts.add(Verb::Warn);
            self.log.do_send(event.dry_run(self.dry_run));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::messages::{ScanMode, TickFinished};
    use crate::contract::stage::StageActor;
    use crate::contract::stop::StopFlag;
    use crate::testing::{wait_until, Collector};
    use actix::Actor;

    fn outcome() -> TickOutcome {
        let mut o = TickOutcome::default();
        o.counts.add(Verb::Copy);
        o.bytes = 12;
        o.errors = 2;
        o
    }

    #[test]
    fn the_input_is_the_tick_entrys_keys() {
        let mut cx = TickCx::new(5);
        cx.scan = Some(ScanMode {
            full: true,
            rescanned: 0,
        });
        let ev = outcome().summary(&cx, Duration::from_millis(3));
        assert_eq!(
            json(&ev, false),
            "{\"seq\":5,\"mkdir\":0,\"copy\":1,\"update\":0,\"meta\":0,\"symlink\":0,\
             \"move\":0,\"link\":0,\"delete\":0,\"rmdir\":0,\"skip\":0,\"warn\":0,\"bytes\":12,\"errors\":2,\
             \"elapsed_ms\":3,\"mode\":\"full\",\"rescanned\":0}"
        );
        let ev = LogEvent::new(Verb::Tick, None).with_str("k", "a\"b\\\n");
        assert_eq!(
            json(&ev, true),
            "{\"k\":\"a\\\"b\\\\\\u000a\",\"dry_run\":true}"
        );
    }

    type Logged = std::sync::Arc<std::sync::Mutex<Vec<LogEvent>>>;

    fn hook(command: &str, timeout: Duration) -> (OnTick, Logged) {
        let (addr, logged) = Collector::<LogEvent>::start();
        let stage = OnTick::new(command.into(), false, addr.recipient()).with_timeout(timeout);
        (stage, logged)
    }

    #[actix::test]
    async fn the_command_gets_the_summary_and_the_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let command = format!(
            "cat > '{0}'; echo \" $TREESYNC_SEQ $TREESYNC_ERRORS $TREESYNC_EXIT\" >> '{0}'",
            out.display()
        );
        let (mut stage, logged) = hook(&command, TIMEOUT);
        let got = stage.ended(outcome(), &mut TickCx::new(9));
        assert_eq!(got, outcome());
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("{\"seq\":9,"), "{text}");
        assert!(text.ends_with("} 9 2 3\n"), "{text}");
        assert!(logged.lock().unwrap().is_empty());
    }

    #[actix::test]
    async fn a_failing_command_is_a_counted_warn() {
        let (mut stage, logged) = hook("exit 7", TIMEOUT);
        let got = stage.ended(TickOutcome::default(), &mut TickCx::new(1));
        assert_eq!((got.counts.warn, got.errors), (1, 0));
        wait_until(|| !logged.lock().unwrap().is_empty()).await;
        let ev = logged.lock().unwrap().remove(0);
        assert_eq!(ev.verb, Verb::Warn);
        assert_eq!(
            ev.field("reason").unwrap().to_string(),
            "--on-tick command exited with status 7"
        );
    }

    #[actix::test]
    async fn a_command_that_hangs_is_killed_at_the_time_out_or_a_stop() {
        let (mut stage, logged) = hook("sleep 30", Duration::from_millis(300));
        let t0 = Instant::now();
        stage.ended(TickOutcome::default(), &mut TickCx::new(1));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        wait_until(|| !logged.lock().unwrap().is_empty()).await;
        let reason = logged.lock().unwrap()[0]
            .field("reason")
            .unwrap()
            .to_string();
        assert!(reason.contains("timed out after 300ms"), "{reason}");

        // Through the actor, with a stop raised while it runs.
        let (stage, _) = hook("sleep 30", TIMEOUT);
        let (end, ended) = Collector::<TickFinished>::start();
        let (log, _) = Collector::<LogEvent>::start();
        let stop = StopFlag::new();
        let actor =
            StageActor::new(stage, None, end.recipient(), log.recipient(), stop.clone()).start();
        let t0 = Instant::now();
        actor.do_send(TickFinished {
            cx: TickCx::new(1),
            outcome: TickOutcome::default(),
        });
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        stop.request();
        wait_until(|| !ended.lock().unwrap().is_empty()).await;
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(ended.lock().unwrap()[0].outcome.counts.warn, 1);
    }
}
