#!/usr/bin/env bash
# The main job on the embedded default config (mount.toml: local providers under .zmount-data/, no cloud account):
# builds zmount, checks every provider, explains how three kinds of path are routed, mounts the tree, and uses it
# with ls, cat, cp and a write before unmounting. Pass a mountpoint to mount somewhere else (default .zmount-data/mnt).
set -euo pipefail
cd "$(dirname "$0")/.."
MNT="${1:-.zmount-data/mnt}"
command -v fusermount3 >/dev/null || { echo "quickstart: fuse3 is needed (apt-get install fuse3)" >&2; exit 1; }
echo "quickstart: building zmount (release). The first build compiles about 300 crates and takes several minutes"
echo "            (about 6 on 2 cores); later runs reuse it, and so does scripts/test.sh."
cargo build --release
ZM=./target/release/zmount

$ZM check mount.toml
echo
$ZM explain mount.toml temp_files/build.log photos/2024/cat.jpg reports/q4.pdf
echo

# A few files on the providers (local folders here), as another tool would have written them.
mkdir -p .zmount-data/main/reports .zmount-data/media/photos/2024 .zmount-data/scratch/temp_files "$MNT"
echo "Quarterly report" > .zmount-data/main/reports/q4.txt
head -c 2000000 /dev/urandom > .zmount-data/media/photos/2024/cat.jpg
echo "build log" > .zmount-data/scratch/temp_files/build.log

$ZM mount.toml "$MNT" --daemon
trap 'fusermount3 -u "$MNT" 2>/dev/null || umount "$MNT"' EXIT
echo "\$ ls -l $MNT $MNT/photos/2024"
ls -l "$MNT" "$MNT/photos/2024"
echo "\$ cat $MNT/reports/q4.txt"
cat "$MNT/reports/q4.txt"
echo "\$ cp $MNT/photos/2024/cat.jpg .zmount-data/cat-copy.jpg && cmp"
cp "$MNT/photos/2024/cat.jpg" .zmount-data/cat-copy.jpg
cmp .zmount-data/cat-copy.jpg .zmount-data/media/photos/2024/cat.jpg && echo "identical"
rm .zmount-data/cat-copy.jpg
echo "\$ echo 'written through the mount' > $MNT/reports/notes.txt"
echo 'written through the mount' > "$MNT/reports/notes.txt"
echo "on the provider (.zmount-data/main/reports/notes.txt): $(cat .zmount-data/main/reports/notes.txt)"
echo
echo "Mounted at $MNT; unmounting. Mount it yourself with: $ZM mount.toml /mnt/storage"
