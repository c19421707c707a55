#!/usr/bin/env bash
# One long soak of the reference-model test (tests/model.rs): a seeded random sequence of file operations runs
# against a real mount and an in-memory model of POSIX file contents; on a discrepancy the failing sequence is
# shrunk (delta debugging: steps are removed while it still fails the same way, within a bounded number of reruns)
# and printed as a readable list of operations, one a line.
#
# usage: scripts/model-test.sh SEED [STEPS] [PROVIDER]
#   SEED      the generator's seed (a CI failure names it, with the command to run); `-` replays the sequence in
#             the file named by ZMOUNT_MODEL_REPLAY (lines as printed, e.g. a shrunk sequence)
#   STEPS     length of the sequence (default 1000)
#   PROVIDER  local | s3 | azure | faults (S3 behind a fault proxy, tmpfs cache, kill -9 steps), each with an optional
#             -wb suffix for a write-back route (default s3); posix runs the sequence on a plain local folder
#             (no zmount), which checks the model itself
# environment:
#   ZMOUNT_MODEL_SHRINK_RUNS  reruns spent shrinking (default 40; 0: report without shrinking)
#   ZMOUNT_MODEL_VERBOSE      set: print every step with the mount's answer
#   ZMOUNT_MODEL_SKIP_LISTINGS set: no directory listings after steps (only at remounts), to explore past a bug
#                             that a listing triggers
#   ZMOUNT_MODEL_TOLERATE     comma-separated failure kinds (or parts of them) of after-step checks to report and
#                             go past, to look for further discrepancies behind a known one; `!part` excludes
#                             (e.g. "provider object after,!after unmount")
# The shrunk sequence is also written to target/model-shrunk-SEED-PROVIDER.txt, ready for ZMOUNT_MODEL_REPLAY.
# Examples:
#   scripts/model-test.sh 42 2000 s3-wb
#   ZMOUNT_MODEL_REPLAY=target/model-shrunk-42-s3-wb.txt scripts/model-test.sh - 0 s3-wb
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:?usage: scripts/model-test.sh SEED [STEPS] [PROVIDER]}"
steps="${2:-1000}"
provider="${3:-s3}"
if [ "$seed" = - ]; then
  : "${ZMOUNT_MODEL_REPLAY:?seed - replays the file named by ZMOUNT_MODEL_REPLAY}"
  ZMOUNT_MODEL_REPLAY="$(realpath "$ZMOUNT_MODEL_REPLAY")"
  export ZMOUNT_MODEL_REPLAY
  unset ZMOUNT_MODEL_SEED
  out="target/model-shrunk-replay-$provider.txt"
else
  export ZMOUNT_MODEL_SEED="$seed"
  unset ZMOUNT_MODEL_REPLAY
  out="target/model-shrunk-$seed-$provider.txt"
fi
mkdir -p target
export ZMOUNT_MODEL_STEPS="$steps" ZMOUNT_MODEL_PROVIDER="$provider" RUST_BACKTRACE=0
export ZMOUNT_MODEL_SHRUNK_OUT="$PWD/$out"
rm -f "$out"
if cargo test --release --test model -- --ignored --exact soak --nocapture; then
  exit 0
fi
if [ -s "$out" ]; then
  echo "shrunk sequence written to $out (replay: ZMOUNT_MODEL_REPLAY=$out scripts/model-test.sh - 0 $provider)"
fi
exit 1
