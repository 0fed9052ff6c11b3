//! Root identity, `--adopt` and the guard's memory: the folders a run
//! syncs are the ones it started with, a folder treesync never synced into
//! is not taken over unasked, and deletions the guard withheld stay
//! withheld for the rest of the run (issue 9, findings 1 and 11).

mod common;

use common::mounts::Mounted;
use common::*;
use std::fs;
use std::path::Path;

/// A source of three files and an unrelated folder `other` with 20 files
/// of its own, outside both roots.
fn source_and_other(sb: &Sandbox) -> std::path::PathBuf {
    for name in ["a.txt", "b.txt", "c.txt"] {
        file(&sb.src, name, name);
    }
    let other = sb.path("other");
    for i in 0..20 {
        file(&other, format!("own{i:02}.txt"), "mine");
    }
    other
}

/// The tree at `root` as `listing` sees it, less change times: moving a
/// root away (as the tests do) changes its ctime, and nothing else.
fn state_of(root: &Path) -> Vec<Node> {
    listing(root)
        .into_iter()
        .map(|n| Node { ctime_ns: 0, ..n })
        .collect()
}

/// `error op=root` entries (they concern the whole tick: no path).
fn root_errors(entries: &[Entry]) -> usize {
    entries
        .iter()
        .filter(|e| e.msg == "error" && e.str("op") == Some("root"))
        .inspect(|e| assert_eq!(e.path, None, "a root error has no path: {e:?}"))
        .count()
}

fn changes(entries: &[Entry]) -> Vec<&Entry> {
    entries
        .iter()
        .filter(|e| CHANGE_VERBS.contains(&e.msg.as_str()))
        .collect()
}

/// Waits for two ticks that started after the change, and checks each of
/// them refused the roots and changed nothing; returns the tick count.
fn two_refused_ticks(r: &mut Running, since: usize) -> usize {
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    let later = after_tick(&r.log(), since);
    let ticks = later.iter().filter(|e| e.msg == "tick").count();
    assert!(ticks >= 2, "{later:#?}");
    assert!(
        root_errors(&later) >= ticks,
        "an error each tick: {later:#?}"
    );
    assert!(changes(&later).is_empty(), "nothing done: {later:#?}");
    for tick in later.iter().filter(|e| e.msg == "tick") {
        assert!(
            tick.u64("errors") >= Some(1),
            "the root error counts: {tick:?}"
        );
    }
    assert!(r.is_running(), "the process keeps running");
    r.ticks()
}

/// Puts `dst.real` back at `dst` and checks the next tick syncs again.
fn back_and_resumed(sb: &Sandbox, r: &mut Running) {
    fs::rename(sb.path("dst.real"), &sb.dst).unwrap();
    file(&sb.src, "after.txt", "back");
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    assert!(exists(&sb.d("after.txt")), "the sync resumes");
    assert!(exists(&sb.d("new.txt")), "what was missed is caught up");
    r.stop("INT").expect_code(0);
}

#[test]
fn a_replica_path_turned_into_a_link_is_refused_every_tick() {
    let sb = Sandbox::new();
    let other = source_and_other(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let n = r.ticks();
    let (before, mirrored) = (state_of(&other), state_of(&sb.dst));
    fs::rename(&sb.dst, sb.path("dst.real")).unwrap();
    std::os::unix::fs::symlink(&other, &sb.dst).unwrap();
    file(&sb.src, "new.txt", "n");
    two_refused_ticks(&mut r, n);
    assert_eq!(
        state_of(&other),
        before,
        "other gets nothing, loses nothing"
    );
    assert_eq!(
        state_of(&sb.path("dst.real")),
        mirrored,
        "dst.real untouched"
    );
    fs::remove_file(&sb.dst).unwrap();
    back_and_resumed(&sb, &mut r);
}

#[test]
fn another_folder_moved_to_the_replica_path_is_refused_every_tick() {
    let sb = Sandbox::new();
    let other = source_and_other(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let n = r.ticks();
    let before = state_of(&other);
    let mirrored = state_of(&sb.dst);
    fs::rename(&sb.dst, sb.path("dst.real")).unwrap();
    fs::rename(&other, &sb.dst).unwrap();
    file(&sb.src, "new.txt", "n");
    two_refused_ticks(&mut r, n);
    assert_eq!(
        state_of(&sb.dst),
        before,
        "other gets nothing, loses nothing"
    );
    assert_eq!(
        state_of(&sb.path("dst.real")),
        mirrored,
        "dst.real untouched"
    );
    fs::rename(&sb.dst, &other).unwrap();
    back_and_resumed(&sb, &mut r);
}

#[test]
fn a_source_path_turned_into_a_link_is_refused_every_tick() {
    let sb = Sandbox::new();
    source_and_other(&sb);
    let secrets = sb.path("secrets");
    file(&secrets, "shadow", "root:x");
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let n = r.ticks();
    let mirrored = state_of(&sb.dst);
    fs::rename(&sb.src, sb.path("src.real")).unwrap();
    std::os::unix::fs::symlink(&secrets, &sb.src).unwrap();
    two_refused_ticks(&mut r, n);
    assert_eq!(
        state_of(&sb.dst),
        mirrored,
        "nothing copied, nothing deleted"
    );
    assert!(!exists(&sb.d("shadow")));
    fs::remove_file(&sb.src).unwrap();
    fs::rename(sb.path("src.real"), &sb.src).unwrap();
    file(&sb.src, "after.txt", "back");
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    assert!(exists(&sb.d("after.txt")), "the sync resumes");
    r.stop("INT").expect_code(0);
}

#[test]
fn a_replica_holding_another_replicas_marker_is_refused_every_tick() {
    let sb = Sandbox::new();
    source_and_other(&sb);
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let n = r.ticks();
    let marker = sb.d(".treesync/replica-id");
    let ours = read(&marker);
    assert_eq!(ours.len(), 33, "128 bits in hex and a newline");
    // Another replica's state copied in.
    let stranger = "0123456789abcdef0123456789abcdef\n";
    fs::write(sb.path("marker.tmp"), stranger).unwrap();
    fs::rename(sb.path("marker.tmp"), &marker).unwrap();
    remove(&sb.s("a.txt"));
    file(&sb.src, "new.txt", "n");
    two_refused_ticks(&mut r, n);
    assert!(exists(&sb.d("a.txt")) && !exists(&sb.d("new.txt")));
    // A lost marker is refused as well.
    remove(&marker);
    let n = r.ticks();
    two_refused_ticks(&mut r, n);
    fs::write(&marker, &ours).unwrap();
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    assert!(exists(&sb.d("new.txt")) && !exists(&sb.d("a.txt")));
    r.stop("INT").expect_code(0);
}

#[test]
fn a_bind_mounted_source_unmounted_mid_run_is_refused() {
    let sb = Sandbox::new();
    // What the mount point holds under the mount.
    file(&sb.src, "bare.txt", "under the mount");
    let real = sb.path("real");
    for i in 0..20 {
        file(&real, format!("f{i:02}.txt"), "x");
    }
    let mut mount = match Mounted::bind(&real, &sb.src) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: a bind-mounted source: {why}");
            return;
        }
    };
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let n = r.ticks();
    let mirrored = state_of(&sb.dst);
    assert!(exists(&sb.d("f00.txt")) && !exists(&sb.d("bare.txt")));
    mount.unmount().expect("umount");
    two_refused_ticks(&mut r, n);
    assert_eq!(
        state_of(&sb.dst),
        mirrored,
        "nothing mirrored, nothing deleted"
    );
    r.stop("INT").expect_code(0);
}

// ---------------------------------------------------------------------------
// --adopt
// ---------------------------------------------------------------------------

#[test]
fn a_non_empty_replica_never_synced_is_refused_without_adopt() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    file(&sb.dst, "theirs.txt", "not ours");
    let before = state_of(&sb.dst);
    for extra in [&[][..], &["--dry-run"][..]] {
        let run = sb.sync(extra);
        run.expect_code(1);
        assert!(run.stderr.contains("--adopt"), "{}", run.dump());
        assert!(
            run.log
                .iter()
                .any(|e| e.msg == "error" && e.str("error").is_some_and(|m| m.contains("--adopt"))),
            "{}",
            run.dump()
        );
        assert_eq!(state_of(&sb.dst), before, "replica untouched");
        assert!(!exists(&sb.d(".treesync")));
    }
    sb.sync(&["--adopt"]).expect_code(0).no_errors();
    sb.assert_mirror();
    // Synced once, it is ours: no --adopt needed any more.
    file(&sb.dst, "stray.txt", "s");
    sb.sync(&[]).expect_code(0).no_errors();
    assert!(!exists(&sb.d("stray.txt")));
}

#[test]
fn an_empty_or_missing_replica_needs_no_adopt() {
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    sb.sync(&[]).expect_code(0).no_errors();
    sb.assert_mirror();
    let sb = Sandbox::new();
    file(&sb.src, "a.txt", "a");
    fs::create_dir(&sb.dst).unwrap();
    sb.sync(&[]).expect_code(0).no_errors();
    sb.assert_mirror();
}

// ---------------------------------------------------------------------------
// The guard withholds for the rest of the run
// ---------------------------------------------------------------------------

#[test]
fn deletions_the_guard_withheld_stay_withheld_while_copies_arrive() {
    let sb = Sandbox::new();
    for i in 0..5 {
        file(&sb.src, format!("s{i:02}.txt"), "src");
    }
    // A replica of 20 files of its own, synced before (state folder).
    for i in 0..20 {
        file(&sb.dst, format!("own{i:02}.txt"), "mine");
    }
    dir(&sb.dst, ".treesync");
    let mut r = sb.spawn_interval("1", &[]);
    r.wait_ticks(1);
    let first = tick_entries(&r.log(), 1);
    assert!(
        first
            .iter()
            .any(|e| e.msg == "error" && e.str("op") == Some("guard")),
        "{first:#?}"
    );
    let n = r.ticks();
    // Copies that would lower the ratio under the limit: 20 of 55.
    for i in 5..35 {
        file(&sb.src, format!("s{i:02}.txt"), "src");
    }
    r.wait_fresh_tick();
    for i in 35..40 {
        file(&sb.src, format!("s{i:02}.txt"), "src");
    }
    r.wait_fresh_tick();
    r.wait_fresh_tick();
    let later = after_tick(&r.log(), n);
    assert!(exists(&sb.d("s39.txt")), "copies go on");
    for i in 0..20 {
        assert!(
            exists(&sb.d(format!("own{i:02}.txt"))),
            "own{i:02}.txt kept"
        );
    }
    assert!(!later.iter().any(|e| e.msg == "delete"), "{later:#?}");
    let ticks = later.iter().filter(|e| e.msg == "tick").count();
    let guards = later
        .iter()
        .filter(|e| e.msg == "error" && e.str("op") == Some("guard"))
        .count();
    assert!(ticks >= 2 && guards >= 2, "reported again: {later:#?}");
    r.stop("INT").expect_code(0);
    // A new run decides afresh: 20 of 60 is under the limit.
    sb.sync(&[]).expect_code(0).no_errors();
    sb.assert_mirror();
}

// ---------------------------------------------------------------------------
// Mount points inside the roots
// ---------------------------------------------------------------------------

#[test]
fn another_filesystem_mounted_inside_the_replica_is_never_written_or_deleted() {
    let sb = Sandbox::new();
    file(&sb.src, "d/b", "would go into the mount\n");
    file(&sb.src, "top", "top\n");
    sb.sync(&[]).expect_code(0);
    let victim = sb.path("victim");
    file(&victim, "k1", "someone else's\n");
    file(&victim, "sub/k2", "someone else's\n");
    let before = state_of(&victim);
    let _mount = match Mounted::bind(&victim, &sb.d("d")) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: a mount inside the replica: {why}");
            return;
        }
    };
    file(&sb.src, "d/c", "new\n");
    for _ in 0..2 {
        let run = sb.sync(&[]);
        run.expect_code(3);
        let err = run.get("error", "d");
        assert!(
            err.str("error").unwrap_or_default().contains("mounted"),
            "{}",
            run.dump()
        );
        assert!(run.entries("delete").is_empty(), "{}", run.dump());
        assert_eq!(state_of(&victim), before, "{}", run.dump());
    }
}

#[test]
fn the_replica_mounted_inside_the_source_is_not_mirrored_into_itself() {
    let sb = Sandbox::new();
    file(&sb.src, "a", "a\n");
    dir(&sb.src, "sub");
    sb.sync(&[]).expect_code(0);
    let _mount = match Mounted::bind(&sb.dst, &sb.s("sub")) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: the replica mounted inside the source: {why}");
            return;
        }
    };
    let before = state_of(&sb.dst);
    for _ in 0..2 {
        let run = sb.sync(&[]);
        run.expect_code(3);
        let err = run.get("error", "sub");
        assert!(
            err.str("error").unwrap_or_default().contains("replica"),
            "{}",
            run.dump()
        );
        assert!(run.changes().is_empty(), "{}", run.dump());
        assert_eq!(state_of(&sb.dst), before);
    }
}
