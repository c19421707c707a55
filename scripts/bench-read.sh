#!/usr/bin/env bash
# Read benchmark (not a test): zmount mounted over the local S3 server (SeaweedFS) versus object_store used
# directly on the same server in the same run. Prints sequential MiB/s (cold and warm), random 4 KiB read IOPS,
# `ls -l` time on 10,000 objects (cold and warm), and the daemon's peak RSS.
# usage: scripts/bench-read.sh [SIZE_MIB (default 1024)]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-1024}"
RANDOM_READS=2000
source scripts/lib/bench-env.sh
s3_config "$WORK/mount.toml"

$BENCH "$WORK/mount.toml" s3 seed big.bin "$SIZE_MIB"
direct_get=$($BENCH "$WORK/mount.toml" s3 get big.bin)
direct_ranged=$($BENCH "$WORK/mount.toml" s3 ranged big.bin)
direct_random=$($BENCH "$WORK/mount.toml" s3 random big.bin $RANDOM_READS)


mount_it "$WORK/mount.toml"
s=$(now); dd if="$MNT/big.bin" of=/dev/null bs=1M status=none; e=$(now)
cold_seq=$(rate "$SIZE_MIB" "$s" "$e")
s=$(now); dd if="$MNT/big.bin" of=/dev/null bs=1M status=none; e=$(now)
warm_seq=$(rate "$SIZE_MIB" "$s" "$e")
rss_seq=$(peak_rss)
unmount_it
rm -rf "$WORK/cache"
# A second cold read (empty cache again): the server serves a just-written object more slowly the first time.
mount_it "$WORK/mount.toml"
s=$(now); dd if="$MNT/big.bin" of=/dev/null bs=1M status=none; e=$(now)
cold_seq2=$(rate "$SIZE_MIB" "$s" "$e")
unmount_it
rm -rf "$WORK/cache"

$BENCH "$WORK/mount.toml" s3 seed-many many 10000
direct_list=$($BENCH "$WORK/mount.toml" s3 list many | cut -d' ' -f1)
mount_it "$WORK/mount.toml"
s=$(now); ls -l "$MNT/many" >/dev/null; e=$(now)
cold_ls=$(secs "$s" "$e")
s=$(now); ls -l "$MNT/many" >/dev/null; e=$(now)
warm_ls=$(secs "$s" "$e")
unmount_it

mount_it "$WORK/mount.toml"
random_iops=$(python3 - "$MNT/big.bin" $RANDOM_READS <<'PY'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
state = 42
start = time.monotonic()
for _ in range(n):
    state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
    offset = ((state >> 11) % (size - 4096)) & ~4095
    assert len(os.pread(fd, 4096, offset)) == 4096
print(round(n / (time.monotonic() - start)))
PY
)
rss_random=$(peak_rss)
unmount_it

echo
echo "zmount read benchmark — SeaweedFS on 127.0.0.1, ${SIZE_MIB} MiB object, $(nproc) cores"
printf '%-34s %12s %22s\n' "operation" "zmount" "object_store direct"
printf '%-34s %12s %22s\n' "sequential read, cold (MiB/s)" "$cold_seq" "$direct_get (stream) / $direct_ranged (1 MiB x32)"
printf '%-34s %12s %22s\n' "sequential read, cold again (MiB/s)" "$cold_seq2" "-"
printf '%-34s %12s %22s\n' "sequential read, warm (MiB/s)" "$warm_seq" "-"
printf '%-34s %12s %22s\n' "random 4 KiB reads, cold (IOPS)" "$random_iops" "$direct_random"
printf '%-34s %12s %22s\n' "ls -l 10,000 objects, cold (s)" "$cold_ls" "$direct_list (LIST)"
printf '%-34s %12s %22s\n' "ls -l 10,000 objects, warm (s)" "$warm_ls" "-"
printf '%-34s %12s\n' "daemon peak RSS, sequential (MiB)" "$rss_seq"
printf '%-34s %12s\n' "daemon peak RSS, random (MiB)" "$rss_random"
