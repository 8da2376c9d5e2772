"""`evilm finetune` and `evilm evaluate`: the task registry and the two dispatches over it.

Start-up: the model config and vocab.txt come from `init.checkpoint` when one is given (the
recipe's `model` may only change safe keys, see `models.loading.merge_model_config`); from
scratch the vocabulary is built from every training text. `evaluate_checkpoint` takes any
checkpoint, fine-tuned or pre-trained (zero-shot mc through the VTM head and zero-shot
retrieval through the unimodal embeddings: paper Table 4).

Accuracies, recalls and chance levels are percentages. Clips that cannot be decoded are left
out and counted (`skipped`); every other example counts, and a QA answer outside the answer
vocabulary (or a probe label outside the training classes) counts as wrong (`oov_answers`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.config.sections import check_model_fits_data
from evilm_core.data.clips import open_clips
from evilm_core.data.records.record import ClipRecord
from evilm_core.engine.runtime import environment
from evilm_core.engine.startup import resolved, start_run, write_run_files
from evilm_core.errors import EvilmError
from evilm_core.evaluation.predictions import PredictionRows
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.finetune.data import texts_for_vocab
from evilm_core.finetune.moments import MomentsTask
from evilm_core.finetune.probe import ProbeTask
from evilm_core.finetune.rerank import require_matching_head
from evilm_core.finetune.tasks import FinetuneTask, MCTask, QATask, RetrievalTask
from evilm_core.fs import write_jsonl
from evilm_core.models.evilm import EViLM
from evilm_core.models.heads import CLASS_FILES, class_file_text
from evilm_core.models.loading import load_checkpoint, load_init_weights, merge_model_config
from evilm_core.models.pretrained import checkpoint_model_config
from evilm_core.settings import RunSettings, resolve_settings
from evilm_core.text.tokens import TextTokens
from evilm_core.text.vocab import build_vocab

log = logging.getLogger("evilm.finetune")
TASKS: dict[str, type[FinetuneTask]] = {"qa": QATask, "mc": MCTask, "retrieval": RetrievalTask, "probe": ProbeTask,
                                        "moments": MomentsTask}


def model_and_vocab(recipe: FinetuneRecipe, init_dir: Path | None,
                    records: list[ClipRecord]) -> tuple[FinetuneRecipe, list[str]]:
    """-> (the recipe with its resolved model section, the vocabulary): the checkpoint's model and
    vocab.txt, or the recipe's model and a vocabulary built from the training texts."""
    model = recipe.model
    if init_dir is None:
        vocab = build_vocab(texts_for_vocab(records))
    else:
        model = merge_model_config(recipe.model, checkpoint_model_config(init_dir), init_dir)
        vocab = ckpt.read_checkpoint_vocab(init_dir)
        if len(vocab) != model.vocab_size:
            raise EvilmError(f"{init_dir}: vocab.txt has {len(vocab)} entries, the model {model.vocab_size}")
    recipe = resolved(recipe, model, vocab_size=len(vocab))
    try:
        check_model_fits_data(recipe.model, recipe.data)
    except ValueError as err:
        raise EvilmError(f"{err}" + (f" (the model config comes from {init_dir})" if init_dir else "")) from None
    return recipe, vocab


def train_finetune(recipe: FinetuneRecipe, resume: bool = False, progress: Callable | None = None,
                   settings: RunSettings | None = None) -> dict:
    """Fine-tune per the recipe; returns {checkpoint, step, metrics, task, skipped, ...}. `settings`:
    resolved by a caller that runs several stages (the quickstart), else from the recipe."""
    task = TASKS[recipe.task]
    task.check_trainable()
    run = start_run(recipe, settings)
    init_dir = resolve_checkpoint(recipe.init.checkpoint) if recipe.init.checkpoint else None
    recipe, vocab = model_and_vocab(recipe, init_dir, run.records)
    task.check_records(recipe, run.records, recipe.data.train, train=True)
    records, classes = task.select(recipe, run.records)
    # trainer step_* checkpoints find their answers/labels in the run dir
    write_run_files(run, vocab, {CLASS_FILES[task.name]: class_file_text(classes)} if classes is not None else None)
    torch.manual_seed(recipe.seed)  # identical initial weights (and new heads) on every rank
    net = EViLM(recipe.model)
    task.attach(net, classes)
    if init_dir is not None and not (resume and ckpt.latest_checkpoint(run.run_dir) is not None):
        load_init_weights(net, init_dir)
    result = task.fit(recipe, net, vocab, classes, records, run, init_dir, progress, resume)
    return {**result, "task": task.name}  # checkpoint, step, skipped, world_size, replicas_in_sync, metrics


def _split_manifest(recipe: FinetuneRecipe, split: str) -> str:
    if split not in ("test", "val"):
        raise EvilmError(f"--split must be 'test' or 'val', got {split!r}")
    manifest = getattr(recipe.data, split)
    if not manifest:
        raise EvilmError(f"recipe key data.{split} is not set: it must name the {split} manifest")
    return manifest


def evaluate_checkpoint(recipe: FinetuneRecipe, checkpoint: str | Path, split: str = "test", rerank: int = 0,
                        settings: RunSettings | None = None, predictions: str | Path | None = None,
                        top_k: int = 5) -> dict:
    """-> {"task", "metrics"} for the recipe's task on its data.test (or data.val). `rerank` > 0
    (retrieval only): also re-rank each text's top-`rerank` clips with the VTM head ("rerank_*").
    `predictions`: also write one JSON line per item there (what the model answered, the gold
    answer; `top_k` answers, labels, keys or texts each; docs/predict.md). `settings`: as
    train_finetune's."""
    if rerank and recipe.task != "retrieval":
        raise EvilmError(f"--rerank applies to retrieval recipes (this recipe's task: {recipe.task})")
    if rerank < 0:
        raise EvilmError(f"--rerank must be 0 (off) or a number of clips to re-rank, got {rerank}")
    if top_k < 1:
        raise EvilmError(f"--top-k must be at least 1, got {top_k}")
    t = recipe.train
    settings = (settings or resolve_settings(t.device, t.precision, t.threads, recipe.data.decoder,
                                             decoder_key="data.decoder")).apply()
    manifest, task = _split_manifest(recipe, split), TASKS[recipe.task]
    loaded = load_checkpoint(checkpoint)
    if rerank:
        require_matching_head(loaded.model, loaded.directory, loaded.config)
    if loaded.task not in (None, task.name, *task.evaluates):
        log.warning("%s was fine-tuned for %s; evaluating it on %s", loaded.directory, loaded.task, task.name)
    net, device = loaded.model, settings.torch_device
    try:
        check_model_fits_data(net.cfg, recipe.data)
    except ValueError as err:
        raise EvilmError(f"checkpoint {loaded.directory}: {err}") from None
    net.to(device).eval()
    classes = task.head_classes(loaded)
    source = open_clips(manifest, recipe.data.format, recipe.data.root, f"data.{split}")
    records = source.records
    task.check_records(recipe, records, manifest, train=False)
    tokens = TextTokens(loaded.directory, net.cfg.max_text_len)
    rows = PredictionRows(top_k) if predictions is not None else None
    with settings.autocast():
        metrics = task.evaluate_split(recipe, net, records, source, tokens, classes, settings, loaded.config, out=rows,
                                      **({"rerank": rerank} if rerank else {}))
    result = {"task": task.name, "metrics": metrics, "precision": settings.precision,
              "environment": environment(device)}
    if rows is not None:
        result["predictions"] = str(write_jsonl(rows.rows, predictions))
        log.info("predictions: %d rows in %s", len(rows.rows), predictions)
    return result
