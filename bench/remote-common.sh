# Shared by bench/remote.sh and bench/sftp.sh (sourced): the source tree,
# warm-up phases and the raw table of runs. Uses the caller's WORK, SRC,
# HARNESS, SCALE, WARMUP, RUNS and RAW.

# Reads every file of a tree once, so that each run starts on warm caches.
prewarm() { find "$1" -type f -print0 | xargs -0 -r cat >/dev/null; }

# The `small` tree at SCALE in SRC, generated once per data folder.
need_tree() {
  [[ -f $WORK/src.ok ]] && return 0
  rm -rf "$SRC"
  python3 "$HARNESS/gen_tree.py" small "$SRC" --scale "$SCALE"
  touch "$WORK/src.ok"
}

TOTAL=$((WARMUP + RUNS))
# The name of round R: the first WARMUP are untimed.
phase_of() { (($1 < WARMUP)) && echo warmup || echo "run$1"; }

# Puts VERDICT in the last field of RAW's last row.
set_last_verdict() { # verdict
  python3 - "$RAW" "$1" <<'PY'
import sys
rows = open(sys.argv[1]).read().splitlines()
f = rows[-1].split("\t"); f[-1] = sys.argv[2]; rows[-1] = "\t".join(f)
open(sys.argv[1], "w").write("\n".join(rows) + "\n")
PY
}
