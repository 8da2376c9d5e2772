"""Tiny checkpoints of every kind `evilm predict` runs (random weights, written as `finetune` and
`pretrain` export them), and the metrics recomputed from an `evaluate --predictions` file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evilm_core.data.records.manifest import read_manifest
from evilm_core.evaluation.metrics import rank_metrics
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.models.heads import attach_head
from evilm_core.models.pretrained import export_model
from evilm_core.text.vocab import build_vocab
from tests.retrieval.test_retrieve_cli import TINY

KINDS = ("pretrained", "qa", "mc", "retrieval", "probe")


def write_checkpoints(directory: Path, synth: Path) -> dict[str, Path]:
    """{kind: checkpoint} for each of KINDS, one vocabulary over the synthetic training texts."""
    train = read_manifest(synth / "train.jsonl")
    texts = [t for r in train + read_manifest(synth / "mc_train.jsonl") for t in (r.caption, r.question, *(r.options
                                                                                                        or [])) if t]
    vocab = build_vocab(texts)
    classes = {"qa": sorted({str(r.answer) for r in train}), "probe": sorted({r.label for r in train})}
    out = {}
    for kind in KINDS:
        torch.manual_seed(0)
        net = EViLM(EViLMConfig(vocab_size=len(vocab), **TINY))
        if kind in classes:
            attach_head(net, kind, len(classes[kind]), net.cfg.fusion_dim)
        out[kind] = export_model(net, directory / kind, vocab, None if kind == "pretrained" else kind,
                                 extra={"feature": "cls"} if kind == "probe" else None, classes=classes.get(kind))
    return out


def read_lines(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def recomputed_metrics(task: str, rows: list[dict]) -> dict[str, float]:
    """The metrics `evaluate` reports, from its --predictions rows alone."""
    if task == "retrieval":
        out = {}
        for direction in ("t2v", "v2t"):
            ranks = torch.tensor([r["rank"] for r in rows if r["direction"] == direction])
            out.update(rank_metrics(ranks, direction))
        return out
    return {"accuracy": 100.0 * sum(r["correct"] for r in rows) / len(rows), "num_examples": len(rows)}
