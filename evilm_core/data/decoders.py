"""Video decoder backends behind one reader interface (docs/data.md, "Decoders").

`data.decoder` / `--decoder`: auto | decord | pyav | torchcodec. Every backend is handed the same
frame indices (chosen in video.py, whatever decodes) and returns [T, H, W, 3] uint8 RGB resized
to size x size. `auto` takes the first backend of AUTO_ORDER (fastest measured first,
docs/benchmarks.md, "Decoders") that imports and decodes a tiny clip on this machine; PyAV, a
hard dependency, is always there.

A reader: `num_frames`, `fps`, `get(indices) -> np.ndarray`, `close()`. Backend exceptions are
turned into VideoDecodeError (corrupt) by video.read_frames.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import tempfile

import numpy as np

from evilm_core.errors import EvilmError

log = logging.getLogger("evilm.data")

DECODERS = ("auto", "decord", "pyav", "torchcodec")  # valid values of data.decoder / --decoder
AUTO_ORDER = ("pyav", "decord", "torchcodec")  # fastest measured first (docs/benchmarks.md, "Decoders")
_INSTALL = {
    "decord": "`pip install decord` (wheels for Linux x86_64 only; evilm installs it there)",
    "pyav": "`pip install av` (a dependency of evilm: reinstall evilm)",
    "torchcodec": "`pip install 'evilm[torchcodec]'` (it also needs FFmpeg's shared libraries, 4 to 8, "
                  "on the system: e.g. `apt-get install ffmpeg` or `conda install ffmpeg`)",
}


def debug_decoding() -> bool:
    """Whether FFmpeg's own log lines should reach stderr: only under `evilm --debug`, which sets
    EVILM_DEBUG=1 for this process and the decode workers it starts (docs/design.md, "CLI")."""
    return os.environ.get("EVILM_DEBUG") == "1"


@contextlib.contextmanager
def native_stderr_to_log():
    """Lines C++ code writes to file descriptor 2 while the block runs (decord's "ERROR opening"
    beside its VideoDecodeError) go to the debug log instead, unless --debug is on. The window
    is one file open, in the thread that decodes."""
    if debug_decoding():
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("decoder said: %s", text)


@functools.cache
def _quiet_decord() -> None:
    """decord lets FFmpeg print to the process's stderr ("moov atom not found" for every damaged
    file); the clip is counted as skipped anyway, so its lines are shown only with --debug."""
    import decord

    decord.logging.set_level(decord.logging.INFO if debug_decoding() else decord.logging.QUIET)


class DecordReader:
    """decord: one VideoReader per clip, one thread, resized in the decoder (its filter graph)."""

    def __init__(self, source, size: int | None):
        import decord  # imported lazily: worker processes import it themselves

        _quiet_decord()
        kwargs = {"num_threads": 1, **({"width": size, "height": size} if size else {})}
        with native_stderr_to_log():
            self.reader = decord.VideoReader(io.BytesIO(source) if isinstance(source, bytes) else source, **kwargs)
        self.num_frames = len(self.reader)
        self.fps = float(self.reader.get_avg_fps() or 0.0)

    def get(self, indices: list[int]) -> np.ndarray:
        return self.reader.get_batch(list(indices)).asnumpy()

    def close(self) -> None:
        del self.reader  # a long-lived reader leaks; a shared one can hang: one per clip


class TorchCodecReader:
    """torchcodec: exact seek mode, one FFmpeg thread, resized in the decoder (its Resize transform)."""

    def __init__(self, source, size: int | None):
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        if not isinstance(source, bytes):
            with open(source, "rb") as fh:  # a file object: any file name, including non-UTF-8 ones
                source = fh.read()
        self.decoder = VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact",
                                    transforms=[Resize((size, size))] if size else None)
        meta = self.decoder.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.fps = float(meta.average_fps or 0.0)

    def get(self, indices: list[int]) -> np.ndarray:
        return self.decoder.get_frames_at(list(indices)).data.numpy()

    def close(self) -> None:
        del self.decoder


def _pyav_reader(source, size: int | None):
    from evilm_core.data.decode_pyav import PyAVReader

    return PyAVReader(source, size)


READERS = {"decord": DecordReader, "pyav": _pyav_reader, "torchcodec": TorchCodecReader}


@functools.lru_cache(maxsize=1)
def _probe_clip() -> bytes:
    """A 4-frame 32x32 H.264 mp4 in memory, written by PyAV: what `auto` tries each backend on."""
    import av

    from evilm_core.data.video_io import h264_encoder

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
    """None when backend `name` imports and decodes the probe clip here, else why not (one line)."""
    try:
        reader = READERS[name](_probe_clip(), 32)
        try:
            frames = reader.get([0, 3])
        finally:
            reader.close()
        if frames.shape != (2, 32, 32, 3) or frames.dtype != np.uint8:
            return f"decoded frames of shape {frames.shape} and dtype {frames.dtype}"
    except Exception as err:  # ImportError, OSError of missing FFmpeg libraries, the backend's own errors
        lines = str(err).strip().splitlines()
        return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"
    return None


def check_decoder_name(name: str, key: str = "data.decoder") -> str:
    if name not in DECODERS:
        raise EvilmError(f"{key}: unknown decoder {name!r}; valid values: {', '.join(DECODERS)}")
    return name


def resolve_decoder(name: str = "auto", key: str = "data.decoder") -> str:
    """The backend that will decode: `name` itself, checked to work here, or for `auto` the first of
    AUTO_ORDER that works. The error for one that does not work says what to install."""
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


def open_reader(source, size: int | None, decoder: str):
    """A reader of `source` (a path string, or bytes) with backend `decoder` (resolved if auto)."""
    return READERS[resolve_decoder(decoder)](source, size)
