#!/usr/bin/env bash
# Measures interval mode with filesystem watching on a generated tree:
# idle cost (tick time, CPU, memory) with and without watching, the latency
# of one modified file, and a burst of new files; then checks the replica.
#
#   bench/watch.sh [--scale F] [--phases LIST] [--idle SECS] [--trials N] [--burst N]
#     --scale F      tree size: gen_tree.py small --scale F (default 1 = 100,000 files)
#     --phases LIST  comma-separated, in this order (default idle,nowatch,latency,burst):
#                      idle     watch mode, nothing changes: tick median/p95, CPU %, RSS
#                      nowatch  the same with --no-watch, and the CPU ratio of the two
#                      latency  one file rewritten, time until the replica has it (N trials)
#                      burst    N new files in 4 folders, time until all are in the replica
#     --idle SECS    length of each idle window (default 60)
#     --trials N     latency trials (default 10)
#     --burst N      files in the burst (default 1000)
#     --keep         keep the trees (default: keep only below scale 10; pass --no-keep to delete)
#     --no-check     skip the final treecheck (manifest + check)
#
# Data: ${BENCH_WORK:-/tmp/treesync-watch}/small-F/{src,dst}; the source tree is reused
# when present (src.ok marks a finished generation). Each call writes a folder run-TIME/
# there with the logs and a summary.md (also printed). Interval: 1 s throughout.
# Needs python3 and the harness in ../shared/bench beside the project (BENCH_HARNESS).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/../shared/bench}
SCALE=1 PHASES=idle,nowatch,latency,burst IDLE=60 TRIALS=10 BURST=1000 KEEP= CHECK=1
while (($#)); do
  case $1 in
    --scale) SCALE=$2; shift 2;;
    --phases) PHASES=$2; shift 2;;
    --idle) IDLE=$2; shift 2;;
    --trials) TRIALS=$2; shift 2;;
    --burst) BURST=$2; shift 2;;
    --keep) KEEP=1; shift;;
    --no-keep) KEEP=0; shift;;
    --no-check) CHECK=0; shift;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) echo "watch.sh: unknown argument $1 (see --help)" >&2; exit 2;;
  esac
done
[[ -n $KEEP ]] || KEEP=$(python3 -c "print(1 if float('$SCALE') < 10 else 0)")
[[ -f $HARNESS/gen_tree.py ]] || { echo "watch.sh: no harness at $HARNESS" >&2; exit 2; }
has_phase() { [[ ",$PHASES," == *",$1,"* ]]; }

WORK=${BENCH_WORK:-/tmp/treesync-watch}
DATA=$WORK/small-$SCALE
SRC=$DATA/src DST=$DATA/dst
RUN=$WORK/run-$(date +%Y%m%d-%H%M%S)-s$SCALE
mkdir -p "$DATA" "$RUN"
OUT=$RUN/summary.md
HZ=$(getconf CLK_TCK)

(cd "$ROOT" && cargo build --release --quiet)
# A private copy: a rebuild of target/ during the run cannot swap the binary under us.
BIN=$RUN/treesync
cp "$ROOT/target/release/treesync" "$BIN"

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -INT "$p" 2>/dev/null || true; fi
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
}
trap cleanup EXIT

say() { printf '%s\n' "$*" | tee -a "$OUT"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
# utime+stime of the whole process (all threads), in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# inotify watches held by the process.
watches() { cat /proc/"$1"/fdinfo/* 2>/dev/null | grep -c '^inotify wd:' || true; }
ticks_in_log() { grep -c '"msg":"tick"' "$1" 2>/dev/null || true; }

# Starts treesync in interval mode; sets TS_PID. Args: log-file extra-options...
start_sync() {
  local log=$1; shift
  "$BIN" "$SRC" "$DST" 1 --log-file "$log" --log-format json -q "$@" 2>>"$log.stderr" &
  TS_PID=$!
  PIDS+=("$TS_PID")
}
stop_sync() {
  local rc=0
  kill -INT "$1"
  wait "$1" || rc=$?
  [[ $rc == 0 ]] || say "  WARNING: treesync exited $rc"
}
# Waits until the first two ticks are done and, in watch mode, until the watches are all
# in place (their count steady over 2 s) and two more ticks have started after that: the
# watcher's "ready" makes one more full walk, which must not fall into the window.
settle() { # pid log watch(0/1)
  local pid=$1 log=$2 watch=$3 t0=$SECONDS n w1 w2 k=0
  while :; do
    kill -0 "$pid" 2>/dev/null || { say "  treesync died: $(tail -3 "$log.stderr")"; exit 1; }
    n=$(ticks_in_log "$log")
    if ((n >= 2 && !watch)); then
      break
    elif ((n >= 2 && k == 0)); then
      w1=$(watches "$pid"); sleep 2; w2=$(watches "$pid")
      if ((w1 > 0 && w1 == w2)); then k=$(ticks_in_log "$log"); fi
    elif ((k > 0 && n >= k + 2)) && grep '"msg":"tick"' "$log" | tail -1 | grep -q '"mode":"incremental"'; then
      break
    else
      sleep 0.5
    fi
    ((SECONDS - t0 < 1800)) || { say "  timed out waiting for the first ticks"; exit 1; }
  done
}

# Tick statistics over log lines FROM..TO (1-based, inclusive).
tick_stats() { # log from to
  python3 - "$@" <<'EOF'
import json, math, sys
log, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ticks = []
with open(log) as f:
    for i, line in enumerate(f, 1):
        if lo <= i <= hi and '"msg":"tick"' in line:
            ticks.append(json.loads(line))
ms = sorted(t["elapsed_ms"] for t in ticks)
def pct(p):  # nearest rank
    return ms[max(0, math.ceil(p / 100 * len(ms)) - 1)] if ms else float("nan")
modes = {}
for t in ticks:
    modes[t.get("mode", "full")] = modes.get(t.get("mode", "full"), 0) + 1
resc = sorted(t.get("rescanned", 0) for t in ticks)
print(f"ticks={len(ticks)} median_ms={pct(50)} p95_ms={pct(95)} max_ms={ms[-1] if ms else 'nan'} "
      f"modes={','.join(f'{k}:{v}' for k, v in sorted(modes.items()))} "
      f"max_rescanned={resc[-1] if resc else 0}")
EOF
}

# One idle window: prints and records the figures; sets IDLE_CPU (percent of one core).
idle_window() { # label extra-options...
  local label=$1; shift
  local log=$RUN/$label.jsonl watch=1 pid c0 c1 t0 t1 l0 l1 rss hwm wn stats
  [[ " $* " == *" --no-watch "* ]] && watch=0
  start_sync "$log" "$@"; pid=$TS_PID
  local ts=$SECONDS
  settle "$pid" "$log" "$watch"
  local ready=$((SECONDS - ts))
  l0=$(wc -l <"$log"); c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N); local la0; la0=$(load)
  sleep "$IDLE"
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N); l1=$(wc -l <"$log")
  rss=$(status_kb "$pid" VmRSS); hwm=$(status_kb "$pid" VmHWM); wn=$(watches "$pid")
  local thr; thr=$(status_kb "$pid" Threads)
  local la1; la1=$(load)
  stop_sync "$pid"
  stats=$(tick_stats "$log" $((l0 + 1)) "$l1")
  IDLE_CPU=$(python3 -c "print(f'{($c1-$c0)/$HZ/($t1-$t0)*100:.3f}')")
  local cpus; cpus=$(python3 -c "print(f'{($c1-$c0)/$HZ:.2f}')")
  say "- $label: treesync SRC DST 1 --log-format json -q $*"
  say "  ready after ${ready}s (first ticks done$( ((watch)) && echo ", $wn inotify watches"))"
  say "  window $(python3 -c "print(f'{$t1-$t0:.1f}')") s: $stats"
  say "  CPU ${cpus} s = ${IDLE_CPU}% of one core; RSS steady $((rss / 1024)) MiB, peak (VmHWM) $((hwm / 1024)) MiB; $thr threads"
  say "  load average before: $la0; after: $la1"
}

say "# treesync watch-mode run, scale $SCALE ($(date -u +%Y-%m-%dT%H:%MZ))"
say ""
say "- machine: $(nproc) cores, $(uname -r); binary: target/release/treesync (source $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'))"
say "- data: $DATA; run folder: $RUN; load average at start: $(load)"

# 1. Source tree (reused when complete).
if [[ ! -f $DATA/src.ok ]]; then
  rm -rf "$SRC" "$DST"
  t0=$SECONDS
  python3 "$HARNESS/gen_tree.py" small "$SRC" --scale "$SCALE"
  echo "generated in $((SECONDS - t0)) s" >"$DATA/src.ok"
fi
# Leftovers of an earlier run's burst (its cleanup was skipped): remove from the source,
# the --once below then removes them from the replica.
find "$SRC" -name 'wburst-*' -type f -delete
say "- source: $(cat "$DATA/src.ok"); $(du -sh "$SRC" | cut -f1); df /tmp: $(df -h /tmp | awk 'NR==2 {print $4 " free"}')"

# 2. Replica: one --once sync (creates it, or brings a kept one up to date).
t0=$(date +%s.%N)
"$BIN" --once "$SRC" "$DST" --log-file "$RUN/once.jsonl" --log-format json -q 2>>"$RUN/once.jsonl.stderr"
t1=$(date +%s.%N)
say "- first sync: treesync --once SRC DST: $(python3 -c "print(f'{$t1-$t0:.1f}')") s; $(grep '"msg":"tick"' "$RUN/once.jsonl" | tail -1 | python3 -c 'import json,sys; t=json.load(sys.stdin); print(" ".join(f"{k}={t[k]}" for k in ("mkdir","copy","update","delete","errors")))')"
say ""

# 3. Idle, with and without watching.
WATCH_CPU= NOWATCH_CPU=
if has_phase idle; then
  idle_window idle-watch; WATCH_CPU=$IDLE_CPU
fi
if has_phase nowatch; then
  idle_window idle-nowatch --no-watch; NOWATCH_CPU=$IDLE_CPU
fi
if [[ -n $WATCH_CPU && -n $NOWATCH_CPU ]]; then
  # With 0 clock ticks in the watch window, one tick (1/HZ s) bounds its CPU from above.
  say "- CPU ratio no-watch / watch: $(python3 -c "w=$WATCH_CPU; n=$NOWATCH_CPU; b=100/$HZ/$IDLE; print(f'{n/w:.0f}x' if w > 0 else f'>= {n/b:.0f}x (watch used 0 clock ticks, < {b:.3f}%)')") (target >= 20x)"
fi

# 4. Latency and burst, in one watch-mode process.
if has_phase latency || has_phase burst; then
  log=$RUN/changes.jsonl
  start_sync "$log"; pid=$TS_PID
  settle "$pid" "$log" 1
  say "- changes: treesync SRC DST 1 --log-format json -q (watch mode); load average: $(load)"
  n_lat=0; n_burst=0
  has_phase latency && n_lat=$TRIALS
  has_phase burst && n_burst=$BURST
  python3 - "$SRC" "$DST" "$log" "$n_lat" "$n_burst" "$RUN" <<'EOF' | tee -a "$OUT"
import json, os, random, statistics, sys, time
src, dst, log, trials, burst, run = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rng = random.Random(7)
tag = os.path.basename(run).replace("run-", "")
# Leaf folders (those holding files), found without walking the whole tree.
def leaves():
    out = []
    for top in sorted(os.listdir(src)):
        p = os.path.join(src, top)
        if not os.path.isdir(p):
            continue
        for mid in sorted(os.listdir(p))[:3]:
            q = os.path.join(p, mid)
            if os.path.isdir(q):
                out += [os.path.join(top, mid, l) for l in sorted(os.listdir(q))[:3]]
    return out
leaf = leaves()

def wait_for(pred, timeout=60.0):
    while True:
        t = time.monotonic()
        if pred():
            return t
        if t > deadline_of[0]:
            return None
        time.sleep(0.01)
deadline_of = [0.0]

def read(p):
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return None

if trials:
    lat = []
    for i in range(trials):
        time.sleep(rng.uniform(0.3, 1.3))   # spread the changes over the tick phase
        d = rng.choice(leaf)
        name = rng.choice([n for n in os.listdir(os.path.join(src, d)) if not n.startswith("wburst-")])
        rel = os.path.join(d, name)
        data = os.urandom(rng.randint(1, 16384))
        with open(os.path.join(src, rel), "wb") as f:   # rewritten in place, as an editor without rename would
            f.write(data)
        t0 = time.monotonic()
        deadline_of[0] = t0 + 60
        t1 = wait_for(lambda: read(os.path.join(dst, rel)) == data)
        lat.append(None if t1 is None else t1 - t0)
        print(f"  trial {i+1}: {rel} ({len(data)} B): " + ("TIMEOUT" if t1 is None else f"{(t1-t0)*1000:.0f} ms"))
    ok = [x for x in lat if x is not None]
    med = statistics.median(ok) if ok else float("nan")
    print(f"- latency (one file rewritten, replica polled every 10 ms), {trials} trials: "
          f"median {med*1000:.0f} ms, min {min(ok)*1000:.0f}, max {max(ok)*1000:.0f} ms, "
          f"timeouts {len(lat)-len(ok)} (target <= interval + 1 s = 2000 ms): "
          + ("MET" if ok and len(ok) == len(lat) and med <= 2.0 else "MISSED"))
    print(f"  load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")

if burst:
    time.sleep(1.5)
    folders = rng.sample(leaf, 4)
    files = []
    for i in range(burst):
        rel = os.path.join(folders[i % 4], f"wburst-{tag}-{i:05d}.bin")
        files.append((rel, os.urandom(rng.randint(1, 16384))))
    with open(log) as f:
        start_line = sum(1 for _ in f)
    t0 = time.monotonic()
    for rel, data in files:
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    t_made = time.monotonic()
    pending = {rel: len(data) for rel, data in files}
    def all_there():
        for rel in list(pending):
            try:
                if os.stat(os.path.join(dst, rel)).st_size == pending[rel]:
                    del pending[rel]
            except OSError:
                pass
        return not pending
    deadline_of[0] = t_made + 120
    t1 = wait_for(all_there)
    wrong = sum(1 for rel, data in files if read(os.path.join(dst, rel)) != data)
    time.sleep(2.5)   # let the tick that copied them (and the next) be logged
    copies, other, ticks = 0, 0, []
    with open(log) as f:
        for i, line in enumerate(f, 1):
            if i <= start_line:
                continue
            e = json.loads(line)
            if e["msg"] == "tick":
                ticks.append(e)
            elif "wburst-" + tag in e.get("path", ""):
                if e["msg"] == "copy":
                    copies += 1
                else:
                    other += 1
    busy = [t for t in ticks if t["copy"] or t["update"]]
    if t1 is None:
        print(f"- burst: {burst} files in 4 folders: TIMEOUT, {len(pending)} missing after 120 s")
    else:
        print(f"- burst: {burst} new files ({sum(len(d) for _, d in files)/1e6:.1f} MB) in 4 folders, written in "
              f"{(t_made-t0)*1000:.0f} ms; all in the replica {(t1-t_made)*1000:.0f} ms after the last was written "
              f"({(t1-t0)*1000:.0f} ms after the first; target <= 2 intervals = 2000 ms): "
              + ("MET" if t1 - t_made <= 2.0 else "MISSED"))
    print(f"  log: {copies} copy entries for the burst files (want {burst}), {other} other entries for them; "
          f"content wrong: {wrong}; ticks that copied: "
          + "; ".join(f"seq {t['seq']} copy={t['copy']} update={t['update']} {t['elapsed_ms']} ms "
                      f"{t.get('mode')} rescanned={t.get('rescanned')}" for t in busy))
    print(f"  load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    with open(os.path.join(run, "burst-files.txt"), "w") as f:
        f.writelines(rel + "\n" for rel, _ in files)
EOF
  say "  memory after the changes: RSS $(($(status_kb "$pid" VmRSS) / 1024)) MiB, peak (VmHWM) $(($(status_kb "$pid" VmHWM) / 1024)) MiB; CPU of the whole process $(python3 -c "print(f'{$(cpu_ticks "$pid")/$HZ:.1f}')") s"
  stop_sync "$pid"
fi

# 5. Correctness: the replica the watch-mode processes left equals the source.
if ((CHECK)); then
  t0=$SECONDS
  python3 "$HARNESS/treecheck.py" manifest "$SRC" "$RUN/m.pkl" >/dev/null
  verdict=$(python3 "$HARNESS/treecheck.py" check "$RUN/m.pkl" "$DST" || true)
  rm -f "$RUN/m.pkl"
  say "- treecheck manifest SRC + check DST: $verdict ($((SECONDS - t0)) s)"
fi

# Burst files out of both trees, so that the next run starts from the same source.
find "$SRC" "$DST" -name 'wburst-*' -type f -delete 2>/dev/null || true
if ((KEEP == 0)); then
  rm -rf "$DATA"
  say "- trees deleted ($DATA)"
fi
left=$(for p in "${PIDS[@]}"; do if kill -0 "$p" 2>/dev/null; then echo "$p"; fi; done)
say "- treesync processes of this run still running: ${left:-none}"
rm -f "$BIN"
echo "summary: $OUT"
