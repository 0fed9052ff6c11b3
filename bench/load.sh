#!/usr/bin/env bash
# Load cases of the safety targets: very many files, a very wide folder, very
# deep trees (one deeper than PATH_MAX) and one very large file. Each case is
# built under a work folder, synced once with the release binary under GNU
# time (wall time, peak RSS), checked against its source, then synced again:
# the second run must log nothing but its `tick`.
#
#   bench/load.sh [--work DIR] [--keep] [--files N] [--huge-gib G] [CASE...]
#     CASE          wide | deep | million | huge (default: all four, in that order);
#                   deep: 200 levels, then 300 and 600 levels of 20-byte names
#                   (6,300 and 12,600 bytes, past PATH_MAX)
#     --work DIR    where trees are built (default /tmp/treesync-load)
#     --keep        keep each case's trees (default: removed once the case is done)
#     --files N     file count of `million` (default 1000000)
#     --huge-gib G  size of the `huge` file in GiB (default 8)
#     --out F       results table, appended (default WORK/results.md)
#
# Needs python3, GNU time (/usr/bin/time), rsync (reference figure), cmp.
# Disk: `million` ~8 GB and 2M inodes (both trees), `huge` 2 x G GiB.
# Prints one markdown row per measurement; figures are wall time and peak RSS
# of the whole process, with the 1-minute load average just before the run;
# after each initial sync, the time until its first file was in place.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${BENCH_HARNESS:-$ROOT/../shared/bench}
WORK=/tmp/treesync-load KEEP=0 FILES=1000000 HUGE_GIB=8 OUT=
CASES=()
while (($#)); do
  case $1 in
    --work) WORK=$2; shift 2;;
    --keep) KEEP=1; shift;;
    --files) FILES=$2; shift 2;;
    --huge-gib) HUGE_GIB=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    wide|deep|million|huge) CASES+=("$1"); shift;;
    *) echo "load.sh: unknown argument $1" >&2; exit 2;;
  esac
done
((${#CASES[@]})) || CASES=(wide deep million huge)
OUT=${OUT:-$WORK/results.md}
mkdir -p "$WORK"
df -h "$WORK" | sed 's/^/# /'
(cd "$ROOT" && cargo build --release --quiet)
# A private copy: a rebuild in the project during the run changes nothing here.
T=$WORK/treesync
cp "$ROOT/target/release/treesync" "$T"
echo "# binary: $(sha1sum "$T" | cut -c1-12), built from $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src stages || echo ' + uncommitted changes')"
TOOL=$WORK/loadtool.py
FAILS=0

cat >"$TOOL" <<'PY'
"""Builders and checks for bench/load.sh; every walk goes through directory
file descriptors, so trees deeper than PATH_MAX work."""
import hashlib, json, os, random, stat, sys

def build_many(dest, n, per_dir):
    """n small files (0..1023 bytes, random content), per_dir to a folder."""
    rnd = random.Random(1)
    pool = rnd.randbytes(1 << 20)
    os.mkdir(dest)
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    made, d = 0, 0
    while made < n:
        name = "d%05d" % d
        os.mkdir(name, dir_fd=root)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
        for i in range(min(per_dir, n - made)):
            size = (made * 7919) % 1024
            off = (made * 104729) % (len(pool) - 1024)
            f = os.open("f%05d.dat" % i, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
            os.write(f, pool[off:off + size])
            os.close(f)
            made += 1
        os.close(fd)
        d += 1
    os.close(root)

def build_deep(dest, levels, name_len):
    """levels nested folders with names of name_len bytes; each holds a small
    file naming its depth. Built relative to descriptors only."""
    os.mkdir(dest)
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    for lvl in range(levels):
        f = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(f, b"level %d\n" % lvl)
        os.close(f)
        name = ("L%04d" % lvl).ljust(name_len, "x")
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    f = os.open("leaf", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
    os.write(f, b"leaf at depth %d\n" % levels)
    os.close(f)
    os.close(fd)

def build_big(path, mib):
    """mib MiB of random data: a 64 MiB random block, each copy stamped with
    its index so that misplaced blocks are caught."""
    block = bytearray(random.Random(2).randbytes(64 << 20))
    with open(path, "wb") as f:
        done = 0
        while done < mib:
            take = min(64, mib - done)
            block[:8] = (done // 64).to_bytes(8, "little")
            f.write(memoryview(block)[: take << 20])
            done += take

def poke(path, mib_at, mib_len):
    """Overwrite mib_len MiB at MiB offset mib_at with new random data
    (same size, new mtime)."""
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, os.urandom(mib_len << 20), mib_at << 20)
    os.close(fd)
    os.utime(path)

def _entries(fd, top):
    out = {}
    for e in os.scandir(fd):
        if top and e.name == ".treesync":
            continue
        out[e.name] = os.stat(e.name, dir_fd=fd, follow_symlinks=False)
    return out

def _digest(fd, name):
    h = hashlib.sha1()
    f = os.open(name, os.O_RDONLY, dir_fd=fd)
    while True:
        b = os.read(f, 1 << 20)
        if not b:
            break
        h.update(b)
    os.close(f)
    return h.digest()

def fdcompare(src, dst):
    """Compare two trees through descriptors: names, types, sizes, mtimes
    (ns), permission bits, link targets and file contents."""
    fails, counts = [], {"dirs": 0, "files": 0, "depth": 0}
    stack = [(os.open(src, os.O_RDONLY | os.O_DIRECTORY),
              os.open(dst, os.O_RDONLY | os.O_DIRECTORY), "", 0)]
    while stack:
        sfd, dfd, rel, depth = stack.pop()
        counts["dirs"] += 1
        counts["depth"] = max(counts["depth"], depth)
        se, de = _entries(sfd, rel == ""), _entries(dfd, rel == "")
        for name in sorted(set(se) ^ set(de)):
            fails.append("%s: only in %s" % (rel + name, "source" if name in se else "replica"))
        for name in sorted(set(se) & set(de)):
            s, d, p = se[name], de[name], rel + name
            if stat.S_IFMT(s.st_mode) != stat.S_IFMT(d.st_mode):
                fails.append(p + ": type"); continue
            if stat.S_IMODE(s.st_mode) != stat.S_IMODE(d.st_mode):
                fails.append(p + ": mode")
            if stat.S_ISDIR(s.st_mode):
                stack.append((os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=sfd),
                              os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd),
                              p + "/", depth + 1))
            elif stat.S_ISLNK(s.st_mode):
                if os.readlink(name, dir_fd=sfd) != os.readlink(name, dir_fd=dfd):
                    fails.append(p + ": link target")
            elif stat.S_ISREG(s.st_mode):
                counts["files"] += 1
                if s.st_size != d.st_size:
                    fails.append(p + ": size")
                elif s.st_mtime_ns != d.st_mtime_ns:
                    fails.append(p + ": mtime")
                elif _digest(sfd, name) != _digest(dfd, name):
                    fails.append(p + ": content")
        os.close(sfd); os.close(dfd)
    if fails:
        print("FAIL: %d differences, first: %s" % (len(fails), "; ".join(fails[:5])))
        return 1
    print("ok (%(dirs)d dirs, %(files)d files, depth %(depth)d)" % counts)
    return 0

def only_ticks(log):
    """The run whose JSON log is `log` must have logged only its tick."""
    other = []
    with open(log) as f:
        for line in f:
            msg = json.loads(line).get("msg")
            if msg != "tick":
                other.append(msg)
    if other:
        print("FAIL: %d entries besides tick (%s)" % (len(other), ", ".join(sorted(set(other)))))
        return 1
    print("ok (tick only)")
    return 0

if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "many": build_many(a[0], int(a[1]), int(a[2]))
    elif cmd == "deep": build_deep(a[0], int(a[1]), int(a[2]))
    elif cmd == "big": build_big(a[0], int(a[1]))
    elif cmd == "poke": poke(a[0], int(a[1]), int(a[2]))
    elif cmd == "fdcompare": sys.exit(fdcompare(a[0], a[1]))
    elif cmd == "only-ticks": sys.exit(only_ticks(a[0]))
    else: sys.exit("unknown command " + cmd)
PY

[[ -s $OUT ]] || {
  echo "| case | step | command | time | peak RSS | exit | check | load (1 min) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
} >>"$OUT"

load1() { cut -d' ' -f1 /proc/loadavg; }

# measure CASE STEP CHECKCMD... -- CMD...: runs CMD under GNU time, then
# CHECKCMD (its last output line is the check verdict); appends a row.
measure() {
  local case=$1 step=$2; shift 2
  local check=() cmd=()
  while [[ $1 != -- ]]; do check+=("$1"); shift; done; shift
  cmd=("$@")
  local tf=$WORK/time.txt load rc=0 verdict crc=0
  load=$(load1)
  /usr/bin/time -f '%e s %M KB' -o "$tf" "${cmd[@]}" >"$WORK/cmd.out" 2>&1 || rc=$?
  local fig; fig=$(tail -n1 "$tf")
  local secs=${fig%% s *} kb=${fig##* s }; kb=${kb% KB}
  if ((${#check[@]})); then
    verdict=$("${check[@]}" 2>&1 | tail -n1) || crc=$?
    ((crc == 0)) || verdict="FAIL: ${verdict}"
  else
    verdict="-"
  fi
  [[ $verdict == FAIL* || $rc != 0 ]] && FAILS=$((FAILS + 1))
  local shown="${cmd[*]}"; shown=${shown//$T/treesync}; shown=${shown//$WORK/\$W}
  local row
  row=$(printf '| %s | %s | `%s` | %s s | %s MiB | %s | %s | %s |' \
    "$case" "$step" "$shown" "$secs" "$(awk "BEGIN{printf \"%.1f\", $kb/1024}")" "$rc" "${verdict//|/\\|}" "$load")
  echo "$row" | tee -a "$OUT"
  ((rc == 0)) || { echo "# output of the failed command:"; tail -n 20 "$WORK/cmd.out" | sed 's/^/#   /'; }
}

# first_write CASE LOG T0: a row with the time from T0 (seconds since the
# epoch, taken just before the sync started) to the first file logged as
# copied in LOG or its rotated parts (JSON lines; an entry is logged once
# its file is in place).
first_write() {
  local secs
  secs=$(python3 - "$2" "$3" <<'PY'
import datetime, json, os, sys
log, t0 = sys.argv[1], float(sys.argv[2])
# Oldest first: LOG.5 ... LOG.1, then LOG.
parts = [p for p in ["%s.%d" % (log, n) for n in range(5, 0, -1)] + [log] if os.path.exists(p)]
def first_copy():
    for part in parts:
        for line in open(part):
            e = json.loads(line)
            if e.get("msg") == "copy":
                ts = datetime.datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
                return ts.replace(tzinfo=datetime.timezone.utc).timestamp() - t0
print("none" if (t := first_copy()) is None else "%.2f" % t)
PY
)
  printf '| %s | first file in place | - | %s s | - | - | - | - |\n' "$1" "$secs" | tee -a "$OUT"
}

# sync_case CASE SRC DST CHECK...: first sync + check, then the no-change sync.
sync_case() {
  local case=$1 src=$2 dst=$3 t0; shift 3
  t0=$EPOCHREALTIME
  measure "$case" initial "$@" -- "$T" --once -q --log-format json --log-file "$WORK/$case-1.log" "$src" "$dst"
  first_write "$case" "$WORK/$case-1.log" "$t0"
  measure "$case" no-change python3 "$TOOL" only-ticks "$WORK/$case-2.log" -- \
    "$T" --once -q --log-format json --log-file "$WORK/$case-2.log" "$src" "$dst"
}

treecheck() { # SRC DST
  python3 "$SHARED/treecheck.py" manifest "$1" "$WORK/manifest.pkl" >/dev/null &&
    python3 "$SHARED/treecheck.py" check "$WORK/manifest.pkl" "$2"
}

same_file() { cmp "$1" "$2" && echo "ok (cmp: identical, $(stat -c %s "$2") bytes)"; }

fresh() { rm -rf "$WORK/$1"; mkdir -p "$WORK/$1"; rm -f "$WORK/$1"-*.log; }
done_with() { ((KEEP)) || rm -rf "$WORK/$1"; }

for c in "${CASES[@]}"; do
  echo "# case $c ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
  fresh "$c"; W=$WORK/$c
  case $c in
    wide)
      python3 - "$W/src" <<'PY'
import os, sys
os.makedirs(sys.argv[1] + "/one")
for i in range(10000):
    with open("%s/one/file-%05d.txt" % (sys.argv[1], i), "wb") as f:
        f.write(b"x" * (i % 512))
PY
      sync_case wide "$W/src" "$W/dst" treecheck "$W/src" "$W/dst"
      ;;
    deep)
      python3 "$TOOL" deep "$W/src200" 200 8
      sync_case deep-200 "$W/src200" "$W/dst200" treecheck "$W/src200" "$W/dst200"
      python3 "$TOOL" deep "$W/src300" 300 20
      sync_case deep-300x20 "$W/src300" "$W/dst300" python3 "$TOOL" fdcompare "$W/src300" "$W/dst300"
      # Twice as deep again: how the cost grows with depth past PATH_MAX.
      python3 "$TOOL" deep "$W/src600" 600 20
      sync_case deep-600x20 "$W/src600" "$W/dst600" python3 "$TOOL" fdcompare "$W/src600" "$W/dst600"
      ;;
    million)
      gen_start=$(date +%s)
      python3 "$TOOL" many "$W/src" "$FILES" 1000
      echo "# generated $FILES files in $(($(date +%s) - gen_start)) s"
      sync_case million "$W/src" "$W/dst" treecheck "$W/src" "$W/dst"
      # Reference: rsync over the same, already equal trees (its own state
      # folder excluded so that --delete keeps it); -i lists what it changed.
      measure million "rsync no-change" bash -c "test \$(wc -l <'$WORK/cmd.out') -eq 0 && echo 'ok (nothing itemized)' || { echo FAIL: rsync changed something; exit 1; }" -- \
        rsync -a --delete -i --exclude=/.treesync "$W/src/" "$W/dst/"
      ;;
    huge)
      mib=$((HUGE_GIB * 1024))
      gen_start=$(date +%s)
      mkdir "$W/src"; python3 "$TOOL" big "$W/src/big.bin" "$mib"
      echo "# generated $HUGE_GIB GiB in $(($(date +%s) - gen_start)) s"
      sync_case huge "$W/src" "$W/dst" same_file "$W/src/big.bin" "$W/dst/big.bin"
      python3 "$TOOL" poke "$W/src/big.bin" $((mib / 2)) 1
      measure huge "1 MiB changed mid-file" same_file "$W/src/big.bin" "$W/dst/big.bin" -- \
        "$T" --once -q --log-format json --log-file "$WORK/huge-3.log" "$W/src" "$W/dst"
      measure huge "no-change after update" python3 "$TOOL" only-ticks "$WORK/huge-4.log" -- \
        "$T" --once -q --log-format json --log-file "$WORK/huge-4.log" "$W/src" "$W/dst"
      ;;
  esac
  done_with "$c"
done
echo "# results appended to $OUT; $FAILS failing step(s)"
((FAILS == 0))
