#!/usr/bin/env bash
# Failover benchmark (not a test). A file lives on two providers: the primary is a private Azurite instance, the
# fallback the S3 test server (SeaweedFS). A reader streams the file through the mount; once it is MID_MIB into it,
# the primary is SIGKILLed. Reported per run: the longest read() after the kill (the reader's wait for the first
# bytes from the fallback) and whether every byte matched. Then read throughput through the mount while the
# primary's breaker is open, next to the same file read through a mount routed to the fallback alone and
# object_store's direct GET. Default settings throughout (retry 3 x 1 s, failure_threshold 5), as users get them.
# Then a primary that stalls (SIGSTOP: it accepts connections and never answers) and one that refuses (killed:
# its port closed), each on a fresh mount with a cold cache: the time of `stat` of a file not seen yet, `ls` of its
# folder, the first byte of a 64 MiB file and the whole of it (sha256 checked), answered by the fallback.
# usage: scripts/bench-failover.sh [RUNS (default 5)] [SIZE_MIB (default 128)]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
SIZE_MIB="${2:-128}"
MID_MIB=16
source scripts/lib/bench-env.sh
bash scripts/test-servers.sh start azure >/dev/null
TOOLS="${ZMOUNT_TOOLS:-$HOME/.cache/zmount-test-servers}"
AZ_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AZ_ENDPOINT="http://127.0.0.1:$AZ_PORT/devstoreaccount1"
export ZMOUNT_TEST_AZURE_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

start_primary() {
  mkdir -p "$WORK/azurite"
  (cd "$WORK/azurite" && exec "$TOOLS/npm/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 \
    --blobPort "$AZ_PORT" --inMemoryPersistence --disableTelemetry --silent) >/dev/null 2>&1 &
  AZ_PID=$!
  disown "$AZ_PID" # its SIGKILL is the point; no job-control notice
  for _ in $(seq 100); do
    python3 scripts/lib/azurite_container.py "$AZ_ENDPOINT" zmount 2>/dev/null && return 0
    sleep 0.1
  done
  echo "private Azurite did not start" >&2; exit 1
}

# write_config FILE DEFAULT_PROVIDER [FALLBACK]
write_config() {
  local fallback=""
  [ -n "${3:-}" ] && fallback="fallback = [\"$3\"]"
  cat >"$1" <<TOML
[settings]
cache_dir = "$WORK/cache"
[providers.primary]
kind = "azure"
container = "zmount"
account = "devstoreaccount1"
key = "\${ZMOUNT_TEST_AZURE_KEY}"
endpoint = "$AZ_ENDPOINT"
prefix = "bench-failover-$$"
[providers.backup]
kind = "s3"
bucket = "$ZMOUNT_TEST_S3_BUCKET"
endpoint = "$ZMOUNT_TEST_S3_ENDPOINT"
access_key = "\${ZMOUNT_TEST_S3_ACCESS_KEY}"
secret_key = "\${ZMOUNT_TEST_S3_SECRET_KEY}"
prefix = "bench-failover-$$"
[default]
provider = "$2"
$fallback
TOML
}

write_config "$WORK/failover.toml" primary backup
write_config "$WORK/backup-only.toml" backup
$BENCH "$WORK/failover.toml" backup seed big.bin "$SIZE_MIB" >/dev/null
$BENCH "$WORK/failover.toml" backup seed second.bin "$SIZE_MIB" >/dev/null
expected=$( (mount_it "$WORK/backup-only.toml"; sha256sum "$MNT/big.bin"; unmount_it) | cut -d' ' -f1)

waits=()
for run in $(seq "$RUNS"); do
  start_primary
  $BENCH "$WORK/failover.toml" primary seed big.bin "$SIZE_MIB" >/dev/null
  rm -rf "$WORK/cache"
  mount_it "$WORK/failover.toml"
  result=$(python3 - "$MNT/big.bin" "$AZ_PID" $((MID_MIB << 20)) <<'PY'
import hashlib, os, signal, sys, time
path, victim, kill_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
digest, done, worst, killed = hashlib.sha256(), 0, 0.0, False
while True:
    started = time.monotonic()
    data = os.read(fd, 1 << 20)
    took = time.monotonic() - started
    if not data:
        break
    digest.update(data)
    done += len(data)
    if killed:
        worst = max(worst, took)
    elif done >= kill_after:
        os.kill(victim, signal.SIGKILL)
        killed = True
print(f"{worst:.3f} {digest.hexdigest()}")
PY
)
  wait_s=${result%% *}
  digest=${result##* }
  intact=yes; [ "$digest" = "$expected" ] || intact=NO
  echo "run $run: longest read after the kill ${wait_s} s, bytes intact: $intact"
  waits+=("$wait_s")
  if [ "$run" = "$RUNS" ]; then
    # The breaker is open now: read another file through the same mount.
    s=$(now); dd if="$MNT/second.bin" of=/dev/null bs=1M status=none; e=$(now)
    open_rate=$(rate "$SIZE_MIB" "$s" "$e")
  fi
  unmount_it
  while kill -0 "$AZ_PID" 2>/dev/null; do sleep 0.05; done
done

rm -rf "$WORK/cache"
mount_it "$WORK/backup-only.toml"
s=$(now); dd if="$MNT/second.bin" of=/dev/null bs=1M status=none; e=$(now)
backup_rate=$(rate "$SIZE_MIB" "$s" "$e")
unmount_it
direct_rate=$($BENCH "$WORK/failover.toml" backup get second.bin)

# Stalled and refusing primaries: stat, ls, first byte, whole 64 MiB file, each timed from a cold mount.
$BENCH "$WORK/failover.toml" backup seed stall/big.bin 64 >/dev/null
$BENCH "$WORK/failover.toml" backup seed stall/small.bin 0 >/dev/null
big_sum=$( (mount_it "$WORK/backup-only.toml"; sha256sum "$MNT/stall/big.bin"; unmount_it) | cut -d' ' -f1)
declare -A timings
for fault in stalled refusing; do
  start_primary
  $BENCH "$WORK/failover.toml" primary seed stall/big.bin 64 >/dev/null
  $BENCH "$WORK/failover.toml" primary seed stall/small.bin 0 >/dev/null
  rm -rf "$WORK/cache"
  mount_it "$WORK/failover.toml"
  case $fault in
    stalled) kill -STOP "$AZ_PID" ;;
    refusing) kill -KILL "$AZ_PID"; while kill -0 "$AZ_PID" 2>/dev/null; do sleep 0.05; done ;;
  esac
  timings[$fault]=$(python3 - "$MNT/stall" "$big_sum" <<'PY'
import hashlib, os, sys, time
folder, expected = sys.argv[1], sys.argv[2]
t = time.monotonic(); os.stat(os.path.join(folder, "small.bin")); stat = time.monotonic() - t
t = time.monotonic(); names = os.listdir(folder); listing = time.monotonic() - t
assert "big.bin" in names, names
t = time.monotonic()
with open(os.path.join(folder, "big.bin"), "rb") as f:
    first = f.read(1); first_byte = time.monotonic() - t
    digest = hashlib.sha256(first)
    while True:
        block = f.read(1 << 20)
        if not block:
            break
        digest.update(block)
whole = time.monotonic() - t
intact = "yes" if digest.hexdigest() == expected else "NO"
print(f"{stat:.3f} {listing:.3f} {first_byte:.3f} {whole:.3f} {intact}")
PY
)
  [ "$fault" = stalled ] && kill -KILL "$AZ_PID"
  unmount_it
  while kill -0 "$AZ_PID" 2>/dev/null; do sleep 0.05; done
done

sorted=$(printf '%s\n' "${waits[@]}" | sort -n)
median=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
max=$(echo "$sorted" | tail -1)
echo
echo "zmount failover benchmark — primary: Azurite (SIGKILLed mid-read), fallback: SeaweedFS, ${SIZE_MIB} MiB file, $(nproc) cores"
printf '%-58s %s\n' "first bytes from the fallback after the kill (s), median" "$median"
printf '%-58s %s\n' "first bytes from the fallback after the kill (s), max of $RUNS" "$max"
printf '%-58s %s\n' "read through the mount, primary's breaker open (MiB/s)" "$open_rate"
printf '%-58s %s\n' "read through a mount routed to the fallback only (MiB/s)" "$backup_rate"
printf '%-58s %s\n' "object_store GET from the fallback directly (MiB/s)" "$direct_rate"
echo
echo "primary stalled (SIGSTOP) or refusing (killed), fallback answering; cold mount, default settings; seconds"
printf '%-12s %8s %8s %12s %16s %7s\n' primary stat ls "first byte" "64 MiB read" intact
for fault in stalled refusing; do
  read -r st ls fb whole ok <<<"${timings[$fault]}"
  printf '%-12s %8s %8s %12s %16s %7s\n' "$fault" "$st" "$ls" "$fb" "$whole" "$ok"
done
