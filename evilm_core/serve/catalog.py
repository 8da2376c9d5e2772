"""What the service knows of one index's clips besides their embeddings (docs/serving.md): key ->
row, each clip's captions and source metadata, its video file and its frames.

Files are reachable only through index keys: a key resolves to a path under the collection's
root (the `--videos` directory, a manifest's video root, or the video root a shard set was built
from), and a path that leaves the root once symlinks are followed, or does not exist, is not
served. Keys are looked up through 64-bit hashes (data/label_cache.py KeyRows, 16 bytes a key), so a
million-clip index costs no Python object per key; the catalog's captions come from the manifest or
shard set the index was built from (a shard set's record table stays memory-mapped).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from evilm_core.data.clips import ClipSource, open_clips, open_shards
from evilm_core.data.label_cache import KeyRows
from evilm_core.data.records.record import ClipRecord
from evilm_core.data.shards.layout import ShardSet
from evilm_core.errors import EvilmError
from evilm_core.retrieval.contact_sheet import FrameSource
from evilm_core.retrieval.index import IndexView

log = logging.getLogger("evilm.serve")
STRIP_FRAMES, STRIP_SIZE = 4, 128  # a result's frame strip: 4 frames of 128 px


class Catalog:
    def __init__(self, index: IndexView, decoder: str = "pyav"):
        self.index = index
        self.rows = KeyRows(list(index.keys))
        self.video_root, self.records, shards = _sources(index)  # records: a RecordTable (memory-mapped) or a list
        self.real_root = None if self.video_root is None else os.path.realpath(self.video_root)  # symlinks followed
        self.record_rows = KeyRows([r.video for r in self.records])
        self.frames = FrameSource(index.meta.root, decoder)
        # what a model reads the clips from (--qa answers): the shard set's frames, else the videos
        self.source = ClipSource(index.meta.root, self.records, index.meta.root, shards)

    def row(self, key: str) -> int | None:
        """The index row of `key`, or None when the index has no such key."""
        row = self.rows.row(key)
        return row if row is not None and self.index.keys[row] == key else None  # a hash collision is no match

    def _records(self, key: str) -> list[ClipRecord]:
        """The collection's records of the clip `key` (a manifest may caption a clip many times)."""
        return [r for r in (self.records[i] for i in self.record_rows.all_rows(key)) if r.video == key]

    def sample(self, key: str) -> int | None:
        """The clip's sample in the shard set (None: the index was built from video files)."""
        return next((r.sample for r in self._records(key)), None)

    def describe(self, key: str) -> dict:
        """What a result shows of a clip: captions and the source's metadata fields (cached: the
        same clips come back for many queries; the caller must not change the dict)."""
        return self._described(key)

    @functools.lru_cache(maxsize=65_536)
    def described_json(self, key: str) -> str:
        """describe(key) as JSON members, without the braces (`"key": ..., "caption": ...`):
        serialised once per clip, not once per result (docs/serving.md, "Batching")."""
        return json.dumps(self._described(key), ensure_ascii=False, allow_nan=False)[1:-1]

    @functools.lru_cache(maxsize=65_536)
    def _described(self, key: str) -> dict:
        records = self._records(key)
        captions = [r.caption for r in records if r.caption]
        first = records[0].to_json() if records else {}
        extra = {k: v for k, v in first.items() if k not in ("video", "caption")}
        return {"key": key, "caption": captions[0] if captions else None, "captions": captions[:5],
                "num_captions": len(captions), "has_video": self.video_file(key) is not None, **extra}

    def video_file(self, key: str) -> Path | None:
        """The clip's video file, only when it lies under the collection root (symlinks followed)."""
        if self.real_root is None or self.row(key) is None:
            return None
        root, path = self.real_root, os.path.realpath(os.path.join(self.real_root, key))
        if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
            return None
        return Path(path)

    def strip_jpeg(self, key: str, n: int = STRIP_FRAMES, size: int = STRIP_SIZE) -> bytes | None:
        """n frames of the clip side by side, as JPEG (None: unreadable)."""
        frames = self.frames.frames(key, n, size)
        if not frames:
            return None
        buf = io.BytesIO()
        Image.fromarray(np.concatenate(frames, axis=1)).save(buf, format="JPEG", quality=85)
        return buf.getvalue()


def _sources(index: IndexView) -> tuple[str | None, Sequence[ClipRecord], ShardSet | None]:
    """(the root video files are served from, the records of the collection, its shard set)."""
    source = index.meta.source or {}
    root = index.meta.root
    shards = open_shards(root)
    if shards is not None:
        built_from = shards.meta.get("input", {})  # what the set was built from (its index.json)
        video_root = built_from.get("root") if built_from.get("kind") == "manifest" else None
        return video_root, shards.records, shards
    if "manifest" in source and Path(source["manifest"]).is_file():
        try:
            return root, open_clips(source["manifest"], source.get("format", "auto"), root).records, None
        except EvilmError as err:
            log.warning("index %s: its manifest %s cannot be read (%s); serving keys without captions",
                        index.directory, source["manifest"], err)
    return root, [], None
