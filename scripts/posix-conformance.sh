#!/usr/bin/env bash
# POSIX conformance yardstick (not a test, not run by CI): builds pjdfstest from a source folder, mounts zmount over
# one provider, runs pjdfstest's groups (tests/<group>/) against the mount and prints, per group, the number of test
# files, subtests run, subtests failed and subtests planned but never run, then a total line. Exits 0 once it has
# measured, whatever the counts; non-zero only when it cannot measure (no source, build or mount failure).
#
# usage: scripts/posix-conformance.sh PJDFSTEST_SRC [local|s3|azure] [GROUP...]
#   PJDFSTEST_SRC  a pjdfstest checkout (pjdfstest.c, configure.ac, tests/); it is copied, never written to
#   provider       default local; s3 and azure use the local test servers (scripts/test-servers.sh)
#   GROUP          e.g. chmod open rename; default every folder under tests/
# environment:
#   ZMOUNT_BIN            the zmount binary (default target/release/zmount, built with `cargo build --release` if absent)
#   POSIX_GROUP_TIMEOUT   seconds one group may run before it is stopped and reported as timed out (default 600)
#   POSIX_WORK            scratch folder (default a new /tmp/zmount-posix.XXXXXX); it keeps the logs:
#                         prove-<group>.log (TAP), prove-<group>.err, failures.txt, zmount.log, build.log
# Must run as root: pjdfstest switches uids and creates devices (the mount gets --allow-other for that).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

usage() { echo "usage: $0 PJDFSTEST_SRC [local|s3|azure] [GROUP...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
SRC=$(cd "$1" 2>/dev/null && pwd) || { echo "posix-conformance: no folder $1" >&2; exit 2; }
shift
PROVIDER=${1:-local}
[ $# -ge 1 ] && shift
case "$PROVIDER" in local | s3 | azure) ;; *) usage ;; esac
GROUP_TIMEOUT=${POSIX_GROUP_TIMEOUT:-600}

if [ ! -f "$SRC/pjdfstest.c" ] || [ ! -f "$SRC/configure.ac" ] || [ ! -d "$SRC/tests" ]; then
  echo "posix-conformance: $SRC is not a pjdfstest source folder (pjdfstest.c, configure.ac, tests/)" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "posix-conformance: pjdfstest must run as root" >&2
  exit 2
fi

# ---- tools -------------------------------------------------------------------------------------------------------
# autotools and a C compiler build pjdfstest; prove (perl) runs it; its tests call openssl (names) and fusermount3
# unmounts. Missing ones come from apt, as scripts/install-test-deps.sh does.
source "$ROOT/scripts/lib/programs.sh"
install_programs autoreconf:autoconf automake:automake libtoolize:libtool make:make cc:gcc prove:perl \
  openssl:openssl fusermount3:fuse3 timeout:coreutils

if [ -z "${ZMOUNT_BIN:-}" ]; then
  ZMOUNT_BIN="$ROOT/target/release/zmount"
  if [ ! -x "$ZMOUNT_BIN" ]; then
    echo "building zmount (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
  fi
fi
ZMOUNT_BIN=$(realpath "$ZMOUNT_BIN")
[ -x "$ZMOUNT_BIN" ] || { echo "posix-conformance: no zmount binary at $ZMOUNT_BIN" >&2; exit 2; }

WORK=${POSIX_WORK:-$(mktemp -d /tmp/zmount-posix.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
MNT=$WORK/mnt
BUILD=$WORK/pjdfstest

# ---- pjdfstest: built in a copy (autoreconf writes into the folder it runs in) -------------------------------------
rm -rf "$BUILD"
mkdir -p "$BUILD"
(cd "$SRC" && tar --exclude=.git -cf - .) | (cd "$BUILD" && tar -xf -)
echo "building pjdfstest in $BUILD"
if ! (cd "$BUILD" && autoreconf -ifs && ./configure && make pjdfstest) >"$WORK/build.log" 2>&1; then
  tail -30 "$WORK/build.log" >&2
  echo "posix-conformance: building pjdfstest failed; log: $WORK/build.log" >&2
  exit 1
fi

# ---- groups --------------------------------------------------------------------------------------------------------
if [ $# -gt 0 ]; then
  GROUPS_TO_RUN=("$@")
else
  mapfile -t GROUPS_TO_RUN < <(find "$BUILD/tests" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
fi
for g in "${GROUPS_TO_RUN[@]}"; do
  [ -d "$BUILD/tests/$g" ] || { echo "posix-conformance: no group $g in $SRC/tests" >&2; exit 2; }
done

# ---- provider and mount.toml ---------------------------------------------------------------------------------------
PREFIX="posix-$(date -u +%Y%m%d-%H%M%S)-$$"
if [ "$PROVIDER" != local ]; then
  bash "$ROOT/scripts/install-test-deps.sh" >/dev/null
  bash "$ROOT/scripts/test-servers.sh" start "$PROVIDER"
  eval "$(bash "$ROOT/scripts/test-servers.sh" env | sed 's/^/export /')"
fi
# The well-known Azurite development account key (public, the same in every Azurite).
export ZMOUNT_TEST_AZURE_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

CONFIG=$WORK/mount.toml
{
  # Many calls are expected to fail: fail fast instead of retrying for seconds, as the tests do.
  cat <<TOML
[settings]
cache_dir = "$WORK/cache"

[settings.retry]
attempts = 2
delay = 0.05

[providers.$PROVIDER]
prefix = "$PREFIX"
TOML
  case "$PROVIDER" in
    local)
      mkdir -p "$WORK/local-root"
      printf 'kind = "local"\npath = "%s"\n' "$WORK/local-root"
      ;;
    s3)
      printf 'kind = "s3"\nbucket = "%s"\nendpoint = "%s"\n' "$ZMOUNT_TEST_S3_BUCKET" "$ZMOUNT_TEST_S3_ENDPOINT"
      printf 'access_key = "${ZMOUNT_TEST_S3_ACCESS_KEY}"\nsecret_key = "${ZMOUNT_TEST_S3_SECRET_KEY}"\n'
      ;;
    azure)
      printf 'kind = "azure"\ncontainer = "%s"\naccount = "devstoreaccount1"\nendpoint = "%s"\n' \
        "$ZMOUNT_TEST_AZURE_CONTAINER" "$ZMOUNT_TEST_AZURE_ENDPOINT"
      printf 'key = "${ZMOUNT_TEST_AZURE_KEY}"\n'
      ;;
  esac
  printf '\n[default]\nprovider = "%s"\n' "$PROVIDER"
} >"$CONFIG"

# ---- mount ---------------------------------------------------------------------------------------------------------
mounted() { awk -v m="$MNT" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

ZPID=
cleanup() {
  cd /
  if [ -n "$ZPID" ] && kill -0 "$ZPID" 2>/dev/null; then
    kill -TERM "$ZPID" 2>/dev/null || true
    # SIGTERM unmounts and drains the upload queue; give it a while, then force.
    for _ in $(seq 600); do kill -0 "$ZPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$ZPID" 2>/dev/null; then
      echo "zmount did not exit within 60 s of SIGTERM; killing it" >&2
      kill -KILL "$ZPID" 2>/dev/null || true
    fi
    wait "$ZPID" 2>/dev/null || true
  fi
  if mounted; then fusermount3 -uz "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; fi
  rm -rf "$WORK/cache" "$WORK/local-root"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$MNT"
mkdir -p "$MNT"
"$ZMOUNT_BIN" "$CONFIG" "$MNT" --allow-other -v >"$WORK/zmount.log" 2>&1 &
ZPID=$!
for _ in $(seq 300); do
  mounted && break
  if ! kill -0 "$ZPID" 2>/dev/null; then
    tail -30 "$WORK/zmount.log" >&2
    echo "posix-conformance: zmount exited before mounting; log: $WORK/zmount.log" >&2
    exit 1
  fi
  sleep 0.1
done
if ! mounted; then
  echo "posix-conformance: not mounted after 30 s; log: $WORK/zmount.log" >&2
  exit 1
fi

pjd_commit=$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo "?")
echo "zmount:    $ZMOUNT_BIN ($("$ZMOUNT_BIN" --version 2>/dev/null || echo '?'))"
echo "provider:  $PROVIDER (prefix $PREFIX), mounted at $MNT"
echo "pjdfstest: $SRC (commit $pjd_commit), groups: ${GROUPS_TO_RUN[*]}"
echo "logs:      $WORK (per group timeout ${GROUP_TIMEOUT}s)"
echo

# ---- run -----------------------------------------------------------------------------------------------------------
# count_tap LOG: "files_started run failed todo unrun" from prove -v output. A file starts at its "path.t .." line;
# its first "1..N" is its plan; "ok N"/"not ok N" are subtests ("not ok ... # TODO" is an expected failure, which
# prove does not count as failed); subtests planned but never printed (the script died or timed out) are unrun.
count_tap() {
  awk '
    function close_file() { if (in_file && plan > ran) unrun += plan - ran; ran = 0; plan = 0 }
    /\.t \.\.( |$)/ && !/^(not )?ok / { close_file(); in_file = 1; files++; next }
    /^1\.\.[0-9]+/ { if (plan == 0) { split($0, p, /\.\./); plan = p[2] + 0 }; next }
    /^not ok [0-9]+/ { ran++; total++; if ($0 ~ /# *TODO/) todo++; else failed++; next }
    /^ok [0-9]+/ { ran++; total++; next }
    END { close_file(); printf "%d %d %d %d %d\n", files, total, failed, todo, unrun }
  ' "$1"
}

# failures LOG: every failing subtest as "group/NN.t: not ok ...". pjdfstest's long-name tests print paths of
# thousands of characters: each name longer than 48 characters is shortened to its start and its length.
failures() {
  perl -ne 'if (/\.t \.\.( |$)/ && !/^(not )?ok /) { ($f = (split)[0]) =~ s{.*/tests/}{}; next }
            if (/^not ok \d+/ && !/#\s*TODO/) { s{([^ /\x27]{49,})}{substr($1, 0, 12) . "...(" . length($1) . " chars)"}ge; print "$f: $_" }' "$1"
}

: >"$WORK/failures.txt"
rows=()
t_files=0 t_run=0 t_failed=0 t_unrun=0 timed_out=()
started=$(date +%s)
for g in "${GROUPS_TO_RUN[@]}"; do
  log=$WORK/prove-$g.log
  nfiles=$(find "$BUILD/tests/$g" -name '*.t' | wc -l)
  rc=0
  (cd "$MNT" && timeout -k 10 "$GROUP_TIMEOUT" prove -rv "$BUILD/tests/$g") >"$log" 2>"$WORK/prove-$g.err" || rc=$?
  read -r started_files run failed todo unrun < <(count_tap "$log")
  note=""
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    note="TIMED OUT after ${GROUP_TIMEOUT}s ($started_files/$nfiles files started)"
    timed_out+=("$g")
  elif ! mounted; then
    note="mount gone after this group"
  fi
  [ "$todo" -gt 0 ] && note="${note:+$note; }$todo TODO"
  # A test that prints "Bail out!" makes prove skip the group's remaining files.
  if grep -q '^Bailout called' "$log"; then
    note="${note:+$note; }bail out: $started_files/$nfiles files started"
  fi
  failures "$log" >>"$WORK/failures.txt"
  rows+=("$(printf '%-16s %6d %9d %7d %6d  %s' "$g" "$nfiles" "$run" "$failed" "$unrun" "$note")")
  printf '%-16s %6d %9d %7d %6d  %s\n' "$g" "$nfiles" "$run" "$failed" "$unrun" "$note" >&2
  t_files=$((t_files + nfiles)) t_run=$((t_run + run)) t_failed=$((t_failed + failed)) t_unrun=$((t_unrun + unrun))
  if ! mounted; then
    echo "posix-conformance: the mount is gone; stopping (log: $WORK/zmount.log)" >&2
    break
  fi
done
elapsed=$(($(date +%s) - started))

echo
echo "pjdfstest on zmount ($PROVIDER), $(date -u +%Y-%m-%dT%H:%MZ), ${elapsed}s"
printf '%-16s %6s %9s %7s %6s  %s\n' group files subtests failed unrun note
for r in "${rows[@]}"; do echo "$r"; done
printf '%-16s %6d %9d %7d %6d  %s\n' total "$t_files" "$t_run" "$t_failed" "$t_unrun" \
  "passed $((t_run - t_failed)) of $t_run run"
[ ${#timed_out[@]} -gt 0 ] && echo "timed out: ${timed_out[*]}"
echo "failing subtests: $WORK/failures.txt; zmount log: $WORK/zmount.log"
exit 0
