"""Decoder backends (docs/benchmarks.md, "Decoders"): ms per clip to sample sparse frames.

WebVid-like clips (596x336, 25 fps, 15 s, H.264 with B-frames; benchmarks/_loading_clips.py) with
a keyframe every 25 or 250 frames; T = 4 and 8 frames by segment centres (`read_clip`, eval),
resized to 256 x 256 in the decoder, one clip per reader, as the training loop decodes. One
thread throughout (OMP_NUM_THREADS=1, torch.set_num_threads(1), each backend's one decoding
thread). Variants are interleaved (A, B, C, A, B, C, ...) so a busy machine slows all alike;
the table gives medians, and the max / mean absolute pixel difference to decord's frames.

    OMP_NUM_THREADS=1 python benchmarks/decoders.py --repeats 5 --clips 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _loading_clips import describe, make_clip  # noqa: E402
from evilm_core.data.video.read import AUTO_ORDER, unavailable
from evilm_core.data.video.read import read_clip  # noqa: E402

SIZE = 256


def measure(clips: list[Path], backends: list[str], frames: int, repeats: int) -> dict:
    """{backend: {"ms": median ms per clip, "max_diff", "mean_diff"}} for one (gop, T) cell."""
    times = {b: [] for b in backends}
    for _ in range(repeats):
        for clip in clips:
            for b in backends:  # interleaved: A, B, C, A, B, C
                tic = time.perf_counter()
                read_clip(clip, frames, SIZE, decoder=b)
                times[b].append((time.perf_counter() - tic) * 1000)
    out = {}
    for b in backends:
        diffs = []
        for clip in clips:
            if "decord" in backends:
                ref = read_clip(clip, frames, SIZE, decoder="decord").frames.astype(int)
                diffs.append(np.abs(read_clip(clip, frames, SIZE, decoder=b).frames.astype(int) - ref))
        out[b] = {"ms": round(statistics.median(times[b]), 1),
                  "max_diff": int(max(d.max() for d in diffs)) if diffs else None,
                  "mean_diff": round(float(np.mean([d.mean() for d in diffs])), 3) if diffs else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clips", type=int, default=2, help="clips per keyframe interval")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    backends = [b for b in ("decord", "pyav", "torchcodec") if unavailable(b) is None]
    missing = {b: unavailable(b) for b in ("decord", "pyav", "torchcodec") if b not in backends}
    rows, described = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for gop in (25, 250):
            clips = []
            for i in range(args.clips):
                path = Path(tmp) / f"gop{gop}_{i}.mp4"
                make_clip(path, gop, seed=100 + i)
                clips.append(path)
            described[gop] = [describe(p) for p in clips]
            for frames in (4, 8):
                result = measure(clips, backends, frames, args.repeats)
                rows.append({"keyframe_every": gop, "frames": frames, **result})
                print(json.dumps(rows[-1]), flush=True)
    report = {"rows": rows, "backends": backends, "not_available": missing, "auto_order": list(AUTO_ORDER),
              "clips": described, "repeats": args.repeats, "threads": torch.get_num_threads()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        cells = "  ".join(f"{b} {row[b]['ms']} ms (diff max {row[b]['max_diff']}, mean {row[b]['mean_diff']})"
                          for b in backends)
        print(f"keyframe every {row['keyframe_every']}, T={row['frames']}: {cells}")


if __name__ == "__main__":
    main()
