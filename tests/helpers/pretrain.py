"""The pre-training tests' tiny model settings and caption batches."""

from __future__ import annotations

import torch

from tests.helpers.models import VOCAB

__all__ = ["TINY", "VOCAB", "text_batch"]

# smaller than tests.helpers.models.tiny_config: a 32-wide BERT and an 8-code MVM head
TINY = dict(video_encoder="edgenext_xx_small", image_size=64, vocab_size=20, text_layers=1, text_hidden=32,
            text_heads=2, text_intermediate=64, fusion_dim=48, fusion_layers=1, fusion_heads=2, codebook_size=8,
            max_text_len=8)


def text_batch(b: int, length: int = 8, seed: int = 0):
    """[CLS] w w ... [SEP] [PAD] [PAD]: ids and attention mask [b, length]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 20, (b, length), generator=g)
    attn = torch.ones(b, length, dtype=torch.long)
    ids[:, 0], ids[:, -3] = 2, 3  # [CLS] ... [SEP] [PAD] [PAD]
    ids[:, -2:], attn[:, -2:] = 0, 0
    return ids, attn
