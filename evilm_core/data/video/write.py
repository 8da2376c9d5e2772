"""Video writing with PyAV (decord only reads). Used by the synthetic data generator.

decord loads its own bundled libx264 (core 164) with RTLD_GLOBAL, so in a process that has
imported decord, PyAV's libavcodec binds x264_param_* and x264_encoder_encode to decord's
copy while opening the encoder from its own (core 165). With the options below the bytes are
identical either way (checked); re-check that if the options change.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

import av
import numpy as np

from evilm_core.fs import atomic_path

# libx264 first: it is in every PyAV wheel we know of and honours crf/preset/threads.
_H264_ENCODERS = ("libx264", "h264", "libopenh264")


def h264_encoder() -> str:
    """Name of the first H.264 encoder this PyAV build offers."""
    for name in _H264_ENCODERS:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # listed but not usable for encoding (decoder-only name)
                continue
            return name
    raise RuntimeError(f"no H.264 encoder in this PyAV build (looked for {', '.join(_H264_ENCODERS)})")


def _encoder_options(codec: str) -> dict[str, str]:
    if codec != "libx264":
        return {}
    # threads=1 makes the bitstream independent of the machine's core count (x264 frame
    # threading changes rate-control decisions); callers parallelise over files instead.
    # mbtree=0: with macroblock-tree rate control, x264 165's AVX-512 code gave different
    # bytes for the same input on ~10% of 64x64 clips (it depends on heap contents: output
    # changed between processes); without it the output is reproducible. mbtree only saves
    # bitrate. crf 18 keeps flat colours close to the source after yuv420p subsampling.
    return {"crf": "18", "preset": "fast", "threads": "1", "x264-params": "mbtree=0"}


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> None:
    """Write `frames` (T, H, W, 3) uint8 RGB as an H.264 yuv420p mp4.

    Written to a temporary name next to `path` and renamed, so a crash never leaves a
    half-written clip under the final name. Identical input gives identical bytes.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (T, H, W, 3) with T > 0, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    _, height, width, _ = frames.shape
    with mp4_writer(path, width, height, fps) as write:
        for frame in frames:
            write(frame)


@contextmanager
def mp4_writer(path: str | os.PathLike, width: int, height: int, fps: int = 8) -> Iterator[Callable]:
    """Write an H.264 yuv420p mp4 frame by frame (a long video never held whole): yields
    `write(frame)`, frame (H, W, 3) uint8 RGB. Atomic and reproducible as write_mp4."""
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even height and width, got {height}x{width}")
    codec = h264_encoder()
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=int(fps), options=_encoder_options(codec))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.thread_count = 1

            def write(frame: np.ndarray) -> None:
                image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(image))

            yield write
            container.mux(stream.encode(None))  # flush delayed (B-)frames
