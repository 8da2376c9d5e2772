"""A contact sheet of retrieval results: one row per query, its top-k clips left to right,
each shown by its middle frame with rank, score and key underneath."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from evilm_core.data.records.manifest import resolve_video
from evilm_core.data.shards.layout import ShardSet, looks_like_shards
from evilm_core.data.video.read import read_frames
from evilm_core.errors import VideoDecodeError

log = logging.getLogger("evilm.retrieval")
TILE, CAPTION_H, QUERY_H, PAD = 160, 30, 22, 6


def evenly(count: int, n: int) -> list[int]:
    """n positions spread over `count` items (segment centres), for a strip of frames."""
    return [min(count - 1, int((i + 0.5) * count / n)) for i in range(n)]


class FrameSource:
    """A clip's frames by key: from the video file under `root`, or, when the index was built from
    a shard set (`root` is one), from the frames the shards store (the video files may not be on
    this machine at all)."""

    def __init__(self, root: str, decoder: str = "pyav"):
        self.root, self.decoder, self.shards, self.sample_of = root, decoder, None, {}
        if looks_like_shards(root):
            self.shards = ShardSet.open(root)
            self.sample_of = {r.video: r.sample for r in self.shards.records}

    def frames(self, key: str, n: int = 1, size: int = TILE) -> list[np.ndarray]:
        """`n` frames spread over the clip, size x size RGB; [] when it cannot be read."""
        try:
            if self.shards is None:
                return list(read_frames(resolve_video(key, self.root), lambda count: evenly(count, n), size,
                                        self.decoder).frames)
            if key not in self.sample_of:
                raise VideoDecodeError(key, "missing", f"not in the shard set {self.root}")
            stored = self.shards.read(self.sample_of[key]).frames  # [F, H, W, 3]
        except VideoDecodeError as err:
            log.warning("%s unreadable (%s)", key, err.reason)
            return []
        return [np.asarray(Image.fromarray(stored[i]).resize((size, size), Image.BILINEAR))
                for i in evenly(len(stored), n)]

    def middle(self, key: str) -> np.ndarray | None:
        frames = self.frames(key)
        return frames[0] if frames else None


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """Shorten `text` from the left (keys differ at their ends) until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def contact_sheet(rows: list[list], root: str, out: str | Path) -> Path:
    """rows: per query, its list of Hit (query, rank, key, score). Writes a PNG and returns its path."""
    k = max((len(r) for r in rows), default=0)
    width = PAD + k * (TILE + PAD)
    height = PAD + len(rows) * (QUERY_H + TILE + CAPTION_H + PAD)
    sheet = Image.new("RGB", (max(width, 320), height), (255, 255, 255))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    frames, y = FrameSource(root), PAD
    for hits in rows:
        if hits:
            draw.text((PAD, y + 4), _fit(f"query: {hits[0].query}", draw, font, sheet.width - 2 * PAD), fill=(0, 0, 0),
                      font=font)
        y += QUERY_H
        for col, hit in enumerate(hits):
            x = PAD + col * (TILE + PAD)
            frame = frames.middle(hit.key)
            if frame is None:
                draw.rectangle([x, y, x + TILE - 1, y + TILE - 1], outline=(200, 0, 0))
                draw.text((x + 8, y + TILE // 2), "unreadable", fill=(200, 0, 0), font=font)
            else:
                sheet.paste(Image.fromarray(frame), (x, y))
            draw.text((x, y + TILE + 2), f"#{hit.rank}  {hit.score:.3f}", fill=(0, 0, 0), font=font)
            draw.text((x, y + TILE + 15), _fit(hit.key, draw, font, TILE), fill=(60, 60, 60), font=font)
        y += TILE + CAPTION_H + PAD
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
