"""Heads apart from the trunk: the pre-training heads' builder, the fine-tuning task heads
(qa: an MLP on the joint [CLS]; probe: one Linear on a unimodal video feature), the class files
that name a head's outputs, and which heads train in each stage (docs/design.md, "Model")."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from evilm_core.models.backbones import trunc_normal_init

CLASS_FILES = {"qa": "answers.txt", "probe": "labels.txt"}
HEAD_OUT = {"qa": "heads.qa.3.weight", "probe": "heads.probe.weight"}  # weight whose shape sizes the head
TASK_HEADS = tuple(CLASS_FILES)


def mlp_head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, out))


def attach_head(net: nn.Module, task: str, num_classes: int, in_dim: int | None = None) -> nn.Module:
    """Add the task's head to `net.heads`: qa = MLP on the joint [CLS]; probe = one Linear."""
    if task == "qa":
        head = mlp_head(net.cfg.fusion_dim, num_classes)
        trunc_normal_init(head)
    elif task == "probe":
        head = nn.Linear(in_dim or net.cfg.fusion_dim, num_classes)
    else:
        raise ValueError(f"task {task!r} has no head of its own")
    net.heads[task] = head
    return head


def read_class_file(directory: Path, task: str) -> list[str] | None:
    """answers.txt / labels.txt of a checkpoint (a trainer step_* keeps it in its run dir)."""
    for base in (directory, directory.parent):
        path = base / CLASS_FILES[task]
        if path.is_file():
            return path.read_text(encoding="utf-8").split("\n")[:-1]
    return None


def class_file_text(classes: list[str]) -> str:
    return "".join(c + "\n" for c in classes)


def freeze_except(net: nn.Module, keep: tuple[str, ...]) -> None:
    """Freeze every pre-training head and the retrieval projections/temperature except `keep`
    (names in net.heads, or 'retrieval' / 'logit_scale'), so DDP never waits for a gradient
    that no loss produces. The trunk stays trainable."""
    parts: dict[str, list[torch.nn.Parameter]] = {name: list(m.parameters()) for name, m in net.heads.items()}
    parts["retrieval"] = list(net.retrieval.parameters())
    parts["logit_scale"] = [net.logit_scale]
    for name, params in parts.items():
        for p in params:
            p.requires_grad_(name in keep)
