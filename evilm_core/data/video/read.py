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

import contextlib
import functools
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from evilm_core.config.sections import DECODERS, MAX_VIDEO_BYTES
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.fs import disk_errors, human_size, temp_sibling

AUTO_ORDER = DECODERS[1:]  # what `auto` tries, fastest measured first (docs/benchmarks.md, "Decoders")
SPOOL_BYTES = 64 << 20  # a video up to this size may be held in memory; a bigger tar member is decoded from a copy


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
    """A video held in memory: decoded without touching disk."""

    name: str  # what messages call it (e.g. "00000.tar/000000042.mp4")
    data: bytes  # the container's bytes

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TarMember:
    """A video inside a tar (a WebDataset / video2dataset shard), read where it lies: a member up
    to SPOOL_BYTES is read into memory, a bigger one is copied in 1 MiB pieces to a temporary
    file in `spool_dir` and decoded from there, so memory never holds more than SPOOL_BYTES of it
    (docs/reliability.md, "Bounded reading")."""

    tar: str  # the tar file
    name: str  # what keys and messages call it: "00000.tar/000000042.mp4"
    offset: int  # byte offset of its data in the tar
    size: int  # its length in bytes (from its header)
    spool_dir: str | None = None  # where a big member is copied to be decoded (None: the system's temporary directory)

    def __str__(self) -> str:
        return self.name

    def read(self, limit: int = SPOOL_BYTES) -> bytes:
        """The member's bytes (at most `limit`: more is an error, never an allocation)."""
        if self.size > limit:
            raise VideoDecodeError(self.name, "corrupt", f"{human_size(self.size)}, more than the "
                                   f"{human_size(limit)} read into memory")
        with open(self.tar, "rb") as fh:
            data = os.pread(fh.fileno(), self.size, self.offset)
        if len(data) != self.size:
            raise VideoDecodeError(self.name, "corrupt", f"truncated: {len(data)} of {self.size} bytes")
        return data

    @contextlib.contextmanager
    def spooled(self) -> Iterator[str]:
        """The member copied to a temporary file (the `.NAME.HOST.PID.tmp` of evilm_core/fs.py, so a
        killed run's copy is removed by the next run), removed afterwards."""
        directory = Path(self.spool_dir or tempfile.gettempdir())
        path = temp_sibling(directory / f"spool-{self.offset}-{Path(self.tar).name}")
        try:
            with disk_errors(path), open(self.tar, "rb") as src, open(path, "wb") as dst:
                done = 0
                while done < self.size:
                    block = os.pread(src.fileno(), min(1 << 20, self.size - done), self.offset + done)
                    if not block:
                        raise VideoDecodeError(self.name, "corrupt", f"truncated: {done} of {self.size} bytes")
                    dst.write(block)
                    done += len(block)
            yield str(path)
        finally:
            path.unlink(missing_ok=True)


def _too_large(name: str, size: int, max_bytes: int) -> VideoDecodeError:
    return VideoDecodeError(name, "corrupt", f"too large: {human_size(size)} ({size} bytes), more than "
                            f"data.max_video_bytes ({human_size(max_bytes)})")


@contextlib.contextmanager
def _source(path: Path | VideoBytes | TarMember, max_bytes: int) -> Iterator:
    """What a backend opens: a path string, or bytes (in memory; a file name that is not UTF-8,
    which FFmpeg cannot be given). Missing, empty, directory and too large (over `max_bytes`)
    sources raise VideoDecodeError before a byte of them is read."""
    if isinstance(path, TarMember):
        if path.size > max_bytes:
            raise _too_large(path.name, path.size, max_bytes)
        if not path.size:
            raise VideoDecodeError(path.name, "corrupt", "empty file (0 bytes)")
        if path.size <= SPOOL_BYTES:
            yield path.read()
        else:
            with path.spooled() as copy:
                yield copy
        return
    if isinstance(path, VideoBytes):
        if not path.data:
            raise VideoDecodeError(path.name, "corrupt", "empty file (0 bytes)")
        if len(path.data) > max_bytes:
            raise _too_large(path.name, len(path.data), max_bytes)
        yield path.data
        return
    if not path.exists():
        raise VideoDecodeError(str(path), "missing", "no such file")
    if path.is_dir():
        raise VideoDecodeError(str(path), "corrupt", "is a directory")
    size = os.path.getsize(path)
    if size == 0:
        raise VideoDecodeError(str(path), "corrupt", "empty file (0 bytes)")
    if size > max_bytes:
        raise _too_large(str(path), size, max_bytes)
    if _utf8(str(path)):
        yield str(path)
        return
    if size > SPOOL_BYTES and sys.platform.startswith("linux"):  # too big to hold: FFmpeg opens it by descriptor
        with open(path, "rb") as fh:
            yield f"/proc/self/fd/{fh.fileno()}"
        return
    if size > SPOOL_BYTES:
        raise VideoDecodeError(str(path), "corrupt", f"the file name is not UTF-8 and the file ({human_size(size)}) is "
                               f"more than the {human_size(SPOOL_BYTES)} read into memory; rename it")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise VideoDecodeError(str(path), "corrupt", _short(err)) from None
    yield data


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(err: Exception) -> str:
    """One line of a backend's error, without PyAV's errno and the '<none>' it gives as the name
    of a video read from memory (the message names the video itself)."""
    strerror = getattr(err, "strerror", None)
    text = (strerror if isinstance(strerror, str) and strerror else str(err)).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


class _OpenReader:
    """A backend's reader and the source it reads from (a tar member's spooled copy, an open
    descriptor), both released by `close`."""

    def __init__(self, reader, source: contextlib.ExitStack):
        self._reader, self._source = reader, source

    @property
    def num_frames(self) -> int:
        return self._reader.num_frames

    @property
    def fps(self) -> float:
        return self._reader.fps

    def get(self, indices: list[int]):
        return self._reader.get(indices)

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            self._source.close()


def open_reader(path: str | Path | VideoBytes | TarMember, size: int | None = None, decoder: str = "pyav",
                max_bytes: int = MAX_VIDEO_BYTES) -> _OpenReader:
    """An opened reader of the resolved backend `decoder` (`num_frames`, `fps`, `get`, `close`)
    holding at least one frame; VideoDecodeError for anything that cannot be used, a source over
    `max_bytes` (data.max_video_bytes) included, unread. The caller closes it."""
    path = path if isinstance(path, (VideoBytes, TarMember)) else Path(path)
    opener = _opener(decoder)
    stack = contextlib.ExitStack()
    try:
        source = stack.enter_context(_source(path, max_bytes))
        try:
            reader = opener(source, size)
        except Exception as err:  # each backend raises its own errors for a file it cannot open
            raise VideoDecodeError(str(path), "corrupt", _short(err)) from None
        if int(reader.num_frames) < 1:
            reader.close()
            raise VideoDecodeError(str(path), "corrupt", "no decodable frames")
    except BaseException:
        stack.close()
        raise
    return _OpenReader(reader, stack)


def decode(reader, path, indices: list[int]) -> np.ndarray:
    """Frames `indices` of an open reader -> [len(indices), H, W, 3] uint8; VideoDecodeError naming `path`."""
    try:
        frames = np.asarray(reader.get(indices))
    except Exception as err:
        raise VideoDecodeError(str(path), "corrupt", f"decoding frames {indices}: {_short(err)}") from None
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.dtype != np.uint8:
        raise VideoDecodeError(str(path), "corrupt", f"decoder returned {frames.dtype} of shape {frames.shape}")
    return np.ascontiguousarray(frames)


def read_frames(path: str | Path | VideoBytes | TarMember, indices_fn, size: int | None = None,
                decoder: str = "pyav", max_bytes: int = MAX_VIDEO_BYTES) -> Clip:
    """Open `path` (a file, a tar member, or a video in memory) with the resolved backend
    `decoder`, pick indices with `indices_fn(num_video_frames)` (the same whatever decodes), decode
    them. A source over `max_bytes` (data.max_video_bytes) is skipped unread."""
    reader = open_reader(path, size, decoder, max_bytes)
    try:
        total = int(reader.num_frames)
        indices = [int(i) for i in indices_fn(total)]
        frames = decode(reader, path, indices)
        fps = float(reader.fps or 0.0)
    finally:
        reader.close()
    return Clip(frames=frames, indices=indices, num_video_frames=total, fps=fps)


def read_times(path: str | Path | VideoBytes | TarMember, seconds: list[float], size: int | None = None,
               decoder: str = "pyav", max_bytes: int = MAX_VIDEO_BYTES) -> Clip:
    """The frames on screen at the given times (seconds from the start; frame_at)."""
    reader = open_reader(path, size, decoder, max_bytes)
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


def read_clip(path: str | Path | TarMember, num_frames: int, size: int | None = None, mode: str = "eval", rng=None,
              decoder: str = "pyav", max_bytes: int = MAX_VIDEO_BYTES) -> Clip:
    """Decode T = `num_frames` frames of `path` by segment sampling, resized to size x size.

    Raises `VideoDecodeError` (reason missing | corrupt) for anything that cannot be used.
    """
    return read_frames(path, lambda n: segment_indices(n, num_frames, mode, rng), size, decoder, max_bytes)


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
