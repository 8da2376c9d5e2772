"""Windows over long videos: which seconds each window covers, which frames it takes, and the
spans a long video is decoded in (docs/retrieval.md, "Moments").

A video longer than the window gets windows of `window` seconds every `stride` seconds, the
last one moved back to end at the video's end (so the whole video is covered). Each window
takes T frames, one per equal segment, as a clip does, but from a grid shared by all windows:
grid point m is at (m + 1/2) * window / T seconds and window k's frame j is grid point
round(start_k * T / window) + j. When the stride is a multiple of window / T (4 s windows of 4
frames at a 2 s stride: every second), that is exactly each segment's centre; otherwise the
point moves by less than half a segment and stays inside its segment, where training's
sparse sampling draws frames anyway. Windows sharing a grid point share its decoded frame and
the model's per-frame work. A video no longer than the window is one row, [0, duration], with
the segment centres of the whole video (the frames a plain index takes).

A long video is decoded in spans of SPAN_WINDOWS consecutive windows: one reader, the span's
grid frames in ascending order (the PyAV reader seeks only to skip ahead to a keyframe), so no
window seeks on its own, and loader workers may take different spans of one video. A span is
the unit of work and of resume: it is identified by its video and its first window's start.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from evilm_core.data.video.read import decode, frame_at, open_reader, segment_indices
from evilm_core.errors import EvilmError, VideoDecodeError

SPAN_WINDOWS = 32  # windows per span: 64 s of video at a 2 s stride; 2 of ~66 frames decoded twice per span


@dataclass(frozen=True)
class WindowSpec:
    window: float  # seconds per window
    stride: float  # seconds from one window's start to the next
    num_frames: int  # T frames per window, one per segment (snapped to the shared grid)

    def __post_init__(self):
        if not (math.isfinite(self.window) and self.window > 0):
            raise EvilmError(f"--window {self.window}: a window must last a positive number of seconds")
        if not (math.isfinite(self.stride) and 0 < self.stride <= self.window):
            raise EvilmError(f"--stride {self.stride}: the stride must be more than 0 and at most the window "
                             f"({self.window} s); a larger one would leave gaps no window covers")

    @property
    def step(self) -> float:
        """Seconds between grid points: one segment of a window."""
        return self.window / self.num_frames


@dataclass
class VideoWindows:
    """The windows of one video."""

    num_video_frames: int  # frames in the file
    fps: float  # its frame rate
    times: np.ndarray  # [K, 3] float64: start, end, duration of the video (seconds)
    frames: np.ndarray  # [K, T] int64: the video frame index of each window's frames

    @property
    def duration(self) -> float:
        return self.num_video_frames / self.fps

    def __len__(self) -> int:
        return len(self.times)


def plan_windows(num_video_frames: int, fps: float, spec: WindowSpec) -> VideoWindows:
    """The windows of a video of `num_video_frames` frames at `fps` (module docstring)."""
    duration, t = num_video_frames / fps, spec.num_frames
    if duration <= spec.window:
        starts = np.zeros(1)
        frames = np.asarray([segment_indices(num_video_frames, t)], dtype=np.int64)
        ends = np.full(1, duration)
    else:
        count = math.floor((duration - spec.window) / spec.stride + 1e-9) + 1
        starts = np.arange(count) * spec.stride
        if starts[-1] + spec.window < duration - 1e-9:
            starts = np.append(starts, duration - spec.window)  # the tail, ending at the video's end
        first = np.floor(starts / spec.step + 0.5).astype(np.int64)  # grid point of each window's first frame
        points = first[:, None] + np.arange(t)  # [K, T]
        frames = frame_at((points + 0.5) * spec.step, fps, num_video_frames)
        ends = np.minimum(starts + spec.window, duration)
        ends[-1] = duration  # exactly: the last window marks a video as done (retrieval/windows.py)
    times = np.stack([starts, ends, np.full(len(starts), duration)], 1)
    return VideoWindows(num_video_frames, fps, times, frames)


def probe(path: str | Path, decoder: str) -> tuple[int, float]:
    """(frames, frame rate) of a video, by the backend that will decode it; VideoDecodeError for
    one that cannot be used, or that has no frame rate (its windows would have no times)."""
    reader = open_reader(path, None, decoder)
    try:
        total, fps = int(reader.num_frames), float(reader.fps or 0.0)
    finally:
        reader.close()
    if not (math.isfinite(fps) and fps > 0):
        raise VideoDecodeError(str(path), "corrupt", "no frame rate: its windows would have no times")
    return total, fps


@dataclass
class Span:
    """SPAN_WINDOWS consecutive windows of one video: decoded and embedded together."""

    key: str  # the video's key in the index
    path: str  # where it is
    windows: VideoWindows  # the whole video's windows (shared by its spans)
    first: int  # index of the span's first window
    count: int  # windows in the span

    @property
    def times(self) -> np.ndarray:
        return self.windows.times[self.first:self.first + self.count]  # [k, 3]


def spans_of(key: str, path: str, windows: VideoWindows) -> list[Span]:
    return [Span(key, path, windows, first, min(SPAN_WINDOWS, len(windows) - first))
            for first in range(0, len(windows), SPAN_WINDOWS)]


def start_ms(seconds: float) -> int:
    """A window's start as it identifies a span on resume (milliseconds: no float equality)."""
    return round(float(seconds) * 1000)


class SpanDataset(Dataset):
    """One item per span: its frames decoded once, in order, at `image_size`, and which of them
    each window takes. The reader of the last video stays open for the worker's next span of the
    same video (its packet index is read once per worker, not once per span); a span that cannot
    be decoded is a skip marker, as in ClipDataset."""

    def __init__(self, spans: list[Span], image_size: int, decoder: str):
        self.spans, self.image_size, self.decoder = spans, image_size, decoder
        self._open: tuple[str, object] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None}  # each worker opens its own

    def __len__(self) -> int:
        return len(self.spans)

    def _reader(self, path: str):
        if self._open is None or self._open[0] != path:
            self.close()
            self._open = (path, open_reader(path, self.image_size, self.decoder))
        return self._open[1]

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def __getitem__(self, index: int) -> dict:
        span, started = self.spans[index], time.perf_counter()
        grid = span.windows.frames[span.first:span.first + span.count]  # [k, T] video frame indices
        wanted, frame_of = np.unique(grid, return_inverse=True)
        try:
            frames = decode(self._reader(span.path), span.path, wanted.tolist())  # [F, H, W, 3]
        except VideoDecodeError as err:
            self.close()
            start, end = span.times[0, 0], span.times[-1, 1]
            return {"skip": (span.key, err.reason, f"windows {start:.1f}-{end:.1f} s: {err.detail}")}
        return {"video": span.key, "frames": torch.from_numpy(frames), "times": torch.from_numpy(span.times.copy()),
                "frame_of": torch.from_numpy(frame_of.reshape(grid.shape).astype(np.int64)),
                "decode_s": time.perf_counter() - started}


def collate_span(items: list[dict]) -> dict:
    """A batch of one span (spans are embedded one at a time: a span's result never depends on
    which spans share its batch, so an interrupted run re-embeds it to the same bytes)."""
    (item,) = items
    if "skip" in item:
        return {"skipped": [item["skip"]], "size": 0}
    return {**item, "skipped": [], "size": 1}
