"""Clip decoding: choose frame indices first (here, whatever decodes), then decode them with
the chosen backend (decoders.py: decord, PyAV or torchcodec; docs/data.md, "Decoders").

Sampling follows ClipBERT/E-ViLM sparse sampling: the video's frames are cut into T equal
segments; training takes a random frame inside each segment, evaluation the segment centre.
A video with fewer frames than T repeats frames (the segments overlap the same frame).

One reader is opened per clip, inside the worker, and closed (decord traps: a `VideoReader`
shared across DataLoader workers can hang and a long-lived one leaks memory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evilm_core.data.decoders import open_reader, resolve_decoder
from evilm_core.errors import EvilmError, VideoDecodeError


@dataclass
class Clip:
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB, resized in the decoder
    indices: list[int]  # the decoded frame index of each of the T frames
    num_video_frames: int  # frames in the file (the container's count, as decord counts them)
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


def _source(path: Path | VideoBytes):
    """What a backend opens: a path string, or bytes (in memory; a file name that is not UTF-8,
    which FFmpeg cannot be given). Missing, empty and directory paths raise VideoDecodeError."""
    if isinstance(path, VideoBytes):
        if not path.data:
            raise VideoDecodeError(path.name, "corrupt", "empty file (0 bytes)")
        return path.data
    if not path.exists():
        raise VideoDecodeError(str(path), "missing", "no such file")
    if path.is_dir():
        raise VideoDecodeError(str(path), "corrupt", "is a directory")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(str(path), "corrupt", "empty file (0 bytes)")
    if _utf8(str(path)):
        return str(path)
    try:
        return path.read_bytes()
    except OSError as err:
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


def read_frames(path: str | Path | VideoBytes, indices_fn, size: int | None = None, decoder: str = "auto") -> Clip:
    """Open `path` (a file, or a video in memory) with `decoder` (decoders.DECODERS), pick indices
    with `indices_fn(num_video_frames)` (the same whatever decodes), decode them."""
    path = path if isinstance(path, VideoBytes) else Path(path)
    decoder = resolve_decoder(decoder)  # a decoder that does not work here is an error before any clip is
    source = _source(path)
    try:
        reader = open_reader(source, size, decoder)
    except EvilmError:
        raise  # a decoder that is not installed: the user's to fix, not the clip's
    except Exception as err:  # each backend raises its own errors for a file it cannot open
        raise VideoDecodeError(str(path), "corrupt", _short(err)) from None
    try:
        total = int(reader.num_frames)
        if total < 1:
            raise VideoDecodeError(str(path), "corrupt", "no decodable frames")
        indices = [int(i) for i in indices_fn(total)]
        try:
            frames = np.asarray(reader.get(indices))
        except Exception as err:
            raise VideoDecodeError(str(path), "corrupt", f"decoding frames {indices}: {_short(err)}") from None
        fps = float(reader.fps or 0.0)
    finally:
        reader.close()
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.dtype != np.uint8:
        raise VideoDecodeError(str(path), "corrupt", f"decoder returned {frames.dtype} of shape {frames.shape}")
    return Clip(frames=np.ascontiguousarray(frames), indices=indices, num_video_frames=total, fps=fps)


def read_clip(path: str | Path, num_frames: int, size: int | None = None, mode: str = "eval", rng=None,
              decoder: str = "auto") -> Clip:
    """Decode T = `num_frames` frames of `path` by segment sampling, resized to size x size.

    Raises `VideoDecodeError` (reason missing | corrupt) for anything that cannot be used.
    """
    return read_frames(path, lambda n: segment_indices(n, num_frames, mode, rng), size, decoder)
