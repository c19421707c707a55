#!/usr/bin/env bash
# Side-by-side benchmark (not a test): zmount vs rclone mount (--vfs-cache-mode off and full) vs s3fs-fuse vs
# mountpoint-s3, with a native directory and direct object_store calls as the ceilings, all against the same local
# SeaweedFS bucket in one run. Installs rclone, s3fs and fio (apt) if missing. mountpoint-s3 has no package: its
# front end is taken from $MOUNT_S3 (default /tmp/mount-s3-target/release/mount-s3), built from $MOUNT_S3_SRC
# (default ../shared/tools/mount-s3, a Cargo project mounting a bucket with the mountpoint-s3-fs library) when
# missing; without either, mountpoint-s3 is left out and the table says so. Prints a markdown table (medians of RUNS
# runs) and writes it, with the machine and the exact flags, to BENCHMARKS.md.
# usage: scripts/bench/compare.sh [RUNS (default 3)] [SIZE_MIB (default 1024)] [SMALL (default 1000)] [MANY (default 10000)]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${1:-3}"
SIZE_MIB="${2:-1024}"
SMALL="${3:-1000}"
MANY="${4:-10000}"
FIO_SECONDS=5
MOUNT_S3="${MOUNT_S3:-/tmp/mount-s3-target/release/mount-s3}"
MOUNT_S3_SRC="${MOUNT_S3_SRC:-../shared/tools/mount-s3}"
if [ ! -x "$MOUNT_S3" ] && [ -f "$MOUNT_S3_SRC/Cargo.toml" ]; then
  echo "building mountpoint-s3's front end from $MOUNT_S3_SRC (minutes; needs cmake, clang, libfuse3-dev)" >&2
  CARGO_TARGET_DIR="$(dirname "$(dirname "$MOUNT_S3")")" cargo build --release --quiet --manifest-path "$MOUNT_S3_SRC/Cargo.toml" ||
    echo "mountpoint-s3 could not be built: left out" >&2
fi
ALL_TOOLS="native zmount rclone-off rclone-full s3fs"
[ -x "$MOUNT_S3" ] && ALL_TOOLS="$ALL_TOOLS mountpoint-s3"
TOOLS_UNDER_TEST="${BENCH_TOOLS:-$ALL_TOOLS}" # a subset, for quick looks

missing=()
for pair in rclone:rclone s3fs:s3fs fio:fio; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
source scripts/lib/bench-env.sh
PREFIX="bench-cmp-$$"
s3_config "$WORK/mount.toml"
sed -i "s/^prefix = .*/prefix = \"$PREFIX\"/" "$WORK/mount.toml"
RESULTS="$WORK/results.txt"
: >"$RESULTS"
record() { echo "$1 $2 $3" >>"$RESULTS"; } # tool workload value
# What the machine itself took from the run: CPU time the hypervisor gave to others (steal), and how long tasks
# waited on the disk (/proc/pressure/io). Figures here move with both; the table says how much there was.
machine_load() {
  local io
  io=$(awk '/^some/ { sub("total=", "", $5); print $5 }' /proc/pressure/io 2>/dev/null || echo 0)
  awk -v io="${io:-0}" '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, io }' /proc/stat
}
LOAD_START=$(machine_load)
START_S=$(now)

# Fixtures, created directly over S3: the object to read and the folder to list.
$BENCH "$WORK/mount.toml" s3 seed fixtures/big.bin "$SIZE_MIB" >/dev/null
$BENCH "$WORK/mount.toml" s3 seed-many fixtures/many "$MANY" >/dev/null
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/source.bin"
mkdir -p "$WORK/small-src" "$WORK/native/fixtures"
for i in $(seq "$SMALL"); do head -c 4096 /dev/urandom >"$WORK/small-src/f$i"; done
cp "$WORK/source.bin" "$WORK/native/fixtures/big.bin"
mkdir -p "$WORK/native/fixtures/many"
python3 - "$WORK/native/fixtures/many" "$MANY" <<'PY'
import os, sys
for i in range(int(sys.argv[2])):
    with open(os.path.join(sys.argv[1], f"f{i:05}.txt"), "w") as f:
        f.write("abc")
PY

# The flags each tool is mounted with (also written to BENCHMARKS.md).
printf '%s\n' "${ZMOUNT_TEST_S3_ACCESS_KEY}:${ZMOUNT_TEST_S3_SECRET_KEY}" >"$WORK/s3fs.passwd"
chmod 600 "$WORK/s3fs.passwd"
export RCLONE_CONFIG_SW_TYPE=s3 RCLONE_CONFIG_SW_PROVIDER=Other RCLONE_CONFIG_SW_ENDPOINT="$ZMOUNT_TEST_S3_ENDPOINT" \
  RCLONE_CONFIG_SW_ACCESS_KEY_ID="$ZMOUNT_TEST_S3_ACCESS_KEY" RCLONE_CONFIG_SW_SECRET_ACCESS_KEY="$ZMOUNT_TEST_S3_SECRET_KEY"
RCLONE_FLAGS="--daemon --cache-dir $WORK/rclone-cache"
S3FS_FLAGS="-o url=$ZMOUNT_TEST_S3_ENDPOINT -o use_path_request_style -o passwd_file=$WORK/s3fs.passwd"
MOUNT_S3_FLAGS="--endpoint-url $ZMOUNT_TEST_S3_ENDPOINT --force-path-style --foreground"

ROOT="" # where the tool's tree is (the mountpoint, or the native folder)
start_tool() {
  rm -rf "$WORK/cache" "$WORK/rclone-cache"
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  case $1 in
    native) ROOT="$WORK/native"; PID="" ;;
    zmount) mount_it "$WORK/mount.toml"; ROOT="$MNT" ;;
    rclone-off | rclone-full)
      # AWS_CA_BUNDLE (set on some machines) makes this rclone version refuse plain-HTTP endpoints.
      env -u AWS_CA_BUNDLE rclone mount "sw:$ZMOUNT_TEST_S3_BUCKET/$PREFIX" "$MNT" --vfs-cache-mode "${1#rclone-}" $RCLONE_FLAGS
      PID=$(pgrep -nf "rclone mount sw:"); ROOT="$MNT" ;;
    s3fs)
      s3fs "$ZMOUNT_TEST_S3_BUCKET:/$PREFIX" "$MNT" $S3FS_FLAGS
      PID=$(pgrep -nf "^s3fs $ZMOUNT_TEST_S3_BUCKET"); ROOT="$MNT" ;;
    mountpoint-s3)
      # No prefix option: the whole bucket is mounted and the tree is the prefix's folder.
      AWS_ACCESS_KEY_ID="$ZMOUNT_TEST_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$ZMOUNT_TEST_S3_SECRET_KEY" \
        "$MOUNT_S3" "$ZMOUNT_TEST_S3_BUCKET" "$MNT" $MOUNT_S3_FLAGS >"$WORK/mount-s3.log" 2>&1 &
      PID=$!; ROOT="$MNT/$PREFIX" ;;
  esac
  if [ "$1" != native ]; then
    for _ in $(seq 200); do mountpoint -q "$MNT" && break; sleep 0.05; done
    mountpoint -q "$MNT" || { echo "bench: $1 did not mount" >&2; exit 1; }
  fi
}
stop_tool() {
  [ -z "$PID" ] && return 0
  rss=$(peak_rss)
  record "$1" rss "$rss"
  fusermount3 -u "$MNT"
  while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
}

# IOPS of fio's random 4 KiB reads of the big fixture with JOBS jobs.
random_reads() {
  fio --name=rand --filename="$ROOT/fixtures/big.bin" --readonly --rw=randread --bs=4k --ioengine=psync \
    --numjobs="$1" --runtime=$FIO_SECONDS --time_based --group_reporting --output-format=json 2>/dev/null |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}

# Workloads; each records its figure. Keys in the bucket are unique per tool and run.
run_tool() {
  local tool=$1 run=$2 dir="w-$1-$2"
  start_tool "$tool"
  mkdir -p "$ROOT/$dir/small"
  s=$(now); cp "$WORK/source.bin" "$ROOT/$dir/big.bin"
  [ "$tool" = native ] && sync || $BENCH "$WORK/mount.toml" s3 wait-size "$dir/big.bin" "$((SIZE_MIB << 20))"
  e=$(now); record "$tool" write "$(rate "$SIZE_MIB" "$s" "$e")"
  s=$(now); for i in $(seq "$SMALL"); do cp "$WORK/small-src/f$i" "$ROOT/$dir/small/"; done
  if [ "$tool" = native ]; then sync; else
    while [ "$($BENCH "$WORK/mount.toml" s3 list "$dir/small" | cut -d' ' -f2)" -lt "$SMALL" ]; do sleep 0.05; done
  fi
  e=$(now); record "$tool" small "$(rate "$SMALL" "$s" "$e")"
  stop_tool "$tool"

  start_tool "$tool" # cold: fresh daemon, empty caches
  s=$(now); dd if="$ROOT/fixtures/big.bin" of=/dev/null bs=1M status=none; e=$(now)
  record "$tool" read-cold "$(rate "$SIZE_MIB" "$s" "$e")"
  s=$(now); dd if="$ROOT/fixtures/big.bin" of=/dev/null bs=1M status=none; e=$(now)
  record "$tool" read-warm "$(rate "$SIZE_MIB" "$s" "$e")"
  for jobs in 1 4; do record "$tool" "rand$jobs" "$(random_reads "$jobs")"; done
  stop_tool "$tool"

  for jobs in 1 4; do # truly cold: a fresh daemon, empty caches, the file never read before on this mount
    start_tool "$tool"
    record "$tool" "rand$jobs-cold" "$(random_reads "$jobs")"
    stop_tool "$tool"
  done

  start_tool "$tool"
  s=$(now); ls -l "$ROOT/fixtures/many" >/dev/null; e=$(now); record "$tool" ls-cold "$(secs "$s" "$e")"
  s=$(now); ls -l "$ROOT/fixtures/many" >/dev/null; e=$(now); record "$tool" ls-warm "$(secs "$s" "$e")"
  stop_tool "$tool"

  start_tool "$tool"
  # Timed inside the interpreter: its own start, cold after the page cache was dropped, is no part of the stats.
  record "$tool" stat "$(python3 -c 'import os, sys, time
names = [os.path.join(sys.argv[1], f"f{i}") for i in range(1, int(sys.argv[2]) + 1)]
s = time.monotonic()
for n in names:
    os.stat(n)
print(f"{time.monotonic() - s:.3f}")' "$ROOT/$dir/small" "$SMALL")"
  stop_tool "$tool"

  start_tool "$tool"
  s=$(now); cat "$ROOT/$dir/small"/* >/dev/null; e=$(now); record "$tool" small-read "$(rate "$SMALL" "$s" "$e")"
  stop_tool "$tool"
}

for run in $(seq "$RUNS"); do
  for tool in $TOOLS_UNDER_TEST; do
    echo "run $run: $tool" >&2
    run_tool "$tool" "$run"
  done
  # Direct object_store: the ceiling for what a mount can get out of the server.
  record direct write "$($BENCH "$WORK/mount.toml" s3 seed "d-$run/big.bin" "$SIZE_MIB" | awk '{ print $(NF-1) }')"
  record direct read-cold "$($BENCH "$WORK/mount.toml" s3 get fixtures/big.bin)"
  s=$(now); $BENCH "$WORK/mount.toml" s3 seed-many "d-$run/small" "$SMALL" 4096 32 >/dev/null; e=$(now)
  record direct small "$(rate "$SMALL" "$s" "$e")"
  record direct rand1 "$($BENCH "$WORK/mount.toml" s3 random fixtures/big.bin 2000)"
  record direct ls-cold "$($BENCH "$WORK/mount.toml" s3 list fixtures/many | cut -d' ' -f1)"
done

TABLE=$(python3 - "$RESULTS" "$RUNS" "$SIZE_MIB" "$SMALL" "$MANY" <<'PY'
import statistics, sys
from collections import defaultdict
path, runs, size, small, many = sys.argv[1], *sys.argv[2:]
values = defaultdict(list)
for line in open(path):
    tool, work, value = line.split()
    values[(tool, work)].append(float(value))
# Medians of the runs; peak RSS is the largest over every mount of every run (each mount records its own).
def med(t, w):
    got = values.get((t, w))
    if not got:
        return None
    return max(got) if w == "rss" else statistics.median(got)
rows = [  # workload, label, higher is better
    ("write", f"{size} MiB sequential write, until complete on the server (MiB/s)", True),
    ("read-cold", f"{size} MiB sequential read, cold (MiB/s)", True),
    ("read-warm", f"{size} MiB sequential read, warm (MiB/s)", True),
    ("rand1-cold", "random 4 KiB reads, cold file, 1 job (IOPS)", True),
    ("rand4-cold", "random 4 KiB reads, cold file, 4 jobs (IOPS)", True),
    ("rand1", "random 4 KiB reads after the sequential reads, 1 job (IOPS)", True),
    ("rand4", "random 4 KiB reads after the sequential reads, 4 jobs (IOPS)", True),
    ("small", f"create {small} x 4 KiB files, until listed on the server (files/s)", True),
    ("small-read", f"read {small} x 4 KiB files back, cold (files/s)", True),
    ("ls-cold", f"`ls -l` of {many} objects, cold (s)", False),
    ("ls-warm", f"`ls -l` of {many} objects, warm (s)", False),
    ("stat", f"`stat` of {small} files, cold (s)", False),
    ("rss", "daemon peak RSS (MiB)", False),
]
cols = ["native", "direct", "zmount", "rclone-off", "rclone-full", "s3fs", "mountpoint-s3"]
peers = ["rclone-off", "rclone-full", "s3fs", "mountpoint-s3"]
def fmt(v):
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
def ratio(z, other, higher):
    if z is None or other in (None, 0) or z == 0:
        return "–"
    return f"{(z / other) if higher else (other / z):.2f}"
head = cols + ["÷ rclone off", "÷ rclone full", "÷ s3fs", "÷ mountpoint-s3", "÷ best peer", "÷ direct"]
def best(work, higher):
    found = [v for v in (med(c, work) for c in peers) if v]
    return (max(found) if higher else min(found)) if found else None
print("| workload | " + " | ".join(head) + " |")
print("|---" * (len(head) + 1) + "|")
for work, label, higher in rows:
    z = med("zmount", work)
    cells = [fmt(med(c, work)) for c in cols]
    cells += [ratio(z, med(c, work), higher) for c in peers]
    cells += [ratio(z, best(work, higher), higher), ratio(z, med("direct", work), higher)]
    print(f"| {label} | " + " | ".join(cells) + " |")
PY
)
echo "$TABLE"
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`scripts/bench/compare.sh $RUNS $SIZE_MIB $SMALL $MANY\` on $(date -u +%Y-%m-%d): medians of $RUNS runs,"
  echo "every tool mounted in turn against the same SeaweedFS bucket on 127.0.0.1 (S3 API), fixtures written directly over"
  echo "S3. Ratio columns are zmount's figure over the other's (for times and memory, the other's over zmount's): above 1"
  echo "means zmount is ahead. Cold runs use a freshly started daemon with empty caches after dropping the page cache."
  echo
  echo "$TABLE"
  echo
  echo "## Machine"
  echo
  echo "$LOAD_START $(machine_load) $START_S $(now)" | awk '{ printf "- during the run: %.1f%% of CPU time stolen by the host, some task waiting on the disk %.0f%% of the time\n", 100 * ($4 - $1) / ($5 - $2), ($6 - $3) / 1e4 / ($8 - $7) }'
  echo "- $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(uname -sr)"
  echo "- SeaweedFS $("$HOME/.cache/zmount-test-servers/venv/bin/weed" version 2>/dev/null | head -1 | awk '{ print $3 }') (\`weed mini\`, see scripts/test-servers.sh)"
  echo "- zmount $(git rev-parse --short HEAD), rclone $(rclone version | head -1 | awk '{ print $2 }'), s3fs $(s3fs --version 2>&1 | head -1 | grep -o 'V[0-9.]*'), fio $(fio --version)"
  if [ -x "$MOUNT_S3" ]; then
    echo "- mountpoint-s3: the mountpoint-s3-fs library $(grep -A1 'name = "mountpoint-s3-fs"' "$MOUNT_S3_SRC/Cargo.lock" 2>/dev/null | awk -F'"' '/version/ { print $2 }') behind a small front end with the upstream CLI's defaults"
  else
    echo "- mountpoint-s3: not in this run (no front end at \$MOUNT_S3 and none could be built)"
  fi
  echo
  echo "## Flags"
  echo
  echo "- zmount: \`zmount mount.toml MNT --daemon\`, defaults (one S3 provider with a key prefix)"
  echo "- rclone: \`rclone mount sw:BUCKET/PREFIX MNT --vfs-cache-mode off|full --daemon --cache-dir DIR\` (remote: type s3, provider Other, endpoint $ZMOUNT_TEST_S3_ENDPOINT)"
  echo "- s3fs: \`s3fs BUCKET:/PREFIX MNT -o url=$ZMOUNT_TEST_S3_ENDPOINT -o use_path_request_style -o passwd_file=FILE\`"
  echo "- mountpoint-s3: \`mount-s3 BUCKET MNT $MOUNT_S3_FLAGS\` (defaults otherwise: no data cache; it has no prefix option, so the tree is the prefix's folder in the mounted bucket)"
  echo "- native: a folder on the same disk (writes timed through \`sync\`)"
  echo "- direct: object_store from \`zmount-bench\` (multipart 8 MiB parts; 1,000 puts 32 in flight; one streamed GET; 2,000 sequential 4 KiB ranged GETs; one LIST)"
  echo "- fio: \`--rw=randread --bs=4k --ioengine=psync --numjobs=1|4 --runtime=$FIO_SECONDS --time_based\` on the 1 GiB fixture: \"cold file\" on a fresh daemon with empty caches, the file not read before; \"after the sequential reads\" on the mount that just read it twice"
  echo "- workloads: \`cp\` of a ${SIZE_MIB} MiB file (then HEAD polled until the object is complete), \`dd bs=1M\` reads, a \`cp\` loop of $SMALL files (then LIST polled until all are there), \`cat\` of them after a remount, \`ls -l\`, \`os.stat\` of each file after a remount; peak RSS is the daemon's VmHWM, largest over the run's mounts"
  [ -f BENCHMARKS.notes.md ] && { echo; cat BENCHMARKS.notes.md; }
} >BENCHMARKS.md
echo "written to BENCHMARKS.md; each run's figures (tool, workload, value):" >&2
cat "$RESULTS" >&2
