"""Opening a 10M-key index: wall time and resident memory of `IndexView` (and one key lookup).

    python benchmarks/open_index.py --keys 10000000 --work /tmp/evilm-open

Resident memory after the lookups counts the file pages the kernel maps around each touched
key (shared page cache, dropped under pressure); anonymous memory is the process's own.

Writes keys.txt + keys.offsets as consolidation does (`write_keys`), and an embeddings file of
[N, 256] float32 whose rows are a sparse hole (opening maps it and never reads the rows; a
query would page them in). Then, in a fresh process: time to open, resident memory before and
after, the time of 1,000 random key lookups. Also the old layout (no keys.offsets: one scan).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROBE = r"""
import json, os, random, resource, sys, time
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
def anon():
    line = next(l for l in open('/proc/self/status') if l.startswith('RssAnon'))
    return int(line.split()[1]) / 1024
from evilm_core.retrieval.index import IndexView
before, anon_before = rss(), anon(); t = time.perf_counter()
view = IndexView(sys.argv[1])
opened = time.perf_counter() - t
rows = random.Random(0).sample(range(len(view)), 1000)
t = time.perf_counter(); keys = [view.keys[r] for r in rows]; lookup = (time.perf_counter() - t) / 1000
print(json.dumps({"keys": len(view), "open_s": round(opened, 4), "rss_before_mib": round(before, 1),
                  "rss_after_mib": round(rss(), 1),
                  "anon_growth_mib": round(anon() - anon_before, 1), "lookup_us": round(lookup * 1e6, 2), "example": keys[0]}))
"""


def write_index(directory: Path, n: int, dim: int = 256) -> None:
    import struct

    from evilm_core.retrieval.index import FORMAT, IndexMeta, write_meta
    from evilm_core.retrieval.keys import write_keys

    directory.mkdir(parents=True, exist_ok=True)
    write_keys(directory / "keys.txt", (f"webvid/videos/{i // 1000:06d}/{i:09d}.mp4" for i in range(n)), offsets=True)
    header = json.dumps({"embeddings": {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, 4 * n * dim]}})
    header += " " * (-len(header) % 8)
    with open(directory / "embeddings.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header.encode())
        fh.truncate(8 + len(header) + 4 * n * dim)  # a sparse hole: no disk blocks, no page reads
    write_meta(directory, IndexMeta(FORMAT, "0" * 64, "/nonexistent", dim, 4, 256, str(directory), n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/evilm-open"))
    args = parser.parse_args()
    index = args.work / f"index-{args.keys}"
    if not (index / "index.yaml").is_file():
        t = time.perf_counter()
        write_index(index, args.keys)
        print(f"wrote {index} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {"with_offsets": json.loads(subprocess.run([sys.executable, "-c", PROBE, str(index)], env=env,
                                                         capture_output=True, text=True, check=True).stdout)}
    offsets = index / "keys.offsets"
    offsets.rename(offsets.with_suffix(".away"))
    try:
        results["without_offsets"] = json.loads(subprocess.run([sys.executable, "-c", PROBE, str(index)], env=env,
                                                               capture_output=True, text=True, check=True).stdout)
    finally:
        offsets.with_suffix(".away").rename(offsets)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
