"""Stage 2: E-ViLM pre-training with MLM + VTM + MVM (paper 3.4, eq. 8) on the shared Trainer
(`evilm pretrain`). The objectives are in objectives.py, the samples in data.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.data.label_cache import LabelCache
from evilm_core.engine.startup import resolved, start_run, write_run_files
from evilm_core.engine.trainer import Trainer
from evilm_core.errors import EvilmError
from evilm_core.models.loading import load_init_weights
from evilm_core.models.tokenizer import load_tokenizer
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.pretrain.data import build_datasets, open_label_cache
from evilm_core.pretrain.objectives import PretrainTask
from evilm_core.settings import RunSettings
from evilm_core.text.vocab import build_vocab, read_vocab

log = logging.getLogger("evilm.pretrain")


def tokenizer_dir(recipe: PretrainRecipe) -> Path | None:
    """The tokenizer checkpoint mvm.tokenizer names (resolved once per run), or None."""
    return resolve_checkpoint(recipe.mvm.tokenizer, "tokenizer") if recipe.mvm.tokenizer else None


def pretrain_vocab(recipe: PretrainRecipe, captions: list[str], tok_dir: Path | None) -> list[str]:
    """vocab_file, else the tokenizer's vocab.txt (one vocabulary for both stages), else built."""
    if recipe.vocab_file:
        return read_vocab(recipe.vocab_file)
    if tok_dir is not None:
        return read_vocab(tok_dir)
    return build_vocab(captions)


def _check_tokenizer(recipe: PretrainRecipe, info: dict) -> None:
    if info["image_size"] != recipe.data.image_size:
        raise EvilmError(f"tokenizer {info['dir']} works on {info['image_size']} px frames but data.image_size is "
                         f"{recipe.data.image_size}: the MVM grid would not line up")
    if info["codebook_size"] != recipe.model.codebook_size:
        raise EvilmError(f"model.codebook_size ({recipe.model.codebook_size}) differs from the tokenizer's "
                         f"codebook ({info['codebook_size']}, {info['dir']})")


def mvm_sources(recipe: PretrainRecipe, device: torch.device,
                tok_dir: Path | None = None) -> tuple[LabelCache | None, torch.nn.Module | None]:
    """-> (label cache or None, tokenizer model or None) after checking they fit the recipe."""
    if recipe.loss.mvm <= 0:
        return None, None
    tokenizer, info = None, None
    if recipe.mvm.tokenizer:
        tokenizer, info = load_tokenizer(tok_dir or recipe.mvm.tokenizer, device)
        _check_tokenizer(recipe, info)
    if recipe.mvm.targets == "online":
        if tokenizer is None:
            raise EvilmError("mvm.targets is 'online': set mvm.tokenizer to a tokenizer checkpoint")
        return None, tokenizer  # the tokenizer also gives validation targets when the cache lacks them
    if not recipe.mvm.labels:
        raise EvilmError("mvm.targets is 'cache': set mvm.labels to a label cache (`evilm label --out DIR`)")
    cache = open_label_cache(recipe.mvm.labels, info, recipe.data.image_size, recipe.mvm.candidates,
                             need_flips=recipe.data.hflip)
    if cache.meta["codebook_size"] != recipe.model.codebook_size:
        raise EvilmError(f"model.codebook_size ({recipe.model.codebook_size}) differs from the label cache's "
                         f"({cache.meta['codebook_size']}, {recipe.mvm.labels})")
    return cache, tokenizer


def _warn_uncaptioned(records: list, manifest: str) -> None:
    """Clips without a caption still train MVM but give MLM/VTM an empty text: say how many."""
    missing = [r.video for r in records if not (r.caption or "").strip()]
    if missing:
        log.warning("%s: %d of %d clips have no caption (e.g. %s); their text is empty for MLM and VTM",
                    manifest, len(missing), len(records), missing[0])


def train_pretrain(recipe: PretrainRecipe, resume: bool = False, progress: Callable | None = None,
                   settings: RunSettings | None = None) -> dict:
    """Pre-train per the recipe; returns {checkpoint, step, skipped, metrics}. `settings`: resolved
    by a caller that runs several stages (the quickstart), else from the recipe."""
    run, tok_dir = start_run(recipe, settings), tokenizer_dir(recipe)
    _warn_uncaptioned(run.records, recipe.data.train)
    vocab = pretrain_vocab(recipe, [r.caption or "" for r in run.records], tok_dir)
    recipe = resolved(recipe, vocab_size=len(vocab))
    write_run_files(run, vocab)
    cache, tokenizer = mvm_sources(recipe, run.info.device, tok_dir)
    train, val = build_datasets(recipe, run.source, run.run_dir, cache, run.settings.decoder)
    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    task = PretrainTask(recipe, vocab, val, tokenizer)
    if recipe.init.checkpoint and not resume:  # a checkpoint or run dir, a Hub-layout dir or an hf-hub: id
        load_init_weights(task.model, resolve_checkpoint(recipe.init.checkpoint))
    log.info("pretrain: %d clips, %.2fM trunk parameters, losses mlm=%g vtm=%g mvm=%g vtc=%g (%s targets)",
             len(train), task.model.trunk_parameters() / 1e6, recipe.loss.mlm, recipe.loss.vtm, recipe.loss.mvm,
             recipe.loss.vtc, recipe.mvm.targets)
    return Trainer(recipe, task, train, run.info, run.settings, progress).fit(resume=resume)
