#!/usr/bin/env bash
# The main job on the embedded default config (mount.toml: local providers under .zmount-data/, no cloud account):
# builds zmount, checks every provider, and shows how three kinds of path are routed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
./target/release/zmount check mount.toml
echo
./target/release/zmount explain mount.toml temp_files/build.log photos/2024/cat.jpg reports/q4.pdf
