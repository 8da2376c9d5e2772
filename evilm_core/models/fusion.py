"""The multi-modal fusion decoder of E-ViLM (paper 3.1, eq. 1-2; docs/design.md, "Model")."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from evilm_core.models.backbones import trunc_normal_init
from evilm_core.models.config import EViLMConfig


class FusionDecoder(nn.Module):
    """[CLS, e^L + t^L, e^V + t^V] through pre-norm transformer blocks (timm `Block`, which calls
    PyTorch's scaled_dot_product_attention) with a key-padding mask; either modality may be
    absent (the unimodal passes of retrieval). t^L and t^V are learned type embeddings."""

    def __init__(self, cfg: EViLMConfig):
        super().__init__()
        d = cfg.fusion_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.type_text = nn.Parameter(torch.zeros(1, 1, d))  # t^L
        self.type_video = nn.Parameter(torch.zeros(1, 1, d))  # t^V
        self.blocks = nn.ModuleList([Block(d, cfg.fusion_heads, cfg.mlp_ratio, qkv_bias=True)
                                     for _ in range(cfg.fusion_layers)])
        self.norm = nn.LayerNorm(d)
        for p in (self.cls_token, self.type_text, self.type_video):
            nn.init.trunc_normal_(p, std=0.02)
        trunc_normal_init(self.blocks)

    def forward(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, video: torch.Tensor | None) -> torch.Tensor:
        """text [B, L, D] + mask [B, L], video [B, N, D] (either may be None) -> [B, 1+L+N, D]."""
        ref = text if text is not None else video
        b = ref.shape[0]
        parts, keep = [self.cls_token.expand(b, -1, -1)], [ref.new_ones(b, 1, dtype=torch.bool)]
        if text is not None:
            parts.append(text + self.type_text)
            keep.append(text_mask.bool())
        if video is not None:
            parts.append(video + self.type_video)
            keep.append(video.new_ones(b, video.shape[1], dtype=torch.bool))
        x, keep = torch.cat(parts, 1), torch.cat(keep, 1)
        attn_mask = keep[:, None, None, :]  # [B, 1, 1, N]: padded keys are never attended
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.norm(x)
