#!/usr/bin/env bash
# Runs the shared harness (../shared/bench/compare.sh, beside the project)
# over the scenarios of our speed targets and writes BENCHMARKS.md: the
# machine, then each scenario's table as compare.sh prints it, treesync
# beside rsync, rclone and the floors in the same call.
#
#   bench/run.sh [--scale F] [--runs N] [--quick] [SCENARIO...]
#     SCENARIO   KIND:SCENARIO (small:no-change, large:modify, ...); default: all targets
#     --scale F  tree scale (default 0.1: minutes, not hours; 1 = full scale)
#     --quick    rsync and the floors only (no rclone)
#     --out F    output file (default BENCHMARKS.md at the project root)
#
# Needs rsync, rclone, GNU time (apt-get install -y rsync rclone time).
# Not part of the tests: timings belong here, never in cargo test.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/../shared/bench}
SCALE=0.1 RUNS=3 QUICK=0 OUT=$ROOT/BENCHMARKS.md
SCENARIOS=()
while (($#)); do
  case $1 in
    --scale) SCALE=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --quick) QUICK=1; shift;;
    --out) OUT=$2; shift 2;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) SCENARIOS+=("$1"); shift;;
  esac
done
((${#SCENARIOS[@]})) || SCENARIOS=(small:initial small:no-change small:churn small:touch
  large:initial large:modify mixed:initial mixed:no-change mixed:churn
  small:no-change:checksum large:no-change:checksum small:rename-dir)
[[ -x $HARNESS/compare.sh ]] || { echo "run.sh: no harness at $HARNESS" >&2; exit 2; }

(cd "$ROOT" && cargo build --release --quiet)
T=$ROOT/target/release/treesync
LOG=$(mktemp -d)/treesync-bench.log

peers_for() { # kind scenario checksum
  local p
  case $2 in
    initial) p=rsync,cp;;
    no-change) p=rsync,stat; [[ $1 == large ]] || p+=,sha1;;
    *) p=rsync,stat;;
  esac
  ((QUICK)) || p+=,rclone
  [[ -n $3 ]] && p=rsync-c,rsync,stat
  echo "$p"
}

{
  echo "# Benchmarks"
  echo
  echo "Made by \`bench/run.sh --scale $SCALE --runs $RUNS\` on $(date -u +%Y-%m-%d)."
  echo "Each table is one \`compare.sh\` call: commands alternated run by run, warm caches,"
  echo "medians of $RUNS timed runs after one warm-up, the replica verified after each run."
  echo "\`x rsync\` is the median wall time over rsync's in the same call. The --checksum rows keep"
  echo "the replica's digest cache between runs (see run.sh): they time a second run, as the target asks."
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM,"
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r);"
  echo "rsync $(rsync --version | head -1 | awk '{print $3}'), $(rclone --version 2>/dev/null | head -1),"
  echo "treesync $(git -C "$ROOT" rev-parse --short HEAD)."
  echo
} >"$OUT"

for s in "${SCENARIOS[@]}"; do
  IFS=: read -r kind scenario flag <<<"$s"
  # The harness hands over replicas it reset with cp -a or rsync: they
  # have no state folder of ours, hence --adopt.
  cmd="$T --once --quiet --adopt --log-file $LOG {src} {dst}"; name=treesync
  if [[ $flag == checksum ]]; then
    # The harness resets the replica with rsync --delete, which would
    # remove the digest cache in {dst}/.treesync: it is moved aside after
    # each run and back before the next (the moves are timed with us), so
    # the warm-up is the first run and every timed run a later one. The
    # root's mtime, which the moves change, is set back.
    name=treesync-c
    keep="{dst}/../.treesync-kept-$kind"
    cmd="{ [ ! -d $keep ] || mv $keep {dst}/.treesync; }; $T --once --quiet --adopt --checksum --log-file $LOG {src} {dst}; rc=\$?; mv {dst}/.treesync $keep; touch -m -r {src} {dst}; exit \$rc"
    rm -rf "${BENCH_WORK:-${TMPDIR:-/tmp}/treesync-bench}"/*/.treesync-kept-"$kind"
  fi
  printf '## %s\n\n```\n' "$kind/$scenario${flag:+ ($flag)} (scale $SCALE)" >>"$OUT"
  "$HARNESS/compare.sh" --scale "$SCALE" --runs "$RUNS" --peers "$(peers_for "$kind" "$scenario" "$flag")" \
    --cmd "$name=$cmd" "$kind" "$scenario" \
    2>/dev/null | tee -a "$OUT"
  printf '```\n\n' >>"$OUT"
done
echo "wrote $OUT" >&2
