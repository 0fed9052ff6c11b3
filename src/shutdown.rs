//! The shutdown coordinator: turns Ctrl+C and SIGTERM into messages and
//! reports the end of the run.
//!
//! First signal: the shared stop flag is raised (stages finish the file in
//! flight and start nothing new) and the Scheduler is told to start no new
//! tick; once it answers `TicksOver`, the run ends. Second signal: exit at
//! once with 130 (temporaries left behind are removed by the next run).
//! A hang-up (SIGHUP: a closed terminal, or logrotate) does not stop the
//! run: the Logger opens its file again by path.

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient};
use std::io::Write as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use treesync_stages::contract::messages::{StopTicks, TickOutcome, TicksOver};
use treesync_stages::contract::stop::StopFlag;
use treesync_stages::log::logger::ReopenLog;
use treesync_stages::log::progress::Above;

/// How the run ended.
#[derive(Debug)]
pub struct RunEnd {
    pub last: Option<TickOutcome>,
    /// A signal asked for the stop.
    pub signalled: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
struct SignalReceived(&'static str);

pub struct ShutdownCoordinator {
    stop: StopFlag,
    scheduler: Recipient<StopTicks>,
    done: Option<oneshot::Sender<RunEnd>>,
    signals: u32,
    /// The signal notices share standard error with the progress bar.
    terminal: Above,
    /// Told to open the log file again at a hang-up.
    reopen: Option<Recipient<ReopenLog>>,
}

impl ShutdownCoordinator {
    pub fn new(
        stop: StopFlag,
        scheduler: Recipient<StopTicks>,
        done: oneshot::Sender<RunEnd>,
        terminal: Above,
    ) -> Self {
        ShutdownCoordinator {
            stop,
            scheduler,
            done: Some(done),
            signals: 0,
            terminal,
            reopen: None,
        }
    }

    /// At each hang-up, `logger` opens its file again.
    pub fn reopening(mut self, logger: Recipient<ReopenLog>) -> Self {
        self.reopen = Some(logger);
        self
    }
}

impl Actor for ShutdownCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Under systemd (`Type=notify`): running from now on, and alive
        // while this loop turns (`WatchdogSec`). Nothing without
        // NOTIFY_SOCKET.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut usec = 0;
        if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            let every = std::time::Duration::from_micros(usec / 2);
            ctx.run_interval(every, |_, _| {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            });
        }
        for (kind, name) in [
            (SignalKind::interrupt(), "interrupt"),
            (SignalKind::terminate(), "terminate"),
        ] {
            let me = ctx.address();
            match signal(kind) {
                Ok(mut stream) => {
                    actix::spawn(async move {
                        while stream.recv().await.is_some() {
                            me.do_send(SignalReceived(name));
                        }
                    });
                }
                Err(e) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "treesync: cannot watch for {name} signals: {e}"
                    );
                }
            }
        }
        // A hang-up (a closed terminal or ssh session) must not end a
        // mirror in the middle of a file: it is noted and the run goes on.
        // logrotate sends it after renaming the log: lines go to a new one.
        let terminal = self.terminal.clone();
        let reopen = self.reopen.clone();
        match signal(SignalKind::hangup()) {
            Ok(mut stream) => {
                actix::spawn(async move {
                    while stream.recv().await.is_some() {
                        if let Some(logger) = &reopen {
                            logger.do_send(ReopenLog);
                        }
                        terminal.say(format_args!(
                            "treesync: hang-up signal: log file opened again, the run goes on (Ctrl+C or SIGTERM stops it)"
                        ));
                    }
                });
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "treesync: cannot watch for hang-up signals: {e}"
                );
            }
        }
    }
}

impl Handler<SignalReceived> for ShutdownCoordinator {
    type Result = ();

    fn handle(&mut self, msg: SignalReceived, _: &mut Context<Self>) {
        self.signals += 1;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        if self.signals > 1 {
            self.terminal.erase();
            let _ = writeln!(
                std::io::stderr(),
                "treesync: second {} signal: exiting now",
                msg.0
            );
            std::process::exit(130);
        }
        self.terminal.say(format_args!(
            "treesync: {} signal: stopping after the files in flight (again to exit at once)",
            msg.0
        ));
        self.stop.request();
        self.scheduler.do_send(StopTicks);
    }
}

impl Handler<TicksOver> for ShutdownCoordinator {
    type Result = ();

    fn handle(&mut self, msg: TicksOver, ctx: &mut Context<Self>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(RunEnd {
                last: msg.last,
                signalled: self.signals > 0,
            });
        }
        ctx.stop();
    }
}
