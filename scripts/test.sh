#!/usr/bin/env bash
# The full test suite: installs what it needs (fuse3, SeaweedFS, Azurite, fake-gcs-server) when missing, starts the
# local protocol servers, runs every test, and stops the servers again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
bash scripts/test-servers.sh start
trap 'bash scripts/test-servers.sh stop' EXIT
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
