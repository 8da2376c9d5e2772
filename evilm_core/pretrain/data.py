"""Pre-training samples: clip + caption tokens + (cached) MVM targets.

With cached targets, a clip's T frames are drawn from the cache's F candidate frames, one per
group of F/T (`CachedCandidates`; docs/design.md, "Label cache"), so the targets always belong
to the frames the student sees; a flipped clip takes the codes of the flipped frames. With
online targets the frames are plain segment samples and the tokenizer runs in the step.
"""

from __future__ import annotations

from pathlib import Path

from evilm_core.data.clips import ClipSource, open_clips
from evilm_core.data.dataset import ClipDataset, Sample, clip_dataset
from evilm_core.data.label_cache import LabelCache
from evilm_core.data.records.record import ClipRecord
from evilm_core.errors import EvilmError
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.text.tokens import TextTokens


class PretrainExtras:
    """Caption ids and mask, and the MVM targets [T, g, g] of the picked candidates (with a cache)."""

    def __init__(self, text: TextTokens, cache: LabelCache | None = None):
        self.text, self.cache = text, cache

    def __call__(self, record: ClipRecord, sample: Sample) -> dict:
        ids, mask = self.text(record.caption or "")
        item = {"input_ids": ids, "attention_mask": mask}
        if self.cache is not None:
            item["mvm_targets"] = self.cache.targets(record.video, sample.picked, sample.flipped)  # [T, g, g]
        return item


def pretrain_dataset(recipe: PretrainRecipe, source: ClipSource, text: TextTokens, cache: LabelCache | None,
                     train: bool, decoder: str | None) -> ClipDataset:
    d = recipe.data
    return clip_dataset(source.records, source.root, d.num_frames, d.image_size, train=train, hflip=d.hflip,
                        color_jitter=d.color_jitter, seed=recipe.seed, extras=PretrainExtras(text, cache),
                        frames=source.frames(d.num_frames, d.image_size, cache, decoder, d.max_video_bytes))


def build_datasets(recipe: PretrainRecipe, source: ClipSource, vocab_dir: Path, cache: LabelCache | None,
                   decoder: str | None) -> tuple[ClipDataset, ClipDataset | None]:
    """The training set (data.train's clips) and, with data.val, the validation set; manifests'
    videos are decoded by the resolved backend `decoder`."""
    d = recipe.data
    text = TextTokens(vocab_dir, recipe.model.max_text_len)
    train = pretrain_dataset(recipe, source, text, cache, train=True, decoder=decoder)
    val = None
    if d.val:
        val_source = open_clips(d.val, d.format, d.root, "data.val")
        # Validation clips are usually not in the training label cache: then they are sampled
        # plainly and their MVM targets come from the tokenizer online (if one is configured).
        val_cache = cache if cache is not None and all(r.video in cache for r in val_source.records) else None
        val = pretrain_dataset(recipe, val_source, text, val_cache, train=False, decoder=decoder)
    return train, val


def open_label_cache(path: str, tokenizer_info: dict | None, image_size: int, candidates: int,
                     need_flips: bool) -> LabelCache:
    """Open the cache and check it was made for this tokenizer and these frames."""
    cache = LabelCache.open(path)
    cache.validate(tokenizer_sha256=tokenizer_info["sha256"] if tokenizer_info else None,
                   codebook_size=tokenizer_info["codebook_size"] if tokenizer_info else None,
                   image_size=image_size, grid=image_size // 32, num_candidates=candidates, need_flips=need_flips)
    counts = cache.counts()
    if counts.get("ok", 0) == 0:
        raise EvilmError(f"label cache {path} holds no labelled video")
    return cache
