//! The work queue and its threads: a shared LIFO stack of folder jobs and
//! the workers that pop them, list the folder (`listing`) and push its
//! subfolders back. Takes the seed jobs, the options and the fences; gives
//! back every worker's `Output`, merged into one `WalkResult`. The stack is
//! all the workers share besides read-only options, so a worker that panics
//! ends the walk for all rather than leaving them waiting on its job.

use super::assemble::Output;
use super::base::{DirHandle, Fences, Raw, DIRENT_BUF};
use super::{WalkOptions, WalkResult};
use crate::contract::relpath::RelPath;
use crate::fs::rules::Rules;
use crate::fs::unlock::Unlocks;
use std::mem::MaybeUninit;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Runs the walk from `jobs` to its end; `out` already holds what seeding
/// them listed (the roots' own entries, say), `unlocks` the replica
/// folders unlocked to seed them.
pub(super) fn run_jobs(
    jobs: Vec<Job>,
    mut out: Output,
    opts: &WalkOptions<'_>,
    fences: Fences,
    unlocks: Unlocks,
) -> WalkResult {
    let walker = Walker {
        opts,
        fences,
        unlocks,
        queue: Mutex::new(Queue {
            jobs,
            busy: 0,
            done: false,
            interrupted: false,
        }),
        ready: Condvar::new(),
    };
    let outputs = walker.run();
    let interrupted = walker.lock().interrupted;
    for o in outputs {
        out.merge(o);
    }
    out.finish(interrupted)
}

/// One folder to list, on either side or both.
pub(super) struct Job {
    pub(super) rel: RelPath,
    pub(super) source: Option<DirHandle>,
    pub(super) replica: Option<DirHandle>,
    /// The replica folder is excluded (listed for `--delete-excluded`):
    /// everything below it is excluded, no rule needs matching.
    pub(super) replica_excluded: bool,
    /// The rules in force in the parent folder.
    pub(super) inherited: Rules,
}

/// The shared work stack.
struct Queue {
    jobs: Vec<Job>,
    /// Jobs taken and not finished: while any runs, more may come.
    busy: usize,
    done: bool,
    interrupted: bool,
}

pub(super) struct Walker<'a> {
    opts: &'a WalkOptions<'a>,
    pub(super) fences: Fences,
    /// Replica folders of ours unlocked to be listed (`unlock.rs`).
    pub(super) unlocks: Unlocks,
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl<'a> Walker<'a> {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked leaves the queue consistent (see
        // `DoneOnPanic`), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the workers to completion and returns what each collected.
    fn run(&self) -> Vec<Output> {
        let threads = self.opts.jobs.max(1);
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(threads - 1);
            for i in 1..threads {
                let spawned = std::thread::Builder::new()
                    .name(format!("walk-{i}"))
                    .spawn_scoped(scope, || Worker::new(self).run());
                // Fewer threads only make the walk slower.
                if let Ok(h) = spawned {
                    handles.push(h);
                }
            }
            let mut outputs = vec![Worker::new(self).run()];
            for h in handles {
                match h.join() {
                    Ok(o) => outputs.push(o),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            outputs
        })
    }

    /// The next job, or `None` when the walk is over (all done or stopped).
    fn next_job(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if q.done {
                return None;
            }
            if self.opts.stop.is_requested() {
                q.done = true;
                q.interrupted = true;
                self.ready.notify_all();
                return None;
            }
            if let Some(job) = q.jobs.pop() {
                q.busy += 1;
                return Some(job);
            }
            if q.busy == 0 {
                q.done = true;
                self.ready.notify_all();
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn finish_job(&self, children: Vec<Job>) {
        let mut q = self.lock();
        q.busy -= 1;
        let woke = !children.is_empty() || q.busy == 0;
        q.jobs.extend(children);
        if woke {
            self.ready.notify_all();
        }
    }
}

/// Ends the walk for everyone if a worker panics, so the others do not wait
/// forever for the job it held.
struct DoneOnPanic<'w, 'a>(&'w Walker<'a>);

impl Drop for DoneOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().done = true;
            self.0.ready.notify_all();
        }
    }
}

/// One walking thread.
pub(super) struct Worker<'w, 'a> {
    pub(super) walker: &'w Walker<'a>,
    pub(super) buf: Vec<MaybeUninit<u8>>,
    /// The current folder's entries, reused from folder to folder.
    pub(super) scratch: Vec<Raw>,
    pub(super) out: Output,
}

impl<'w, 'a> Worker<'w, 'a> {
    fn new(walker: &'w Walker<'a>) -> Self {
        let mut buf = Vec::with_capacity(DIRENT_BUF);
        buf.resize(DIRENT_BUF, MaybeUninit::uninit());
        Worker {
            walker,
            buf,
            scratch: Vec::new(),
            out: Output::default(),
        }
    }

    fn run(mut self) -> Output {
        let guard = DoneOnPanic(self.walker);
        while let Some(job) = self.walker.next_job() {
            let children = self.visit(job);
            self.walker.finish_job(children);
        }
        drop(guard);
        self.out
    }

    pub(super) fn opts(&self) -> &'a WalkOptions<'a> {
        self.walker.opts
    }
}
