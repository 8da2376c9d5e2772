"""Map-style clip dataset with skip-and-count for unusable videos.

A clip that cannot be decoded is never fatal and never retried with another clip (peers that
retry can loop forever on a corrupt dataset): `__getitem__` returns a skip marker, the collate
function drops it and reports it in `batch["skipped"]`, and the engine counts and logs it.

Randomness per item comes from (seed, epoch, index), not from worker state, so a clip gets the
same frames and flips whatever the number of workers, and a resumed run replays exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from evilm_core.data.manifest import ClipRecord, resolve_video
from evilm_core.data.transforms import ClipTransform
from evilm_core.data.video import read_clip
from evilm_core.errors import VideoDecodeError

Extras = Callable[[ClipRecord, "object", bool], dict]


class ClipDataset(Dataset):
    def __init__(self, records: list[ClipRecord], root: str | None, num_frames: int, image_size: int,
                 transform: ClipTransform, seed: int = 0, extras: Extras | None = None):
        self.records = records
        self.root = root
        self.num_frames = num_frames
        self.image_size = image_size
        self.transform = transform
        self.seed = seed
        self.extras = extras  # (record, clip, flipped) -> extra tensors for the batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        path = resolve_video(record, self.root)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        mode = "train" if self.transform.train else "eval"
        try:
            clip = read_clip(path, self.num_frames, self.image_size, mode, rng)
        except VideoDecodeError as err:
            return {"index": index, "skip": (record.video, err.reason, err.detail)}
        pixels, flipped = self.transform(clip.frames, rng)  # [T, 3, H, W]
        item = {
            "index": index,
            "video": record.video,
            "pixels": pixels,
            "frame_indices": torch.tensor(clip.indices, dtype=torch.long),
            "num_video_frames": clip.num_video_frames,
            "flipped": flipped,
            "caption": record.caption or "",
        }
        if self.extras is not None:
            item.update(self.extras(record, clip, flipped))
        return item


def collate_clips(items: list[dict]) -> dict:
    """Stack usable items; report skipped ones in `skipped` as (video, reason, detail)."""
    skipped = [it["skip"] for it in items if "skip" in it]
    items = [it for it in items if "skip" not in it]
    batch: dict = {"skipped": skipped, "size": len(items)}
    if not items:
        return batch
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float)) and not isinstance(values[0], str):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def video_root(root: str | None, manifest: str | Path) -> str:
    """Where a manifest's relative video paths resolve: `data.root` if set, else the directory
    holding the manifest (so `data/synth/train.jsonl` finds `data/synth/videos/...`)."""
    if root:
        return str(Path(root))
    manifest = Path(manifest).absolute()
    return str(manifest if manifest.is_dir() else manifest.parent)  # class folders: the dir itself
