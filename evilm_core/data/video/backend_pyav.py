"""The PyAV frame sampler: decode only what the wanted frames need (docs/data.md, "Decoders").

Opening demuxes the stream's packets once (no decoding) into a packet index: the presentation
timestamps in order (frame i is the i-th smallest pts, as decord numbers frames, so even a
variable frame rate maps exactly) and which packets are keyframes. Decoding then visits the
wanted frames in ascending order:

- seek only when needed: to the keyframe at or before the next wanted frame, and only when that
  keyframe is ahead of the decoder's position (decoding up to it would be wasted) or the wanted
  frame is behind it; otherwise decode forward;
- between wanted frames the decoder skips non-reference frames (`skip_frame = "NONREF"`: no
  other frame depends on them); the packet of a wanted frame is always sent with "DEFAULT", so a
  wanted frame that is itself non-reference is decoded. Decoding is single-threaded, so the
  setting applies to exactly the packet sent next;
- each decoded frame is identified by its pts (the index's rank; from the stream time base and
  average rate when a frame has none) and converted to RGB at the requested size in one
  swscale pass, bilinear (the closest to decord: mean difference ~1 of 255, docs/benchmarks.md),
  by one reformatter per thread and process, on one scaler thread: a fresh one (what `frame.reformat` makes) sets up a new swscale
  context for every frame, ~2.7 ms of a 320x240 frame's ~3 ms (docs/benchmarks.md, "Decoders").
"""

from __future__ import annotations

import bisect
import io
import os
import threading
from fractions import Fraction

import numpy as np

NONREF, DEFAULT = "NONREF", "DEFAULT"
_LOCAL = threading.local()  # this thread's (pid, VideoReformatter): a swscale context is not thread-safe
_SCALER_THREADS = {"threads": 1}  # emptied where PyAV's reformat has no `threads` (before 17)


def _reformatter():
    """This thread's reformatter, made anew in a forked child: a context inherited through fork()
    may wait forever on scaler threads that only the parent has."""
    pid, reformatter = getattr(_LOCAL, "entry", (None, None))
    if pid != os.getpid():
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()
        _LOCAL.entry = (os.getpid(), reformatter)
    return reformatter


def _scale(frame, size: int):
    """frame -> RGB size x size, bilinear, on one scaler thread: decoding is single-threaded by
    design (parallel across workers), and PyAV 17+'s default (a thread per core, per context)
    oversubscribes them."""
    args = dict(width=size, height=size, format="rgb24", interpolation="BILINEAR", **_SCALER_THREADS)
    try:
        return _reformatter().reformat(frame, **args)
    except TypeError:
        if not _SCALER_THREADS:
            raise
        _SCALER_THREADS.clear()  # PyAV < 17: no `threads` (and one thread anyway); decided once
        return _scale(frame, size)


class PyAVReader:
    """One opened video; `get(indices)` returns [len(indices), H, W, 3] uint8 RGB."""

    def __init__(self, source, size: int | None):
        import av

        self.size = size
        self.container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source, mode="r")
        try:
            self.stream = self.container.streams.video[0]
        except IndexError:
            self.container.close()
            raise ValueError("no video stream") from None
        self.stream.thread_type = "SLICE"  # never frame threads: they delay output and skip decisions
        self.stream.codec_context.thread_count = 1
        self._index()
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.num_frames = int(self.stream.frames) or len(self.pts)
        self.base = 0  # the keyframe decoding started from (the last seek's)
        self.position = 0  # 1 + the highest frame index whose packet the decoder was sent since the last seek
        self.sent: set[int] = set()  # pts of the packets sent since the last seek
        self.in_flight: set[int] = set()  # of those, the wanted ones of this `get` (sent with DEFAULT)
        self.started = False

    def _index(self) -> None:
        """Every packet's pts (sorted: frame order) and the frame indices of keyframes."""
        pts, keys = [], []
        for packet in self.container.demux(self.stream):
            if packet.pts is None or packet.size == 0:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        self.pts = sorted(pts)
        self.rank = {p: i for i, p in enumerate(self.pts)}
        self.keyframes = sorted(self.rank[p] for p in keys) or [0]
        self.container.seek(0)  # back to the start (flushes the decoder)

    def close(self) -> None:
        self.container.close()

    def _frame_index(self, frame) -> int:
        if frame.pts is not None and frame.pts in self.rank:
            return self.rank[frame.pts]
        start = self.stream.start_time or 0
        rate = self.stream.average_rate or Fraction(1)
        return int(round(float((frame.pts - start) * self.stream.time_base * rate))) if frame.pts is not None else -1

    def _seek_to(self, key: int) -> None:
        self.container.seek(self.pts[key], stream=self.stream, backward=True, any_frame=False)
        self.stream.codec_context.flush_buffers()  # no frame of before the seek may come out after it
        self.base = self.position = key
        self.started, self.sent, self.in_flight = False, set(), set()

    def _needs_seek(self, wanted: int) -> bool:
        key = self.keyframes[bisect.bisect_right(self.keyframes, wanted) - 1]
        if not self.started:
            return key > 0 or self.position != 0
        # ahead: a keyframe not reached yet; behind: before the start, or sent already but not for this `get`
        return key > self.position or wanted < self.base or (self.pts[wanted] in self.sent
                                                             and self.pts[wanted] not in self.in_flight)

    def get(self, indices: list[int]) -> np.ndarray:
        wanted = sorted(set(int(i) for i in indices))
        bad = [i for i in wanted if not 0 <= i < len(self.pts)]
        if bad:
            raise ValueError(f"frame {bad[0]} out of range: the stream has {len(self.pts)} frames")
        got: dict[int, np.ndarray] = {}
        self.in_flight = set()
        for w in wanted:
            if w in got:
                continue
            if self._needs_seek(w):
                key = self.keyframes[bisect.bisect_right(self.keyframes, w) - 1]
                self._seek_to(key)
            self._decode_until(w, wanted, got)
            if w not in got:
                raise ValueError(f"frame {w} could not be decoded")
        return np.stack([got[int(i)] for i in indices])

    def _decode_until(self, target: int, wanted: list[int], got: dict) -> None:
        """Decode forward from the current position until frame `target` is out, keeping every
        wanted frame on the way."""
        want_pts = {self.pts[i] for i in wanted if i not in got}
        ctx = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            if packet.size == 0 and packet.pts is None:  # the demuxer's end-of-stream packet: flush
                packet = None
            elif packet.pts is not None and packet.pts not in want_pts:
                ctx.skip_frame = NONREF  # a frame nobody asked for: non-reference ones are skipped
            else:
                ctx.skip_frame = DEFAULT
                self.in_flight.add(packet.pts)
            self.started = True
            if packet is not None and packet.pts in self.rank:
                self.sent.add(packet.pts)
                self.position = max(self.position, self.rank[packet.pts] + 1)
            for frame in ctx.decode(packet):
                idx = self._frame_index(frame)
                if 0 <= idx < len(self.pts) and self.pts[idx] in want_pts and idx not in got:
                    got[idx] = self._rgb(frame)
            if target in got or packet is None:
                return

    def _rgb(self, frame) -> np.ndarray:
        if self.size:
            frame = _scale(frame, self.size)
        return frame.to_ndarray(format="rgb24")
