"""Query latency of `evilm retrieve query` against a large index, on the CPU.

    python benchmarks/retrieve_query.py --checkpoint quickstart/retrieval --videos 1000000

Builds an index of N random unit vectors with the checkpoint's embedding size (the search cost
does not depend on what the vectors are), recorded as made by that checkpoint so the real query
path runs: hash check, text side loaded from safetensors, memory-mapped rows, chunked top-k.
Reports the time to open the index and load the text side, and per-query latency (first query,
when the rows are paged in, and the median of the following ones).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from evilm_core.checkpoints import files as ckpt
from evilm_core.models.pretrained import checkpoint_model_config
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.retrieval.index import FORMAT, IndexMeta, write_meta
from evilm_core.retrieval.query import Searcher

QUERIES = ["a red circle moves left on a black background", "a blue star grows while a white square shrinks",
           "a green triangle moves up on a gray background", "a yellow square moves down on a navy background"]


def make_index(directory: Path, checkpoint: Path, n: int) -> None:
    cfg = checkpoint_model_config(checkpoint)
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(n, cfg.embed_dim, generator=g), dim=1)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": emb}, str(directory / "embeddings.safetensors"))
    (directory / "keys.txt").write_text("".join(f"videos/{i:07d}.mp4\n" for i in range(n)))
    meta = IndexMeta(FORMAT, ckpt.file_sha256(checkpoint / ckpt.WEIGHTS), str(checkpoint.absolute()),
                     cfg.embed_dim, 4, cfg.image_size, str(directory), n)
    write_meta(directory, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    checkpoint = resolve_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        t0 = time.perf_counter()
        make_index(index, checkpoint, args.videos)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        searcher = Searcher(index)
        open_s = time.perf_counter() - t0
        lat = []
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            searcher.search([QUERIES[i % len(QUERIES)]], 10)
            lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).with_name("evilm")), "retrieve", "query", "--index", str(index),
                               "-k", "10", QUERIES[0]], capture_output=True, text=True)
        cli_s = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr
    print(json.dumps({"videos": args.videos, "embed_dim": searcher.index.meta.embed_dim,
                      "threads": torch.get_num_threads(), "write_index_s": round(build_s, 2),
                      "open_index_and_text_side_s": round(open_s, 3), "first_query_s": round(lat[0], 3),
                      "median_query_s": round(statistics.median(lat[1:]), 4),
                      "cli_process_wall_s": round(cli_s, 2)}))


if __name__ == "__main__":
    main()
