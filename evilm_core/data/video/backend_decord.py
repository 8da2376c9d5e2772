"""The decord backend (docs/data.md, "Decoders"): one VideoReader per clip, one thread, resized
in the decoder (its filter graph). decord prints FFmpeg's complaints to the process's stderr; they
reach the debug log instead, unless `evilm --debug` asks for them."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import tempfile

import numpy as np

log = logging.getLogger("evilm.data")


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
