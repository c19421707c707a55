#!/usr/bin/env bash
# Write benchmark (not a test): zmount mounted over the local S3 server (SeaweedFS) versus object_store used
# directly on the same server in the same run. Prints sequential write MiB/s of a large file (until the object is
# complete on the server: `close` returns only then), files/s creating 1,000 x 4 KiB files with a cp loop until all
# are on the server (default and write-back routes), and the daemon's peak RSS while writing a 4 GiB file.
# usage: scripts/bench-write.sh [SIZE_MIB (default 1024)] [BIG_MIB (default 4096)]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-1024}"
BIG_MIB="${2:-4096}"
FILES=1000
source scripts/lib/bench-env.sh
mkdir -p "$WORK/small"
s3_config "$WORK/mount.toml"
s3_config "$WORK/writeback.toml" "write_back = true"
count_on_server() { $BENCH "$WORK/mount.toml" s3 list "$1" | cut -d' ' -f2; }

head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/source.bin"
for i in $(seq $FILES); do head -c 4096 /dev/urandom >"$WORK/small/f$i"; done

direct_seq=$($BENCH "$WORK/mount.toml" s3 seed direct.bin "$SIZE_MIB" | awk '{ print $(NF-1) }')
s=$(now); $BENCH "$WORK/mount.toml" s3 seed-many direct-small $FILES 4096 32 >/dev/null; e=$(now)
direct_small=$(rate $FILES "$s" "$e")

mount_it "$WORK/mount.toml"
s=$(now); cp "$WORK/source.bin" "$MNT/big.bin"; e=$(now)
seq_write=$(rate "$SIZE_MIB" "$s" "$e")
mkdir "$MNT/small"
s=$(now); for i in $(seq $FILES); do cp "$WORK/small/f$i" "$MNT/small/"; done; e=$(now)
[ "$(count_on_server small)" -ge $FILES ] || { echo "bench: small files missing on the server" >&2; exit 1; }
small_default=$(rate $FILES "$s" "$e")
unmount_it

mount_it "$WORK/writeback.toml"
mkdir "$MNT/small-wb"
s=$(now)
for i in $(seq $FILES); do cp "$WORK/small/f$i" "$MNT/small-wb/"; done
while [ "$(count_on_server small-wb)" -lt $((FILES + 1)) ]; do sleep 0.05; done # the files plus the dir marker
e=$(now)
small_wb=$(rate $FILES "$s" "$e")
unmount_it

rm -f "$WORK/source.bin"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$WORK/huge.bin"
mount_it "$WORK/mount.toml"
s=$(now); cp "$WORK/huge.bin" "$MNT/huge.bin"; e=$(now)
huge_write=$(rate "$BIG_MIB" "$s" "$e")
rss_huge=$(peak_rss)
unmount_it

echo
echo "zmount write benchmark — SeaweedFS on 127.0.0.1, $(nproc) cores"
printf '%-44s %10s %24s\n' "operation" "zmount" "object_store direct"
printf '%-44s %10s %24s\n' "sequential write ${SIZE_MIB} MiB (MiB/s, to complete)" "$seq_write" "$direct_seq (multipart)"
printf '%-44s %10s %24s\n' "$FILES x 4 KiB cp loop, default (files/s)" "$small_default" "$direct_small (32 in flight)"
printf '%-44s %10s %24s\n' "$FILES x 4 KiB cp loop, write-back (files/s)" "$small_wb" "$direct_small (32 in flight)"
printf '%-44s %10s\n' "sequential write ${BIG_MIB} MiB (MiB/s)" "$huge_write"
printf '%-44s %10s\n' "daemon peak RSS writing ${BIG_MIB} MiB (MiB)" "$rss_huge"
