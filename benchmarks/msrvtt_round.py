"""An MSRVTT-1k-A-sized retrieval round with the paper-size model, end to end through `evilm`.

    python benchmarks/msrvtt_round.py --work /tmp/evilm-1k --out docs/msrvtt_round.json
    python benchmarks/msrvtt_round.py --precisions bf16 --paths checkpoint,export --rounds 2   # old vs new path

Makes 1,000 H.264 clips of 320x240 at 25 fps, 10-15 s long (x264 ultrafast, keyframe every 250 frames, x264's
default, the costly case for seeking), a paper-size E-ViLM (random weights: the cost does not
depend on them) and 1,000 captions; then times `evilm retrieve index` (4 frames per clip) and
`evilm retrieve query` of the 1,000 captions from stdin, --precision fp32 and bf16 (the
precisions interleaved when --rounds > 1), with the commands' own defaults for --workers,
--batch-size and --threads unless given. Per stage, measured in-process on a sample with one
thread: decode, video encode (4 clips per forward, as the CPU index does), text encode, search;
the command lines give the end-to-end wall time.

--paths: `checkpoint` indexes and queries with the checkpoint (PyTorch; the path before issue
33), `export` with its `evilm export` (made once in --work): the index in the runtime `auto`
picks (OpenVINO in bf16 where installed), the queries in onnxruntime (`retrieve query`'s fp32
default). Paths and precisions are interleaved per round; the stages add each runtime's video
encode per clip (autocast, bf16 weights, onnxruntime, OpenVINO).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _loading_clips import make_clip  # noqa: E402

from evilm_core.checkpoints import files as ckpt  # noqa: E402
from evilm_core.data.video.read import read_frames, segment_indices  # noqa: E402
from evilm_core.models.scoring import in_chunks  # noqa: E402
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


def make_export(work: Path, model: Path) -> Path:
    export = work / "paper_export"
    if not (export / "export.json").is_file():
        subprocess.run([EXE, "export", str(model), "--out", str(export), "--format", "onnx"], check=True,
                       capture_output=True, text=True)
    return export


def _timed(fn, pixels: torch.Tensor) -> float:
    fn(pixels)  # warm-up (OpenVINO compiles on its first call)
    t = time.perf_counter()
    fn(pixels)
    return round((time.perf_counter() - t) / len(pixels), 4)


def runtime_rows(export: Path, pixels: torch.Tensor) -> dict:
    """The export's video encode per clip, one thread, in each runtime that is installed."""
    from evilm_core.export.runtime import ExportedTowers
    from evilm_core.retrieval.build import embed_clips
    from evilm_core.retrieval.sides import Tower

    out = {}
    for runtime, precision in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")):
        try:
            towers = ExportedTowers.open(export, 1, runtime, precision)
            side = Tower("export", export, "", 0, 0, 0, 4, towers.embed_video)
            out[f"video_encode_s_per_clip_{runtime}_{precision}"] = _timed(partial(embed_clips, side), pixels)
        except Exception as err:  # a runtime that is not installed
            print(f"{runtime} {precision}: {err}", file=sys.stderr)
    return out


def stage_rows(work: Path, model: Path, sample: int, export: Path | None = None) -> dict:
    """Per-stage cost on `sample` clips/captions in this process, one thread (a core's figure)."""
    import copy

    from evilm_core.data.transforms import normalize
    from evilm_core.models.loading import for_precision
    from evilm_core.retrieval.build import embed_clips
    from evilm_core.retrieval.sides import open_video_side
    from evilm_core.settings import RunSettings

    torch.set_num_threads(1)

    paths = sorted((work / "videos").glob("*.mp4"))[:sample]
    t = time.perf_counter()
    clips = [read_frames(str(p), lambda n: segment_indices(n, 4, "eval"), size=256).frames for p in paths]
    decode = (time.perf_counter() - t) / len(paths)
    side = open_video_side(model, RunSettings(threads=1))
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
    weights = for_precision(copy.deepcopy(net), "bf16")  # the bf16 path since issue 33: bf16 weights under autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out["video_encode_s_per_clip_bf16_weights"] = _timed(lambda x: in_chunks(weights.embed_video, x), pixels)
    if export is not None:
        out.update(runtime_rows(export, pixels))
    emb = torch.nn.functional.normalize(torch.randn(1000, net.cfg.embed_dim), dim=1)
    t = time.perf_counter()
    (emb @ emb.T).topk(10, dim=1)
    out["search_s_1000_queries"] = round(time.perf_counter() - t, 4)
    return out


def run_round(work: Path, model: Path, precision: str, workers: int | None, tag: str,
              batch_size: int | None = None, path: str = "checkpoint") -> dict:
    """One `retrieve index` + `retrieve query` round; `model` is the checkpoint or the export (path)."""
    index = work / f"index-{path}-{precision}-{tag}"
    if index.exists():
        shutil.rmtree(index)  # a fresh index each time: an existing one would only be extended
    t = time.perf_counter()
    given = [*(["--workers", str(workers)] if workers is not None else []),
             *(["--batch-size", str(batch_size)] if batch_size is not None else [])]
    subprocess.run([EXE, "retrieve", "index", "--checkpoint", str(model), "--videos", str(work / "videos"), "--out",
                    str(index), "--precision", precision, *given], check=True, capture_output=True, text=True)
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    query_precision = precision if path == "checkpoint" else "fp32"  # an export's queries: onnxruntime fp32
    proc = subprocess.run([EXE, "retrieve", "query", "--index", str(index), "-k", "10", "--precision",
                           query_precision], input=(work / "captions.txt").read_text(), check=True,
                          capture_output=True, text=True)
    query_s = time.perf_counter() - t
    assert len(proc.stdout.splitlines()) == 10 * len((work / "captions.txt").read_text().splitlines())
    made = yaml.safe_load((index / "index.yaml").read_text())
    return {"path": path, "precision": precision, "runtime": made.get("runtime"), "index_s": round(index_s, 1),
            "query_s": round(query_s, 1), "total_s": round(index_s + query_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/evilm-1k"))
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--workers", type=int, help="--workers of `retrieve index` (default: its own, auto)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated, run in this order per round")
    parser.add_argument("--batch-size", type=int, help="--batch-size of `retrieve index` (default: its own)")
    parser.add_argument("--no-stages", action="store_true", help="skip the in-process per-stage figures")
    parser.add_argument("--paths", default="checkpoint", help="comma-separated: checkpoint, export (see above)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    t = time.perf_counter()
    model = make_data(args.work, args.clips, 2)
    precisions = [p for p in args.precisions.split(",") if p]
    paths = [p for p in args.paths.split(",") if p]
    sources = {"checkpoint": model, **({"export": make_export(args.work, model)} if "export" in paths else {})}
    result = {"clips": args.clips, "make_data_s": round(time.perf_counter() - t, 1), "workers": args.workers,
              "batch_size": args.batch_size, "load_before": os.getloadavg(),
              "stages": {} if args.no_stages else stage_rows(args.work, model, 16, sources.get("export")),
              "rounds": []}
    print(json.dumps(result["stages"]))
    for r in range(args.rounds):
        for path in paths:
            for p in precisions:
                row = run_round(args.work, sources[path], p, args.workers, str(r), args.batch_size, path)
                result["rounds"].append(row)
                print(json.dumps(row))
    for path in paths:
        for p in precisions:
            name = f"median_total_s_{p}" + ("" if paths == ["checkpoint"] else f"_{path}")
            result[name] = statistics.median(r["total_s"] for r in result["rounds"]
                                             if r["precision"] == p and r["path"] == path)
    result["load_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("median")}))


if __name__ == "__main__":
    main()
