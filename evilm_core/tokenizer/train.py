"""Stage 1: train the semantic VQ tokenizer (`evilm tokenize-train`), and load the result."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from evilm_core.config.loader import from_dict, to_dict
from evilm_core.data.dataset import ClipDataset, collate_clips, video_root
from evilm_core.data.manifest import read_manifest
from evilm_core.data.transforms import ClipTransform
from evilm_core.data.vocab import SPECIAL_TOKENS, WordTargets, build_vocab, read_vocab
from evilm_core.engine import checkpoint as ckpt
from evilm_core.engine.distributed import init_distributed
from evilm_core.engine.trainer import Trainer
from evilm_core.engine.seed import seed_everything
from evilm_core.errors import EvilmError
from evilm_core.tokenizer.config import TokenizerModelConfig, TokenizerRecipe
from evilm_core.tokenizer.losses import bce_word_loss, focal_word_loss, word_metrics
from evilm_core.tokenizer.model import SemanticTokenizer
from evilm_core.tokenizer.quantizer import code_usage

log = logging.getLogger("evilm.tokenizer")
EXPORT_FORMAT = "evilm-tokenizer/1"


def _unwrap(model: nn.Module) -> SemanticTokenizer:
    return model.module if hasattr(model, "module") else model


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
        tok = _unwrap(model)
        device = next(tok.parameters()).device
        d = self.recipe.data
        loader = DataLoader(self.val, batch_size=d.batch_size, collate_fn=collate_clips, num_workers=d.num_workers,
                            multiprocessing_context="spawn" if d.num_workers else None)
        logits, targets, codes, skipped = [], [], [], 0
        for batch in loader:
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
        return export_tokenizer(_unwrap(model), self.vocab, directory)


def export_tokenizer(tok: SemanticTokenizer, vocab: list[str], directory: str | Path) -> Path:
    """Write encoder + projection + codebook only: the tokenizer used for MVM targets.
    `pretrained` is stored as false: the weights are in the file, loading must not download."""
    cfg = {"format": EXPORT_FORMAT, "model": {**to_dict(tok.cfg), "pretrained": False}}
    return ckpt.write_checkpoint(directory, tok.tokenizer_state_dict(), cfg, vocab)


def word_frequencies(captions: list[str], targets: WordTargets) -> torch.Tensor:
    """Share of training captions containing each word (the frequency baseline's scores)."""
    total = torch.zeros(len(targets))
    for caption in captions:
        total += targets(caption)
    return total / max(1, len(captions))


def _vocab(recipe: TokenizerRecipe, captions: list[str]) -> list[str]:
    v = recipe.vocab
    if v.file:
        return read_vocab(v.file)
    return build_vocab(captions, max_words=v.max_words, top_share=v.top_share, min_count=v.min_count)


def _datasets(recipe: TokenizerRecipe):
    d = recipe.data
    if not d.train:
        raise EvilmError("recipe key data.train is not set: it must name the training manifest")
    train_records = read_manifest(d.train, d.format)
    captions = [r.caption or "" for r in train_records]
    vocab = _vocab(recipe, captions)
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise EvilmError(f"the vocabulary has no words: do the captions in {d.train} exist?")
    targets = WordTargets(vocab)
    extras = _WordExtras(targets)
    train = ClipDataset(train_records, video_root(d.root, d.train), d.num_frames, d.image_size,
                        ClipTransform(train=True, hflip=d.hflip, color_jitter=d.color_jitter), recipe.seed, extras)
    val = None
    if d.val:
        val = ClipDataset(read_manifest(d.val, d.format), video_root(d.root, d.val), d.num_frames, d.image_size,
                          ClipTransform(train=False), recipe.seed, extras)
    return train, val, vocab, word_frequencies(captions, targets)


class _WordExtras:
    def __init__(self, targets: WordTargets):
        self.targets = targets

    def __call__(self, record, clip, flipped) -> dict:
        return {"word_targets": self.targets(record.caption or "")}


def train_tokenizer(recipe: TokenizerRecipe, resume: bool = False, progress: Callable | None = None) -> dict:
    """Train stage 1 per the recipe; returns {checkpoint, step, skipped, metrics}."""
    info = init_distributed(recipe.train.device)
    seed_everything(recipe.seed + info.rank)
    train, val, vocab, freq = _datasets(recipe)
    recipe.model.num_words = len(vocab) - len(SPECIAL_TOKENS)
    log.info("tokenizer: %d training clips, %d val clips, %d caption words, %d codes", len(train),
             len(val) if val else 0, recipe.model.num_words, recipe.model.codebook_size)
    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    task = TokenizerTask(recipe, vocab, val, freq)
    result = Trainer(recipe, task, train, info, progress).fit(resume=resume)
    return result


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> tuple[SemanticTokenizer, dict]:
    """Load an exported tokenizer (encoder + codebook) for labelling; returns (model, info)."""
    directory = resolve_tokenizer_dir(path)
    cfg = ckpt.read_yaml_config(directory)
    if cfg.get("format") != EXPORT_FORMAT:
        raise EvilmError(f"{directory} is not an exported tokenizer (config.yaml format is {cfg.get('format')!r}, "
                         f"expected {EXPORT_FORMAT!r})")
    model_cfg = from_dict(TokenizerModelConfig, cfg["model"], "model")
    model = SemanticTokenizer(model_cfg, with_decoder=False)
    missing, unexpected = model.load_state_dict(ckpt.read_weights(directory), strict=False)
    missing = [k for k in missing if not k.startswith(("quantizer.initialized", "quantizer.last_used", "quantizer.steps"))]
    if missing or unexpected:
        raise EvilmError(f"{directory}: weights do not match the tokenizer config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    info = {"dir": str(directory), "sha256": ckpt.file_sha256(directory / ckpt.WEIGHTS),
            "codebook_size": model_cfg.codebook_size, "image_size": model_cfg.image_size, "grid": model.grid}
    return model.to(device).eval(), info


def resolve_tokenizer_dir(path: str | Path) -> Path:
    """Accept the exported dir itself or a tokenizer run dir (then its `final/`)."""
    path = Path(path)
    for candidate in (path, path / "final"):
        if ckpt.is_checkpoint(candidate):
            return candidate
    raise EvilmError(f"no tokenizer checkpoint at {path} (expected model.safetensors + config.yaml there or in "
                     f"{path / 'final'}); train one with `evilm tokenize-train`")
