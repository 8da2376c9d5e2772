"""An MSRVTT-1k-A-sized retrieval round with the paper-size model, end to end through `evilm`.

    python benchmarks/msrvtt_round.py --work /tmp/evilm-1k --out docs/msrvtt_round.json

Makes 1,000 H.264 clips of 320x240 at 25 fps, 10-15 s long (x264 ultrafast, keyframe every 250 frames, x264's
default, the costly case for seeking), a paper-size E-ViLM (random weights: the cost does not
depend on them) and 1,000 captions; then times `evilm retrieve index` (4 frames per clip) and
`evilm retrieve query` of the 1,000 captions from stdin, --precision fp32 and bf16 (the
precisions interleaved when --rounds > 1), with the commands' own defaults for --workers,
--batch-size and --threads unless given. Per stage, measured in-process on a sample with one
thread: decode, video encode (4 clips per forward, as the CPU index does), text encode, search;
the command lines give the end-to-end wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _loading_clips import make_clip  # noqa: E402

from evilm_core.checkpoints import files as ckpt  # noqa: E402
from evilm_core.data.video.read import read_frames, segment_indices  # noqa: E402
from evilm_core.text.vocab import build_vocab  # noqa: E402
from evilm_core.models.config import EViLMConfig  # noqa: E402
from evilm_core.models.evilm import EViLM  # noqa: E402

EXE = str(Path(sys.executable).with_name("evilm"))
COLOURS = "red green blue yellow white black orange purple gray pink".split()
SHAPES = "circle square triangle star box ball car dog person bird".split()


def caption(i: int) -> str:
    return f"a {COLOURS[i % 10]} {SHAPES[i // 10 % 10]} moves across the {COLOURS[i // 100 % 10]} scene"


def _make(args: tuple[Path, int]) -> None:
    path, i = args
    if not path.exists():
        make_clip(path, gop=250, seed=i, size=(320, 240), seconds=10 + (i % 6), preset="ultrafast")


def make_data(work: Path, n: int, workers: int) -> Path:
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_make, [(videos / f"{i:05d}.mp4", i) for i in range(n)], chunksize=8))
    (work / "captions.txt").write_text("".join(caption(i) + "\n" for i in range(n)))
    model = work / "paper_model"
    if not (model / ckpt.WEIGHTS).is_file():
        vocab = build_vocab([caption(i) for i in range(n)])
        torch.manual_seed(0)
        net = EViLM(EViLMConfig.sized("paper", vocab_size=len(vocab)))
        ckpt.write_checkpoint(model, net.state_dict(), {"format": "evilm-model/1", "model": net.cfg}, vocab)
    return model


def stage_rows(work: Path, model: Path, sample: int) -> dict:
    """Per-stage cost on `sample` clips/captions in this process, one thread (a core's figure)."""
    from evilm_core.data.transforms import normalize
    from evilm_core.retrieval.build import embed_clips
    from evilm_core.retrieval.sides import open_video_side

    torch.set_num_threads(1)

    paths = sorted((work / "videos").glob("*.mp4"))[:sample]
    t = time.perf_counter()
    clips = [read_frames(str(p), lambda n: segment_indices(n, 4, "eval"), size=256).frames for p in paths]
    decode = (time.perf_counter() - t) / len(paths)
    side = open_video_side(model)
    net = side.model.eval()  # its text side is timed too
    pixels = torch.stack([normalize(c) for c in clips[:8]])  # [8, 4, 3, 256, 256]
    ids = torch.randint(5, net.cfg.vocab_size, (64, 24))
    out = {"decode_s_per_clip": round(decode, 4)}
    for p in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
            embed_clips(side, pixels)  # warm-up
            t = time.perf_counter()
            embed_clips(side, pixels)
            out[f"video_encode_s_per_clip_{p}"] = round((time.perf_counter() - t) / 8, 4)
            net.embed_text(ids, torch.ones_like(ids))
            t = time.perf_counter()
            net.embed_text(ids, torch.ones_like(ids))
            out[f"text_encode_s_per_caption_{p}"] = round((time.perf_counter() - t) / 64, 5)
    emb = torch.nn.functional.normalize(torch.randn(1000, net.cfg.embed_dim), dim=1)
    t = time.perf_counter()
    (emb @ emb.T).topk(10, dim=1)
    out["search_s_1000_queries"] = round(time.perf_counter() - t, 4)
    return out


def run_round(work: Path, model: Path, precision: str, workers: int | None, tag: str,
              batch_size: int | None = None) -> dict:
    index = work / f"index-{precision}-{tag}"
    if index.exists():
        shutil.rmtree(index)  # a fresh index each time: an existing one would only be extended
    t = time.perf_counter()
    given = [*(["--workers", str(workers)] if workers is not None else []),
             *(["--batch-size", str(batch_size)] if batch_size is not None else [])]
    subprocess.run([EXE, "retrieve", "index", "--checkpoint", str(model), "--videos", str(work / "videos"), "--out",
                    str(index), "--precision", precision, *given], check=True, capture_output=True, text=True)
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    proc = subprocess.run([EXE, "retrieve", "query", "--index", str(index), "-k", "10", "--precision", precision],
                          input=(work / "captions.txt").read_text(), check=True, capture_output=True, text=True)
    query_s = time.perf_counter() - t
    assert len(proc.stdout.splitlines()) == 10 * len((work / "captions.txt").read_text().splitlines())
    return {"precision": precision, "index_s": round(index_s, 1), "query_s": round(query_s, 1),
            "total_s": round(index_s + query_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/evilm-1k"))
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--workers", type=int, help="--workers of `retrieve index` (default: its own, auto)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated, run in this order per round")
    parser.add_argument("--batch-size", type=int, help="--batch-size of `retrieve index` (default: its own)")
    parser.add_argument("--no-stages", action="store_true", help="skip the in-process per-stage figures")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    t = time.perf_counter()
    model = make_data(args.work, args.clips, 2)
    precisions = [p for p in args.precisions.split(",") if p]
    result = {"clips": args.clips, "make_data_s": round(time.perf_counter() - t, 1), "workers": args.workers,
              "batch_size": args.batch_size, "stages": {} if args.no_stages else stage_rows(args.work, model, 16),
              "rounds": []}
    print(json.dumps(result["stages"]))
    for r in range(args.rounds):
        for p in precisions:
            row = run_round(args.work, model, p, args.workers, str(r), args.batch_size)
            result["rounds"].append(row)
            print(json.dumps(row))
    for p in precisions:
        result[f"median_total_s_{p}"] = statistics.median(r["total_s"] for r in result["rounds"] if r["precision"] == p)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("median")}))


if __name__ == "__main__":
    main()
