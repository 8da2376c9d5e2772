"""ClipDataset: per-item determinism, skip-and-count for broken clips, collation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from evilm_core.data.dataset import ClipDataset, SegmentFrames, clip_dataset, collate_clips
from evilm_core.data.records.manifest import video_root
from evilm_core.data.records.record import ClipRecord
from evilm_core.data.transforms import ClipTransform
from evilm_core.data.video.write import write_mp4


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


def test_clip_dataset_hands_extras_the_sample_with_its_own_stream(tmp_path):
    records = _records(tmp_path)
    seen = []

    def extras(record, sample):
        seen.append(sample)
        return {"draw": float(sample.rng.random()), "n": len(sample.clip.indices)}

    ds = clip_dataset(records, str(tmp_path), 4, 64, train=True, seed=7, extras=extras)
    item = ds[3]
    sample = seen[-1]
    assert sample.index == 3 and sample.picked is None and sample.flipped == item["flipped"]
    assert sample.clip.indices == item["frame_indices"].tolist() and item["n"] == 4
    assert ds[3]["draw"] == item["draw"]  # a function of (seed, epoch, index)
    ds.set_epoch(1)
    assert ds[3]["draw"] != item["draw"]
    assert "skip" in ds[1] and len(seen) == 3  # extras never run for a skipped clip
    plain = clip_dataset(records, str(tmp_path), 4, 64)  # evaluation: centre frames, no flip, any epoch
    first = plain[0]
    plain.set_epoch(5)
    assert not plain.transform.train and not first["flipped"]
    assert plain[0]["frame_indices"].tolist() == first["frame_indices"].tolist() == [1, 3, 5, 7]
