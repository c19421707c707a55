#!/usr/bin/env bash
# Image route benchmark (not a test): N photo-like JPEGs (W×H) copied with `cp` into a mount over the local S3 server
# (SeaweedFS) whose route has the proposal's transforms and variants, next to the same copy into a route without
# image options. Prints how long `cp` takes in both (image work must not delay `close`; it does compete for the CPU),
# the time from the start of `cp` until every variant is on the server (images/s), the bytes stored on the server
# (transformed originals plus variants) against the originals' size, and the daemon's peak RSS.
# usage: scripts/bench-images.sh [N (default 20)] [W (default 4000)] [H (default 3000)]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20}"
W="${2:-4000}"
H="${3:-3000}"
VARIANTS=3
source scripts/lib/bench-env.sh
s3_config "$WORK/plain.toml"
s3_config "$WORK/images.toml" \
  'transforms = { resize = "2048x2048", quality = 85 }' \
  '[default.variants]' \
  'thumbnail = "150x150"' \
  'medium = "400x300"' \
  'large = "1200x900"'
count_on_server() { $BENCH "$WORK/images.toml" s3 list "$1" | cut -d' ' -f2; }
bytes_on_server() { $BENCH "$WORK/images.toml" s3 list "$1" | cut -d' ' -f3; }

mkdir -p "$WORK/photos"
for i in $(seq "$N"); do $BENCH "$WORK/plain.toml" s3 photo "$WORK/photos/p$i.jpg" "$W" "$H" "$i"; done
original_kib=$(($(cat "$WORK"/photos/*.jpg | wc -c) / 1024))

mount_it "$WORK/plain.toml"
mkdir "$MNT/plain"
s=$(now); cp "$WORK"/photos/*.jpg "$MNT/plain/"; e=$(now)
cp_plain=$(secs "$s" "$e")
unmount_it

mount_it "$WORK/images.toml"
mkdir "$MNT/photos"
s=$(now); cp "$WORK"/photos/*.jpg "$MNT/photos/"; e=$(now)
cp_images=$(secs "$s" "$e")
want=$((N * (1 + VARIANTS) + 1)) # originals, variants, the folder marker
deadline=$(($(date +%s) + 600))
while [ "$(count_on_server photos)" -lt "$want" ]; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "bench: only $(count_on_server photos) of $want objects after 10 minutes (see the daemon log)" >&2
    exit 1
  fi
  sleep 0.2
done
done_at=$(now)
rss=$(peak_rss)
unmount_it
stored_kib=$(($(bytes_on_server photos) / 1024))

echo "image routes: $N photos of ${W}x${H} (JPEG q90, $((original_kib / N)) KiB each), transforms fit 2048x2048 q85, $VARIANTS variants"
echo "  cp into a plain route:                    $cp_plain s"
echo "  cp into the image route (close returns):  $cp_images s"
echo "  from cp until every variant is on server: $(secs "$s" "$done_at") s  ($(awk -v n="$N" -v s="$s" -v e="$done_at" 'BEGIN { printf "%.1f", n / (e - s) }') images/s)"
echo "  on the server (transformed + variants):   $stored_kib KiB (the originals: $original_kib KiB)"
echo "  daemon peak RSS:                          $rss MiB"
