#!/usr/bin/env bash
# rename_targets.sh - time treesync on rename scenarios that compare.sh cannot set up,
# beside rsync and a no-change treesync tick on the same tree, in one call per scenario.
#
# usage: rename_targets.sh [options] TREESYNC_BIN [SCENARIO...]
#   SCENARIO (default: both, one table each)
#     top-rename   small tree (100k files): the source is the base tree under one top-level
#                  folder `top-renamed/`, the replica holds the same under `top/`
#     file-rename  large tree (6 x 512 MiB): `large-0.bin` renamed `large-0-renamed.bin` in
#                  the source, the replica holds the base tree
#   Commands, alternated run by run (A B C A B C ...), 1 warm-up + 3 timed runs each:
#     treesync     TREESYNC_BIN TS_ARGS --log-file LOG SRC DST   on the renamed pair
#     treesync-nc  the same on a no-change pair: replica = a copy of SRC (the target's yardstick)
#     rsync        rsync -a --delete SRC/ DST/                  on the renamed pair
#   Target printed under each table: treesync wall / treesync-nc wall <= 2.
# options:
#   --ts-args 'ARGS'  treesync options (default: --once --quiet --adopt --max-delete 100%;
#                     --max-delete 100%: a binary without rename detection deletes the whole
#                     old top folder in top-rename, which the default 50% guard withholds, exit 4)
#   --cmd 'NAME=TEMPLATE'     extra command on the renamed pair ({src} {dst} {log}); repeatable
#   --nc-cmd 'NAME=TEMPLATE'  extra command on the no-change pair; repeatable
#   --peers LIST      rsync (renamed pair), rsync-nc (no-change pair), stat (floor: find over
#                     the no-change pair, not verified); comma list or "none"; default rsync
#   --runs N --warmup N       timed / untimed runs per command (default 3 / 1)
#   --scale F --seed N        base trees (default 1 / 1); generated with gen_tree.py if missing,
#                             in compare.sh's layout ($WORK/KIND-sF-seedN/base), so shared with it
#   --settle S        sleep S s (untimed) before each run's pre-read: ext4 without a journal
#                     creates files slowly for ~60 s after mass deletes (BASELINE.md); default 0
#   --no-prewarm --verify-every --strict --work DIR --tsv FILE   as in compare.sh
#   --clean           delete this script's trees ($WORK/rename-sF-seedN) and exit
# Setup, once per scale/seed (kept for later calls): the SOURCE is a hard-link copy (cp -al)
# of the base tree (nothing writes it); the replicas are real copies (cp -a). Replica resets
# (untimed) before each run: renamed pair: the synced replica is renamed back (mv, no mass
# delete or create), its .treesync/ removed, and checked against a manifest of the
# pre-rename state, else a full reset (cp -a into a fresh folder, the old one moved to a trash
# folder purged at exit, as compare.sh does); no-change pair: rsync -a --delete SRC/ DST/.
# Then sync, then (warm mode) both trees of the pair are read once. After each run the replica
# is checked with treecheck.py (content hashed after the last run of each command).
set -euo pipefail
export LC_ALL=C
HB=${BENCH_HARNESS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/bench}
die() { echo "rename_targets.sh: $*" >&2; exit 2; }

SCALE=1 SEED=1 RUNS=3 WARMUP=1 PREWARM=1 VERIFY_EVERY=0 STRICT="" PEERS=rsync TSV="" SETTLE=0 CLEAN=0
TS_ARGS="--once --quiet --adopt --max-delete 100%"
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/treesync-bench}
XRN=() XNC=() POS=()
while (($#)); do
  case $1 in
    --ts-args) TS_ARGS=$2; shift 2;;
    --cmd) [[ $2 == *=* ]] || die "--cmd wants NAME=TEMPLATE"; XRN+=("$2"); shift 2;;
    --nc-cmd) [[ $2 == *=* ]] || die "--nc-cmd wants NAME=TEMPLATE"; XNC+=("$2"); shift 2;;
    --peers) PEERS=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --warmup) WARMUP=$2; shift 2;;
    --scale) SCALE=$2; shift 2;;
    --seed) SEED=$2; shift 2;;
    --settle) SETTLE=$2; shift 2;;
    --no-prewarm) PREWARM=0; shift;;
    --verify-every) VERIFY_EVERY=1; shift;;
    --strict) STRICT=--strict; shift;;
    --work) WORK=$2; shift 2;;
    --tsv) TSV=$2; shift 2;;
    --clean) CLEAN=1; shift;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    -*) die "unknown option $1";;
    *) POS+=("$1"); shift;;
  esac
done
SCALE=$(awk -v s="$SCALE" 'BEGIN{printf "%g", s}')
R=$WORK/rename-s$SCALE-seed$SEED
if ((CLEAN)); then echo "removing $R ($(du -sh "$R" 2>/dev/null | cut -f1))" >&2; rm -rf "$R"; exit 0; fi
((${#POS[@]} >= 1)) || die "usage: rename_targets.sh [options] TREESYNC_BIN [SCENARIO...] (see --help)"
BIN=$(realpath "${POS[0]}"); [[ -x $BIN ]] || die "not executable: ${POS[0]}"
SCENARIOS=("${POS[@]:1}"); ((${#SCENARIOS[@]})) || SCENARIOS=(top-rename file-rename)
for s in "${SCENARIOS[@]}"; do case $s in top-rename|file-rename) ;; *) die "unknown scenario $s";; esac; done
for f in gen_tree.py treecheck.py; do [[ -f $HB/$f ]] || die "no $HB/$f (set BENCH_HARNESS)"; done

# Commands: NAME, PAIR (rn = renamed pair, nc = no-change pair), TEMPLATE.
NAMES=() PAIRS=() TEMPLATES=()
add() { NAMES+=("$1"); PAIRS+=("$2"); TEMPLATES+=("$3"); }
TS="$(printf %q "$BIN") $TS_ARGS --log-file {log} {src} {dst}"
add treesync rn "$TS"
add treesync-nc nc "$TS"
if [[ $PEERS != none ]]; then
  IFS=, read -r -a PL <<<"$PEERS"
  for p in "${PL[@]}"; do
    case $p in
      rsync) add rsync rn "rsync -a --delete {src}/ {dst}/";;
      rsync-nc) add rsync-nc nc "rsync -a --delete {src}/ {dst}/";;
      stat) add stat nc "find {src} {dst} -printf '%s %T@\n' >/dev/null";;
      *) die "unknown peer $p (known: rsync rsync-nc stat)";;
    esac
  done
fi
for c in "${XRN[@]}"; do add "${c%%=*}" rn "${c#*=}"; done
for c in "${XNC[@]}"; do add "${c%%=*}" nc "${c#*=}"; done
is_floor() { [[ $1 == stat ]]; }

T_SRC_ROOT=@1750000000.123456789   # the source root's mtime after the rename (a later time)
RAW=$(mktemp); TF=$(mktemp); TRASH=""
trap 'rm -f "$RAW" "$TF"; [[ -z $TRASH ]] || rm -rf "$TRASH"' EXIT

base_tree() {   # KIND -> path of compare.sh's base tree, generated if missing
  local d=$WORK/$1-s$SCALE-seed$SEED
  mkdir -p "$d"
  if [[ ! -f $d/base.ok ]]; then
    rm -rf "$d/base"; python3 "$HB/gen_tree.py" "$1" "$d/base" --scale "$SCALE" --seed "$SEED" >&2
    touch "$d/base.ok"
  fi
  echo "$d/base"
}

# Per scenario: make_src DIR, make_pre DIR (the replica before the sync), post_to_pre (the
# synced replica DST renamed back to the pre-rename state; fails if it is not as expected).
make_src() {
  case $SCEN in
    top-rename) mkdir "$1"; cp -al "$BASE" "$1/top-renamed";;
    file-rename) cp -al "$BASE" "$1"; mv "$1/large-0.bin" "$1/large-0-renamed.bin";;
  esac
  touch -m -d "$T_SRC_ROOT" "$1"
}
make_pre() {
  case $SCEN in
    top-rename) mkdir "$1"; cp -a "$BASE" "$1/top"; touch -m -r "$BASE" "$1";;
    file-rename) cp -a "$BASE" "$1";;
  esac
}
post_to_pre() {
  rm -rf "$DST/.treesync"
  case $SCEN in
    top-rename) [[ -d $DST/top-renamed && ! -e $DST/top ]] || return 1
                mv "$DST/top-renamed" "$DST/top"; touch -m -r "$BASE" "$DST/top";;
    file-rename) [[ -f $DST/large-0-renamed.bin && ! -e $DST/large-0.bin ]] || return 1
                 mv "$DST/large-0-renamed.bin" "$DST/large-0.bin";;
  esac
  touch -m -r "$BASE" "$DST"
}
to_trash() {   # move a replica aside (deleting 100k files makes the next creates slow)
  [[ -e $1 ]] || return 0
  if (($(find "$1" | head -5000 | wc -l) < 5000)); then rm -rf "$1"; return 0; fi
  mkdir -p "$TRASH"; mv "$1" "$TRASH/$(basename "$1").$RANDOM$RANDOM"
}
check() { python3 "$HB/treecheck.py" check "$@" $STRICT 2>/dev/null || true; }
full_reset_rn() { to_trash "$DST"; make_pre "$DST"; RN=pre; }
full_reset_nc() { to_trash "$DSTNC"; cp -a "$SRC" "$DSTNC"; NC=ok; }
reset_pair() {   # untimed: put the pair's replica in its starting state
  if [[ $1 == rn ]]; then
    if [[ $RN == post ]] && post_to_pre && [[ $(check "$PREMAN" "$DST") == ok ]]; then RN=pre; fi
    [[ $RN == pre ]] || { echo "#   full reset of $DST" >&2; full_reset_rn; }
  else
    if [[ $NC == ok ]]; then rsync -a --delete "$SRC/" "$DSTNC/"; else echo "#   full reset of $DSTNC" >&2; full_reset_nc; fi
  fi
  sync
  ((SETTLE == 0)) || sleep "$SETTLE"
  if ((PREWARM)); then
    find "$SRC" "$(pair_dst "$1")" -type f -print0 | xargs -0 -r cat >/dev/null
  fi
}
pair_dst() { [[ $1 == rn ]] && echo "$DST" || echo "$DSTNC"; }

run_scenario() {
  SCEN=$1
  case $SCEN in top-rename) KIND=small;; file-rename) KIND=large;; esac
  BASE=$(base_tree "$KIND")
  S=$R/$SCEN; mkdir -p "$S"
  SRC=$S/src DST=$S/dst DSTNC=$S/dst-nc MAN=$S/manifest-src.pkl PREMAN=$S/manifest-pre.pkl
  LOGS=$S/logs TRASH=$S/trash
  rm -rf "$LOGS" "$TRASH"; mkdir -p "$LOGS"; : >"$RAW"
  local t_start=$SECONDS
  echo "# $KIND/$SCEN scale=$SCALE seed=$SEED runs=$RUNS warmup=$WARMUP caches=$( ((PREWARM)) && echo warm || echo warm-no-prewarm) settle=${SETTLE}s work=$S" >&2
  echo "# treesync: $BIN $TS_ARGS" >&2
  # Setup (untimed, once): source, its manifest, replicas, pre-rename manifest.
  if [[ ! -f $S/src.ok || $BASE.ok -nt $S/src.ok ]]; then
    echo "#   setup: source (hard-link copy of $BASE)" >&2
    rm -rf "$SRC" "$MAN" "$PREMAN"; make_src "$SRC"; touch "$S/src.ok"
  fi
  [[ -f $MAN && $MAN -nt $S/src.ok ]] || python3 "$HB/treecheck.py" manifest "$SRC" "$MAN" >/dev/null
  RN=unknown NC=unknown
  if [[ ! -f $PREMAN || ! $PREMAN -nt $S/src.ok ]]; then
    echo "#   setup: replica (cp -a) and its manifest" >&2
    full_reset_rn; python3 "$HB/treecheck.py" manifest "$DST" "$PREMAN" >/dev/null
  elif [[ -d $DST ]]; then   # a replica left by an earlier call: reuse it if it is intact
    rm -rf "$DST/.treesync"
    [[ $(check "$PREMAN" "$DST" --content) == ok ]] && RN=pre
    [[ $RN == pre ]] || { post_to_pre && [[ $(check "$PREMAN" "$DST" --content) == ok ]] && RN=pre; } || true
  fi
  if [[ -d $DSTNC ]]; then
    rsync -a --delete "$SRC/" "$DSTNC/"
    [[ $(check "$MAN" "$DSTNC" --content) == ok ]] && NC=ok || true
  fi
  [[ $NC == ok ]] || { echo "#   setup: no-change replica (cp -a of the source)" >&2; full_reset_nc; }
  echo "#   setup done in $((SECONDS - t_start)) s" >&2

  local qsrc qrn qnc TOTAL=$((WARMUP + RUNS)) r i name pair cmd log t0 t1 U S_ M X verdict content phase wall
  qsrc=$(printf %q "$SRC") qrn=$(printf %q "$DST") qnc=$(printf %q "$DSTNC")
  for ((r = 0; r < TOTAL; r++)); do
    for i in "${!NAMES[@]}"; do
      name=${NAMES[i]} pair=${PAIRS[i]}
      reset_pair "$pair"
      log=$LOGS/$name.treesync.log; rm -f "$log"
      cmd=${TEMPLATES[i]//\{src\}/$qsrc}
      if [[ $pair == rn ]]; then cmd=${cmd//\{dst\}/$qrn}; else cmd=${cmd//\{dst\}/$qnc}; fi
      cmd=${cmd//\{log\}/$(printf %q "$log")}
      t0=$EPOCHREALTIME
      /usr/bin/time -f '%U %S %M %x' -o "$TF" bash -c "$cmd" >"$LOGS/$name.$r.out" 2>&1 || true
      t1=$EPOCHREALTIME
      read -r U S_ M X < <(tail -n 1 "$TF")
      [[ $X =~ ^[0-9]+$ ]] || X=$(grep -o '[0-9]*$' "$TF" | tail -1)
      verdict=-
      if ! is_floor "$name"; then
        if ((X != 0)); then verdict="FAIL:exit=$X"
        else
          content=""; if ((VERIFY_EVERY)) || ((r == TOTAL - 1)); then content=--content; fi
          verdict=$(python3 "$HB/treecheck.py" check "$MAN" "$(pair_dst "$pair")" $content $STRICT 2>>"$LOGS/$name.$r.out" || true)
        fi
        if [[ $pair == rn ]]; then
          [[ $verdict == ok* ]] && RN=post || RN=unknown
        else
          [[ $verdict == ok* ]] || NC=unknown
        fi
      fi
      phase=$( ((r < WARMUP)) && echo warmup || echo run)
      wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b-a}')
      printf '%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$KIND" "$SCEN" "$name" "$SCALE" \
        "$r" "$phase" "$wall" "$U" "$S_" "$M" "$verdict" | tee -a "$RAW" ${TSV:+"$TSV"} |
        awk -F'\t' '{printf "#   %-22s %-12s run %s %-6s wall %8.3fs  user %6.2f sys %6.2f  rss %7.1f MiB  %s\n", $1, $2, $4, $5, $6, $7, $8, $9/1024, $10}' >&2
    done
  done
  # leave the renamed pair's replica in its pre-rename state for the next call
  [[ $RN == post ]] && post_to_pre && [[ $(check "$PREMAN" "$DST") == ok ]] || true
  python3 - "$RAW" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
order, by = [], {}
for sc, name, scale, r, phase, wall, u, s, m, v in rows:
    if name not in by:
        order.append(name); by[name] = {"w": [], "c": [], "m": [], "v": [], "sc": sc}
    b = by[name]
    b["v"].append(v)
    if phase == "run":
        b["w"].append(float(wall)); b["c"].append(float(u) + float(s)); b["m"].append(float(m) / 1024)
med = lambda x: st.median(x) if x else float("nan")
ref = lambda n: med(by[n]["w"]) if n in by else None
rs, nc = ref("rsync"), ref("treesync-nc")
print(f"{'scenario':<18} {'command':<12} {'wall_s':>9} {'min-max':>17} {'cpu_s':>8} {'rss_MiB':>8} {'x_rsync':>8} {'x_nc':>7}  verify")
for n in order:
    b = by[n]
    w = med(b["w"])
    fails = [v for v in b["v"] if v.startswith("FAIL")]
    warns = [v for v in b["v"] if v.startswith("ok~")]
    verdict = fails[0] if fails else (warns[-1] if warns else b["v"][-1])
    if verdict == "-": verdict = "(floor, not verified)"
    xr = f"{w / rs:8.2f}" if rs else f"{'-':>8}"
    xn = f"{w / nc:7.2f}" if nc else f"{'-':>7}"
    spread = f"{min(b['w']):.3f}-{max(b['w']):.3f}" if b["w"] else "-"
    print(f"{b['sc']:<18} {n:<12} {w:9.3f} {spread:>17} {med(b['c']):8.2f} {med(b['m']):8.1f} {xr} {xn}  {verdict}")
if "treesync" in by and nc:
    x = med(by["treesync"]["w"]) / nc
    ok = not any(v.startswith("FAIL") for v in by["treesync"]["v"] + by["treesync-nc"]["v"])
    print(f"target {by['treesync']['sc']}: treesync / treesync-nc = {x:.2f} (goal <= 2.00): "
          + ("met" if x <= 2 and ok else "MISSED" if ok else "invalid (a run FAILed)"))
PY
  [[ -z $TRASH || ! -e $TRASH ]] || { echo "#   purging $TRASH" >&2; rm -rf "$TRASH"; }
  echo "# $KIND/$SCEN done in $((SECONDS - t_start)) s; $S holds $(du -sh "$BASE" "$S" | sed -n 2p | cut -f1) beside the base tree (src: hard links to it)" >&2
}

for s in "${SCENARIOS[@]}"; do run_scenario "$s"; done
