"""onnxruntime vs PyTorch for the two towers: clips/s and queries/s, one thread and all threads.

    python benchmarks/onnx_vs_torch.py --checkpoint quickstart/retrieval --export quickstart/export

Same model both ways (an `evilm export --format onnx` of the checkpoint), same inputs, fp32,
in-process; variants interleaved (torch, onnx, torch, onnx, ...) and medians of `--repeats`
timed calls after a warm-up, per thread count. The towers are the ones retrieval runs
(evilm_core/retrieval/sides.py): the checkpoint's EViLM and the export's onnxruntime sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from evilm_core.export.runtime import ExportedTowers
from evilm_core.models.loading import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from precision_threads import timed  # noqa: E402  (median of timed calls after a warm-up)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    net = load_checkpoint(args.checkpoint).model.eval()
    towers = ExportedTowers.open(args.export)
    cfg, gen = net.cfg, torch.Generator().manual_seed(0)
    pixels = torch.randn(16, towers.num_frames, 3, towers.image_size, towers.image_size, generator=gen)
    ids = torch.randint(5, cfg.vocab_size, (64, towers.max_text_len), generator=gen)
    mask = torch.ones_like(ids)
    onnx_inputs = {"video": (pixels.numpy(),), "one": (ids[:1].numpy(), mask[:1].numpy()),
                   "batch": (ids.numpy(), mask.numpy())}
    cases = [("video side, batch 16 (clips/s)", 16, "video", lambda: net.embed_video(pixels)),
             ("text side, one query (queries/s)", 1, "one", lambda: net.embed_text(ids[:1], mask[:1])),
             ("text side, batch 64 (queries/s)", 64, "batch", lambda: net.embed_text(ids, mask))]
    rows = []
    for threads in (1, max(2, torch.get_num_threads())):
        torch.set_num_threads(threads)
        towers = ExportedTowers.open(args.export)  # sessions take the thread count when created
        for name, n, kind, run_torch in cases:
            embed = towers.embed_video if kind == "video" else towers.embed_text
            run_onnx = lambda embed=embed, a=onnx_inputs[kind]: embed(*a)  # noqa: E731
            t_torch, t_onnx = [], []
            with torch.inference_mode():
                for _ in range(2):  # A, B, A, B
                    t_torch.append(timed(run_torch, args.repeats))
                    t_onnx.append(timed(run_onnx, args.repeats))
            row = {"path": name, "threads": threads, "torch_per_s": round(n / statistics.median(t_torch), 1),
                   "onnx_per_s": round(n / statistics.median(t_onnx), 1)}
            row["onnx_speedup"] = round(row["onnx_per_s"] / row["torch_per_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    with torch.inference_mode():
        diff = float(np.abs(net.embed_text(ids, mask).numpy() - towers.embed_text(ids.numpy(), mask.numpy())).max())
    result = {"rows": rows, "text_max_abs_diff": diff, "torch": torch.__version__}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
