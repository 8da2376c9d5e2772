"""ClipDataset: per-item determinism, skip-and-count for broken clips, collation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from evilm_core.data.dataset import ClipDataset, SegmentFrames, collate_clips
from evilm_core.data.manifest import video_root
from evilm_core.data.record import ClipRecord
from evilm_core.data.transforms import ClipTransform
from evilm_core.data.video_io import write_mp4


def _records(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_mp4(tmp_path / f"{name}.mp4", rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8), fps=8)
    (tmp_path / "bad.mp4").write_bytes(b"")
    return [ClipRecord(video="a.mp4", caption="first"), ClipRecord(video="bad.mp4", caption="x"),
            ClipRecord(video="missing.mp4"), ClipRecord(video="b.mp4", caption="second")]


def test_skips_are_reported_not_raised(tmp_path):
    ds = ClipDataset(_records(tmp_path), str(tmp_path), SegmentFrames(4, 64), ClipTransform(train=True))
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_clips, num_workers=2)
    batch = next(iter(loader))
    assert batch["size"] == 2 and batch["pixels"].shape == (2, 4, 3, 64, 64)
    assert batch["caption"] == ["first", "second"]
    assert sorted((v, r) for v, r, _ in batch["skipped"]) == [("bad.mp4", "corrupt"), ("missing.mp4", "missing")]
    assert batch["frame_indices"].shape == (2, 4) and batch["flipped"].dtype == torch.bool


def test_items_are_deterministic_per_seed_epoch_index(tmp_path):
    records = _records(tmp_path)
    ds = ClipDataset(records, str(tmp_path), SegmentFrames(4, 64), ClipTransform(train=True), seed=7)
    a, b = ds[0], ds[0]
    assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["frame_indices"], b["frame_indices"])
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        seen.add(tuple(ds[0]["frame_indices"].tolist()))
    assert len(seen) > 1  # a new epoch draws new frames


def test_all_skipped_batch():
    batch = collate_clips([{"index": 0, "skip": ("x.mp4", "missing", "")}])
    assert batch == {"skipped": [("x.mp4", "missing", "")], "size": 0}


def test_video_root_defaults_to_manifest_dir(tmp_path):
    assert video_root(None, tmp_path / "m.jsonl") == str(tmp_path)
    assert video_root(None, tmp_path) == str(tmp_path)
    assert video_root("/data", tmp_path / "m.jsonl") == "/data"
