//! Races and faults at the worst moment of an operation, injected through
//! the named failpoints of `replica_ops`, `applier` and `hasher`.
//!
//! Each case pauses at a point (a callback runs there, on the applying
//! thread), changes the world, then checks what `applier::apply` made of
//! it; each has a twin without the fault that must still do the work.
//! Failpoints are process-wide, so every test holds a `FailScenario`, whose
//! lock runs them one at a time.

#![cfg(feature = "failpoints")]

use fail::FailScenario;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use treesync_stages::contract::messages::{LogEvent, LogValue, TickOutcome, Verb};
use treesync_stages::contract::model::{Meta, SameContent, TEMP_PREFIX};
use treesync_stages::contract::options::SyncOptions;
use treesync_stages::contract::plan::{Op, Plan};
use treesync_stages::contract::relpath::RelPath;
use treesync_stages::contract::stop::StopFlag;
use treesync_stages::fs::hash_cache::HashCache;
use treesync_stages::fs::racy;
use treesync_stages::fs::root::Root;
use treesync_stages::stages::applier::apply;
use treesync_stages::stages::differ::{diff, DiffOptions};
use treesync_stages::stages::hasher::{candidates, compare_all, racy_pairs, recheck, Sides};
use treesync_stages::stages::scanner::scan;
use treesync_stages::testing::{meta, rel, trees};

fn plan(ops: Vec<Op>) -> Plan {
    Plan {
        ops,
        guard: None,
        roots: None,
        attrs_sweep: false,
    }
}

fn copy_op(src: &Path, path: &str) -> Op {
    Op::Copy {
        path: rel(path),
        meta: meta(&src.join(path)),
    }
}

/// The plan the pipeline would make now: scan both trees and diff them
/// (contents undecided by metadata count as different).
fn scanned_plan(opts: &SyncOptions) -> Plan {
    let walk = scan(opts, None, &StopFlag::new()).unwrap().walk;
    diff(
        &walk.source,
        &walk.replica,
        &SameContent::default(),
        &Default::default(),
        DiffOptions::from(opts),
    )
}

fn run(plan: &Plan, opts: &SyncOptions) -> (TickOutcome, Vec<LogEvent>) {
    let events = Mutex::new(Vec::new());
    let log = |e: LogEvent| events.lock().unwrap().push(e);
    let outcome = apply(plan, opts, &StopFlag::new(), &log);
    (outcome, events.into_inner().unwrap())
}

/// Like `run`, on another thread, failing the test if it takes longer
/// than `limit` (an operation that blocks would hang it).
fn run_within(plan: Plan, opts: SyncOptions, limit: Duration) -> (TickOutcome, Vec<LogEvent>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&plan, &opts));
    });
    rx.recv_timeout(limit)
        .expect("the apply did not finish in time: an operation blocked")
}

/// The only event about `path`.
fn event_for<'e>(events: &'e [LogEvent], path: &str) -> &'e LogEvent {
    let found: Vec<_> = events
        .iter()
        .filter(|e| e.path == Some(rel(path)))
        .collect();
    assert_eq!(found.len(), 1, "events for {path}: {events:?}");
    found[0]
}

fn field(e: &LogEvent, key: &str) -> String {
    e.field(key)
        .map(LogValue::to_string)
        .unwrap_or_else(|| panic!("no {key} in {e:?}"))
}

/// Sorted names and contents of every entry below `dir`, links not
/// followed: what "nothing changed there" is checked against.
fn listing(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            let ft = fs::symlink_metadata(&p).unwrap().file_type();
            let what = if ft.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            };
            out.push((name, what));
        }
    }
    out.sort();
    out
}

/// True when no temporary is left anywhere below `dir`.
fn no_temporaries(dir: &Path) -> bool {
    listing(dir)
        .iter()
        .all(|(name, _)| !name.rsplit('/').next().unwrap_or("").starts_with(prefix()))
}

fn prefix() -> &'static str {
    std::str::from_utf8(TEMP_PREFIX).unwrap()
}

/// Moves the replica folder `dir` aside (inside the replica) and puts a
/// link to `outside` in its place: what an attacker or a confused user
/// could do between two system calls.
fn swap_for_link(dir: &Path, outside: &Path) {
    let aside = dir.with_file_name("moved-aside");
    fs::rename(dir, &aside).unwrap();
    symlink(outside, dir).unwrap();
}

/// Runs `change` the first time the failpoint `name` is reached.
fn once_at(name: &str, change: impl Fn() + Send + Sync + 'static) {
    let fired = AtomicBool::new(false);
    fail::cfg_callback(name, move || {
        if !fired.swap(true, Ordering::SeqCst) {
            change();
        }
    })
    .unwrap();
}

#[test]
fn a_folder_swapped_for_a_link_before_the_rename_gets_nothing_written_outside() {
    let scenario = FailScenario::setup();
    let t = trees();
    fs::create_dir(t.src.join("a")).unwrap();
    fs::write(t.src.join("a/f"), b"new").unwrap();
    fs::create_dir(t.dst.join("a")).unwrap();
    fs::write(t.outside.join("other"), b"keep").unwrap();
    let before = listing(&t.outside);
    let p = plan(vec![copy_op(&t.src, "a/f")]);

    // Twin: without the swap the file lands in the replica folder.
    let (out, _) = run(&p, &t.opts);
    assert_eq!((out.counts.copy, out.errors), (1, 0));
    assert_eq!(fs::read(t.dst.join("a/f")).unwrap(), b"new");
    fs::remove_file(t.dst.join("a/f")).unwrap();

    let (dir, outside) = (t.dst.join("a"), t.outside.clone());
    once_at("replica_ops::copy::before_rename", move || {
        swap_for_link(&dir, &outside)
    });
    let (out, events) = run(&p, &t.opts);
    assert!(t.dst.join("a").is_symlink(), "the swap happened");
    assert_eq!(listing(&t.outside), before, "{events:?}");
    let e = event_for(&events, "a/f");
    match e.verb {
        // The rename went through the folder handle, into the real folder.
        Verb::Copy => assert_eq!(fs::read(t.dst.join("moved-aside/f")).unwrap(), b"new"),
        Verb::Error => assert_eq!((field(e, "op").as_str(), out.errors), ("copy", 1)),
        other => panic!("unexpected {other:?}: {events:?}"),
    }
    assert!(no_temporaries(&t.dst) && no_temporaries(&t.outside));
    scenario.teardown();
}

#[test]
fn a_folder_swapped_for_a_link_during_parallel_deletes_keeps_the_outside_files() {
    let scenario = FailScenario::setup();
    let t = trees();
    let mut opts = t.opts.clone();
    opts.jobs = 4;
    let mut ops = Vec::new();
    for folder in ["a", "b"] {
        fs::create_dir(t.dst.join(folder)).unwrap();
        for i in 0..10 {
            fs::write(t.dst.join(format!("{folder}/v{i}")), b"replica copy").unwrap();
            ops.push(Op::Delete {
                path: rel(&format!("{folder}/v{i}")),
            });
        }
    }
    for i in 0..10 {
        fs::write(t.outside.join(format!("v{i}")), b"keep").unwrap();
    }
    // Removals of two folders on several threads; the first unlink, in
    // either folder, swaps `a` for a link to the outside folder.
    let (dir, outside) = (t.dst.join("a"), t.outside.clone());
    once_at("replica_ops::delete::before_unlink", move || {
        swap_for_link(&dir, &outside)
    });
    let (out, events) = run(&plan(ops), &opts);
    assert!(t.dst.join("a").is_symlink(), "the swap happened");
    assert_eq!(listing(&t.outside).len(), 10, "{events:?}");
    for i in 0..10 {
        assert_eq!(fs::read(t.outside.join(format!("v{i}"))).unwrap(), b"keep");
    }
    // b was never swapped: all of it went.
    assert_eq!(
        fs::read_dir(t.dst.join("b")).unwrap().count(),
        0,
        "{events:?}"
    );
    assert!(out.counts.delete >= 10, "{events:?}");
    scenario.teardown();
}

#[test]
fn a_folder_swapped_for_a_link_before_a_delete_keeps_the_outside_file() {
    let scenario = FailScenario::setup();
    let t = trees();
    fs::create_dir(t.dst.join("a")).unwrap();
    fs::write(t.dst.join("a/victim"), b"replica copy").unwrap();
    fs::write(t.outside.join("victim"), b"keep").unwrap();
    let p = plan(vec![Op::Delete {
        path: rel("a/victim"),
    }]);

    let (dir, outside) = (t.dst.join("a"), t.outside.clone());
    once_at("replica_ops::delete::before_unlink", move || {
        swap_for_link(&dir, &outside)
    });
    let (out, events) = run(&p, &t.opts);
    assert!(t.dst.join("a").is_symlink(), "the swap happened");
    assert_eq!(fs::read(t.outside.join("victim")).unwrap(), b"keep");
    assert_eq!(listing(&t.outside).len(), 1);
    // The unlink went through the folder handle, into the real folder.
    assert_eq!((out.counts.delete, out.errors), (1, 0), "{events:?}");
    assert!(!t.dst.join("moved-aside/victim").exists());

    // Twin: an ordinary delete, nothing paused.
    fail::remove("replica_ops::delete::before_unlink");
    fs::remove_file(t.dst.join("a")).unwrap();
    fs::create_dir(t.dst.join("a")).unwrap();
    fs::write(t.dst.join("a/victim"), b"replica copy").unwrap();
    let (out, _) = run(&p, &t.opts);
    assert_eq!((out.counts.delete, out.errors), (1, 0));
    assert!(!t.dst.join("a/victim").exists());
    scenario.teardown();
}

#[test]
fn a_folder_swapped_for_a_link_before_mkdir_gets_nothing_created_outside() {
    let scenario = FailScenario::setup();
    let t = trees();
    fs::create_dir(t.dst.join("a")).unwrap();
    let p = plan(vec![Op::Mkdir {
        path: rel("a/sub"),
        meta: Meta::default(),
    }]);

    let (dir, outside) = (t.dst.join("a"), t.outside.clone());
    once_at("replica_ops::mkdir::before", move || {
        swap_for_link(&dir, &outside)
    });
    let (out, events) = run(&p, &t.opts);
    assert!(t.dst.join("a").is_symlink(), "the swap happened");
    assert!(listing(&t.outside).is_empty(), "{events:?}");
    assert_eq!((out.counts.mkdir, out.errors), (1, 0));
    assert!(t.dst.join("moved-aside/sub").is_dir());

    // Twin.
    fail::remove("replica_ops::mkdir::before");
    fs::remove_file(t.dst.join("a")).unwrap();
    fs::create_dir(t.dst.join("a")).unwrap();
    let (out, _) = run(&p, &t.opts);
    assert_eq!((out.counts.mkdir, out.errors), (1, 0));
    assert!(t.dst.join("a/sub").is_dir());
    scenario.teardown();
}

#[test]
fn a_full_disk_fails_one_copy_and_the_others_go_on() {
    let scenario = FailScenario::setup();
    let t = trees();
    for n in ["one", "two", "three"] {
        fs::write(t.src.join(n), n.as_bytes()).unwrap();
    }
    let p = scanned_plan(&t.opts);
    fail::cfg("replica_ops::copy::write", "1*return").unwrap();
    let (out, events) = run(&p, &t.opts);
    assert_eq!((out.counts.copy, out.errors), (2, 1), "{events:?}");
    let failed: Vec<_> = events.iter().filter(|e| e.verb == Verb::Error).collect();
    let e = failed[0];
    assert_eq!(field(e, "op"), "copy");
    assert!(
        field(e, "error").contains("No space left on device"),
        "{e:?}"
    );
    let name = e.path.as_ref().unwrap().to_string();
    assert!(!t.dst.join(&name).exists());
    for n in ["one", "two", "three"].into_iter().filter(|n| *n != name) {
        assert_eq!(fs::read(t.dst.join(n)).unwrap(), n.as_bytes());
    }
    assert!(no_temporaries(&t.dst));

    // Twin: with space again, the next tick copies the one that failed.
    fail::remove("replica_ops::copy::write");
    let (out, _) = run(&scanned_plan(&t.opts), &t.opts);
    assert_eq!((out.counts.copy, out.errors), (1, 0));
    assert_eq!(fs::read(t.dst.join(&name)).unwrap(), name.as_bytes());
    scenario.teardown();
}

#[test]
fn a_source_rewritten_during_the_copy_is_skipped_then_copied_next_time() {
    let scenario = FailScenario::setup();
    let t = trees();
    fs::write(t.src.join("f"), b"first version").unwrap();
    let p = plan(vec![copy_op(&t.src, "f")]);

    let f = t.src.join("f");
    once_at("replica_ops::copy::after_open_source", move || {
        fs::write(&f, b"second, longer version").unwrap()
    });
    let (out, events) = run(&p, &t.opts);
    let e = event_for(&events, "f");
    assert_eq!(e.verb, Verb::Skip, "{events:?}");
    assert_eq!(field(e, "reason"), "changed while being copied");
    assert_eq!((out.counts.skip, out.errors), (1, 0));
    assert!(!t.dst.join("f").exists());
    assert!(no_temporaries(&t.dst));

    // Twin: the same plan again, nothing changing under it this time.
    let (out, _) = run(&p, &t.opts);
    assert_eq!((out.counts.copy, out.errors), (1, 0));
    assert_eq!(
        fs::read(t.dst.join("f")).unwrap(),
        b"second, longer version"
    );
    scenario.teardown();
}

#[test]
fn a_source_deleted_before_it_is_opened_is_skipped_as_vanished() {
    let scenario = FailScenario::setup();
    let t = trees();
    fs::write(t.src.join("f"), b"x").unwrap();
    fs::write(t.src.join("g"), b"y").unwrap();
    let p = plan(vec![copy_op(&t.src, "f")]);

    let f = t.src.join("f");
    once_at("replica_ops::copy::before_open_source", move || {
        fs::remove_file(&f).unwrap()
    });
    let (out, events) = run(&p, &t.opts);
    let e = event_for(&events, "f");
    assert_eq!(
        (e.verb, field(e, "reason")),
        (Verb::Skip, "vanished".into())
    );
    assert_eq!((out.counts.skip, out.errors), (1, 0));
    assert!(fs::read_dir(&t.dst).unwrap().next().is_none());

    // Twin: a file that stays is copied.
    let (out, _) = run(&plan(vec![copy_op(&t.src, "g")]), &t.opts);
    assert_eq!((out.counts.copy, out.errors), (1, 0));
    scenario.teardown();
}

#[test]
fn a_source_turned_fifo_before_it_is_opened_is_skipped_without_blocking() {
    let scenario = FailScenario::setup();
    let t = trees();
    fs::write(t.src.join("f"), b"x").unwrap();
    fs::write(t.src.join("g"), b"y").unwrap();
    let p = plan(vec![copy_op(&t.src, "f")]);

    let f = t.src.join("f");
    once_at("replica_ops::copy::before_open_source", move || {
        fs::remove_file(&f).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &f,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    });
    let (out, events) = run_within(p, t.opts.clone(), Duration::from_secs(20));
    let e = event_for(&events, "f");
    assert_eq!(e.verb, Verb::Skip, "{events:?}");
    assert_eq!(field(e, "reason"), "changed type: now a fifo");
    assert_eq!((out.counts.skip, out.errors), (1, 0));
    assert!(fs::read_dir(&t.dst).unwrap().next().is_none());

    // Twin: a regular file is copied.
    let p = plan(vec![copy_op(&t.src, "g")]);
    let (out, _) = run_within(p, t.opts.clone(), Duration::from_secs(20));
    assert_eq!((out.counts.copy, out.errors), (1, 0));
    scenario.teardown();
}

#[test]
fn a_stop_during_the_files_phase_finishes_the_file_in_flight_only() {
    let scenario = FailScenario::setup();
    let t = trees();
    let mut opts = t.opts.clone();
    opts.jobs = 1;
    for n in ["a", "b", "c"] {
        fs::write(t.src.join(n), n.as_bytes()).unwrap();
    }
    let p = plan(["a", "b", "c"].map(|n| copy_op(&t.src, n)).to_vec());

    // The stop comes while the first copy is about to start.
    let stop = StopFlag::new();
    let raise = stop.clone();
    once_at("applier::before_op", move || raise.request());
    let events = Mutex::new(Vec::new());
    let log = |e: LogEvent| events.lock().unwrap().push(e);
    let out = apply(&p, &opts, &stop, &log);
    assert!(out.interrupted);
    assert_eq!((out.counts.copy, out.errors), (1, 0));
    assert_eq!(fs::read(t.dst.join("a")).unwrap(), b"a");
    assert!(!t.dst.join("b").exists() && !t.dst.join("c").exists());
    assert!(no_temporaries(&t.dst));

    // Twin: without a stop the rest follows.
    let (out, _) = run(&scanned_plan(&opts), &opts);
    assert!(!out.interrupted);
    assert_eq!((out.counts.copy, out.errors), (2, 0));
    scenario.teardown();
}

#[test]
fn a_file_rewritten_while_hashed_is_not_cached_under_its_old_metadata() {
    let scenario = FailScenario::setup();
    let t = trees();
    fs::write(t.src.join("f"), b"aaaa").unwrap();
    fs::write(t.dst.join("f"), b"bbbb").unwrap();
    filetime::set_file_mtime(t.dst.join("f"), filetime::FileTime::from_unix_time(1, 0)).unwrap();
    let (s, r) = (Root::open(&t.src).unwrap(), Root::open(&t.dst).unwrap());
    // Compares what a scan now finds; true when found equal.
    let compare_now = |cache: &Mutex<HashCache>| {
        let walk = scan(&t.opts, None, &StopFlag::new()).unwrap().walk;
        let pairs = candidates(&walk.source, &walk.replica, false);
        assert_eq!(pairs.len(), 1);
        let sides = Sides {
            source: &walk.source,
            replica: &walk.replica,
            source_root: &s,
            replica_root: &r,
        };
        let (same, events) = compare_all(&pairs, &sides, cache, 1, 1, true, &StopFlag::new());
        (same.contains(pairs[0].source), events)
    };

    // Between the open and the read, the source gets the replica's
    // content: the digest read is of the new version only.
    let reads = Arc::new(AtomicUsize::new(0));
    let (f, seen) = (t.src.join("f"), reads.clone());
    fail::cfg_callback("hasher::before_read", move || {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            fs::write(&f, b"bbbb").unwrap();
        }
    })
    .unwrap();
    let cache = Mutex::new(HashCache::default());
    let (same, events) = compare_now(&cache);
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    // The bytes compared are not the version scanned: no verdict (the copy
    // decides and checks again), and nothing cached.
    assert!(!same);
    assert!(
        matches!(events[0].field("content"), Some(LogValue::Str(w)) if w == "changed while being compared"),
        "{events:?}"
    );
    assert_eq!(cache.lock().unwrap().len(), 0);

    // Twin: a file left alone is cached on both sides.
    fail::remove("hasher::before_read");
    let cache = Mutex::new(HashCache::default());
    let (same, _) = compare_now(&cache);
    assert!(same);
    assert_eq!(cache.lock().unwrap().len(), 2);
    scenario.teardown();
}

/// One tick as the pipeline runs it when metadata agree everywhere: scan,
/// compare the recorded racy copies by content, diff, apply.
fn tick_with_rechecks(opts: &SyncOptions) -> (TickOutcome, Vec<LogEvent>) {
    let walk = scan(opts, None, &StopFlag::new()).unwrap().walk;
    let (s, r) = (
        Root::open(&opts.source).unwrap(),
        Root::open(&opts.replica).unwrap(),
    );
    let (recorded, _) = racy::load(&r);
    let pairs = racy_pairs(&walk.source, &walk.replica, &recorded);
    let sides = Sides {
        source: &walk.source,
        replica: &walk.replica,
        source_root: &s,
        replica_root: &r,
    };
    let (contents, _) = recheck(&pairs, &sides, recorded, true, opts, &StopFlag::new());
    let plan = diff(
        &walk.source,
        &walk.replica,
        &contents,
        &Default::default(),
        DiffOptions::from(opts),
    );
    run(&plan, opts)
}

#[test]
fn a_copy_taken_while_a_write_was_in_flight_is_repaired_at_the_next_tick() {
    use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicUsize;
    const SIZE: usize = 1 << 20;
    let scenario = FailScenario::setup();
    let t = trees();
    fs::create_dir(t.dst.join(".treesync")).unwrap();
    let f = t.src.join("f");
    fs::write(&f, vec![b'o'; SIZE]).unwrap();
    // A writer through a shared mapping: its first store to each page sets
    // mtime and ctime (the write starts, before the copy opens the file);
    // later stores to those pages land without touching them, as the bytes
    // of one `write()` land after it has set the times.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    let map = Arc::new(AtomicUsize::new(0));
    let (m, fd) = (map.clone(), file.try_clone().unwrap());
    once_at("replica_ops::copy::before_open_source", move || {
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a fresh shared mapping of a file of SIZE bytes, used only
        // through `store` below while the test holds it, then unmapped.
        let p = unsafe { mmap(std::ptr::null_mut(), SIZE, prot, MapFlags::SHARED, &fd, 0) };
        let p = p.unwrap().cast::<u8>();
        for page in (0..SIZE).step_by(4096) {
            // SAFETY: inside the mapping.
            unsafe { p.add(page).write_volatile(b'w') };
        }
        fd.write_all_at(b"w", 0).unwrap();
        m.store(p as usize, Ordering::SeqCst);
    });
    // The rest of the write lands once the copy is taken and checked. By
    // then the copy is already recorded for a recheck, before it takes its
    // name: a run killed from here on still leaves it to be compared.
    let m = map.clone();
    let recorded_first = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, dst) = (recorded_first.clone(), t.dst.clone());
    once_at("replica_ops::copy::before_rename", move || {
        let racy_now = racy::load(&Root::open(&dst).unwrap()).0;
        seen.store(
            racy_now.contains(&RelPath::from_str_lossy("f")),
            Ordering::SeqCst,
        );
        let p = m.load(Ordering::SeqCst) as *mut u8;
        for i in 0..SIZE {
            // SAFETY: inside the mapping, which the first callback made.
            unsafe { p.add(i).write_volatile(b'N') };
        }
    });
    let stamps = |p: &Path| {
        let m = meta(p);
        (m.size, m.mtime, m.ctime)
    };
    let (out, events) = run(&plan(vec![copy_op(&t.src, "f")]), &t.opts);
    fail::remove("replica_ops::copy::before_open_source");
    fail::remove("replica_ops::copy::before_rename");
    assert_eq!((out.counts.copy, out.errors), (1, 0), "{events:?}");
    assert!(
        recorded_first.load(Ordering::SeqCst),
        "recorded before the rename"
    );
    let before_tick = stamps(&f);
    // Torn: the replica holds a mix, and nothing in the metadata says so.
    assert_ne!(fs::read(t.dst.join("f")).unwrap(), fs::read(&f).unwrap());
    assert_eq!(meta(&f).mtime, meta(&t.dst.join("f")).mtime);
    assert_eq!(out.retry, [RelPath::root()], "its folder is listed again");

    let (out, events) = tick_with_rechecks(&t.opts);
    assert_eq!(
        (out.counts.update, out.counts.copy, out.errors),
        (1, 0, 0),
        "{events:?}"
    );
    assert_eq!(fs::read(t.dst.join("f")).unwrap(), vec![b'N'; SIZE]);
    assert_eq!(stamps(&f), before_tick, "the source's stamps never moved");
    // SAFETY: the mapping made above, no longer used.
    unsafe { munmap(map.load(Ordering::SeqCst) as *mut _, SIZE).unwrap() };
    // Once the source is out of the racy window, an equal comparison
    // forgets the path.
    std::thread::sleep(Duration::from_millis(150));
    let (out, _) = tick_with_rechecks(&t.opts);
    assert_eq!(out.counts.changes(), 0);
    let (out, _) = tick_with_rechecks(&t.opts);
    assert_eq!(out.counts.changes(), 0);
    assert!(racy::load(&Root::open(&t.dst).unwrap()).0.is_empty());
    drop(file);
    scenario.teardown();
}

/// The contents of every file and link named `name` anywhere below `dir`.
fn found_below(dir: &Path, name: &str) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|(path, _)| path.rsplit('/').next() == Some(name))
        .map(|(_, what)| what)
        .collect()
}

#[test]
fn with_a_backup_dir_the_old_version_is_always_at_its_name_or_kept() {
    // Paused between the steps of an update (link into the backup, then
    // rename over the name) and of a delete (rename into the backup, then
    // the unlink that finds nothing): what a kill -9 at that moment
    // leaves. The old version is at its name or in the backup, whole.
    let scenario = FailScenario::setup();
    let t = trees();
    let versions = t.outside.join("versions");
    fs::create_dir(&versions).unwrap();
    let mut opts = t.opts.clone();
    let backup = treesync_stages::fs::backup::BackupDir::open(&versions, None, false).unwrap();
    opts.hooks.push(Arc::new(backup));
    fs::create_dir(t.src.join("a")).unwrap();
    fs::create_dir(t.dst.join("a")).unwrap();
    fs::write(t.src.join("a/f"), b"new content").unwrap();
    fs::write(t.dst.join("a/f"), b"old content").unwrap();
    fs::write(t.dst.join("a/gone"), b"old gone").unwrap();
    let p = plan(vec![
        Op::Delete {
            path: rel("a/gone"),
        },
        Op::Update {
            path: rel("a/f"),
            meta: meta(&t.src.join("a/f")),
        },
    ]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    for (point, name) in [
        ("replica_ops::replace::before_rename", "f"),
        ("replica_ops::delete::before_unlink", "gone"),
    ] {
        let (seen, dst, versions) = (seen.clone(), t.dst.clone(), versions.clone());
        once_at(point, move || {
            let at_name = fs::read(dst.join("a").join(name)).ok();
            let kept = found_below(&versions, name);
            seen.lock().unwrap().push((name, at_name, kept));
        });
    }
    let (out, events) = run(&p, &opts);
    assert_eq!(out.errors, 0, "{events:?}");
    let seen = seen.lock().unwrap().clone();
    let file = |s: &str| s.to_string();
    assert_eq!(
        seen,
        [
            // Renamed into the backup in one step: no longer at its name.
            ("gone", None, vec![file("old gone")]),
            // Linked first: at its name and in the backup.
            (
                "f",
                Some(b"old content".to_vec()),
                vec![file("old content")]
            ),
        ]
    );
    // Then the new version at the name, the old ones kept.
    assert_eq!(fs::read(t.dst.join("a/f")).unwrap(), b"new content");
    assert!(!t.dst.join("a/gone").exists());
    let mut kept = found_below(&versions, "f");
    kept.extend(found_below(&versions, "gone"));
    assert_eq!(kept, [file("old content"), file("old gone")]);
    let verbs: Vec<&str> = events.iter().map(|e| e.verb.as_str()).collect();
    assert_eq!(verbs, ["backup", "delete", "backup", "update"]);
    assert!(no_temporaries(&t.dst));
    scenario.teardown();
}
