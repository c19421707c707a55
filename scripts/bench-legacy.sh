#!/usr/bin/env bash
# The legacy workload on an S3 route (the SeaweedFS test server): `rsync -a` of a tree of FILES generated files
# (sizes from 1 KiB to 160 KiB, about 80 KiB on average) into the mount, then a small `git` workflow (init, add,
# commit, mv, gc, fsck, checkout) inside it. Prints each step's wall time and what it cost on the provider, from the
# mount's metrics: requests by operation (and how many were attempts sent again), bytes written and read. Not a
# test: figures only.
# usage: scripts/bench-legacy.sh [FILES (default 2000)] [write_back (default false)]
set -euo pipefail
cd "$(dirname "$0")/.."
FILES="${1:-2000}"
WRITE_BACK="${2:-false}"
source scripts/lib/bench-env.sh
command -v rsync >/dev/null && command -v git >/dev/null || { echo "needs rsync and git" >&2; exit 1; }

TREE=$WORK/tree
python3 - "$TREE" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i % 40:02d}", f"s{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1, 160) * 1024))
PY
TREE_BYTES=$(du -sb "$TREE" | cut -f1)
ADDR=127.0.0.1:$((20000 + $$ % 20000))
s3_config "$WORK/mount.toml" "write_back = $WRITE_BACK"
"$ZM" "$WORK/mount.toml" "$MNT" --daemon --metrics-addr "$ADDR" >/dev/null
PID=$(pgrep -nf "zmount $WORK/mount.toml")

# counters NAME: "op=count ..." for requests, or the bytes total of a byte counter.
snapshot() { curl -s "http://$ADDR/metrics" | grep -E '^zmount_provider_(requests|written_bytes|read_bytes|retries)_total'; }
report() {
  local step=$1 start=$2 end=$3 before=$4 after=$5
  python3 - "$step" "$(secs "$start" "$end")" "$TREE_BYTES" <<PY
import re, sys
step, secs, tree = sys.argv[1], sys.argv[2], int(sys.argv[3])
def parse(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r'(\w+)\{([^}]*)\} (\S+)', line)
        if m:
            op = re.search(r'op="([^"]+)"', m.group(2))
            key = (m.group(1), op.group(1) if op else "")
            out[key] = out.get(key, 0) + float(m.group(3))
    return out
b, a = parse("""$before"""), parse("""$after""")
d = {k: a.get(k, 0) - b.get(k, 0) for k in a}
reqs = {k[1]: int(v) for k, v in d.items() if k[0] == "zmount_provider_requests_total" and v}
w = d.get(("zmount_provider_written_bytes_total", ""), 0)
r = d.get(("zmount_provider_read_bytes_total", ""), 0)
t = int(d.get(("zmount_provider_retries_total", ""), 0))
print(f"{step:<28} {secs:>9} s  written {w/1e6:8.1f} MB ({w/tree:4.2f}x tree)  read {r/1e6:8.1f} MB  requests {sum(reqs.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(reqs.items())) + f"; sent again {t}")
PY
}
# Both upload gauges at 0: every version written is on the provider (write-back routes upload in the background).
idle() { [ "$(curl -s "http://$ADDR/metrics" | grep -cE '^zmount_uploads_(pending|running) 0$')" = 2 ]; }
step() {
  local name=$1; shift
  local before after start end
  before=$(snapshot); start=$(now)
  "$@" >/dev/null 2>&1
  until idle; do sleep 0.1; done
  end=$(now); after=$(snapshot)
  report "$name" "$start" "$end" "$before" "$after"
}

echo "tree: $FILES files, $((TREE_BYTES / 1000000)) MB; S3 route, write_back = $WRITE_BACK"
step "rsync -a (first)" rsync -a "$TREE/" "$MNT/tree/"
step "rsync -a (again: no-op)" rsync -a "$TREE/" "$MNT/tree/"
G="git -C $MNT/repo -c user.name=b -c user.email=b@example.com"
mkdir -p "$MNT/repo"
cp -r "$TREE/d00" "$MNT/repo/"
step "git init + add + commit" bash -c "$G init -q && $G add -A && $G commit -qm one"
step "git mv + commit" bash -c "$G mv d00 d01 && $G commit -qm two"
step "git gc" $G gc -q
step "git fsck" $G fsck
step "git checkout HEAD~1" $G checkout -q HEAD~1
echo "daemon peak RSS: $(peak_rss) MiB"
fusermount3 -u "$MNT"
