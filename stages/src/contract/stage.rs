//! The stage contract: a stage is one type implementing `Stage`, run by the
//! one generic actor here (`StageActor`), and the pipeline is an ordered
//! list of stages (`Pipeline`) whose neighbours' types the compiler checks.
//!
//! A stage takes its input (`In`) with the tick's context (`TickCx`) and
//! either hands a result on (`Flow::Next`) or ends the tick
//! (`Flow::End`): a root gone, nothing to do, or, for the stage that ends
//! the data flow (the Applier, `Out = Done`), the tick done. An ended tick
//! travels on as `TickFinished` through every later stage, whose `ended`
//! sees it (a hook after the Applier thus sees every tick, however it
//! ended), to the end of the pipeline (the Scheduler).
//!
//! The actor holds the glue every stage needs, once: `run` and `ended` go
//! to a blocking thread with the stage moved in and back, the actor's
//! mailbox paused meanwhile (`ctx.wait`) so that ticks stay in order; a
//! panic becomes an `error` entry (`op` the stage's name) and an ended
//! tick, never a lost one; the stop flag reaches the stage through
//! `TickCx::stop`.

use crate::contract::messages::{Batch, Done, LogEvent, TickCx, TickFinished, TickOutcome, Verb};
use crate::contract::stop::StopFlag;
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Recipient};
use std::panic::AssertUnwindSafe;

/// What a stage does with a tick.
#[derive(Debug)]
pub enum Flow<Out> {
    /// Hand the result on to the next stage.
    Next(Out),
    /// The tick ends here, with this outcome.
    End(TickOutcome),
}

/// One step of the pipeline. `run` and `ended` run on a blocking thread:
/// they may do I/O and take their time (looking at `cx.stop()` in long
/// loops).
pub trait Stage: Send + Unpin + 'static {
    type In: Send + 'static;
    type Out: Send + 'static;

    /// Names the stage in the log (`op` of its failures).
    fn name(&self) -> &'static str;

    /// Works on one batch of the tick.
    fn run(&mut self, input: Self::In, cx: &mut TickCx) -> Flow<Self::Out>;

    /// Sees a tick that an earlier stage ended; by default lets it pass.
    fn ended(&mut self, outcome: TickOutcome, cx: &mut TickCx) -> TickOutcome {
        let _ = cx;
        outcome
    }
}

/// Runs one stage as an actor: takes `Batch<S::In>` and `TickFinished`,
/// sends `Batch<S::Out>` to the next stage and `TickFinished` on.
pub struct StageActor<S: Stage> {
    /// Away on a blocking thread while it works (the mailbox waits).
    stage: Option<S>,
    name: &'static str,
    /// `None` where the stage ends the data flow (`Out = Done`).
    next: Option<Recipient<Batch<S::Out>>>,
    ended: Recipient<TickFinished>,
    log: Recipient<LogEvent>,
    stop: StopFlag,
}

enum Input<I> {
    Batch { body: I, last: bool },
    Ended(TickOutcome),
}

impl<S: Stage> StageActor<S> {
    pub fn new(
        stage: S,
        next: Option<Recipient<Batch<S::Out>>>,
        ended: Recipient<TickFinished>,
        log: Recipient<LogEvent>,
        stop: StopFlag,
    ) -> Self {
        StageActor {
            name: stage.name(),
            stage: Some(stage),
            next,
            ended,
            log,
            stop,
        }
    }

    fn dispatch(&mut self, mut cx: TickCx, input: Input<S::In>, ctx: &mut Context<Self>) {
        let Some(mut stage) = self.stage.take() else {
            // Lost with a blocking task the runtime cancelled: it is
            // shutting down, and so is this actor.
            ctx.stop();
            return;
        };
        cx.set_stop(&self.stop);
        // What the tick was, should the stage panic on it.
        let before = match &input {
            Input::Ended(outcome) => outcome.clone(),
            Input::Batch { .. } => TickOutcome {
                // State unknown: only a full walk finds what was missed.
                unapplied: true,
                ..TickOutcome::default()
            },
        };
        let work = actix_rt::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let worked = matches!(input, Input::Batch { .. });
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| match input {
                Input::Batch { body, last } => (stage.run(body, &mut cx), last),
                Input::Ended(outcome) => (Flow::End(stage.ended(outcome, &mut cx)), true),
            }));
            let took = worked.then(|| started.elapsed());
            (stage, cx, result, took)
        });
        let name = self.name;
        ctx.wait(
            actix::fut::wrap_future(work).map(move |joined, act: &mut Self, ctx| {
                let (stage, mut cx, result, took) = match joined {
                    Ok(done) => done,
                    Err(e) => {
                        act.log.do_send(LogEvent::error(None, name, e));
                        ctx.stop();
                        return;
                    }
                };
                act.stage = Some(stage);
                // Where a tick's time goes, for `-v` (never in the log file).
                if let Some(took) = took {
                    act.log.do_send(
                        LogEvent::new(Verb::Detail("stage"), None)
                            .with_str("name", name)
                            .with_u64("ms", took.as_millis() as u64),
                    );
                }
                let flow = match result {
                    Ok(flow) => flow,
                    Err(panic) => {
                        let error = format!("the {name} stage failed: {}", panic_text(&*panic));
                        act.log.do_send(LogEvent::error(None, name, error));
                        let mut outcome = before;
                        outcome.errors += 1;
                        (Flow::End(outcome), true)
                    }
                };
                match flow {
                    (Flow::Next(body), last) => match &act.next {
                        Some(next) => next.do_send(Batch { cx, body, last }),
                        None => unreachable!("a stage that ends the flow sends nothing on"),
                    },
                    (Flow::End(mut outcome), _) => {
                        cx.settle(&mut outcome);
                        act.ended.do_send(TickFinished { cx, outcome });
                    }
                }
            }),
        );
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

impl<S: Stage> Actor for StageActor<S> {
    type Context = Context<Self>;
}

impl<S: Stage> Handler<Batch<S::In>> for StageActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Batch<S::In>, ctx: &mut Context<Self>) {
        let input = Input::Batch {
            body: msg.body,
            last: msg.last,
        };
        self.dispatch(msg.cx, input, ctx);
    }
}

impl<S: Stage> Handler<TickFinished> for StageActor<S> {
    type Result = ();

    fn handle(&mut self, msg: TickFinished, ctx: &mut Context<Self>) {
        self.dispatch(msg.cx, Input::Ended(msg.outcome), ctx);
    }
}

type Wiring<First, Last> = Box<
    dyn FnOnce(
        Option<Recipient<Batch<Last>>>,
        Recipient<TickFinished>,
    ) -> (Recipient<Batch<First>>, Recipient<TickFinished>),
>;

/// The stages in the order data flows through them; `end` starts them
/// (back to front) and returns where the first takes its input. Each
/// `then` takes a stage whose input is the previous one's output.
pub struct Pipeline<First: Send + 'static, Last: Send + 'static> {
    wiring: Wiring<First, Last>,
    log: Recipient<LogEvent>,
    stop: StopFlag,
}

impl<First: Send + 'static> Pipeline<First, First> {
    /// An empty pipeline; its stages log their failures to `log`, and see
    /// `stop` through their tick's context.
    pub fn new(log: Recipient<LogEvent>, stop: StopFlag) -> Self {
        Pipeline {
            wiring: Box::new(|next, ended| {
                let next = next.expect("a pipeline without stages has no start");
                (next, ended)
            }),
            log,
            stop,
        }
    }
}

impl<First: Send + 'static, Last: Send + 'static> Pipeline<First, Last> {
    /// Adds `stage` after the last one.
    pub fn then<S: Stage<In = Last>>(self, stage: S) -> Pipeline<First, S::Out> {
        let Pipeline { wiring, log, stop } = self;
        let (log2, stop2) = (log.clone(), stop.clone());
        Pipeline {
            wiring: Box::new(move |next, ended| {
                let addr = StageActor::new(stage, next, ended, log2, stop2).start();
                wiring(Some(addr.clone().recipient()), addr.recipient())
            }),
            log,
            stop,
        }
    }

    /// Adds the stage `make` builds when `cond` holds: an optional stage
    /// that hands on what it takes.
    pub fn then_if<S: Stage<In = Last, Out = Last>>(
        self,
        cond: bool,
        make: impl FnOnce() -> S,
    ) -> Self {
        if cond {
            self.then(make())
        } else {
            self
        }
    }

    /// Adds `stage` if there is one: an optional stage built from an
    /// option (`config.x.map(Stage::new)`).
    pub fn then_some<S: Stage<In = Last, Out = Last>>(self, stage: Option<S>) -> Self {
        match stage {
            Some(stage) => self.then(stage),
            None => self,
        }
    }
}

impl<First: Send + 'static> Pipeline<First, Done> {
    /// Starts every stage; ended ticks go to `end`. Returns the first
    /// stage's input.
    pub fn end(self, end: Recipient<TickFinished>) -> Recipient<Batch<First>> {
        (self.wiring)(None, end).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::messages::Verb;
    use crate::testing::{wait_until, Collector};

    /// Doubles its input; panics on 13, ends the tick on 0.
    struct Double;

    impl Stage for Double {
        type In = u64;
        type Out = u64;
        fn name(&self) -> &'static str {
            "double"
        }
        fn run(&mut self, n: u64, cx: &mut TickCx) -> Flow<u64> {
            cx.count("doubled", 1);
            match n {
                13 => panic!("unlucky"),
                0 => Flow::End(TickOutcome {
                    idle: true,
                    ..TickOutcome::default()
                }),
                n => Flow::Next(n * 2),
            }
        }
    }

    /// Ends the flow: its outcome's bytes are the number it took.
    struct Sink {
        seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    }

    impl Stage for Sink {
        type In = u64;
        type Out = Done;
        fn name(&self) -> &'static str {
            "sink"
        }
        fn run(&mut self, n: u64, _: &mut TickCx) -> Flow<Done> {
            self.seen.lock().unwrap().push(n);
            Flow::End(TickOutcome {
                bytes: n,
                ..TickOutcome::default()
            })
        }
    }

    /// Sees every tick's end.
    struct Tail;

    impl Stage for Tail {
        type In = Done;
        type Out = Done;
        fn name(&self) -> &'static str {
            "tail"
        }
        fn run(&mut self, input: Done, _: &mut TickCx) -> Flow<Done> {
            match input {}
        }
        fn ended(&mut self, outcome: TickOutcome, cx: &mut TickCx) -> TickOutcome {
            cx.count("tails", 1);
            outcome
        }
    }

    type Rig = (
        Recipient<Batch<u64>>,
        std::sync::Arc<std::sync::Mutex<Vec<TickFinished>>>,
        std::sync::Arc<std::sync::Mutex<Vec<LogEvent>>>,
        std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    );

    fn rig(tail: bool) -> Rig {
        let (end, ended) = Collector::<TickFinished>::start();
        let (log, logged) = Collector::<LogEvent>::start();
        let seen = std::sync::Arc::default();
        let sink = Sink {
            seen: std::sync::Arc::clone(&seen),
        };
        let start = Pipeline::new(log.recipient(), StopFlag::new())
            .then(Double)
            .then(Double)
            .then(sink)
            .then_if(tail, || Tail)
            .then_some(None::<Tail>)
            .end(end.recipient());
        (start, ended, logged, seen)
    }

    fn send(start: &Recipient<Batch<u64>>, seq: u64, n: u64) {
        start.do_send(Batch::whole(TickCx::new(seq), n));
    }

    #[actix::test]
    async fn ticks_go_through_every_stage_in_order() {
        let (start, ended, logged, seen) = rig(false);
        for seq in 1..=12 {
            send(&start, seq, seq);
        }
        wait_until(|| ended.lock().unwrap().len() == 12).await;
        let ended = ended.lock().unwrap();
        let seqs: Vec<u64> = ended.iter().map(|t| t.cx.seq).collect();
        assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
        assert_eq!(ended[2].outcome.bytes, 12);
        // Both Doubles counted, merged into the outcome.
        assert_eq!(ended[2].outcome.tallies.get("doubled"), Some(2));
        assert_eq!(
            *seen.lock().unwrap(),
            (1..=12).map(|n| n * 4).collect::<Vec<_>>()
        );
        // Nothing but each stage's time, once a tick and stage, for `-v`.
        let logged = logged.lock().unwrap();
        assert!(logged.iter().all(|e| e.verb == Verb::Detail("stage")));
        let timed: Vec<String> = logged
            .iter()
            .map(|e| e.field("name").unwrap().to_string())
            .collect();
        assert_eq!(timed.len(), 36, "{timed:?}");
        assert_eq!(timed.iter().filter(|n| *n == "sink").count(), 12);
    }

    #[actix::test]
    async fn a_panic_ends_the_tick_with_an_error_and_the_next_tick_runs() {
        let (start, ended, logged, seen) = rig(false);
        send(&start, 1, 13);
        send(&start, 2, 1);
        wait_until(|| ended.lock().unwrap().len() == 2).await;
        let ended = ended.lock().unwrap();
        assert_eq!(ended[0].cx.seq, 1);
        assert_eq!(ended[0].outcome.errors, 1);
        assert!(ended[0].outcome.unapplied);
        assert_eq!((ended[1].cx.seq, ended[1].outcome.errors), (2, 0));
        let logged: Vec<_> = logged
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.verb != Verb::Detail("stage"))
            .cloned()
            .collect();
        assert_eq!(logged[0].verb, Verb::Error);
        assert_eq!(logged[0].field("op").unwrap().to_string(), "double");
        assert!(logged[0]
            .field("error")
            .unwrap()
            .to_string()
            .contains("unlucky"));
        assert_eq!(*seen.lock().unwrap(), [4]);
    }

    #[actix::test]
    async fn an_ended_tick_skips_the_later_stages_but_not_the_tick_end_ones() {
        let (start, ended, _, seen) = rig(true);
        send(&start, 1, 0);
        send(&start, 2, 2);
        wait_until(|| ended.lock().unwrap().len() == 2).await;
        let ended = ended.lock().unwrap();
        assert!(ended[0].outcome.idle);
        // The first Double ended it: the second and the sink never ran.
        assert_eq!(ended[0].outcome.tallies.get("doubled"), Some(1));
        assert_eq!(*seen.lock().unwrap(), [8]);
        // The tail saw both ends.
        assert_eq!(ended[0].outcome.tallies.get("tails"), Some(1));
        assert_eq!(ended[1].outcome.tallies.get("tails"), Some(1));
        assert_eq!(ended[1].outcome.bytes, 8);
    }
}
