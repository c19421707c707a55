# Shared set-up of the benchmarks (sourced by scripts/bench-*.sh from the repository root): the S3 test server,
# release binaries, a scratch folder with a mountpoint, and helpers to time, mount and measure.
bash scripts/install-test-deps.sh >/dev/null
bash scripts/test-servers.sh start s3
eval "$(bash scripts/test-servers.sh env | sed 's/^/export /')"
export ZMOUNT_TEST_S3_ACCESS_KEY ZMOUNT_TEST_S3_SECRET_KEY
cargo build --release --quiet
ZM=$PWD/target/release/zmount
BENCH=$PWD/target/release/zmount-bench

WORK=$(mktemp -d /tmp/zmount-bench.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
# On exit: unmount, delete what the run wrote to the server (its prefix) and reclaim its space, remove the scratch
# folder.
cleanup() {
  fusermount3 -u "$MNT" 2>/dev/null || true
  [ -f "$WORK/mount.toml" ] && "$BENCH" "$WORK/mount.toml" s3 purge >/dev/null 2>&1 || true
  # SeaweedFS keeps deleted objects' space until its volumes are vacuumed (a run writes several GB).
  curl -s "http://127.0.0.1:19333/vol/vacuum?garbageThreshold=0.01" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# s3_config FILE [ROUTE_KEYS...]: a mount.toml over the S3 server, under a prefix of its own.
s3_config() {
  local file=$1; shift
  cat >"$file" <<TOML
[settings]
cache_dir = "$WORK/cache"
[providers.s3]
kind = "s3"
bucket = "$ZMOUNT_TEST_S3_BUCKET"
endpoint = "$ZMOUNT_TEST_S3_ENDPOINT"
access_key = "\${ZMOUNT_TEST_S3_ACCESS_KEY}"
secret_key = "\${ZMOUNT_TEST_S3_SECRET_KEY}"
prefix = "bench-$$"
[default]
provider = "s3"
TOML
  for line in "$@"; do echo "$line" >>"$file"; done
}

now() { date +%s.%N; }
rate() { awk -v b="$1" -v s="$2" -v e="$3" 'BEGIN { printf "%.0f", b / (e - s) }'; }
secs() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.3f", e - s }'; }
mount_it() { "$ZM" "$1" "$MNT" --daemon >/dev/null; PID=$(pgrep -nf "zmount $1"); }
unmount_it() { fusermount3 -u "$MNT"; while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done; }
peak_rss() { awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$PID/status"; }
