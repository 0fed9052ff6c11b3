#!/usr/bin/env bash
# Remote replicas: treesync against rclone, both syncing a generated tree
# into an S3 bucket served by moto (moto_server, on this machine), with
# the requests each tool sent counted from moto's access log.
#
#   bench/remote.sh [--scale F] [--runs N] [--big-gib N] [--bin PATH] [SCENARIO...]
#     SCENARIO     initial | no-change | churn | memory (default: all four)
#     --scale F    scale of the `small` tree (default 0.2: 20,000 files)
#     --runs N     timed runs per command (default 3)
#     --warmup N   untimed warm-up runs per command first (default 1)
#     --big-gib N  size of the one file of `memory` (default 2)
#     --bin PATH   the treesync to time (default: cargo build --release here)
#     --no-fast-list  no `rclone sync --fast-list` row
#     --no-floor   no `curl-put` row in `initial`
#     --port P     moto's port (default 5720)
#     --keep       keep the data folder (default: deleted at the end)
#
# Each scenario starts a moto_server of its own (an empty store; its log
# is one line per request) and runs the commands in turn (A B C A B C
# ...), each into buckets of its own, on warm caches (the source is read
# once before every run, untimed):
#   initial    every run into a new, empty bucket;
#   no-change  after an untimed first upload, the same tree again;
#   churn      after an untimed first upload, before each round of runs
#              `mutate.py churn` (1% modified, added, deleted) on the
#              source (untimed): every command syncs the same change;
#   memory     one file of --big-gib GiB into a new bucket, once each.
# A row: median wall time, user+sys CPU and peak RSS (GNU time) of the
# command; wall time over rclone's (default flags) in the same call; the
# median number of requests by kind that moto logged during a timed run
# (LIST = GET on a bucket, GET = GET of an object); moto's own CPU time
# during the run (moto is one Python process: a column near wall_s means
# the store was the limit); `verify`: `rclone check` (sizes and MD5s
# against the ETags, both ways) after the last run, or the object's size
# for `memory`. `curl-put` is a floor: every file of the tree PUT by one
# `curl --parallel` (16 in flight, no signing, no metadata).
#
# Needs moto_server (pip install 'moto[server]'), rclone, curl, GNU time.
# Credentials: moto takes any; AWS_* are set here if unset. Data goes to
# /tmp/treesync-bench-remote (BENCH_REMOTE_WORK), about 1 GiB at scale
# 0.2 plus the big file; moto keeps every object in memory (or spooled
# temporaries): a few GiB at scale 0.2, about 2x the big file in `memory`.
# Not part of the tests: timings belong here, never in cargo test.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/../shared/bench}
SCALE=0.2 RUNS=3 WARMUP=1 BIG_GIB=2 BIN="" FASTLIST=1 FLOOR=1 PORT=5720 KEEP=0
WORK=${BENCH_REMOTE_WORK:-/tmp/treesync-bench-remote}
SCENARIOS=()
die() { echo "remote.sh: $*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --scale) SCALE=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --warmup) WARMUP=$2; shift 2;;
    --big-gib) BIG_GIB=$2; shift 2;;
    --bin) BIN=$2; shift 2;;
    --no-fast-list) FASTLIST=0; shift;;
    --no-floor) FLOOR=0; shift;;
    --port) PORT=$2; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    -*) die "unknown option $1";;
    *) SCENARIOS+=("$1"); shift;;
  esac
done
((${#SCENARIOS[@]})) || SCENARIOS=(initial no-change churn memory)
for s in "${SCENARIOS[@]}"; do
  case $s in initial|no-change|churn|memory) ;; *) die "unknown scenario $s";; esac
done
for t in moto_server rclone curl /usr/bin/time python3; do
  command -v "$t" >/dev/null || die "needs $t"
done
[[ -x $HARNESS/gen_tree.py || -f $HARNESS/gen_tree.py ]] || die "no harness at $HARNESS"
if [[ -z $BIN ]]; then
  (cd "$ROOT" && cargo build --release --quiet)
  BIN=$ROOT/target/release/treesync
fi
[[ -x $BIN ]] || die "no treesync at $BIN"

ENDPOINT=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-bench} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-bench}
export AWS_REGION=${AWS_REGION:-us-east-1}
# rclone's remote `moto:`, from the environment only.
export RCLONE_CONFIG_MOTO_TYPE=s3 RCLONE_CONFIG_MOTO_PROVIDER=Other RCLONE_CONFIG_MOTO_ENV_AUTH=true
export RCLONE_CONFIG_MOTO_REGION=us-east-1 RCLONE_CONFIG_MOTO_ENDPOINT=$ENDPOINT
export RCLONE_CONFIG=/dev/null
# treesync's records of what it uploaded: a folder of this run's own.
export XDG_STATE_HOME=$WORK/state

mkdir -p "$WORK"
SRC=$WORK/src BIG=$WORK/big LOGS=$WORK/logs RAW=$WORK/raw.tsv TF=$WORK/time.out
# prewarm, need_tree, TOTAL and phase_of, set_last_verdict.
source "$ROOT/bench/remote-common.sh"
mkdir -p "$LOGS"; : >"$RAW"
MOTO_PID=""
stop_moto() {
  if [[ -n $MOTO_PID ]]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi
  MOTO_PID=""
}
cleanup() { stop_moto; ((KEEP)) || rm -rf "$WORK"; }
trap cleanup EXIT

# A moto of its own per scenario: an empty store, and a log of its own.
MOTO_LOG=""
start_moto() { # scenario
  stop_moto
  MOTO_LOG=$LOGS/moto.$1.log
  moto_server -H 127.0.0.1 -p "$PORT" >/dev/null 2>"$MOTO_LOG" &
  MOTO_PID=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "$ENDPOINT/" && return 0
    sleep 0.1
  done
  die "moto_server did not start on $ENDPOINT"
}
mkbucket() { curl -sf -o /dev/null -X PUT "$ENDPOINT/$1" || die "cannot create bucket $1"; }
log_lines() { wc -l <"$MOTO_LOG"; }
# moto writes a request's line after answering it: wait for the log to settle.
settle_log() {
  local n m
  n=$(log_lines)
  while :; do sleep 0.2; m=$(log_lines); ((m == n)) && break; n=$m; done
  echo "$n"
}
moto_ticks() { awk '{print $14 + $15}' "/proc/$MOTO_PID/stat"; }
moto_hwm_mib() { awk '/VmHWM/{printf "%.0f", $2/1024}' "/proc/$MOTO_PID/status"; }
# Requests in log lines FROM+1..TO, by kind.
count_requests() { # from to
  sed -n "$(($1 + 1)),$2p" "$MOTO_LOG" | awk '
    match($0, /"[A-Z]+ [^ ]+ HTTP/) {
      split(substr($0, RSTART + 1, RLENGTH - 1), r, " "); m = r[1]; p = r[2]
      sub(/\?.*/, "", p); sub(/^\/[^\/]*\/?/, "", p)          # the key, after the bucket
      if (m == "GET") m = (p == "" ? "LIST" : "GET")
      n[m]++
      st = substr($0, RSTART + RLENGTH); sub(/^[^"]*" */, "", st)
      if (st !~ /^2/) n["non2xx"]++
    }
    END { printf "%d %d %d %d %d %d %d\n", n["LIST"], n["GET"], n["HEAD"], n["PUT"], n["POST"], n["DELETE"], n["non2xx"] }'
}

# Runs one command (NAME, a source folder, a bucket/prefix), records a row.
# The commands: treesync; rclone sync with default flags; with --fast-list;
# the curl floor.
run_cmd() { # scenario name phase src target
  local sc=$1 name=$2 phase=$3 src=$4 target=$5 t0 t1 a b c0 c1 U S M X verdict
  local log=$LOGS/$sc.$name.$phase.$RANDOM.log
  local -a cmd
  case $name in
    treesync) cmd=("$BIN" --once --quiet --s3-endpoint "$ENDPOINT" "$src" "s3://$target");;
    rclone) cmd=(env -u AWS_CA_BUNDLE rclone sync "$src" "moto:$target");;
    rclone-fl) cmd=(env -u AWS_CA_BUNDLE rclone sync --fast-list "$src" "moto:$target");;
    curl-put) make_curl_config "$src" "$target" >"$WORK/curl.cfg"
              cmd=(curl -s -f -H 'Expect:' --parallel --parallel-max 16 -K "$WORK/curl.cfg");;
  esac
  prewarm "$src"
  a=$(settle_log) c0=$(moto_ticks)
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%U %S %M %x' -o "$TF" "${cmd[@]}" >"$log" 2>&1 || true
  t1=$EPOCHREALTIME
  b=$(settle_log) c1=$(moto_ticks)
  read -r U S M X < <(tail -n 1 "$TF")
  [[ $X =~ ^[0-9]+$ ]] || X=$(grep -o '[0-9]*$' "$TF" | tail -1)
  verdict=-
  ((X == 0)) || verdict="FAIL:exit=$X"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$name" "$phase" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b-a}')" "$U" "$S" "$M" \
    "$(awk -v t="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t/hz}')" \
    "$(count_requests "$a" "$b")" "$verdict" >>"$RAW"
  tail -n 1 "$RAW" | awk -F'\t' '{printf "#   %-10s %-10s %-7s wall %8.3fs  user %6.2f sys %6.2f  rss %7.1f MiB  moto %6.2fs  req %s  %s\n", $1, $2, $3, $4, $5, $6, $7/1024, $8, $9, $10}' >&2
}

# Every file of SRC as one PUT, for curl -K (no signature: moto takes it).
make_curl_config() { # src bucket/prefix
  (cd "$1" && find . -type f -printf '%P\n') | while IFS= read -r f; do
    printf 'upload-file = "%s/%s"\nurl = "%s/%s/%s"\noutput = /dev/null\n' "$1" "$f" "$ENDPOINT" "$2" "$f"
  done
}

# The last row's verdict: rclone check of source and bucket (sizes, MD5s
# against ETags, both ways), or a size check of the one big file.
verify_last() { # src bucket/prefix
  local v
  if [[ $(tail -n 1 "$RAW" | cut -f10) != - ]]; then return 0; fi
  if [[ $1 == "$BIG" ]]; then
    local want got
    want=$(stat -c %s "$BIG/big.bin")
    got=$(env -u AWS_CA_BUNDLE rclone lsf --fast-list --format s "moto:$2/big.bin" 2>/dev/null || true)
    [[ $got == "$want" ]] && v=ok || v="FAIL:size=${got:-none}"
  elif env -u AWS_CA_BUNDLE rclone check --fast-list --exclude '.treesync/**' "$1" "moto:$2" \
         >"$LOGS/check.log" 2>&1; then
    v=ok
  else
    v="FAIL:$(grep -o '[0-9]* differences found' "$LOGS/check.log" | head -1 | tr ' ' _)"
  fi
  set_last_verdict "$v"
}

COMMANDS=(treesync rclone)
((FASTLIST)) && COMMANDS+=(rclone-fl)
short() { case $1 in treesync) echo ts;; rclone) echo rc;; rclone-fl) echo rf;; curl-put) echo cu;; esac; }


scenario_initial() {
  local names=("${COMMANDS[@]}") r n b
  ((FLOOR)) && names+=(curl-put)
  for ((r = 0; r < TOTAL; r++)); do
    for n in "${names[@]}"; do
      b=$(short "$n")-init-$r; mkbucket "$b"
      run_cmd initial "$n" "$(phase_of "$r")" "$SRC" "$b/tree"
      if ((r == TOTAL - 1)) && [[ $n != curl-put ]]; then verify_last "$SRC" "$b/tree"; fi
    done
  done
}

scenario_no_change() {
  local r n b
  for n in "${COMMANDS[@]}"; do
    b=$(short "$n")-same; mkbucket "$b"
    run_cmd no-change "$n" first "$SRC" "$b/tree"
  done
  for ((r = 0; r < TOTAL; r++)); do
    for n in "${COMMANDS[@]}"; do
      run_cmd no-change "$n" "$(phase_of "$r")" "$SRC" "$(short "$n")-same/tree"
      if ((r == TOTAL - 1)); then verify_last "$SRC" "$(short "$n")-same/tree"; fi
    done
  done
}

scenario_churn() {
  local r n b c=$WORK/churn-src
  rm -rf "$c"; cp -a "$SRC" "$c"
  for n in "${COMMANDS[@]}"; do
    b=$(short "$n")-churn; mkbucket "$b"
    run_cmd churn "$n" first "$c" "$b/tree"
  done
  for ((r = 0; r < TOTAL; r++)); do
    python3 "$HARNESS/mutate.py" "$c" churn --seed $((100 + r)) >/dev/null
    for n in "${COMMANDS[@]}"; do
      run_cmd churn "$n" "$(phase_of "$r")" "$c" "$(short "$n")-churn/tree"
      if ((r == TOTAL - 1)); then verify_last "$c" "$(short "$n")-churn/tree"; fi
    done
  done
  rm -rf "$c"
}

scenario_memory() {
  local n b
  if [[ ! -f $WORK/big.ok ]] || (($(stat -c %s "$BIG/big.bin") != BIG_GIB << 30)); then
    rm -rf "$BIG"; mkdir -p "$BIG"
    head -c "$((BIG_GIB << 30))" /dev/urandom >"$BIG/big.bin"
    touch "$WORK/big.ok"
  fi
  for n in "${COMMANDS[@]}"; do
    [[ $n == rclone-fl ]] && continue                # one file: no listing to speak of
    # A store of its own for each command: moto holds what it got in memory.
    start_moto "memory.$n"
    b=$(short "$n")-big; mkbucket "$b"
    run_cmd memory "$n" run0 "$BIG" "$b/one"
    verify_last "$BIG" "$b/one"
    echo "#   moto peak RSS: $(moto_hwm_mib) MiB" >&2
  done
}

print_table() { # scenario
  python3 - "$RAW" "$1" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order, by = [], {}
for sc, name, phase, wall, u, s, m, moto, req, v in rows:
    if sc != sys.argv[2]:
        continue
    if name not in by:
        order.append(name); by[name] = {"w": [], "c": [], "m": [], "moto": [], "req": [], "v": []}
    b = by[name]
    b["v"].append(v)
    if phase.startswith("run"):
        b["w"].append(float(wall)); b["c"].append(float(u) + float(s))
        b["m"].append(float(m) / 1024); b["moto"].append(float(moto))
        b["req"].append([int(x) for x in req.split()])
med = lambda x: st.median(x) if x else float("nan")
ref = med(by["rclone"]["w"]) if "rclone" in by else None
print(f"{'scenario':<10} {'command':<10} {'wall_s':>8} {'min-max':>15} {'cpu_s':>7} {'rss_MiB':>8} "
      f"{'x_rclone':>8} {'moto_s':>7} {'LIST':>5} {'GET':>5} {'HEAD':>6} {'PUT':>6} {'POST':>5} {'DELETE':>6} {'non2xx':>6}  verify")
for n in order:
    b = by[n]
    w = med(b["w"])
    fails = [v for v in b["v"] if v.startswith("FAIL")]
    verdict = fails[0] if fails else b["v"][-1]
    ratio = f"{w / ref:8.2f}" if ref else f"{'-':>8}"
    spread = f"{min(b['w']):.3f}-{max(b['w']):.3f}" if b["w"] else "-"
    req = [round(med([r[i] for r in b["req"]])) for i in range(7)]
    print(f"{sys.argv[2]:<10} {n:<10} {w:8.3f} {spread:>15} {med(b['c']):7.2f} {med(b['m']):8.1f} "
          f"{ratio} {med(b['moto']):7.2f} " + " ".join(f"{x:>{k}}" for x, k in zip(req, (5, 5, 6, 6, 5, 6, 6)))
          + f"  {verdict}")
PY
}

echo "# remote.sh scale=$SCALE runs=$RUNS warmup=$WARMUP big=${BIG_GIB}GiB treesync=$BIN endpoint=$ENDPOINT work=$WORK" >&2
for s in "${SCENARIOS[@]}"; do
  if [[ $s == memory ]]; then
    title="memory (one ${BIG_GIB} GiB file)"
  else
    need_tree; start_moto "$s"; title="$s (small tree, scale $SCALE)"
  fi
  echo "# $s" >&2
  case $s in
    initial) scenario_initial;;
    no-change) scenario_no_change;;
    churn) scenario_churn;;
    memory) scenario_memory;;
  esac
  stop_moto
  echo
  echo "### $title"
  echo
  echo '```'
  print_table "$s"
  echo '```'
done
