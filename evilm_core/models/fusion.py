"""The multi-modal fusion decoder of E-ViLM (paper 3.1, eq. 1-2; docs/design.md, "Model")."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
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

    def forward(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, video: torch.Tensor | None,
                cls_only: bool = False) -> torch.Tensor:
        """text [B, L, D] + mask [B, L], video [B, N, D] (either may be None) -> [B, 1+L+N, D];
        with `cls_only`, [B, 1, D]: the [CLS] output alone, its last block computed for [CLS] only
        (cls_block)."""
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
        last = len(self.blocks) - 1 if cls_only else len(self.blocks)
        for block in self.blocks[:last]:
            x = block(x, attn_mask=attn_mask)
        if cls_only:
            x = cls_block(self.blocks[-1], x, attn_mask)  # [B, 1, D]
        return self.norm(x)


def cls_block(block: Block, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """timm `Block` on x [B, N, D] -> its output at [CLS] (position 0) alone, [B, 1, D]: keys and
    values from every token, but the query, attention output, projection and MLP for one row
    instead of N. The same values as block(x)[:, :1] up to float rounding; of the block's 12 d^2
    multiply-adds per token, 10 are saved (docs/performance.md, "[CLS]-only last block")."""
    attn = block.attn
    b, n, _ = x.shape
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.attn_dim
    h = block.norm1(x)  # [B, N, D]
    weight, bias = attn.qkv.weight, attn.qkv.bias  # rows: q, k, v
    q = F.linear(h[:, :1], weight[:width], None if bias is None else bias[:width])  # [B, 1, W]
    kv = F.linear(h, weight[width:], None if bias is None else bias[width:])  # [B, N, 2W]
    q = q.reshape(b, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, hd]
    k, v = kv.reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, hd] each
    q, k = attn.q_norm(q), attn.k_norm(k)
    # The attention of one query written out: PyTorch's CPU scaled_dot_product_attention with a
    # single query splits the keys across threads, so its result changed with the thread count
    # (~6e-8), and `predict` (one thread per worker) then differed from `evaluate` in the last
    # printed digit of a score; this product and softmax give the same values at any count.
    scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)  # [B, H, 1, N]
    weights = F.dropout(scores.masked_fill(~attn_mask, float("-inf")).softmax(-1), attn.attn_drop.p, attn.training)
    o = weights @ v  # [B, H, 1, hd]
    o = attn.norm(o.transpose(1, 2).reshape(b, 1, width))
    if attn.gate is not None:
        o = o * attn.gate(h[:, :1]).sigmoid()
    cls = x[:, :1] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(o))))  # [B, 1, D]
    return cls + block.drop_path2(block.ls2(block.mlp(block.norm2(cls))))
