//! Watcher: turns filesystem events on both roots into `FoldersChanged`
//! for the Scheduler, so that a tick lists only the folders that changed.
//!
//! Events arrive on notify's own thread (inotify on Linux) and are reduced
//! there to the folder whose listing they change: an entry created,
//! removed, renamed, written or re-stat'ed changes its parent's listing.
//! Reads and opens (our own scans and hashing among them) are ignored.
//! Anything that may have lost events (a queue overflow, a watch limit, an
//! error, the moment the watches are ready) is reported as `lost`, and the
//! Scheduler answers with a full rescan. Setting up the recursive watches
//! walks both trees, so it runs on a blocking task.

use crate::contract::messages::{FoldersChanged, LogEvent, Verb};
use crate::contract::moves::Seen;
use crate::contract::relpath::RelPath;
use crate::fs::fs_kind;
use actix::{Actor, AsyncContext, Context, Recipient};
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{Config, Event, RecommendedWatcher, RecursiveMode, Watcher as _};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The folder (relative to `root`) whose listing an event on `path`
/// changes; `None` for events that change no listing or lie elsewhere.
pub fn affected_folder(root: &Path, path: &Path, kind: &EventKind) -> Option<RelPath> {
    match kind {
        EventKind::Access(_) | EventKind::Other => return None,
        EventKind::Modify(ModifyKind::Any) | EventKind::Modify(_) => {}
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => {}
    }
    let rel = path.strip_prefix(root).ok()?;
    let rel = RelPath::new(rel.as_os_str().as_bytes())?;
    Some(rel.parent().unwrap_or(rel))
}

/// What one notify callback reports.
fn reduce(roots: &[PathBuf], event: notify::Result<Event>) -> Reduced {
    match event {
        Err(e) => Reduced::Lost {
            reason: format!("file watching failed ({e}): every tick rescans fully"),
            unwatched: true,
        },
        Ok(ev) if ev.need_rescan() => Reduced::Lost {
            reason: "file events were lost (queue overflow): full rescan".into(),
            unwatched: false,
        },
        // inotify watches the folder, not its path: a root moved away or
        // removed (and perhaps made again) is no longer watched.
        Ok(ev)
            if matches!(
                ev.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            ) && ev.paths.iter().any(|p| roots.iter().any(|r| r == p)) =>
        {
            Reduced::Lost {
                reason: "a root folder was moved or removed: every tick rescans fully".into(),
                unwatched: true,
            }
        }
        Ok(ev) => {
            let mut folders = Vec::new();
            for path in &ev.paths {
                for root in roots {
                    if let Some(f) = affected_folder(root, path, &ev.kind) {
                        folders.push(f);
                    }
                }
            }
            let seen = roots
                .first()
                .map(|source| seen_in(source, &ev))
                .unwrap_or_default();
            Reduced::Folders(folders, seen)
        }
    }
}

/// What an event on the source (`root`) tells the move search: a rename
/// whose two halves inotify paired by their cookie, both inside the
/// source; or entries replaced (created, removed, or renamed over from
/// outside), which undo what an earlier rename said of their paths. The
/// first half of a rename says nothing yet: its pair, or a later event at
/// its path, will.
fn seen_in(root: &Path, ev: &Event) -> Vec<Seen> {
    let rel = |p: &PathBuf| {
        let rel = p.strip_prefix(root).ok()?;
        RelPath::new(rel.as_os_str().as_bytes()).filter(|r| !r.is_root())
    };
    match ev.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match ev.paths.as_slice() {
            [from, to] => match (rel(from), rel(to)) {
                (Some(from), Some(to)) => vec![Seen::Renamed { from, to }],
                // In from outside: what was at `to` is replaced.
                (None, Some(path)) => vec![Seen::Replaced { path }],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Vec::new(),
        EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Any
        | EventKind::Modify(ModifyKind::Name(_)) => ev
            .paths
            .iter()
            .filter_map(rel)
            .map(|path| Seen::Replaced { path })
            .collect(),
        _ => Vec::new(),
    }
}

enum Reduced {
    /// Folders whose listing changed, and what the move search may use.
    Folders(Vec<RelPath>, Vec<Seen>),
    Lost {
        reason: String,
        unwatched: bool,
    },
}

/// The Watcher actor; its watches live as long as it does.
pub struct Watcher {
    roots: Arc<Vec<PathBuf>>,
    scheduler: Recipient<FoldersChanged>,
    log: Recipient<LogEvent>,
    inner: Option<RecommendedWatcher>,
}

impl Watcher {
    /// Watches `roots` (the source and, when it exists, the replica).
    pub fn new(
        roots: Vec<PathBuf>,
        scheduler: Recipient<FoldersChanged>,
        log: Recipient<LogEvent>,
    ) -> Self {
        Watcher {
            roots: Arc::new(roots),
            scheduler,
            log,
            inner: None,
        }
    }
}

/// Builds the watcher and adds the recursive watches; errors are reported
/// as lost events (with a warning) so that full rescans take over. A
/// source whose changes inotify cannot all see is not watched: one `warn`,
/// and every tick walks everything.
fn start_watching(
    roots: Arc<Vec<PathBuf>>,
    scheduler: Recipient<FoldersChanged>,
    log: Recipient<LogEvent>,
) -> Option<RecommendedWatcher> {
    let source_fs = roots
        .first()
        .and_then(|s| rustix::fs::statfs(s.as_path()).ok())
        .and_then(|fs| fs_kind::events_unreliable(fs.f_type as u64));
    if let Some(what) = source_fs {
        let reason = format!(
            "the source is on {what}, whose changes file events do not all report: every tick walks both trees"
        );
        log.do_send(LogEvent::new(Verb::Warn, None).with_str("reason", reason));
        scheduler.do_send(FoldersChanged {
            folders: Vec::new(),
            lost: true,
            unwatched: true,
            seen: Vec::new(),
        });
        return None;
    }
    let handler_roots = roots.clone();
    let handler_sched = scheduler.clone();
    let handler_log = log.clone();
    let mut warned = false;
    let handler = move |event: notify::Result<Event>| match reduce(&handler_roots, event) {
        Reduced::Folders(folders, _) if folders.is_empty() => {}
        Reduced::Folders(folders, seen) => handler_sched.do_send(FoldersChanged {
            folders,
            lost: false,
            unwatched: false,
            seen,
        }),
        Reduced::Lost { reason, unwatched } => {
            if !std::mem::replace(&mut warned, true) {
                handler_log.do_send(LogEvent::new(Verb::Warn, None).with_str("reason", reason));
            }
            handler_sched.do_send(FoldersChanged {
                folders: Vec::new(),
                lost: true,
                unwatched,
                seen: Vec::new(),
            });
        }
    };
    // Links are mirrored as links: never watch through them.
    let config = Config::default().with_follow_symlinks(false);
    let mut watcher = match RecommendedWatcher::new(handler, config) {
        Ok(w) => w,
        Err(e) => {
            let reason = format!("cannot watch for changes ({e}): every tick rescans everything");
            log.do_send(LogEvent::new(Verb::Warn, None).with_str("reason", reason));
            scheduler.do_send(FoldersChanged {
                folders: Vec::new(),
                lost: true,
                unwatched: true,
                seen: Vec::new(),
            });
            return None;
        }
    };
    let mut unwatched = false;
    for root in roots.iter() {
        if let Err(e) = watcher.watch(root, RecursiveMode::Recursive) {
            let reason = format!(
                "cannot watch {} ({e}): every tick rescans fully",
                root.display()
            );
            log.do_send(LogEvent::new(Verb::Warn, None).with_str("reason", reason));
            unwatched = true;
        }
    }
    // Changes made while the watches were being set up went unseen.
    scheduler.do_send(FoldersChanged {
        folders: Vec::new(),
        lost: true,
        unwatched,
        seen: Vec::new(),
    });
    Some(watcher)
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct Ready(Option<RecommendedWatcher>);

impl actix::Handler<Ready> for Watcher {
    type Result = ();

    fn handle(&mut self, msg: Ready, _: &mut Context<Self>) {
        self.inner = msg.0;
    }
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (roots, sched, log) = (self.roots.clone(), self.scheduler.clone(), self.log.clone());
        let me = ctx.address();
        actix::spawn(async move {
            let made =
                actix_rt::task::spawn_blocking(move || start_watching(roots, sched, log)).await;
            me.do_send(Ready(made.ok().flatten()));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{wait_until, Collector};
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RemoveKind};

    #[test]
    fn events_map_to_the_folder_whose_listing_they_change() {
        let root = Path::new("/src");
        let folder =
            |p: &str, k: EventKind| affected_folder(root, Path::new(p), &k).map(|r| r.to_string());
        assert_eq!(
            folder("/src/a/b.txt", EventKind::Create(CreateKind::File)),
            Some("a".into())
        );
        assert_eq!(
            folder("/src/top", EventKind::Remove(RemoveKind::Any)),
            Some(".".into())
        );
        assert_eq!(
            folder(
                "/src/a/dir",
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))
            ),
            Some("a".into())
        );
        assert_eq!(
            folder(
                "/src/a/f",
                EventKind::Modify(ModifyKind::Data(DataChange::Any))
            ),
            Some("a".into())
        );
        assert_eq!(
            folder("/src", EventKind::Modify(ModifyKind::Any)),
            Some(".".into())
        );
        assert_eq!(folder("/src/a/f", EventKind::Access(AccessKind::Any)), None);
        assert_eq!(
            folder("/elsewhere/f", EventKind::Create(CreateKind::File)),
            None
        );
    }

    #[test]
    fn overflow_means_a_rescan_and_a_watch_limit_means_full_rescans_for_good() {
        let roots = vec![PathBuf::from("/src")];
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(matches!(
            reduce(&roots, Ok(overflow)),
            Reduced::Lost {
                unwatched: false,
                ..
            }
        ));
        let limit = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        assert!(matches!(
            reduce(&roots, Err(limit)),
            Reduced::Lost {
                unwatched: true,
                ..
            }
        ));
    }

    #[test]
    fn renames_inside_the_source_are_reported_as_pairs() {
        let roots = vec![PathBuf::from("/src"), PathBuf::from("/dst")];
        let both = |from: &str, to: &str| {
            Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
                .add_path(PathBuf::from(from))
                .add_path(PathBuf::from(to))
        };
        let rel = RelPath::from_str_lossy;
        let renamed = |a: &str, b: &str| Seen::Renamed {
            from: rel(a),
            to: rel(b),
        };
        let replaced = |p: &str| Seen::Replaced { path: rel(p) };
        let seen = |ev| match reduce(&roots, Ok(ev)) {
            Reduced::Folders(_, seen) => seen,
            Reduced::Lost { .. } => panic!("lost"),
        };
        assert_eq!(seen(both("/src/a/f", "/src/b/g")), [renamed("a/f", "b/g")]);
        // In the replica: nothing; in from outside: `a` replaced.
        assert_eq!(seen(both("/dst/a", "/dst/b")), []);
        assert_eq!(seen(both("/elsewhere/a", "/src/a")), [replaced("a")]);
        // The first half alone says nothing; a second half alone, a
        // creation or a removal replace what was at their path.
        let half = |mode| {
            Event::new(EventKind::Modify(ModifyKind::Name(mode))).add_path(PathBuf::from("/src/b"))
        };
        assert_eq!(seen(half(RenameMode::From)), []);
        assert_eq!(seen(half(RenameMode::To)), [replaced("b")]);
        let created = Event::new(EventKind::Create(CreateKind::File)).add_path("/src/c".into());
        assert_eq!(seen(created), [replaced("c")]);
    }

    #[test]
    fn a_root_moved_away_means_unwatched() {
        let roots = vec![PathBuf::from("/src"), PathBuf::from("/dst")];
        let moved = Event::new(EventKind::Modify(ModifyKind::Name(
            notify::event::RenameMode::From,
        )))
        .add_path(PathBuf::from("/src"));
        assert!(matches!(
            reduce(&roots, Ok(moved)),
            Reduced::Lost {
                unwatched: true,
                ..
            }
        ));
        let inner =
            Event::new(EventKind::Remove(RemoveKind::Any)).add_path(PathBuf::from("/src/a"));
        assert!(matches!(reduce(&roots, Ok(inner)), Reduced::Folders(f, _) if f.len() == 1));
    }

    #[actix_rt::test]
    async fn reports_ready_then_changed_folders_of_both_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, r) = (tmp.path().join("s"), tmp.path().join("r"));
        std::fs::create_dir_all(s.join("sub")).unwrap();
        std::fs::create_dir_all(&r).unwrap();
        let (sched, got) = Collector::<FoldersChanged>::start();
        let (log, _) = Collector::<LogEvent>::start();
        let _w = Watcher::new(
            vec![s.clone(), r.clone()],
            sched.recipient(),
            log.recipient(),
        )
        .start();
        wait_until(|| got.lock().unwrap().iter().any(|m| m.lost)).await;
        std::fs::write(s.join("sub/new.txt"), b"x").unwrap();
        std::fs::write(r.join("stray"), b"y").unwrap();
        let seen = |name: &str| {
            got.lock()
                .unwrap()
                .iter()
                .flat_map(|m| m.folders.iter().map(|f| f.to_string()))
                .any(|f| f == name)
        };
        wait_until(|| seen("sub") && seen(".")).await;
    }
}
