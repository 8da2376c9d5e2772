"""A tiny E-ViLM (64 px frames, one layer per part) and random inputs for it: what the model,
fine-tuning and engine unit tests build on."""

from __future__ import annotations

import torch

from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.text.vocab import SPECIAL_TOKENS

VOCAB = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(15)]  # the tiny model's 20 tokens


def tiny_config(**extra) -> EViLMConfig:
    values = dict(video_encoder="edgenext_xx_small", image_size=64, vocab_size=20, text_layers=1, fusion_layers=1,
                  fusion_dim=96, fusion_heads=2, codebook_size=16, embed_dim=32, max_text_len=12, dropout=0.0)
    return EViLMConfig(**{**values, **extra})


def tiny_model(seed: int = 0, **extra) -> EViLM:
    torch.manual_seed(seed)
    return EViLM(tiny_config(**extra))


def clips(b: int, t: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def texts(*shape: int, length: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random word ids (5..19, after the special tokens) with [CLS] first and a padded tail."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 20, (*shape, length), generator=g)
    ids[..., 0] = 2
    mask = torch.ones_like(ids)
    mask[..., length - 3:] = 0
    ids[mask == 0] = 0
    return ids, mask
