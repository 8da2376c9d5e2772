"""Stage 1: train the semantic VQ tokenizer (`evilm tokenize-train`) on the shared Trainer.
The model, its export and its loading are in evilm_core/models/tokenizer.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from evilm_core.data.clips import ClipSource, open_clips
from evilm_core.data.dataset import ClipDataset, Sample, clip_dataset
from evilm_core.data.records.record import ClipRecord
from evilm_core.engine.runtime import eval_loader, unwrap
from evilm_core.engine.startup import resolved, start_run
from evilm_core.engine.trainer import Trainer
from evilm_core.errors import EvilmError
from evilm_core.models.quantizer import code_usage
from evilm_core.models.tokenizer import SemanticTokenizer, export_tokenizer
from evilm_core.settings import RunSettings
from evilm_core.text.vocab import SPECIAL_TOKENS, WordTargets, build_vocab, read_vocab
from evilm_core.tokenizer.config import TokenizerRecipe
from evilm_core.tokenizer.losses import bce_word_loss, focal_word_loss, word_metrics

log = logging.getLogger("evilm.tokenizer")


class TokenizerTask:
    """Loss, evaluation and export of the tokenizer for the shared Trainer."""

    def __init__(self, recipe: TokenizerRecipe, vocab: list[str], val: ClipDataset | None, train_freq: torch.Tensor):
        self.recipe, self.vocab, self.val, self.train_freq = recipe, vocab, val, train_freq
        self.model = SemanticTokenizer(recipe.model, recipe.codebook)

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, codes, vq = model(batch["pixels"])
        word = self._word_loss(logits, batch["word_targets"])
        w = self.recipe.loss
        loss = w.word_weight * word + w.codebook_weight * vq["codebook"] + w.commitment_weight * vq["commitment"]
        used = codes.unique().numel() / self.recipe.model.codebook_size
        return loss, {"loss": loss.item(), "word_loss": word.item(), "codebook_loss": vq["codebook"].item(),
                      "commitment": vq["commitment"].item(), "batch_codes_used": used}

    def _word_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = self.recipe.loss
        if w.word_loss == "bce":
            return bce_word_loss(logits, targets)
        return focal_word_loss(logits, targets, w.gamma_pos, w.gamma_neg)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None:
            return {}
        tok = unwrap(model)
        device = next(tok.parameters()).device
        d = self.recipe.data
        logits, targets, codes, skipped = [], [], [], 0
        for batch in eval_loader(self.val, d.batch_size, d.num_workers):
            skipped += len(batch["skipped"])
            if batch["size"] == 0:
                continue
            z = tok.forward_encoder(batch["pixels"].to(device))
            c = tok.quantizer.lookup(torch.nn.functional.normalize(z.float(), dim=-1))
            zq = tok.quantizer.normalized_codebook()[c]
            logits.append(tok.forward_decoder(zq).float().cpu())
            targets.append(batch["word_targets"])
            codes.append(c.cpu())
        if not logits:
            raise EvilmError("no validation clip could be decoded; see the skipped-clip warnings")
        logits, targets = torch.cat(logits), torch.cat(targets)
        metrics = {"val_word_loss": self._word_loss(logits, targets).item()}
        metrics.update(word_metrics(logits, targets, self.train_freq))
        metrics.update(code_usage(torch.cat(codes), self.recipe.model.codebook_size))
        metrics["val_skipped"] = skipped
        return metrics

    def export(self, model: nn.Module, directory: Path) -> Path:
        return export_tokenizer(unwrap(model), self.vocab, directory)


def word_frequencies(captions: list[str], targets: WordTargets) -> torch.Tensor:
    """Share of training captions containing each word (the frequency baseline's scores)."""
    total = torch.zeros(len(targets))
    for caption in captions:
        total += targets(caption)
    return total / max(1, len(captions))


def tokenizer_vocab(recipe: TokenizerRecipe, captions: list[str]) -> list[str]:
    """vocab.file, else built from the training captions with the recipe's limits."""
    v = recipe.vocab
    vocab = read_vocab(v.file) if v.file else build_vocab(captions, max_words=v.max_words, top_share=v.top_share,
                                                            min_count=v.min_count)
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise EvilmError(f"the vocabulary has no words: do the captions in {recipe.data.train} exist?")
    return vocab


class WordExtras:
    """The caption's multi-hot word targets for each clip."""

    def __init__(self, targets: WordTargets):
        self.targets = targets

    def __call__(self, record: ClipRecord, sample: Sample) -> dict:
        return {"word_targets": self.targets(record.caption or "")}


def build_datasets(recipe: TokenizerRecipe, source: ClipSource, targets: WordTargets, decoder: str | None):
    """From a shard set the frames are its stored candidates (T of F, as pre-training picks them);
    from a manifest, segment samples of the video, decoded by the resolved backend `decoder`."""
    d, extras = recipe.data, WordExtras(targets)
    train = clip_dataset(source.records, source.root, d.num_frames, d.image_size, train=True, hflip=d.hflip,
                         color_jitter=d.color_jitter, seed=recipe.seed, extras=extras,
                         frames=source.frames(d.num_frames, d.image_size, decoder=decoder,
                                              max_bytes=d.max_video_bytes))
    val = None
    if d.val:
        val_source = open_clips(d.val, d.format, d.root, "data.val")
        val = clip_dataset(val_source.records, val_source.root, d.num_frames, d.image_size, seed=recipe.seed,
                           extras=extras, frames=val_source.frames(d.num_frames, d.image_size, decoder=decoder,
                                                    max_bytes=d.max_video_bytes))
    return train, val


def train_tokenizer(recipe: TokenizerRecipe, resume: bool = False, progress: Callable | None = None,
                    settings: RunSettings | None = None) -> dict:
    """Train stage 1 per the recipe; returns {checkpoint, step, skipped, metrics}. `settings`:
    resolved by a caller that runs several stages (the quickstart), else from the recipe."""
    run = start_run(recipe, settings)
    captions = [r.caption or "" for r in run.records]
    vocab = tokenizer_vocab(recipe, captions)
    recipe = resolved(recipe, num_words=len(vocab) - len(SPECIAL_TOKENS))
    targets = WordTargets(vocab)
    train, val = build_datasets(recipe, run.source, targets, run.settings.decoder)
    log.info("tokenizer: %d training clips, %d val clips, %d caption words, %d codes", len(train),
             len(val) if val else 0, recipe.model.num_words, recipe.model.codebook_size)
    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    task = TokenizerTask(recipe, vocab, val, word_frequencies(captions, targets))
    return Trainer(recipe, task, train, run.info, run.settings, progress).fit(resume=resume)
