"""AdamW with decay only on 2-D+ weights, and the learning-rate schedule as a pure function of
the step (nothing to checkpoint but the step)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from evilm_core.config.sections import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and conv kernels; not biases, norms, or what the model lists in
    `no_weight_decay()` (position/frame embeddings, codebooks: decay would only shrink them)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not any(name.endswith(s) for s in skip) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    fused = torch.cuda.is_available() and next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             fused=fused or None)


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine/linear decay to 0 at `total` (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= cfg.warmup_steps:
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return cfg.lr * (1 - frac)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
