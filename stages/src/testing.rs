//! Test helpers, for the crate's unit tests and (feature `testing`) its
//! fault tests: collector actors to stand in for a stage's downstream, a
//! stage started alone, and temporary trees to sync.

use actix::{Actor, Context, Handler, Message};
use std::sync::{Arc, Mutex};

/// Stores every message it receives; tests read them through `received`.
pub struct Collector<M> {
    pub received: Arc<Mutex<Vec<M>>>,
}

impl<M: Message<Result = ()> + Send + Unpin + 'static> Collector<M> {
    /// Starts a collector and returns its address with the shared store.
    pub fn start() -> (actix::Addr<Self>, Arc<Mutex<Vec<M>>>) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let addr = Collector {
            received: received.clone(),
        }
        .start();
        (addr, received)
    }
}

impl<M: Message<Result = ()> + Send + Unpin + 'static> Actor for Collector<M> {
    type Context = Context<Self>;
}

impl<M: Message<Result = ()> + Send + Unpin + 'static> Handler<M> for Collector<M> {
    type Result = ();

    fn handle(&mut self, msg: M, _: &mut Context<Self>) {
        self.received.lock().expect("collector lock").push(msg);
    }
}

/// Waits (yielding to the actor system) until `pred` holds, up to 10 s.
pub async fn wait_until(mut pred: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pred() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting");
        actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Both roots opened as they are, for messages built by hand.
pub fn roots(
    source: &std::path::Path,
    replica: &std::path::Path,
) -> Arc<crate::fs::identity::Roots> {
    let (roots, _) =
        crate::fs::identity::open_roots(source, replica, None, true).expect("open roots");
    Arc::new(roots)
}

/// What a stage run alone sent on: its batches and the ticks it ended.
pub type Sent<T> = (
    Arc<Mutex<Vec<crate::contract::messages::Batch<T>>>>,
    Arc<Mutex<Vec<crate::contract::messages::TickFinished>>>,
);

/// Starts `stage` in its actor, with collectors downstream.
pub fn start_stage<S>(
    stage: S,
    log: actix::Recipient<crate::contract::messages::LogEvent>,
    stop: crate::contract::stop::StopFlag,
) -> (
    actix::Recipient<crate::contract::messages::Batch<S::In>>,
    Sent<S::Out>,
)
where
    S: crate::contract::stage::Stage,
    S::Out: Unpin,
{
    let (next, batches) = Collector::<crate::contract::messages::Batch<S::Out>>::start();
    let (end, ended) = Collector::<crate::contract::messages::TickFinished>::start();
    let actor = crate::contract::stage::StageActor::new(
        stage,
        Some(next.recipient()),
        end.recipient(),
        log,
        stop,
    )
    .start();
    (actor.recipient(), (batches, ended))
}

/// A source, a replica and a folder the replica must never touch, side by
/// side in a fresh temporary folder (removed when dropped), with options
/// for the first two.
pub struct Trees {
    _tmp: tempfile::TempDir,
    pub src: std::path::PathBuf,
    pub dst: std::path::PathBuf,
    pub outside: std::path::PathBuf,
    pub opts: crate::contract::options::SyncOptions,
}

pub fn trees() -> Trees {
    let tmp = tempfile::tempdir().expect("temporary folder");
    let (src, dst, outside) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("outside"),
    );
    for d in [&src, &dst, &outside] {
        std::fs::create_dir(d).expect("make a tree");
    }
    let opts = crate::contract::options::SyncOptions::new(src.clone(), dst.clone());
    Trees {
        _tmp: tmp,
        src,
        dst,
        outside,
        opts,
    }
}

pub fn rel(s: &str) -> crate::contract::relpath::RelPath {
    crate::contract::relpath::RelPath::from_str_lossy(s)
}

/// `lstat` of `path` as the scanner reports it.
pub fn meta(path: &std::path::Path) -> crate::contract::model::Meta {
    let st = rustix::fs::statat(rustix::fs::CWD, path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .expect("lstat");
    crate::fs::root::meta_of(&st)
}
