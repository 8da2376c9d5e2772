"""Clip decoding, the front of the video backends (docs/data.md, "Decoders"): choose frame
indices first (here, whatever decodes), then decode them with one backend, `backend_pyav.py`,
`backend_decord.py` or `backend_torchcodec.py`. Each returns [T, H, W, 3] uint8 RGB resized to
size x size behind one reader interface: `num_frames`, `fps`, `get(indices)`, `close()`.

Which backend decodes is a run setting: `data.decoder` / `--decoder` (config/sections.py
DECODERS), resolved once where a run starts (settings.py calls `resolve_decoder` here) and passed
down by name. `auto` takes the first of AUTO_ORDER (fastest measured first, docs/benchmarks.md,
"Decoders") that imports and decodes a tiny clip on this machine; PyAV, a hard dependency, is
always there, so it is every function's default. The functions below take a resolved backend.

Sampling follows ClipBERT/E-ViLM sparse sampling: the video's frames are cut into T equal
segments; training takes a random frame inside each segment, evaluation the segment centre.
A video with fewer frames than T repeats frames (the segments overlap the same frame).

One reader is opened per clip, inside the worker, and closed (decord traps: a `VideoReader`
shared across DataLoader workers can hang and a long-lived one leaks memory).
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evilm_core.config.sections import DECODERS
from evilm_core.errors import EvilmError, VideoDecodeError

AUTO_ORDER = DECODERS[1:]  # what `auto` tries, fastest measured first (docs/benchmarks.md, "Decoders")


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


def open_reader(path: str | Path | VideoBytes, size: int | None = None, decoder: str = "pyav"):
    """An opened reader of the resolved backend `decoder` (`num_frames`, `fps`, `get`, `close`)
    holding at least one frame; VideoDecodeError for anything that cannot be used. The caller
    closes it."""
    path = path if isinstance(path, VideoBytes) else Path(path)
    opener = _opener(decoder)
    source = _source(path)
    try:
        reader = opener(source, size)
    except Exception as err:  # each backend raises its own errors for a file it cannot open
        raise VideoDecodeError(str(path), "corrupt", _short(err)) from None
    if int(reader.num_frames) < 1:
        reader.close()
        raise VideoDecodeError(str(path), "corrupt", "no decodable frames")
    return reader


def decode(reader, path, indices: list[int]) -> np.ndarray:
    """Frames `indices` of an open reader -> [len(indices), H, W, 3] uint8; VideoDecodeError naming `path`."""
    try:
        frames = np.asarray(reader.get(indices))
    except Exception as err:
        raise VideoDecodeError(str(path), "corrupt", f"decoding frames {indices}: {_short(err)}") from None
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.dtype != np.uint8:
        raise VideoDecodeError(str(path), "corrupt", f"decoder returned {frames.dtype} of shape {frames.shape}")
    return np.ascontiguousarray(frames)


def read_frames(path: str | Path | VideoBytes, indices_fn, size: int | None = None, decoder: str = "pyav") -> Clip:
    """Open `path` (a file, or a video in memory) with the resolved backend `decoder`, pick indices
    with `indices_fn(num_video_frames)` (the same whatever decodes), decode them."""
    reader = open_reader(path, size, decoder)
    try:
        total = int(reader.num_frames)
        indices = [int(i) for i in indices_fn(total)]
        frames = decode(reader, path, indices)
        fps = float(reader.fps or 0.0)
    finally:
        reader.close()
    return Clip(frames=frames, indices=indices, num_video_frames=total, fps=fps)


def read_times(path: str | Path | VideoBytes, seconds: list[float], size: int | None = None,
               decoder: str = "pyav") -> Clip:
    """The frames on screen at the given times (seconds from the start; frame_at)."""
    reader = open_reader(path, size, decoder)
    try:
        total, fps = int(reader.num_frames), float(reader.fps or 0.0)
        indices = [frame_at(t, fps, total) if fps > 0 else 0 for t in seconds]
        frames = decode(reader, path, indices)
    finally:
        reader.close()
    return Clip(frames=frames, indices=indices, num_video_frames=total, fps=fps)


def frame_at(seconds, fps: float, num_video_frames: int):
    """The frame on screen at `seconds` (a number or an array of them): frame i shows from i / fps
    (a constant frame rate, the container's average)."""
    index = np.clip(np.floor(np.asarray(seconds, dtype=np.float64) * fps + 1e-9), 0, num_video_frames - 1)
    return index.astype(np.int64) if index.ndim else int(index)


def read_clip(path: str | Path, num_frames: int, size: int | None = None, mode: str = "eval", rng=None,
              decoder: str = "pyav") -> Clip:
    """Decode T = `num_frames` frames of `path` by segment sampling, resized to size x size.

    Raises `VideoDecodeError` (reason missing | corrupt) for anything that cannot be used.
    """
    return read_frames(path, lambda n: segment_indices(n, num_frames, mode, rng), size, decoder)


# ---------------------------------------------------------------------------- backends

_INSTALL = {
    "decord": "`pip install decord` (wheels for Linux x86_64 only; evilm installs it there)",
    "pyav": "`pip install av` (a dependency of evilm: reinstall evilm)",
    "torchcodec": "`pip install 'evilm[torchcodec]'` (it also needs FFmpeg's shared libraries, 4 to 8, "
                  "on the system: e.g. `apt-get install ffmpeg` or `conda install ffmpeg`)",
}


def _pyav(source, size):
    from evilm_core.data.video.backend_pyav import PyAVReader

    return PyAVReader(source, size)


def _decord(source, size):
    from evilm_core.data.video.backend_decord import DecordReader

    return DecordReader(source, size)


def _torchcodec(source, size):
    from evilm_core.data.video.backend_torchcodec import TorchCodecReader

    return TorchCodecReader(source, size)


READERS = {"pyav": _pyav, "decord": _decord, "torchcodec": _torchcodec}  # each backend imported on first use


def _opener(decoder: str):
    """The reader of a resolved backend; `auto` here means a caller skipped settings.py."""
    if decoder not in READERS:
        raise ValueError(f"decoder {decoder!r} is not a resolved backend ({', '.join(READERS)}); resolve it once "
                         "where the run starts (evilm_core/settings.py, resolve_settings)")
    return READERS[decoder]


@functools.lru_cache(maxsize=1)
def _probe_clip() -> bytes:
    """A 4-frame 32x32 H.264 mp4 in memory, written by PyAV: what `auto` tries each backend on."""
    import av

    from evilm_core.data.video.write import h264_encoder

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(h264_encoder(), rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * k, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def unavailable(name: str) -> str | None:
    """None when backend `name` imports and decodes the probe clip here, else why not (one line).
    A fact about this machine, worked out once per process."""
    try:
        reader = READERS[name](_probe_clip(), 32)
        try:
            frames = reader.get([0, 3])
        finally:
            reader.close()
        if frames.shape != (2, 32, 32, 3) or frames.dtype != np.uint8:
            return f"decoded frames of shape {frames.shape} and dtype {frames.dtype}"
    except Exception as err:  # ImportError, OSError of missing FFmpeg libraries, the backend's own errors
        return f"{type(err).__name__}: {_short(err)}"
    return None


def check_decoder_name(name: str, key: str = "data.decoder") -> str:
    if name not in DECODERS:
        raise EvilmError(f"{key}: unknown decoder {name!r}; valid values: {', '.join(DECODERS)}")
    return name


def resolve_decoder(name: str = "auto", key: str = "data.decoder") -> str:
    """The backend that will decode: `name` itself, checked to work here, or for `auto` the first of
    AUTO_ORDER that works; the error for one that does not work says what to install. A run calls
    it once, through settings.resolve_settings."""
    check_decoder_name(name, key)
    if name != "auto":
        why = unavailable(name)
        if why is not None:
            raise EvilmError(f"{key}: the {name} decoder is not usable here ({why}); install it with "
                             f"{_INSTALL[name]}, or use {key} auto (installed here: {', '.join(installed())})")
        return name
    for candidate in AUTO_ORDER:
        if unavailable(candidate) is None:
            return candidate
    raise EvilmError(f"{key}: no video decoder works here (" + "; ".join(
        f"{n}: {unavailable(n)}" for n in AUTO_ORDER) + f"); install PyAV with {_INSTALL['pyav']}")


def installed() -> list[str]:
    """The backends that work on this machine, in AUTO_ORDER."""
    return [n for n in AUTO_ORDER if unavailable(n) is None]
