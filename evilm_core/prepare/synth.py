"""Synthetic video-language data: coloured shapes moving over plain backgrounds.

Each clip shows one or two shapes; the caption, the QA pair, the 5-way multiple-choice
options and the action label are all derived from the same `Scene`, so the pixels fully
determine the text. This is the quickstart's data and the tests' data (docs/design.md, "Data").

Layout of `generate(out_dir)`:

    out_dir/videos/00000.mp4 ...           H.264 yuv420p clips
    out_dir/{train,val,test}.jsonl         {video, caption, question, answer, label, split}
    out_dir/mc_{train,val,test}.jsonl      {video, caption, options, answer (int), split}
    out_dir/synth.json                     generator parameters, vocabulary, split sizes

Frames are plain backgrounds with hard-edged shapes (no noise: it would only cost bitrate
and encoding time). 64 px and up is the intended size; 32 px is the smallest accepted.

Determinism: clip i is planned from `SeedSequence([seed, i])` in the parent process and
rendering is a pure function of the plan, so output is byte-identical for a seed whatever
the worker count. Captions are kept unique within a split (retrieval needs distinct
targets): a scene whose caption collides with an earlier one in its split, also up to the
order the two shapes are named in, is re-drawn from the same clip RNG (up to `_MAX_REDRAWS`
times); a split larger than the caption space keeps the remaining duplicates and
`synth.json` counts them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from evilm_core.data.video.write import write_mp4
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text, write_jsonl
from evilm_core.workers import die_with_parent

# Saturated and far apart in RGB so they survive yuv420p subsampling and resizing.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30), "green": (40, 190, 60), "blue": (40, 80, 240), "yellow": (245, 225, 40),
    "purple": (160, 50, 210), "orange": (255, 140, 0), "white": (245, 245, 245),
}
# Darker than every shape colour so each shape stands out on each background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12), "gray": (120, 120, 120), "brown": (100, 62, 30), "navy": (18, 26, 88),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# motion key (also the QA answer) -> (caption phrase, action label)
MOTIONS: dict[str, tuple[str, str]] = {
    "left": ("moves left", "moving left"),
    "right": ("moves right", "moving right"),
    "up": ("moves up", "moving up"),
    "down": ("moves down", "moving down"),
    "grows": ("grows", "growing"),
    "shrinks": ("shrinks", "shrinking"),
}
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_TWO_OBJECT_P = 0.5  # share of clips with a second object
_MAX_REDRAWS = 100  # re-draws of a scene whose caption already exists in its split
_NUM_OPTIONS = 5


@dataclass(frozen=True)
class ShapeSpec:
    color: str  # key of COLORS
    shape: str  # one of SHAPES
    motion: str  # key of MOTIONS
    start: tuple[float, float]  # centre (x, y) in pixels on the first frame
    end: tuple[float, float]  # centre on the last frame (same as start for grows/shrinks)
    radius: tuple[float, float]  # circumradius in pixels on the first and last frame


@dataclass(frozen=True)
class Scene:
    background: str  # key of BACKGROUNDS
    objects: tuple[ShapeSpec, ...]  # 1 or 2 shapes with different colours and shapes
    size: int  # frames are size x size
    frames: int  # number of frames


@dataclass(frozen=True)
class ClipPlan:
    index: int  # position in the dataset; names the video file
    split: str  # "train", "val" or "test"
    video: str  # path relative to the output directory
    scene: Scene  # what is drawn
    caption: str  # describes every shape, its motion and the background
    question: str  # one question about the scene
    answer: str  # one-word answer to `question`
    label: str  # action class of the first shape's motion
    options: tuple[str, ...]  # 5 captions, the true one among them
    answer_index: int  # position of `caption` in `options`


# ---------------------------------------------------------------- text


def _describe(background: str, objs: list[tuple[str, str, str]]) -> str:
    parts = [f"a {c} {s} {MOTIONS[m][0]}" for c, s, m in objs]
    return " while ".join(parts) + f" on a {background} background"


def caption_of(scene: Scene) -> str:
    """The caption for a scene: every shape, its motion, and the background."""
    return _describe(scene.background, [(o.color, o.shape, o.motion) for o in scene.objects])


def scene_key(scene: Scene) -> tuple:
    """What a caption says, independent of the order the shapes are named in: two scenes
    with equal keys are indistinguishable from their captions."""
    return scene.background, frozenset((o.color, o.shape, o.motion) for o in scene.objects)


def _question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    objs = scene.objects
    o = objs[int(rng.integers(len(objs)))]
    unique_motion = sum(p.motion == o.motion for p in objs) == 1
    phrase = MOTIONS[o.motion][0]
    pool = [
        (f"what color is the {o.shape}?", o.color),
        (f"what shape is the {o.color} object?", o.shape),
        (f"how does the {o.color} {o.shape} move?", o.motion),
        ("what color is the background?", scene.background),
        ("how many shapes are there?", ("one", "two")[len(objs) - 1]),
    ]
    if unique_motion:  # otherwise "which shape moves left?" would have two answers
        pool += [(f"which shape {phrase}?", o.shape), (f"what color is the shape that {phrase}?", o.color)]
    return pool[int(rng.integers(len(pool)))]


def _mutate(background: str, objs: list[list[str]], rng: np.random.Generator) -> str:
    """Change one attribute slot to another value, keeping objects' colours/shapes distinct."""
    slot = int(rng.integers(1 + 3 * len(objs)))
    if slot == 0:
        return str(rng.choice([b for b in BACKGROUNDS if b != background]))
    i, field = divmod(slot - 1, 3)
    vocab = (list(COLORS), list(SHAPES), list(MOTIONS))[field]
    taken = {o[field] for o in objs} if field < 2 else {objs[i][field]}
    objs[i][field] = str(rng.choice([v for v in vocab if v not in taken]))
    return background


def _options(scene: Scene, caption: str, rng: np.random.Generator) -> tuple[tuple[str, ...], int]:
    """The true caption plus distractors that differ from it in one or two attributes."""
    found: list[str] = []
    while len(found) < _NUM_OPTIONS - 1:
        background = scene.background
        objs = [[o.color, o.shape, o.motion] for o in scene.objects]
        for _ in range(int(rng.integers(1, 3))):
            background = _mutate(background, objs, rng)
        text = _describe(background, [tuple(o) for o in objs])
        if text != caption and text not in found:
            found.append(text)
    answer = int(rng.integers(_NUM_OPTIONS))
    found.insert(answer, caption)
    return tuple(found), answer


# ---------------------------------------------------------------- scenes


Point = tuple[float, float]


def _place(motion: str, box: tuple[float, float, float, float], r_range: Point, size: int,
           rng: np.random.Generator) -> tuple[Point, Point, Point]:
    """Start centre, end centre and (first, last) radius of one shape kept inside `box`
    (x0, y0, x1, y1) on every frame."""
    x0, y0, x1, y1 = box
    margin = max(1.0, size / 32)
    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        along = (x1 - x0) if dx else (y1 - y0)
        across = (y1 - y0) if dx else (x1 - x0)
        # Travel at least a quarter of the frame so the motion is visible at any resolution.
        r_cap = min(r_range[1], (along - size / 4) / 2 - margin, across / 2 - margin)
        r = float(rng.uniform(min(r_range[0], r_cap), r_cap))
        lo, hi = r + margin, along - r - margin
        c = float(rng.uniform(r + margin, across - r - margin))
        a, b = (lo, hi) if (dx + dy) > 0 else (hi, lo)
        start, end = ((x0 + a, y0 + c), (x0 + b, y0 + c)) if dx else ((x0 + c, y0 + a), (x0 + c, y0 + b))
        return start, end, (r, r)
    r_max = min((x1 - x0) / 2, (y1 - y0) / 2, size / 3) - margin
    big = float(rng.uniform(0.85, 1.0)) * r_max
    small = 0.4 * big  # a 2.5x change in size reads clearly even over 8 frames
    cx = float(rng.uniform(x0 + big + margin, x1 - big - margin))
    cy = float(rng.uniform(y0 + big + margin, y1 - big - margin))
    radii = (small, big) if motion == "grows" else (big, small)
    return (cx, cy), (cx, cy), radii


def sample_scene(rng: np.random.Generator, size: int = 128, frames: int = 16) -> Scene:
    """Draw a random scene: 1-2 shapes with distinct colours and shapes, each in its own cell."""
    n = 2 if rng.random() < _TWO_OBJECT_P else 1
    colors = rng.choice(list(COLORS), size=n, replace=False)
    shapes = rng.choice(list(SHAPES), size=n, replace=False)
    motions = rng.choice(list(MOTIONS), size=n)
    if n == 1:
        boxes, r_range = [(0.0, 0.0, float(size), float(size))], (size / 6, size / 4)
    else:
        # Two shapes never overlap: each gets half the frame, split across the motion axis
        # so a vertical mover keeps the full height (columns) and horizontal ones the width.
        half = size / 2
        columns = any(m in ("up", "down") for m in motions) or rng.random() < 0.5
        if columns:
            boxes = [(0.0, 0.0, half, float(size)), (half, 0.0, float(size), float(size))]
        else:
            boxes = [(0.0, 0.0, float(size), half), (0.0, half, float(size), float(size))]
        boxes = [boxes[int(k)] for k in rng.permutation(2)]
        r_range = (size / 8, size / 6)
    objs = []
    for c, s, m, box in zip(colors, shapes, motions, boxes):
        start, end, radius = _place(str(m), box, r_range, size, rng)
        objs.append(ShapeSpec(str(c), str(s), str(m), start, end, radius))
    return Scene(str(rng.choice(list(BACKGROUNDS))), tuple(objs), size, frames)


def split_sizes(num_videos: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Clips per split; train gets what val and test (rounded) leave."""
    val, test = round(num_videos * val_fraction), round(num_videos * test_fraction)
    return {"train": num_videos - val - test, "val": val, "test": test}


def plan(num_videos: int, seed: int = 0, frames: int = 16, size: int = 128,
         val_fraction: float = 0.1, test_fraction: float = 0.2) -> list[ClipPlan]:
    """Every clip's scene and texts, deterministic in the arguments. Splits are contiguous
    index ranges in the order train, val, test."""
    sizes = split_sizes(num_videos, val_fraction, test_fraction)
    splits = [name for name, k in sizes.items() for _ in range(k)]
    width = max(5, len(str(num_videos - 1)))
    seen: dict[str, set] = {name: set() for name in sizes}
    clips = []
    for index, split in enumerate(splits):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        for _ in range(_MAX_REDRAWS):
            scene = sample_scene(rng, size, frames)
            key = scene_key(scene)
            if key not in seen[split]:
                break
        seen[split].add(key)
        caption = caption_of(scene)
        question, answer = _question(scene, rng)
        options, answer_index = _options(scene, caption, rng)
        label = MOTIONS[scene.objects[0].motion][1]
        clips.append(ClipPlan(index, split, f"videos/{index:0{width}d}.mp4", scene, caption,
                              question, answer, label, options, answer_index))
    return clips


# ---------------------------------------------------------------- pixels

_TRIANGLE = [(np.cos(a), np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
# Ten vertices alternating outer (1.0) and inner (0.45) radius, first point straight up.
_STAR = [((0.45, 1.0)[i % 2 == 0] * np.cos(a), (0.45, 1.0)[i % 2 == 0] * np.sin(a))
         for i, a in enumerate(np.deg2rad(np.arange(-90, 270, 36)))]


def _polygon_mask(dx: np.ndarray, dy: np.ndarray, verts: list[tuple[float, float]], r: float) -> np.ndarray:
    """Even-odd point-in-polygon test for unit `verts` scaled by r (pixel offsets dx, dy)."""
    inside = np.zeros(dx.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1]):
        ax, ay, bx, by = ax * r, ay * r, bx * r, by * r
        crosses = (ay > dy) != (by > dy)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (dy - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (dx < x_at)
    return inside


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels covered by `shape` of circumradius r, given offsets from its centre."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":  # half-side 0.85 r: about the circle's area, clearly cornered
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":
        return _polygon_mask(dx, dy, _TRIANGLE, r)
    if shape == "star":
        return _polygon_mask(dx, dy, _STAR, r)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene) -> np.ndarray:
    """The scene's frames, (T, size, size, 3) uint8 RGB; shapes move linearly in time."""
    t_count, size = scene.frames, scene.size
    video = np.empty((t_count, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUNDS[scene.background]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    for t in range(t_count):
        a = t / (t_count - 1) if t_count > 1 else 0.0
        for o in scene.objects:
            cx = o.start[0] + a * (o.end[0] - o.start[0])
            cy = o.start[1] + a * (o.end[1] - o.start[1])
            r = o.radius[0] + a * (o.radius[1] - o.radius[0])
            video[t][shape_mask(o.shape, xs - cx, ys - cy, r)] = COLORS[o.color]
    return video


def _render_job(job: tuple[str, Scene, int]) -> str:
    path, scene, fps = job
    write_mp4(path, render(scene), fps=fps)
    return path


# ---------------------------------------------------------------- output


def _render_all(out: Path, clips: list[ClipPlan], fps: int, workers: int,
                progress: Callable[[int, int], None] | None) -> None:
    run_jobs(_render_job, [(str(out / c.video), c.scene, fps) for c in clips], workers, progress)


def run_jobs(fn: Callable, jobs: list, workers: int, progress: Callable[[int, int], None] | None) -> None:
    """fn(job) for every job, in `workers` processes (any order: each job writes its own file)."""
    total = len(jobs)
    if workers <= 1 or total <= 1:
        for done, _ in enumerate(map(fn, jobs), start=1):
            if progress is not None:
                progress(done, total)
        return
    chunksize = max(1, min(8, total // (8 * workers)))  # small chunks keep progress smooth
    with multiprocessing.get_context().Pool(min(workers, total), initializer=die_with_parent) as pool:
        for done, _ in enumerate(pool.imap_unordered(fn, jobs, chunksize), start=1):
            if progress is not None:
                progress(done, total)


def _check_args(num_videos: int, frames: int, size: int, fps: int, val_fraction: float,
                test_fraction: float) -> None:
    if num_videos < 1:
        raise EvilmError(f"num_videos must be at least 1, got {num_videos}")
    if frames < 1 or fps < 1:
        raise EvilmError(f"frames and fps must be at least 1, got frames={frames}, fps={fps}")
    if size < 32 or size % 2:
        raise EvilmError(f"size must be even and at least 32 (H.264 yuv420p), got {size}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise EvilmError(f"val_fraction and test_fraction must be in [0, 1), "
                         f"got {val_fraction} and {test_fraction}")
    if split_sizes(num_videos, val_fraction, test_fraction)["train"] < 1:
        raise EvilmError(f"{num_videos} videos leave no training clips with val_fraction={val_fraction}, "
                         f"test_fraction={test_fraction}")


def _manifests(out: Path, clips: list[ClipPlan]) -> dict[str, dict[str, str]]:
    paths: dict[str, dict[str, str]] = {"qa": {}, "mc": {}}
    for split in ("train", "val", "test"):
        mine = [c for c in clips if c.split == split]
        qa = [{"video": c.video, "caption": c.caption, "question": c.question, "answer": c.answer,
               "label": c.label, "split": split} for c in mine]
        mc = [{"video": c.video, "caption": c.caption, "options": list(c.options),
               "answer": c.answer_index, "split": split} for c in mine]
        write_jsonl(qa, out / f"{split}.jsonl")
        write_jsonl(mc, out / f"mc_{split}.jsonl")
        paths["qa"][split], paths["mc"][split] = str(out / f"{split}.jsonl"), str(out / f"mc_{split}.jsonl")
    return paths


def generate(out_dir: str | os.PathLike, num_videos: int = 200, seed: int = 0, frames: int = 16,
             size: int = 128, fps: int = 8, val_fraction: float = 0.1, test_fraction: float = 0.2,
             workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a synthetic dataset under `out_dir` (layout in the module docstring).

    `workers` processes render and encode clips (default: all CPUs); `progress(done, total)`
    is called in this process after each clip. Returns a summary: split sizes, duplicate
    captions within splits, seconds taken and the paths written.
    """
    _check_args(num_videos, frames, size, fps, val_fraction, test_fraction)
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    clips = plan(num_videos, seed, frames, size, val_fraction, test_fraction)
    _render_all(out, clips, fps, workers or os.cpu_count() or 1, progress)
    paths = _manifests(out, clips)
    sizes = split_sizes(num_videos, val_fraction, test_fraction)
    duplicates = sum(sizes[s] - len({scene_key(c.scene) for c in clips if c.split == s}) for s in sizes)
    meta = {
        "generator": "evilm_core.prepare.synth", "version": 1,
        "params": {"num_videos": num_videos, "seed": seed, "frames": frames, "size": size, "fps": fps,
                   "val_fraction": val_fraction, "test_fraction": test_fraction},
        "vocab": {"colors": COLORS, "shapes": list(SHAPES), "backgrounds": BACKGROUNDS,
                  "motions": {k: {"phrase": p, "label": lab} for k, (p, lab) in MOTIONS.items()}},
        "splits": sizes, "duplicate_captions": duplicates,
    }
    atomic_write_text(out / "synth.json", json.dumps(meta, indent=2) + "\n")
    return {"out_dir": str(out), "videos": num_videos, "splits": sizes, "duplicate_captions": duplicates,
            "seconds": round(time.perf_counter() - start, 3), "manifests": paths["qa"],
            "mc_manifests": paths["mc"], "meta": str(out / "synth.json")}
