"""A contact sheet of retrieval results: one row per query, its top-k clips left to right,
each shown by its middle frame with rank, score and key underneath. A moment (a window index's
hit) is shown by MOMENT_FRAMES frames from inside it, at the centres of equal thirds, each with
its time, and the moment's start and end under them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from evilm_core.data.records.manifest import resolve_video
from evilm_core.data.shards.layout import ShardSet, looks_like_shards
from evilm_core.data.video.read import read_frames, read_times
from evilm_core.errors import VideoDecodeError

log = logging.getLogger("evilm.retrieval")
TILE, CAPTION_H, QUERY_H, PAD = 160, 30, 22, 6
MOMENT_FRAMES, TIME_H = 3, 14  # frames shown per moment; the line under each with its time


def middle_frame(path: Path, size: int = TILE) -> np.ndarray | None:
    try:
        return read_frames(path, lambda n: [n // 2], size).frames[0]
    except VideoDecodeError as err:
        log.warning("contact sheet: %s unreadable (%s)", path, err.reason)
        return None


class FrameSource:
    """A clip's middle frame by key: from the video file under `root`, or, when the index was
    built from a shard set (`root` is one), from the frames the shards store (the video files
    may not be on this machine at all)."""

    def __init__(self, root: str):
        self.root, self.shards, self.sample_of = root, None, {}
        if looks_like_shards(root):
            self.shards = ShardSet.open(root)
            self.sample_of = {r.video: r.sample for r in self.shards.records}

    def at(self, key: str, seconds: list[float]) -> np.ndarray | None:
        """The frames of a video file at `seconds` [n, TILE, TILE, 3] (a window index's videos are
        files: windows are never built from shards)."""
        try:
            return read_times(resolve_video(key, self.root), seconds, TILE).frames
        except VideoDecodeError as err:
            log.warning("contact sheet: %s unreadable (%s)", key, err.reason)
            return None

    def middle(self, key: str) -> np.ndarray | None:
        if self.shards is None:
            return middle_frame(resolve_video(key, self.root))
        try:
            if key not in self.sample_of:
                raise VideoDecodeError(key, "missing", f"not in the shard set {self.root}")
            stored = self.shards.read(self.sample_of[key]).frames  # [F, H, W, 3]
        except VideoDecodeError as err:
            log.warning("contact sheet: %s unreadable (%s)", key, err.reason)
            return None
        return np.asarray(Image.fromarray(stored[len(stored) // 2]).resize((TILE, TILE), Image.BILINEAR))


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """Shorten `text` from the left (keys differ at their ends) until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def moment_times(start: float, end: float) -> list[float]:
    """Where a moment is shown: the centres of MOMENT_FRAMES equal parts of it."""
    return [start + (i + 0.5) * (end - start) / MOMENT_FRAMES for i in range(MOMENT_FRAMES)]


def _cell(sheet: Image.Image, draw, font, frames: FrameSource, hit, x: int, y: int) -> None:
    """One hit at (x, y): its frame(s), then rank, score, key (and a moment's times)."""
    moment = hit.start is not None
    times = moment_times(hit.start, hit.end) if moment else []
    shown = frames.at(hit.key, times) if moment else frames.middle(hit.key)
    width = TILE * (MOMENT_FRAMES if moment else 1) + PAD * (MOMENT_FRAMES - 1 if moment else 0)
    if shown is None:
        draw.rectangle([x, y, x + width - 1, y + TILE - 1], outline=(200, 0, 0))
        draw.text((x + 8, y + TILE // 2), "unreadable", fill=(200, 0, 0), font=font)
    else:
        for i, frame in enumerate(shown if moment else [shown]):
            sheet.paste(Image.fromarray(frame), (x + i * (TILE + PAD), y))
    for i, t in enumerate(times):
        draw.text((x + i * (TILE + PAD), y + TILE + 1), f"{t:.1f} s", fill=(0, 0, 160), font=font)
    y += TILE + (TIME_H if moment else 0)
    span = f"  {hit.start:.1f}-{hit.end:.1f} s" if moment else ""
    draw.text((x, y + 2), f"#{hit.rank}  {hit.score:.3f}{span}", fill=(0, 0, 0), font=font)
    draw.text((x, y + 15), _fit(hit.key, draw, font, width), fill=(60, 60, 60), font=font)


def contact_sheet(rows: list[list], root: str, out: str | Path) -> Path:
    """rows: per query, its list of Hit (query, rank, key, score[, start, end]). Writes a PNG and
    returns its path."""
    k = max((len(r) for r in rows), default=0)
    moments = any(hit.start is not None for hits in rows for hit in hits)
    cell = MOMENT_FRAMES * (TILE + PAD) if moments else TILE + PAD
    row_h = QUERY_H + TILE + (TIME_H if moments else 0) + CAPTION_H + PAD
    sheet = Image.new("RGB", (max(PAD + k * cell, 320), PAD + len(rows) * row_h), (255, 255, 255))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    frames, y = FrameSource(root), PAD
    for hits in rows:
        if hits:
            draw.text((PAD, y + 4), _fit(f"query: {hits[0].query}", draw, font, sheet.width - 2 * PAD), fill=(0, 0, 0),
                      font=font)
        for col, hit in enumerate(hits):
            _cell(sheet, draw, font, frames, hit, PAD + col * cell, y + QUERY_H)
        y += row_h
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
