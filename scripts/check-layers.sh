#!/usr/bin/env bash
# Checks that the modules of src/ only look down the layers: prints every reference (`use crate::x`, or a path
# `crate::x::...` in code) from a module to a module of a higher layer, and exits 1 when there is one. Also fails
# when code outside src/providers/ reaches a provider's client directly (`.store`: requests go through
# `ProviderClient`) or a source file grows past 500 lines.
# Layers, bottom up (one line each; modules on one line may use each other):
#   config meta tasks | routing | providers | storage | cache | read | write | images | fs | fuse metrics | transfer | cli
# usage: scripts/check-layers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import pathlib, re, sys
layers = ["config meta tasks", "routing", "providers", "storage", "cache", "read", "write", "images", "fs",
          "fuse metrics", "transfer", "cli"]
rank = {m: i for i, line in enumerate(layers) for m in line.split()}
upward = []
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    parts = path.relative_to("src").parts
    if len(parts) == 1 and parts[0] in ("lib.rs", "main.rs"):
        continue
    if parts[0] == "bin":
        continue
    module = parts[0].removesuffix(".rs")
    if module not in rank:
        print(f"{path}: module `{module}` has no layer in scripts/check-layers.sh", file=sys.stderr)
        sys.exit(2)
    text = path.read_text()
    # Test modules may reach anywhere; only the code above `#[cfg(test)]` counts.
    text = text.split("#[cfg(test)]")[0]
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("//"):
            continue
        for used in re.findall(r"crate::([a-z_]+)", line):
            if used in rank and rank[used] > rank[module]:
                upward.append(f"{path}:{n}: {module} ({layers[rank[module]]}) uses {used} ({layers[rank[used]]})")
for line in upward:
    print(line)
modules = sorted({l.split(" uses ")[0].split(": ")[1].split(" ")[0] + " -> " + l.split(" uses ")[1].split(" ")[0] for l in upward})
print(f"{len(upward)} upward references ({len(modules)} module pairs: {', '.join(modules)})" if upward else "no upward references")
direct, long = [], []
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    lines = path.read_text().splitlines()
    if len(lines) > 500:
        long.append(f"{path}: {len(lines)} lines (more than 500: split it by concern)")
    if path.parts[1] == "providers":
        continue
    for n, line in enumerate(lines, 1):
        if re.search(r"\.store\b", line):
            direct.append(f"{path}:{n}: `.store` outside src/providers/ (requests go through ProviderClient)")
for line in direct + long:
    print(line)
sys.exit(1 if upward or direct or long else 0)
PY
