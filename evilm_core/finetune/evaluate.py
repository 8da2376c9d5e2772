"""Each task's metrics on a split (the trainer's validation and `evilm evaluate` share them),
and `evaluate_checkpoint`: any checkpoint, fine-tuned or pre-trained (zero-shot mc through the
VTM head and zero-shot retrieval through the unimodal embeddings: paper Table 4).

Accuracies, recalls and chance levels are percentages. Clips that cannot be decoded are left
out and counted (`skipped`); every other example counts, and a QA answer outside the answer
vocabulary (or a probe label outside the training classes) counts as wrong (`oov_answers`).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch

from evilm_core.config.sections import DataConfig
from evilm_core.data.dataset import video_root
from evilm_core.data.manifest import ClipRecord, read_manifest
from evilm_core.engine.distributed import pick_device
from evilm_core.errors import EvilmError
from evilm_core.evaluation.metrics import accuracy, retrieval_metrics
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.finetune.data import (MCFields, QAFields, TaskDataset, check_mc_records, encode_text, eval_batches,
                                      require_fields)
from evilm_core.finetune.loading import load_checkpoint
from evilm_core.finetune.probe import evaluate_probe, probe_dataset
from evilm_core.finetune.scoring import option_scores
from evilm_core.models.evilm import EViLM
from evilm_core.pretrain.data import TextTokens

log = logging.getLogger("evilm.finetune")


def qa_metrics(predictions: list[str], gold: list[str], answers: list[str]) -> dict[str, float]:
    """Accuracy over every example (out-of-vocabulary gold answers can never match), how many
    gold answers were out of vocabulary, and always answering the most frequent training answer."""
    vocab = set(answers)
    return {"accuracy": accuracy(predictions, gold), "majority_baseline": accuracy([answers[0]] * len(gold), gold),
            "oov_answers": sum(g not in vocab for g in gold), "num_examples": len(gold)}


@torch.no_grad()
def evaluate_qa(net: EViLM, dataset: TaskDataset, answers: list[str], data: DataConfig,
                device: torch.device) -> dict[str, float]:
    counts: dict = {"skipped": 0}
    preds, gold = [], []
    for batch in eval_batches(dataset, data, device, counts):
        out = net(batch["pixels"], batch["input_ids"], batch["attention_mask"])
        best = net.heads["qa"](out["cls"]).float().argmax(-1).tolist()
        preds += [answers[i] for i in best]
        gold += batch["answer_text"]
    return {**qa_metrics(preds, gold, answers), "skipped": counts["skipped"]}


@torch.no_grad()
def evaluate_mc(net: EViLM, dataset: TaskDataset, data: DataConfig, device: torch.device) -> dict[str, float]:
    counts: dict = {"skipped": 0}
    preds, gold, k = [], [], 0
    for batch in eval_batches(dataset, data, device, counts):
        scores = option_scores(net, batch["pixels"], batch["option_ids"], batch["option_mask"])
        preds += scores.argmax(-1).tolist()
        gold += batch["answer"].tolist()
        k = scores.shape[1]
    return {"accuracy": accuracy(preds, gold), "chance": 100.0 / k if k else 0.0, "num_examples": len(gold),
            "skipped": counts["skipped"]}


@torch.no_grad()
def evaluate_retrieval(net: EViLM, records: list[ClipRecord], root: str, data: DataConfig, tokens: TextTokens,
                       device: torch.device) -> dict[str, float]:
    """Dual-encoder retrieval: each distinct clip embedded once, each caption once, one T x V
    similarity (no pairwise cross scoring). Captions of undecodable clips leave the query set."""
    videos = list(dict.fromkeys(r.video for r in records))
    counts: dict = {"skipped": 0}
    clips = TaskDataset([ClipRecord(video=v) for v in videos], root, data, train=False, fields=None)
    video_emb, kept = [], []
    for batch in eval_batches(clips, data, device, counts):
        video_emb.append(net.embed_video(batch["pixels"]).float())
        kept += batch["video"]
    column = {v: i for i, v in enumerate(kept)}
    queries = [r for r in records if r.video in column]
    if not queries:
        raise EvilmError("retrieval evaluation: no clip of the split could be decoded")
    text_emb = []
    for start in range(0, len(queries), data.batch_size):
        pairs = [encode_text(tokens, r.caption or "") for r in queries[start:start + data.batch_size]]
        ids, mask = torch.stack([p[0] for p in pairs]).to(device), torch.stack([p[1] for p in pairs]).to(device)
        text_emb.append(net.embed_text(ids, mask).float())
    sim = (torch.cat(text_emb) @ torch.cat(video_emb).T).cpu()  # [T, V]
    metrics = retrieval_metrics(sim, torch.tensor([column[r.video] for r in queries]))
    return {**metrics, "num_examples": len(queries), "num_videos": len(kept), "skipped": counts["skipped"]}


# ------------------------------------------------------------------------------- evilm evaluate


def _split_manifest(recipe: FinetuneRecipe, split: str) -> str:
    if split not in ("test", "val"):
        raise EvilmError(f"--split must be 'test' or 'val', got {split!r}")
    manifest = getattr(recipe.data, split)
    if not manifest:
        raise EvilmError(f"recipe key data.{split} is not set: it must name the {split} manifest")
    return manifest


def _check_fits(net: EViLM, data: DataConfig, where: Path) -> None:
    if net.cfg.image_size != data.image_size:
        raise EvilmError(f"checkpoint {where} works on {net.cfg.image_size} px frames but data.image_size is "
                         f"{data.image_size}")
    if data.num_frames > net.cfg.max_frames:
        raise EvilmError(f"data.num_frames ({data.num_frames}) exceeds the checkpoint's max_frames "
                         f"({net.cfg.max_frames})")


def _head_classes(loaded, task: str) -> list[str]:
    if task not in loaded.classes:
        raise EvilmError(f"checkpoint {loaded.directory} has no {task} head (its task: "
                         f"{loaded.task or 'pre-training'}); "
                         f"fine-tune it with `evilm finetune` first (zero-shot evaluation exists for mc and retrieval)")
    return loaded.classes[task]


def evaluate_checkpoint(recipe: FinetuneRecipe, checkpoint: str | Path, split: str = "test") -> dict:
    """-> {"task", "metrics"} for the recipe's task on its data.test (or data.val)."""
    manifest, d, task = _split_manifest(recipe, split), recipe.data, recipe.task
    loaded = load_checkpoint(checkpoint)
    if loaded.task not in (None, task):
        log.warning("%s was fine-tuned for %s; evaluating it on %s", loaded.directory, loaded.task, task)
    net, device = loaded.model, pick_device(recipe.train.device)
    _check_fits(net, d, loaded.directory)
    net.to(device).eval()
    records, root = read_manifest(manifest, d.format), video_root(d.root, manifest)
    tokens = TextTokens(loaded.directory, net.cfg.max_text_len)
    bf16 = recipe.train.precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        if task == "qa":
            answers = _head_classes(loaded, "qa")
            require_fields(records, ("question", "answer"), manifest, task)
            data = TaskDataset(records, root, d, False, QAFields(tokens, answers), recipe.seed)
            metrics = evaluate_qa(net, data, answers, d, device)
        elif task == "mc":
            check_mc_records(records, manifest, train=False, num_options=recipe.mc.num_options)
            data = TaskDataset(records, root, d, False, MCFields(tokens, recipe.mc.num_options), recipe.seed)
            metrics = evaluate_mc(net, data, d, device)
        elif task == "retrieval":
            require_fields(records, ("caption",), manifest, task)
            metrics = evaluate_retrieval(net, records, root, d, tokens, device)
        else:
            labels = _head_classes(loaded, "probe")
            require_fields(records, ("label",), manifest, task)
            feature = loaded.config.get("feature", "cls")
            metrics = evaluate_probe(net, probe_dataset(records, root, d, labels, recipe.seed), feature, d, device)
    return {"task": task, "metrics": metrics}

