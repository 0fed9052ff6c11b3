#!/usr/bin/env bash
# Remote replicas over SSH: treesync to an sftp:// replica against
# `rsync -a --delete` over ssh, both into the same sshd on this machine
# (started here on 127.0.0.1 with keys of its own, as root).
#
#   bench/sftp.sh [--scale F] [--runs N] [--warmup N] [--bin PATH] [SCENARIO...]
#     SCENARIO     initial | no-change | churn (default: all three)
#     --scale F    scale of the `small` tree (default 0.1: 10,000 files)
#     --runs N     timed runs per command (default 5)
#     --warmup N   untimed warm-up runs per command first (default 1)
#     --bin PATH   the treesync to time (default: cargo build --release here)
#     --port P     sshd's port (default 2722)
#     --keep       keep the data folder (default: deleted at the end)
#
# The commands run in turn (A B A B ...), on warm caches (the source is
# read before every run, untimed), each into a folder of its own:
#   initial    every run into a new, empty folder;
#   no-change  after an untimed first sync, the same tree again;
#   churn      before each round, `mutate.py churn` on the source
#              (untimed): both commands sync the same change.
# A row: median wall time, user+sys CPU of the command and its children
# (ssh included) and its peak RSS (GNU time), wall over rsync's, sshd's
# CPU during the run (sshd and its sftp or rsync child: the other end of
# the work), and `verify` after the last run: every regular file and
# folder of the source in the replica with the same size, content (SHA-1),
# permission bits and mtime to the second, and nothing else. Symbolic
# links are left out of the check: an sftp:// replica holds none.
#
# Needs /usr/sbin/sshd, ssh, ssh-keygen, rsync, GNU time, python3; root.
# Data goes to /tmp/treesync-bench-sftp (BENCH_SFTP_WORK).
# Not part of the tests: timings belong here, never in cargo test.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/../shared/bench}
SCALE=0.1 RUNS=5 WARMUP=1 BIN="" PORT=2722 KEEP=0
WORK=${BENCH_SFTP_WORK:-/tmp/treesync-bench-sftp}
SCENARIOS=()
die() { echo "sftp.sh: $*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --scale) SCALE=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --warmup) WARMUP=$2; shift 2;;
    --bin) BIN=$2; shift 2;;
    --port) PORT=$2; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    -*) die "unknown option $1";;
    *) SCENARIOS+=("$1"); shift;;
  esac
done
((${#SCENARIOS[@]})) || SCENARIOS=(initial no-change churn)
for s in "${SCENARIOS[@]}"; do
  case $s in initial|no-change|churn) ;; *) die "unknown scenario $s";; esac
done
for t in /usr/sbin/sshd ssh ssh-keygen rsync /usr/bin/time python3; do
  command -v "$t" >/dev/null || die "needs $t"
done
(($(id -u) == 0)) || die "needs root (sshd, and logging in as root)"
[[ -f $HARNESS/gen_tree.py ]] || die "no harness at $HARNESS"
if [[ -z $BIN ]]; then
  (cd "$ROOT" && cargo build --release --quiet)
  BIN=$ROOT/target/release/treesync
fi
[[ -x $BIN ]] || die "no treesync at $BIN"

mkdir -p "$WORK"
SRC=$WORK/src KEYS=$WORK/keys LOGS=$WORK/logs RAW=$WORK/raw.tsv TF=$WORK/time.out
# prewarm, need_tree, TOTAL and phase_of, set_last_verdict.
source "$ROOT/bench/remote-common.sh"
mkdir -p "$KEYS" "$LOGS" /run/sshd; : >"$RAW"
export XDG_STATE_HOME=$WORK/state
SSHD_PID=""
cleanup() {
  [[ -n $SSHD_PID ]] && { kill "$SSHD_PID" 2>/dev/null || true; wait "$SSHD_PID" 2>/dev/null || true; }
  ((KEEP)) || rm -rf "$WORK"
}
trap cleanup EXIT

for k in host client; do
  [[ -f $KEYS/$k ]] || ssh-keygen -q -t ed25519 -N '' -C bench -f "$KEYS/$k"
done
cp "$KEYS/client.pub" "$KEYS/authorized_keys"
cat >"$KEYS/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $KEYS/host
AuthorizedKeysFile $KEYS/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PidFile $KEYS/sshd.pid
Subsystem sftp internal-sftp
EOF
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$KEYS/host.pub")" >"$KEYS/known_hosts"
/usr/sbin/sshd -D -e -f "$KEYS/sshd_config" 2>"$LOGS/sshd.log" &
SSHD_PID=$!
for _ in $(seq 100); do
  grep -q "Server listening on 127.0.0.1 port $PORT" "$LOGS/sshd.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "Server listening" "$LOGS/sshd.log" || die "sshd did not start: $(cat "$LOGS/sshd.log")"
SSH="ssh -p $PORT -i $KEYS/client -o UserKnownHostsFile=$KEYS/known_hosts -o BatchMode=yes"

# CPU ticks of sshd and everything under it (the per-connection
# processes and their sftp or rsync children), including exited ones
# that were waited for.
sshd_ticks() {
  local total=0 p
  for p in $(ps -o pid= --ppid "$SSHD_PID" 2>/dev/null) "$SSHD_PID"; do
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

run_cmd() { # scenario name phase src dst
  local sc=$1 name=$2 phase=$3 src=$4 dst=$5 t0 t1 c0 c1 U S M X verdict
  local log=$LOGS/$sc.$name.$phase.$RANDOM.log
  local -a cmd
  case $name in
    treesync) cmd=("$BIN" --once --quiet --sftp-key "$KEYS/client" --sftp-known-hosts "$KEYS/known_hosts"
                   "$src" "sftp://root@127.0.0.1:$PORT/$dst");;
    rsync) cmd=(rsync -a --delete -e "$SSH" "$src/" "root@127.0.0.1:$dst/");;
  esac
  prewarm "$src"
  c0=$(sshd_ticks)
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%U %S %M %x' -o "$TF" "${cmd[@]}" >"$log" 2>&1 || true
  t1=$EPOCHREALTIME
  sleep 0.2 # the connection's processes end after the client's
  c1=$(sshd_ticks)
  read -r U S M X < <(tail -n 1 "$TF")
  [[ $X =~ ^[0-9]+$ ]] || X=$(grep -o '[0-9]*$' "$TF" | tail -1)
  verdict=-
  ((X == 0)) || verdict="FAIL:exit=$X"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$name" "$phase" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b-a}')" "$U" "$S" "$M" \
    "$(awk -v t="$((c1 > c0 ? c1 - c0 : 0))" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t/hz}')" \
    "$verdict" >>"$RAW"
  tail -n 1 "$RAW" | awk -F'\t' '{printf "#   %-10s %-9s %-7s wall %8.3fs  user %6.2f sys %6.2f  rss %7.1f MiB  sshd %6.2fs  %s\n", $1, $2, $3, $4, $5, $6, $7/1024, $8, $9}' >&2
}

# Regular files and folders: same set, sizes, SHA-1, permission bits,
# mtimes to the second. Prints ok or FAIL:reason.
verify() { # src dst
  python3 - "$1" "$2" <<'PY'
import hashlib, os, stat, sys
def walk(root):
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs[:] = [x for x in dirs if not (rel == "." and x == ".treesync")]
        for n in dirs + files:
            p = os.path.join(d, n); st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            r = os.path.normpath(os.path.join(rel, n))
            h = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h = hashlib.sha1(f.read()).hexdigest()
            out[r] = (stat.S_IFMT(st.st_mode), st.st_size if h else 0, h,
                      stat.S_IMODE(st.st_mode), int(st.st_mtime))
    return out
a, b = walk(sys.argv[1]), walk(sys.argv[2])
bad = sorted(set(a) ^ set(b))
if bad:
    print(f"FAIL:{len(bad)}_paths_differ({bad[0]})"); sys.exit()
diff = [k for k in a if a[k] != b[k]]
print(f"FAIL:{len(diff)}_differ({diff[0]})" if diff else "ok")
PY
}
verify_last() { # src dst
  [[ $(tail -n 1 "$RAW" | cut -f9) == - ]] || return 0
  local v; v=$(verify "$1" "$2")
  set_last_verdict "$v"
}

COMMANDS=(treesync rsync)

scenario_initial() {
  local r n d
  for ((r = 0; r < TOTAL; r++)); do
    for n in "${COMMANDS[@]}"; do
      d=$WORK/dst/$n-init; rm -rf "$d" "$XDG_STATE_HOME"; mkdir -p "$d"
      run_cmd initial "$n" "$(phase_of "$r")" "$SRC" "$d"
      ((r == TOTAL - 1)) && verify_last "$SRC" "$d"
    done
  done
}

scenario_no_change() {
  local r n
  for n in "${COMMANDS[@]}"; do
    rm -rf "$WORK/dst/$n-same"; mkdir -p "$WORK/dst/$n-same"
    run_cmd no-change "$n" first "$SRC" "$WORK/dst/$n-same"
  done
  for ((r = 0; r < TOTAL; r++)); do
    for n in "${COMMANDS[@]}"; do
      run_cmd no-change "$n" "$(phase_of "$r")" "$SRC" "$WORK/dst/$n-same"
      ((r == TOTAL - 1)) && verify_last "$SRC" "$WORK/dst/$n-same"
    done
  done
}

scenario_churn() {
  local r n c=$WORK/churn-src
  rm -rf "$c"; cp -a "$SRC" "$c"
  for n in "${COMMANDS[@]}"; do
    rm -rf "$WORK/dst/$n-churn"; mkdir -p "$WORK/dst/$n-churn"
    run_cmd churn "$n" first "$c" "$WORK/dst/$n-churn"
  done
  for ((r = 0; r < TOTAL; r++)); do
    python3 "$HARNESS/mutate.py" "$c" churn --seed $((100 + r)) >/dev/null
    for n in "${COMMANDS[@]}"; do
      run_cmd churn "$n" "$(phase_of "$r")" "$c" "$WORK/dst/$n-churn"
      ((r == TOTAL - 1)) && verify_last "$c" "$WORK/dst/$n-churn"
    done
  done
  rm -rf "$c"
}

print_table() { # scenario
  python3 - "$RAW" "$1" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order, by = [], {}
for sc, name, phase, wall, u, s, m, sshd, v in rows:
    if sc != sys.argv[2]:
        continue
    if name not in by:
        order.append(name); by[name] = {"w": [], "c": [], "m": [], "s": [], "v": []}
    b = by[name]; b["v"].append(v)
    if phase.startswith("run"):
        b["w"].append(float(wall)); b["c"].append(float(u) + float(s))
        b["m"].append(float(m) / 1024); b["s"].append(float(sshd))
med = lambda x: st.median(x) if x else float("nan")
ref = med(by["rsync"]["w"]) if "rsync" in by else None
print(f"{'scenario':<10} {'command':<9} {'wall_s':>8} {'min-max':>15} {'cpu_s':>7} {'rss_MiB':>8} {'x_rsync':>8} {'sshd_s':>7}  verify")
for n in order:
    b = by[n]; w = med(b["w"])
    fails = [v for v in b["v"] if v.startswith("FAIL")]
    verdict = fails[0] if fails else b["v"][-1]
    ratio = f"{w / ref:8.2f}" if ref else f"{'-':>8}"
    spread = f"{min(b['w']):.3f}-{max(b['w']):.3f}" if b["w"] else "-"
    print(f"{sys.argv[2]:<10} {n:<9} {w:8.3f} {spread:>15} {med(b['c']):7.2f} {med(b['m']):8.1f} {ratio} {med(b['s']):7.2f}  {verdict}")
PY
}

echo "# sftp.sh scale=$SCALE runs=$RUNS warmup=$WARMUP treesync=$BIN port=$PORT work=$WORK" >&2
need_tree
for s in "${SCENARIOS[@]}"; do
  echo "# $s" >&2
  case $s in
    initial) scenario_initial;;
    no-change) scenario_no_change;;
    churn) scenario_churn;;
  esac
  echo
  echo "### sftp $s (small tree, scale $SCALE)"
  echo
  echo '```'
  print_table "$s"
  echo '```'
done
