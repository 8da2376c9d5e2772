"""Indexing long videos window by window: 1 hour of 320x240 H.264 with 4-second windows at a
2-second stride, paper-size model (random weights: the cost does not depend on them), bf16,
2 CPU threads, through `evilm retrieve index --window 4 --stride 2` (docs/benchmarks.md, "Moments").

    python benchmarks/moments_hour.py --work /tmp/evilm-hour --out docs/moments_hour.json

Makes SOURCES clips of SOURCE_SECONDS s (320x240, 30 fps, x264 `medium` with its B-frames, a
keyframe every 250 frames: a panning texture and moving boxes, benchmarks/_loading_clips.py)
and concatenates their packets with PyAV, without re-encoding, into one video per length asked
(default 10 and 60 minutes); then times the command on each, shortest first, `--rounds` times,
lengths interleaved. Reported per run: wall time, real-time factor (video seconds per wall
second; the goal is 15x for the hour), and the decode and encode shares of the work (the
workers' summed decode and embed seconds, from the command's --json), with `uptime` before and
after (the machine's load). In-process on one thread, one span (32 windows, 66 frames) of the
video: decode, embed with the per-frame backbone shared between windows, and embed with every
window running the whole tower on its own 4 frames (what an export does), interleaved A/B/A/B,
medians: what sharing the per-frame work saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _loading_clips import make_clip  # noqa: E402

from evilm_core.checkpoints import files as ckpt  # noqa: E402
from evilm_core.models.config import EViLMConfig  # noqa: E402
from evilm_core.models.evilm import EViLM  # noqa: E402

EXE = str(Path(sys.executable).with_name("evilm"))
SOURCES, SOURCE_SECONDS, FPS, GOP = 12, 20, 30, 250
WINDOW, STRIDE, FRAMES, IMAGE = 4, 2, 4, 256


def source_clips(work: Path) -> list[Path]:
    import _loading_clips

    _loading_clips.FPS = FPS
    clips = []
    for i in range(SOURCES):
        path = work / "sources" / f"{i:02d}.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            make_clip(path, gop=GOP, seed=100 + i, size=(320, 240), seconds=SOURCE_SECONDS)
        clips.append(path)
    return clips


def concatenate(clips: list[Path], seconds: int, out: Path) -> Path:
    """`seconds` of video: the clips' packets one after the other (cycled), timestamps shifted."""
    import av

    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    inputs = [av.open(str(c)) for c in clips]
    extradata = {bytes(i.streams.video[0].codec_context.extradata) for i in inputs}
    assert len(extradata) == 1, "the clips' encoder settings differ: their packets cannot be concatenated"
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream_from_template(inputs[0].streams.video[0])
        for k in range(-(-seconds // SOURCE_SECONDS)):
            source = inputs[k % len(inputs)]
            src = source.streams.video[0]
            source.seek(0)
            shift = round(k * SOURCE_SECONDS / src.time_base)  # each clip lasts SOURCE_SECONDS exactly
            for packet in source.demux(src):
                if packet.dts is None:
                    continue
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                packet.stream = stream
                container.mux(packet)
    for i in inputs:
        i.close()
    tmp.rename(out)
    return out


def paper_model(work: Path) -> Path:
    model = work / "paper_model"
    if not (model / ckpt.WEIGHTS).is_file():
        from evilm_core.text.vocab import build_vocab

        vocab = build_vocab(["a person talks in front of a board", "a car drives along a road at night"])
        torch.manual_seed(0)
        net = EViLM(EViLMConfig.sized("paper", vocab_size=len(vocab)))
        ckpt.write_checkpoint(model, net.state_dict(), {"format": "evilm-model/1", "model": net.cfg}, vocab)
    return model


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def index_once(model: Path, video: Path, seconds: int, out: Path, threads: int) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    before = uptime()
    began = time.perf_counter()
    proc = subprocess.run([EXE, "retrieve", "index", "--checkpoint", str(model), "--videos", str(video.parent),
                           "--out", str(out), "--window", str(WINDOW), "--stride", str(STRIDE), "--precision", "bf16",
                           "--threads", str(threads), "--json"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    work = summary["decode_s"] + summary["embed_s"]
    return {"video_s": seconds, "wall_s": round(wall, 1), "realtime_x": round(seconds / wall, 2),
            "windows": summary["embedded"], "decode_share": round(summary["decode_s"] / work, 3),
            "encode_share": round(summary["embed_s"] / work, 3), "decode_s": round(summary["decode_s"], 1),
            "embed_s": round(summary["embed_s"], 1), "uptime_before": before, "uptime_after": uptime()}


def span_rows(model: Path, video: Path, repeats: int) -> dict:
    """One span on one thread, in this process: decode, shared embedding, unshared embedding."""
    from evilm_core.data.windows import SpanDataset, WindowSpec, plan_windows, probe, spans_of
    from evilm_core.engine.windows import embed_span, split_model, whole_model
    from evilm_core.models.loading import load_checkpoint

    torch.set_num_threads(1)
    net = load_checkpoint(model).model.eval()
    windows = plan_windows(*probe(str(video), "pyav"), WindowSpec(WINDOW, STRIDE, FRAMES))
    span = spans_of("v", str(video), windows)[1]  # not the first: a seek to its keyframe, as a worker does
    cpu = torch.device("cpu")
    shared, whole = split_model(net, cpu, IMAGE, FRAMES), whole_model(net.embed_video, cpu, IMAGE, FRAMES)
    times: dict[str, list[float]] = {"decode": [], "shared": [], "whole": []}
    for _ in range(repeats):
        began = time.perf_counter()
        item = SpanDataset([span], IMAGE, "pyav")[0]
        times["decode"].append(time.perf_counter() - began)
        for name, m in (("shared", shared), ("whole", whole)):
            began = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                embed_span(m, item["frames"], item["frame_of"])
            times[name].append(time.perf_counter() - began)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"windows": span.count, "frames_decoded": int(item["frames"].shape[0]),
            "decode_s": round(med["decode"], 3), "embed_shared_s": round(med["shared"], 3),
            "embed_whole_s": round(med["whole"], 3), "sharing_speedup": round(med["whole"] / med["shared"], 2),
            "uptime": uptime()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/evilm-hour"))
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--span-repeats", type=int, default=3, help="A/B repeats of the in-process span rows (0: skip)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    clips, model = source_clips(args.work), paper_model(args.work)
    videos = {m: concatenate(clips, 60 * m, args.work / f"video_{m}min" / "video.mp4") for m in args.minutes}
    result = {"setup": {"window": WINDOW, "stride": STRIDE, "frames": FRAMES, "image_size": IMAGE, "fps": FPS,
                        "size": "320x240", "gop": GOP, "precision": "bf16", "threads": args.threads,
                        "model": "paper (random weights)"}, "runs": []}
    if args.span_repeats:
        result["span"] = span_rows(model, videos[min(args.minutes)], args.span_repeats)
        print(json.dumps(result["span"]), flush=True)
    for _ in range(args.rounds):
        for m in sorted(args.minutes):
            row = index_once(model, videos[m], 60 * m, args.work / f"index_{m}min", args.threads)
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
