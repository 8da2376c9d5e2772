"""`evilm finetune RECIPE`: stage 3 on the shared Trainer (qa, mc, retrieval) or the linear
probe routine (probe).

Start-up: the model config and vocab.txt come from `init.checkpoint` when one is given (the
recipe's `model` may only change safe keys, see `loading.merge_model_config`); from scratch the
vocabulary is built from every training text. QA keeps the `qa.num_answers` most frequent
training answers (answers.txt in the run dir and in final/) and trains on the questions whose
answer is among them; evaluation still counts every question.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from evilm_core.data.dataset import video_root
from evilm_core.data.manifest import ClipRecord, read_manifest
from evilm_core.data.vocab import build_vocab, save_vocab
from evilm_core.engine import checkpoint as ckpt
from evilm_core.engine.distributed import barrier, init_distributed
from evilm_core.engine.seed import seed_everything
from evilm_core.engine.trainer import Trainer
from evilm_core.errors import EvilmError
from evilm_core.config.sections import check_model_fits_data
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.finetune.data import (CaptionFields, LabelFields, MCFields, QAFields, TaskDataset, answer_vocab,
                                      check_mc_records, label_vocab, normalize_answer, require_fields,
                                      texts_for_vocab)
from evilm_core.finetune.loading import (CLASS_FILES, attach_head, checkpoint_model_config, class_file_text,
                                         load_init_weights, merge_model_config, resolve_checkpoint)
from evilm_core.finetune.probe import run_probe
from evilm_core.finetune.tasks import TASK_CLASSES
from evilm_core.models.evilm import EViLM
from evilm_core.pretrain.data import TextTokens

log = logging.getLogger("evilm.finetune")
NEEDS = {"qa": ("question", "answer"), "retrieval": ("caption",), "probe": ("label",)}


def model_and_vocab(recipe: FinetuneRecipe, init_dir: Path | None, records: list[ClipRecord]) -> list[str]:
    """Set recipe.model (from the checkpoint, or the recipe's from scratch) and return the vocab."""
    if init_dir is None:
        vocab = build_vocab(texts_for_vocab(records))
    else:
        recipe.model = merge_model_config(recipe.model, checkpoint_model_config(init_dir), init_dir)
        vocab = ckpt.read_checkpoint_vocab(init_dir)
        if len(vocab) != recipe.model.vocab_size:
            raise EvilmError(f"{init_dir}: vocab.txt has {len(vocab)} entries, the model {recipe.model.vocab_size}")
    recipe.model.vocab_size = len(vocab)
    try:
        check_model_fits_data(recipe)
    except ValueError as err:
        raise EvilmError(f"{err}" + (f" (the model config comes from {init_dir})" if init_dir else "")) from None
    return vocab


def check_records(recipe: FinetuneRecipe, records: list[ClipRecord], manifest: str, train: bool) -> None:
    if recipe.task == "mc":
        check_mc_records(records, manifest, train, recipe.mc.num_options)
    else:
        require_fields(records, NEEDS[recipe.task], manifest, recipe.task)


def task_classes(recipe: FinetuneRecipe, records: list[ClipRecord]) -> tuple[list[ClipRecord], list[str] | None]:
    """-> (training records, classes): QA answers (most frequent first) or probe labels."""
    if recipe.task == "qa":
        answers = answer_vocab([r.answer for r in records], recipe.qa.num_answers)
        known = set(answers)
        kept = [r for r in records if normalize_answer(r.answer) in known]
        log.info("qa: %d answers cover %d of %d training questions (the others are not trained on)", len(answers),
                 len(kept), len(records))
        return kept, answers
    if recipe.task == "probe":
        labels = label_vocab([r.label for r in records])
        if len(labels) < 2:
            raise EvilmError(f"{recipe.data.train}: the probe needs at least 2 classes, found {labels}")
        return records, labels
    return records, None


def task_fields(recipe: FinetuneRecipe, tokens: TextTokens, classes: list[str] | None, pool: list[str] | None):
    task = recipe.task
    if task == "qa":
        return QAFields(tokens, classes)
    if task == "mc":
        return MCFields(tokens, recipe.mc.num_options, pool)
    if task == "retrieval":
        return CaptionFields(tokens)
    return LabelFields(classes)


def validation(recipe: FinetuneRecipe, tokens: TextTokens, classes: list[str] | None):
    """The task's validation data: a TaskDataset, or (records, root, tokens) for retrieval."""
    d = recipe.data
    if not d.val:
        return None
    records, root = read_manifest(d.val, d.format), video_root(d.root, d.val)
    check_records(recipe, records, d.val, train=False)
    if recipe.task == "retrieval":
        return records, root, tokens
    return TaskDataset(records, root, d, False, task_fields(recipe, tokens, classes, None), recipe.seed)


def _prepare_run_dir(run_dir: Path, vocab: list[str], task: str, classes: list[str] | None, is_main: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main:
        save_vocab(vocab, run_dir)
        if classes is not None:  # trainer step_* checkpoints find their answers/labels here
            (run_dir / CLASS_FILES[task]).write_text(class_file_text(classes), encoding="utf-8")
    barrier()


def train_finetune(recipe: FinetuneRecipe, resume: bool = False, progress: Callable | None = None) -> dict:
    """Fine-tune per the recipe; returns {checkpoint, step, metrics, task, skipped, ...}."""
    d, run_dir = recipe.data, Path(recipe.output.dir)
    if not d.train:
        raise EvilmError("recipe key data.train is not set: it must name the training manifest")
    info = init_distributed(recipe.train.device)
    seed_everything(recipe.seed + info.rank)
    init_dir = resolve_checkpoint(recipe.init.checkpoint) if recipe.init.checkpoint else None
    records = read_manifest(d.train, d.format)
    vocab = model_and_vocab(recipe, init_dir, records)
    check_records(recipe, records, d.train, train=True)
    records, classes = task_classes(recipe, records)
    _prepare_run_dir(run_dir, vocab, recipe.task, classes, info.is_main)
    torch.manual_seed(recipe.seed)  # identical initial weights (and new heads) on every rank
    net = EViLM(recipe.model)
    if recipe.task == "qa":
        attach_head(net, "qa", len(classes))
    if init_dir is not None and not (resume and ckpt.latest_checkpoint(run_dir) is not None):
        load_init_weights(net, init_dir)
    if recipe.task == "probe":
        result = run_probe(recipe, net, vocab, classes, records, init_dir, info, progress, resume)
        return {**result, "task": "probe"}
    tokens = TextTokens(run_dir, recipe.model.max_text_len)
    pool = [r.caption for r in records if r.caption] if recipe.task == "mc" else None
    train = TaskDataset(records, video_root(d.root, d.train), d, True, task_fields(recipe, tokens, classes, pool),
                        recipe.seed)
    task = TASK_CLASSES[recipe.task](recipe, net, vocab, validation(recipe, tokens, classes), classes)
    log.info("finetune %s: %d clips, from %s, %.2fM trainable parameters", recipe.task, len(train),
             init_dir or "scratch", sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6)
    result = Trainer(recipe, task, train, info, progress).fit(resume=resume)
    return {**result, "task": recipe.task}  # checkpoint, step, skipped, world_size, replicas_in_sync, metrics
