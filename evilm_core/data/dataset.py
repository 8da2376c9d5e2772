"""The one map-style clip dataset every stage uses, with skip-and-count for unusable videos.

A sample is: the clip's frames as a `FramePicker` chooses them (`SegmentFrames`: T frames by
segment sampling; `CachedCandidates`: T of the label cache's F candidate frames, one per group),
the transform (flip, jitter), and the stage's `extras` (caption tokens, word targets, MVM
targets, task fields) merged into the item.

A clip that cannot be decoded is never fatal and never retried with another clip (peers that
retry can loop forever on a corrupt dataset): `__getitem__` returns a skip marker, the collate
function drops it and reports it in `batch["skipped"]`, and the engine counts and logs it.

Randomness per item comes from (seed, epoch, index), not from worker state, so a clip gets the
same frames and flips whatever the number of workers, and a resumed run replays exactly
(docs/design.md, "Data").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from evilm_core.data.label_cache import LabelCache, choose_candidates
from evilm_core.data.records.manifest import resolve_video
from evilm_core.data.records.record import ClipRecord
from evilm_core.data.shards.layout import ShardSet
from evilm_core.data.transforms import ClipTransform
from evilm_core.data.video.read import MAX_VIDEO_BYTES, Clip, TarMember, read_clip, read_frames
from evilm_core.errors import EvilmError, VideoDecodeError


@dataclass
class Sample:
    """What a stage's `extras` sees of one decoded clip."""

    index: int  # the record's position in the dataset
    clip: Clip  # the decoded frames and their indices
    flipped: bool  # the transform mirrored the clip
    picked: list[int] | None  # label-cache candidate ids of the frames (CachedCandidates), else None
    rng: np.random.Generator  # the item's own stream for extras (task fields), apart from the frames'


Extras = Callable[[ClipRecord, Sample], dict]


class FramePicker(Protocol):
    def __call__(self, record: ClipRecord, path: Path, mode: str, rng: np.random.Generator
                 ) -> tuple[Clip, list[int] | None]: ...


@dataclass
class SegmentFrames:
    """T frames, one per equal segment of the video (train: random inside it; eval: its centre)."""

    num_frames: int  # T
    image_size: int  # frames are resized to this size in the decoder
    decoder: str = "pyav"  # the resolved video backend (settings.RunSettings.decoder)
    max_bytes: int = MAX_VIDEO_BYTES  # data.max_video_bytes: a bigger video is skipped unread
    members: dict[str, TarMember] | None = None  # record.video -> its tar member (a collection of tars)

    def __call__(self, record, path, mode, rng):
        source = self.members[record.video] if self.members is not None else path
        return read_clip(source, self.num_frames, self.image_size, mode, rng, self.decoder, self.max_bytes), None


@dataclass
class CachedCandidates:
    """T of the label cache's F candidate frames, one per group of F/T (train: random in the
    group; eval: its middle), decoded by their stored frame indices so the cached MVM targets
    belong to the frames the student sees (docs/design.md, "Label cache")."""

    cache: LabelCache  # opened and validated by the caller
    num_frames: int  # T
    image_size: int  # frames are resized to this size in the decoder
    decoder: str = "pyav"  # the resolved video backend (settings.RunSettings.decoder)
    max_bytes: int = MAX_VIDEO_BYTES  # data.max_video_bytes: a bigger video is skipped unread

    @staticmethod
    def check_status(cache: LabelCache, record: ClipRecord) -> None:
        state = cache.status(record.video)
        if state != "ok":  # labelled as undecodable (or never labelled): skip, as the decoder would
            raise VideoDecodeError(record.video, state if state in ("missing", "corrupt") else "corrupt",
                                   f"label cache status: {state}")

    def __call__(self, record, path, mode, rng):
        self.check_status(self.cache, record)
        frames = self.cache.candidate_frames(record.video)
        cand = choose_candidates(len(frames), self.num_frames, mode, rng)
        return read_frames(path, lambda n: [int(frames[c]) for c in cand], self.image_size, self.decoder,
                           self.max_bytes), cand


@dataclass
class ShardCandidates:
    """T of the F candidate frames a shard set stores for the record's clip (`evilm data shards`),
    chosen as CachedCandidates chooses them, so a label cache made from the same shards gives
    the targets of exactly these frames; no video is decoded."""

    shards: ShardSet  # opened by the caller
    num_frames: int  # T
    cache: LabelCache | None = None  # MVM targets: its candidates must be the shards'

    def __call__(self, record, path, mode, rng):
        if record.sample is None:
            raise EvilmError(f"record {record.video!r} has no sample in the shard set {self.shards.dir}")
        cand = choose_candidates(self.shards.settings["candidates"], self.num_frames, mode, rng)
        sample = self.shards.read(record.sample, cand)  # decodes only the T chosen frames
        indices = sample.info["frames"]
        if self.cache is not None:
            CachedCandidates.check_status(self.cache, record)
            cached = self.cache.candidate_frames(record.video).tolist()
            if cached != indices:
                raise EvilmError(f"the label cache {self.cache.dir} holds other candidate frames of {record.video} "
                                 f"({cached}) than the shard set {self.shards.dir} ({indices}); label the shard set "
                                 f"you train from: `evilm label --manifest {self.shards.dir} ...`")
        clip = Clip(sample.frames, [int(indices[c]) for c in cand], int(sample.info["num_video_frames"]),
                    float(sample.info["fps"]))
        return clip, cand


class ClipDataset(Dataset):
    epoch_keys = True  # __getitem__ takes (epoch, index): the trainer's workers can persist across epochs

    def __init__(self, records: Sequence[ClipRecord], root: str | None, frames: FramePicker, transform: ClipTransform,
                 seed: int = 0, extras: Extras | None = None):
        self.records = records
        self.root = root
        self.frames = frames  # which frames of each video
        self.transform = transform
        self.seed = seed
        self.extras = extras  # (record, sample) -> extra tensors for the batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item `key`: an index (this dataset's epoch) or `(epoch, index)` from ResumableSampler."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        mode = "train" if self.transform.train else "eval"
        try:
            clip, picked = self.frames(record, resolve_video(record, self.root), mode, rng)
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
            sample = Sample(index, clip, flipped, picked, np.random.default_rng([self.seed, epoch, index, 1]))
            item.update(self.extras(record, sample))
        return item


def clip_dataset(records: Sequence[ClipRecord], root: str | None, num_frames: int, image_size: int, train: bool = False,
                 hflip: bool = True, color_jitter: float = 0.0, seed: int = 0, extras: Extras | None = None,
                 frames: FramePicker | None = None) -> ClipDataset:
    """A ClipDataset with segment-sampled frames (unless `frames` is given) and the training or
    evaluation transform (augmentation only when `train`)."""
    transform = ClipTransform(train=True, hflip=hflip, color_jitter=color_jitter) if train else ClipTransform(False)
    return ClipDataset(records, root, frames or SegmentFrames(num_frames, image_size), transform, seed, extras)


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
