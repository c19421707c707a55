#!/usr/bin/env bash
# The full test suite: installs what it needs (fuse3, SeaweedFS, moto, Azurite, fake-gcs-server) when missing, starts
# the local protocol servers, runs every test, and stops the servers again. Arguments go to `cargo nextest run` (e.g.
# a test binary: `--test write`). Tests that cannot run here (GCS writes: the emulator lacks the API object_store
# writes with) are ignored with the reason, and counted as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
bash scripts/test-servers.sh start
trap 'bash scripts/test-servers.sh stop' EXIT
# The release profile, as scripts/quickstart.sh builds: the dependencies compiled once serve both (tests then run
# against the optimized zmount; debug assertions are off, as in the product).
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --no-fail-fast --status-level skip --final-status-level skip "$@" || status=$?
else
  cargo test --release --no-fail-fast "$@" || status=$?
fi
echo "Skipped tests are marked ignored in the source; the reasons:"
grep -rhoE '#\[ignore = "[^"]*"\]' tests | sed -E 's/#\[ignore = "(.*)"\]/  - \1/' | sort -u
exit "$status"

