"""Helpers of benchmarks/loading.py: WebVid-like clips made with PyAV, their keyframes, real clips
found on the machine, frame error, process memory, synthetic records and the DataLoader-worker
memory probe (kept here, apart from the benchmark's script, so a spawned worker imports little).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

WIDTH, HEIGHT, FPS, SECONDS = 596, 336, 25, 15  # WebVid's usual 360p clip
CRF, PRESET = "20", "medium"  # libx264's default preset; crf 20 gives ~1-2 MB per 15 s clip here
WORDS = ("a man woman child dog cat car city street night aerial view of the sea beach forest mountain "
         "river sunset sunrise slow motion close up young old people walking running on in at with and "
         "background white black blue green red timelapse clouds sky snow water tree road business team "
         "office working laptop smiling happy cooking kitchen food playing ball field flying drone shot "
         "4k hd footage abstract light motion colorful beautiful landscape hands holding phone").split()


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth noise at three scales (uint8 [h, w, 3]): detail that costs bits when it moves."""
    from PIL import Image

    out = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((64, 90), (16, 50), (4, 25)):
        small = (rng.random((h // scale + 2, w // scale + 2, 3)) * 255).astype(np.uint8)
        out += (np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) - 128) * amp / 128
    return np.clip(out + 128, 0, 255).astype(np.uint8)


def make_clip(path: Path, gop: int, seed: int, size: tuple[int, int] = (WIDTH, HEIGHT), seconds: float = SECONDS,
              preset: str = PRESET) -> None:
    """A WIDTH x HEIGHT (596x336), 15 s, 25 fps H.264 yuv420p clip: a panning texture and four
    moving boxes, one keyframe every `gop` frames (no scene-cut keyframes)."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    tex = _texture(rng, 2 * width, 2 * height)
    vx, vy = rng.uniform(0.5, 2.5, 2)
    options = {"crf": CRF, "preset": preset, "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
               "threads": "1"}
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for t in range(int(FPS * seconds)):
            x0, y0 = int(t * vx) % width, int(t * vy) % height
            frame = tex[y0:y0 + height, x0:x0 + width].copy()
            for k in range(4):
                cx = int(width / 2 + width / 3 * np.sin(t / (20 + 7 * k) + k + seed))
                cy = int(height / 2 + height / 3 * np.cos(t / (15 + 5 * k) + 2 * k))
                frame[max(0, cy - 25):cy + 25, max(0, cx - 30):cx + 30] = (60 * k, 200 - 40 * k, 120)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def keyframes(path: str | Path) -> tuple[int, list[int]]:
    """(frames, indices of the keyframes), decoding the whole clip with PyAV."""
    import av

    with av.open(str(path)) as container:
        flags = [bool(frame.key_frame) for frame in container.decode(video=0)]
    return len(flags), [i for i, key in enumerate(flags) if key]


def describe(path: str | Path) -> dict:
    frames, keys = keyframes(path)
    gaps = sorted({b - a for a, b in zip(keys, keys[1:])}) or [frames]
    return {"path": str(path), "bytes": os.path.getsize(path), "frames": frames, "keyframes": len(keys),
            "keyframe_interval": gaps}


def make_clip_set(directory: Path, gop: int, count: int, seed: int) -> tuple[Path, list[dict]]:
    """`count` clips under DIR/videos and DIR/manifest.jsonl; returns (manifest, clip descriptions)."""
    (directory / "videos").mkdir(parents=True, exist_ok=True)
    lines, clips = [], []
    for i in range(count):
        rel = f"videos/clip{i:02d}.mp4"
        tic = time.perf_counter()
        make_clip(directory / rel, gop, seed + i)
        clips.append({**describe(directory / rel), "encode_s": round(time.perf_counter() - tic, 2)})
        lines.append(json.dumps({"video": rel, "caption": f"clip {i} with keyframes every {gop} frames"}))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return directory / "manifest.jsonl", clips


def find_real_clips(limit: int, exclude: Path, min_frames: int = 50, timeout_s: int = 120
                    ) -> tuple[list[str], list[str]]:
    """(up to `limit` mp4 files over 200 kB with at least `min_frames` frames, the files rejected);
    pytest's temporary fixtures and the benchmark's work directory `exclude` are skipped."""
    try:
        found = subprocess.run(["find", "/", "-path", "/proc", "-prune", "-o", "-name", "*.mp4", "-size", "+200k",
                                "-print"], capture_output=True, text=True, timeout=timeout_s).stdout.split("\n")
    except subprocess.TimeoutExpired as err:
        found = (err.stdout or b"").decode(errors="replace").split("\n")
    keep, rejected = [], []
    for path in filter(None, found):
        if Path(path).resolve().is_relative_to(exclude.resolve()):
            continue  # this run's own clips
        if "/pytest-of-" in path:
            rejected.append(f"{path} (pytest fixture)")
            continue
        try:
            frames = keyframes(path)[0]
        except Exception as err:  # not decodable: not a clip to time
            rejected.append(f"{path} ({type(err).__name__})")
            continue
        if frames < min_frames:
            rejected.append(f"{path} ({frames} frames)")
        elif len(keep) < limit:
            keep.append(path)
    return keep, rejected


def frame_error(decoded: np.ndarray, stored: np.ndarray) -> tuple[float, float, list[float]]:
    """(sum |d - s|, sum (d - s)^2, PSNR of each frame) over uint8 frames [F, H, W, 3]."""
    diff = decoded.astype(np.int32) - stored.astype(np.int32)
    sq = (diff * diff).reshape(len(diff), -1).mean(axis=1)
    psnr = [float(10 * np.log10(255.0 ** 2 / max(m, 1e-12))) for m in sq]
    return float(np.abs(diff).sum()), float((diff * diff).sum()), psnr


def proc_memory(pid: str = "self") -> dict:
    """MiB of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile) and smaps_rollup (Pss, USS =
    Private_Clean + Private_Dirty, Anonymous) when the kernel has it."""
    out: dict = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.is_file():
        kb = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in rollup.read_text().splitlines()[1:])}
        out.update(Pss=round(kb["Pss"] / 1024, 1), USS=round((kb["Private_Clean"] + kb["Private_Dirty"]) / 1024, 1),
                   Anonymous=round(kb["Anonymous"] / 1024, 1))
    return out


def synthetic_rows(n: int, seed: int = 0):
    """(ClipRecord, i) of n WebVid-like records: `videos/0123/1234567890.mp4`, 60-100 char captions."""
    from evilm_core.data.records.record import ClipRecord

    rng = np.random.default_rng(seed)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        picks = rng.integers(0, len(WORDS), (m, 20)).tolist()
        lengths, ids = rng.integers(60, 101, m).tolist(), rng.integers(1_000_000_000, 9_999_999_999, m).tolist()
        for j, (pick, length, vid) in enumerate(zip(picks, lengths, ids)):
            i = start + j
            text = " ".join([WORDS[w] for w in pick])[:length].rstrip().capitalize()
            yield ClipRecord(video=f"videos/{i // 1000 % 10000:04d}/{vid}.mp4", caption=text), i


class Keys:
    """A sampler whose keys the main process changes between epochs (persistent workers)."""

    def __init__(self):
        self.keys: list[int] = []

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


class MemoryProbe(Dataset):
    """Holds the records as a training dataset would. Key 0/1: read `reads` random records and
    report this worker's memory; key 2/3: touch every record (a full epoch's pages), report again."""

    def __init__(self, records, reads: int):
        self.records, self.reads = records, reads

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key: int) -> dict:
        n, tic = len(self.records), time.perf_counter()
        if key < 2 and n:
            for i in np.random.default_rng(key).integers(0, n, self.reads):
                self.records[int(i)]
        elif n:
            table = getattr(self.records, "text", None)
            if table is not None:  # RecordTable: every page of its text and index
                int(table[::4096].sum()) + int(self.records.index[::170].sum())
            else:
                for i in range(n):
                    self.records[i]
        return {"pid": os.getpid(), "seconds": round(time.perf_counter() - tic, 3), **proc_memory()}
