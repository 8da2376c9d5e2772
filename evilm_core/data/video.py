"""Clip decoding with decord: choose frame indices first, then one `get_batch`.

Sampling follows ClipBERT/E-ViLM sparse sampling: the video's frames are cut into T equal
segments; training takes a random frame inside each segment, evaluation the segment centre.
A video with fewer frames than T repeats frames (the segments overlap the same frame).

decord traps avoided here: a `VideoReader` shared across DataLoader workers can hang and a
long-lived one leaks memory, so one reader is opened per clip, inside the worker, and dropped.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evilm_core.errors import VideoDecodeError


@dataclass
class Clip:
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB, resized in the decoder
    indices: list[int]  # the decoded frame index of each of the T frames
    num_video_frames: int  # frames in the file (as decord counts them)
    fps: float  # average frame rate reported by the container


def segment_indices(num_video_frames: int, num_samples: int, mode: str = "eval", rng=None) -> list[int]:
    """T frame indices, one per equal segment of [0, num_video_frames).

    eval: the centre of each segment (deterministic); train: uniform inside each segment.
    With fewer frames than samples, segments shrink below one frame and indices repeat.
    """
    if num_video_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    bounds = np.linspace(0, num_video_frames, num_samples + 1)
    if mode == "eval":
        idx = np.floor((bounds[:-1] + bounds[1:]) / 2)
    else:
        rng = rng if rng is not None else np.random.default_rng()
        idx = np.floor(bounds[:-1] + rng.random(num_samples) * (bounds[1:] - bounds[:-1]))
    return np.clip(idx, 0, num_video_frames - 1).astype(int).tolist()


@dataclass
class VideoBytes:
    """A video held in memory (a member of a WebDataset tar): decoded without touching disk."""

    name: str  # what messages call it (e.g. "00000.tar/000000042.mp4")
    data: bytes  # the container's bytes

    def __str__(self) -> str:
        return self.name


def _reader_kwargs(size: int | None) -> dict:
    kwargs = {"num_threads": 1}
    if size:
        kwargs.update(width=size, height=size)
    return kwargs


def _open_bytes(video: VideoBytes, size: int | None):
    import decord

    if not video.data:
        raise VideoDecodeError(video.name, "corrupt", "empty file (0 bytes)")
    try:
        return decord.VideoReader(io.BytesIO(video.data), **_reader_kwargs(size))
    except Exception as err:  # decord raises its own DECORDError and RuntimeError variants
        raise VideoDecodeError(video.name, "corrupt", _short(err)) from None


def _open_reader(path: Path | VideoBytes, size: int | None):
    import decord  # imported lazily: worker processes import it themselves

    if isinstance(path, VideoBytes):
        return _open_bytes(path, size)
    if not path.exists():
        raise VideoDecodeError(str(path), "missing", "no such file")
    if path.is_dir():
        raise VideoDecodeError(str(path), "corrupt", "is a directory")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(str(path), "corrupt", "empty file (0 bytes)")
    kwargs = _reader_kwargs(size)
    try:
        if _utf8(str(path)):
            return decord.VideoReader(str(path), **kwargs)
        with open(path, "rb") as fh:  # a name that is not UTF-8: decord cannot pass it to FFmpeg, its bytes it can
            return decord.VideoReader(fh, **kwargs)
    except Exception as err:  # decord raises its own DECORDError and RuntimeError variants
        raise VideoDecodeError(str(path), "corrupt", _short(err)) from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def read_frames(path: str | Path | VideoBytes, indices_fn, size: int | None = None) -> Clip:
    """Open `path` (a file, or a video in memory), pick indices with `indices_fn(num_video_frames)`,
    decode them in one batch."""
    path = path if isinstance(path, VideoBytes) else Path(path)
    reader = _open_reader(path, size)
    try:
        total = len(reader)
        if total < 1:
            raise VideoDecodeError(str(path), "corrupt", "no decodable frames")
        indices = list(indices_fn(total))
        try:
            frames = reader.get_batch(indices).asnumpy()
        except Exception as err:
            raise VideoDecodeError(str(path), "corrupt", f"decoding frames {indices}: {_short(err)}") from None
        fps = float(reader.get_avg_fps() or 0.0)
    finally:
        del reader
    if frames.ndim != 4 or frames.shape[0] != len(indices):
        raise VideoDecodeError(str(path), "corrupt", f"decoder returned shape {frames.shape}")
    return Clip(frames=np.ascontiguousarray(frames), indices=indices, num_video_frames=total, fps=fps)


def read_clip(path: str | Path, num_frames: int, size: int | None = None, mode: str = "eval", rng=None) -> Clip:
    """Decode T = `num_frames` frames of `path` by segment sampling, resized to size x size.

    Raises `VideoDecodeError` (reason missing | corrupt) for anything that cannot be used.
    """
    return read_frames(path, lambda n: segment_indices(n, num_frames, mode, rng), size)
