"""Pre-training batches: clip + caption tokens + (cached) MVM targets.

With cached targets, a clip's T frames are drawn from the cache's F candidate frames, one per
group of F/T (DESIGN 5), and decoded by their stored frame indices, so the targets always
belong to the frames the student sees; a flipped clip takes the codes of the flipped frames.
With online targets the frames are plain segment samples and the tokenizer runs in the step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from evilm_core.data.manifest import ClipRecord, resolve_video
from evilm_core.data.transforms import ClipTransform
from evilm_core.data.video import read_clip, read_frames
from evilm_core.data.vocab import load_tokenizer
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.label.cache import LabelCache, choose_candidates

log = logging.getLogger("evilm.pretrain")


class TextTokens:
    """Caption -> fixed-length ids and mask with BertTokenizerFast, loaded lazily per process."""

    def __init__(self, vocab_dir: str | Path, max_len: int):
        self.vocab_dir, self.max_len = str(vocab_dir), max_len
        self._tok = None

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.vocab_dir)
        return self._tok

    def __call__(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(text or "", max_length=self.max_len, truncation=True, padding="max_length",
                             return_tensors="pt")
        return enc["input_ids"][0], enc["attention_mask"][0]


class PretrainDataset(Dataset):
    def __init__(self, records: list[ClipRecord], root: str, num_frames: int, image_size: int,
                 transform: ClipTransform, text: TextTokens, cache: LabelCache | None = None, seed: int = 0):
        self.records, self.root, self.num_frames, self.image_size = records, root, num_frames, image_size
        self.transform, self.text, self.cache, self.seed = transform, text, cache, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _clip(self, record: ClipRecord, rng: np.random.Generator):
        """-> (clip, candidate ids or None)."""
        path = resolve_video(record, self.root)
        mode = "train" if self.transform.train else "eval"
        if self.cache is None:
            return read_clip(path, self.num_frames, self.image_size, mode, rng), None
        state = self.cache.status(record.video)
        if state != "ok":  # labelled as undecodable (or never labelled): skip, as the decoder would
            raise VideoDecodeError(record.video, state if state in ("missing", "corrupt") else "corrupt",
                                   f"label cache status: {state}")
        _, frames, _ = self.cache.entry(record.video)
        cand = choose_candidates(len(frames), self.num_frames, mode, rng)
        return read_frames(path, lambda n: [int(frames[c]) for c in cand], self.image_size), cand

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            clip, cand = self._clip(record, rng)
        except VideoDecodeError as err:
            return {"index": index, "skip": (record.video, err.reason, err.detail)}
        pixels, flipped = self.transform(clip.frames, rng)
        ids, mask = self.text(record.caption or "")
        item = {"index": index, "video": record.video, "caption": record.caption or "", "pixels": pixels,
                "flipped": flipped, "frame_indices": torch.tensor(clip.indices), "input_ids": ids,
                "attention_mask": mask}
        if self.cache is not None:
            item["mvm_targets"] = self.cache.targets(record.video, cand, flipped)  # [T, g, g]
        return item


def open_label_cache(path: str, tokenizer_info: dict | None, image_size: int, candidates: int,
                     need_flips: bool) -> LabelCache:
    """Open the cache and check it was made for this tokenizer and these frames (DESIGN 5)."""
    cache = LabelCache.open(path)
    cache.validate(tokenizer_sha256=tokenizer_info["sha256"] if tokenizer_info else None,
                   codebook_size=tokenizer_info["codebook_size"] if tokenizer_info else None,
                   image_size=image_size, grid=image_size // 32, num_candidates=candidates, need_flips=need_flips)
    counts = cache.counts()
    if counts.get("ok", 0) == 0:
        raise EvilmError(f"label cache {path} holds no labelled video")
    return cache
