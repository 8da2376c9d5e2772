"""The merge rule of moments, measured (docs/benchmarks.md, "Moments"): for a retrieval checkpoint
and synthetic long videos, R@1 / R@5 at IoU 0.5 and 0.7 and mIoU of the merged moments for each
`merge` value, next to fixed windows without merging, per window setting; the validation set
chooses, the test set reports.

    evilm data synth data/long-val --long 12 --size 96 --seed 1
    evilm data synth data/long-test --long 12 --size 96 --seed 0
    python benchmarks/moments_merge.py --checkpoint quickstart/retrieval --val data/long-val/moments.jsonl \\
        --test data/long-test/moments.jsonl --out docs/moments_merge.json

Window embeddings are computed once per window setting (finetune/moments.py, the code
`evilm evaluate` runs), then every merge value is scored on them; one thread, fp32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evilm_core.data.clips import open_clips
from evilm_core.data.windows import WindowSpec
from evilm_core.evaluation.moments import fixed_windows, mean_scores, propose_moments, query_scores
from evilm_core.finetune.moments import embed_videos, ground_truths
from evilm_core.models.loading import load_checkpoint
from evilm_core.settings import RunSettings
from evilm_core.text.tokens import TextTokens

SETTINGS = ((4.0, 2.0), (3.0, 1.0), (2.0, 1.0))  # (window, stride) seconds
MERGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
KEYS = ("R@1_IoU0.5", "R@1_IoU0.7", "R@5_IoU0.5", "mIoU")


def score_split(net, tokens, manifest: str, window: float, stride: float, frames: int, size: int) -> dict:
    source = open_clips(manifest, key="--val/--test")
    videos = list(dict.fromkeys(r.video for r in source.records))
    embedded, _ = embed_videos(net, source, videos, WindowSpec(window, stride, frames), size, 0,
                               RunSettings("cpu", "fp32", 1, "pyav"))
    truths = ground_truths(source.records, embedded, {"skipped_moments": 0, "clipped_moments": 0})
    queries = list(truths)
    ids, mask = tokens.batch([caption for _, caption in queries])
    with torch.no_grad():
        text = net.embed_text(ids, mask).numpy()

    def rows(propose) -> dict:
        out = [query_scores(propose(embedded[v][0].numpy() @ q, embedded[v][1].times), truths[v, c])
               for (v, c), q in zip(queries, text)]
        return {k: round(v, 2) for k, v in mean_scores(out).items() if k in KEYS}

    result = {"fixed": rows(lambda s, t: fixed_windows(s, t, 5))}
    for merge in MERGES:
        result[f"merge {merge}"] = rows(lambda s, t, m=merge: propose_moments(s, t, 5, m))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_checkpoint(args.checkpoint)
    net = loaded.model.eval()
    tokens = TextTokens(loaded.directory, net.cfg.max_text_len)
    result = {}
    for window, stride in SETTINGS:
        for split, manifest in (("val", args.val), ("test", args.test)):
            rows = score_split(net, tokens, manifest, window, stride, 4, net.cfg.image_size)
            result[f"{split} window {window:g} s stride {stride:g} s"] = rows
            for name, row in rows.items():
                print(f"{split:4s} W{window:g}/S{stride:g} {name:11s} " + "  ".join(f"{k} {v:5.1f}"
                                                                                   for k, v in row.items()))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
