"""Synthetic long videos for moment retrieval (`evilm data synth OUT --long N`): each video is a
sequence of scenes of the synthetic clips (prepare/synth.py: shapes moving over a background,
the motion spread over the scene), a few seconds each, cut one after the other, and every
scene's caption is a moment: (video, caption, start, end).

Layout of `generate_long(out_dir)`:

    out_dir/videos/long_00000.mp4 ...   H.264 yuv420p, written frame by frame
    out_dir/moments.jsonl               {video, caption, start, end, split: "test"}, one per scene
    out_dir/long.json                   parameters and, per video, its duration and scenes (start, end, caption)

Scene lengths are whole frames, so boundaries fall on frame times. The captions of one video
are distinct (up to the order two shapes are named in), so each query has one true moment in
its video. Video v is planned from SeedSequence([seed, LONG_STREAM, v]) (apart from the clips'
[seed, i]): byte-identical output for a seed whatever the worker count.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from evilm_core.data.video.write import mp4_writer
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text, write_jsonl
from evilm_core.prepare.synth import Scene, caption_of, render, run_jobs, sample_scene, scene_key

LONG_STREAM = 7919  # the random stream of long videos (SeedSequence entropy beside the seed)
_MAX_REDRAWS = 100


@dataclass(frozen=True)
class LongPlan:
    video: str  # path relative to the output directory
    fps: int  # frames per second
    scenes: tuple[Scene, ...]  # in order; scene.frames is its length
    captions: tuple[str, ...]  # one per scene, distinct within the video

    def bounds(self) -> list[tuple[float, float]]:
        """(start, end) of each scene in seconds."""
        edges = np.concatenate([[0], np.cumsum([s.frames for s in self.scenes])]) / self.fps
        return [(float(a), float(b)) for a, b in itertools.pairwise(edges)]


def plan_long(index: int, seed: int, size: int, fps: int, scenes: tuple[int, int],
              seconds: tuple[float, float]) -> LongPlan:
    """Video `index`: between scenes[0] and scenes[1] scenes of seconds[0] to seconds[1] seconds."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, LONG_STREAM, index]))
    count = int(rng.integers(scenes[0], scenes[1] + 1))
    low, high = max(2, round(seconds[0] * fps)), max(2, round(seconds[1] * fps))
    chosen, seen = [], set()
    for _ in range(count):
        frames = int(rng.integers(low, high + 1))
        for _ in range(_MAX_REDRAWS):
            scene = sample_scene(rng, size, frames)
            if scene_key(scene) not in seen:
                break
        seen.add(scene_key(scene))
        chosen.append(scene)
    return LongPlan(f"videos/long_{index:05d}.mp4", fps, tuple(chosen), tuple(caption_of(s) for s in chosen))


def _write_long(job: tuple[str, LongPlan]) -> str:
    path, plan = job
    size = plan.scenes[0].size
    with mp4_writer(path, size, size, plan.fps) as write:
        for scene in plan.scenes:
            for frame in render(scene):
                write(frame)
    return path


def _check(num_videos: int, size: int, fps: int, scenes: tuple[int, int], seconds: tuple[float, float]) -> None:
    if num_videos < 1:
        raise EvilmError(f"--long {num_videos}: write at least one long video")
    if size < 32 or size % 2:
        raise EvilmError(f"--size {size}: must be even and at least 32 (H.264 yuv420p)")
    if not 1 <= scenes[0] <= scenes[1]:
        raise EvilmError(f"--min-scenes {scenes[0]} --max-scenes {scenes[1]}: need 1 <= min <= max")
    if not 0 < seconds[0] <= seconds[1]:
        raise EvilmError(f"--min-scene-seconds {seconds[0]} --max-scene-seconds {seconds[1]}: need 0 < min <= max")
    if fps < 1:
        raise EvilmError(f"--fps {fps}: must be at least 1")


def generate_long(out_dir: str | os.PathLike, num_videos: int, seed: int = 0, size: int = 128, fps: int = 8,
                  scenes: tuple[int, int] = (5, 12), seconds: tuple[float, float] = (2.0, 6.0),
                  workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write `num_videos` long videos and their moment manifest under `out_dir` (module docstring)."""
    _check(num_videos, size, fps, scenes, seconds)
    began, out = time.perf_counter(), Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    plans = [plan_long(i, seed, size, fps, scenes, seconds) for i in range(num_videos)]
    run_jobs(_write_long, [(str(out / p.video), p) for p in plans], workers or os.cpu_count() or 1, progress)
    moments = [{"video": p.video, "caption": c, "start": a, "end": b, "split": "test"}
               for p in plans for c, (a, b) in zip(p.captions, p.bounds())]
    write_jsonl(moments, out / "moments.jsonl")
    videos = [{"video": p.video, "duration": p.bounds()[-1][1],
               "scenes": [{"start": a, "end": b, "caption": c} for c, (a, b) in zip(p.captions, p.bounds())]}
              for p in plans]
    meta = {"generator": "evilm_core.prepare.synth_long", "version": 1,
            "params": {"long": num_videos, "seed": seed, "size": size, "fps": fps, "scenes": list(scenes),
                       "scene_seconds": list(seconds)},
            "videos": videos}
    atomic_write_text(out / "long.json", json.dumps(meta, indent=2) + "\n")
    return {"out_dir": str(out), "videos": num_videos, "moments": len(moments),
            "seconds_of_video": round(sum(v["duration"] for v in videos), 3),
            "seconds": round(time.perf_counter() - began, 3), "manifest": str(out / "moments.jsonl"),
            "meta": str(out / "long.json")}
