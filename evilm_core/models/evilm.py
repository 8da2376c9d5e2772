"""E-ViLM (paper 3.1, eq. 1-2): video encoder, text encoder, multi-modal decoder, heads.

    [h_CLS, h_L, h_V] = DEC_VL([e_CLS, e_L + t_L, e_V + t_V])

Heads are apart from the trunk, as in timm: `heads` holds the pre-training heads (MLM, VTM,
MVM), `retrieval` the unimodal projections; `forward_features` is the shared interface every
task uses. The MLM head is not tied to the word embeddings: those are 128-d inside BERT and the
decoder is 384-d. The decoder itself is in fusion.py, the heads' builders in heads.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.models.backbones import trunc_normal_init
from evilm_core.models.config import EViLMConfig
from evilm_core.models.fusion import FusionDecoder
from evilm_core.models.heads import mlp_head
from evilm_core.models.pretrained import PretrainedMixin
from evilm_core.models.text_encoder import TextEncoder
from evilm_core.models.video_encoder import VideoEncoder


class EViLM(PretrainedMixin, nn.Module):
    """E-ViLM: video encoder + text encoder + fusion decoder, heads apart (docs/design.md, "Model").

    `forward_features` is the joint pass every task uses; `embed_video` / `embed_text` are the
    unimodal passes behind retrieval; `heads` holds the pre-training heads (and a task's head
    once fine-tuning attaches one), `retrieval` the unimodal projections with the learned
    temperature `logit_scale`. `EViLM.text_side(cfg)` is the same class without the video
    encoder and the heads: what a text query loads (parameter names are EViLM's).
    """

    def __init__(self, cfg: EViLMConfig, video: bool = True, heads: bool = True):
        super().__init__()
        self.cfg = cfg
        self.video = VideoEncoder(cfg) if video else None
        self.text = TextEncoder(cfg)
        self.fusion = FusionDecoder(cfg)
        d = cfg.fusion_dim
        self.heads = nn.ModuleDict({
            "mlm": mlp_head(d, cfg.vocab_size),
            "vtm": nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2)),
            "mvm": mlp_head(d, cfg.codebook_size),
        } if heads else {})
        self.retrieval = nn.ModuleDict({"video": nn.Linear(d, cfg.embed_dim), "text": nn.Linear(d, cfg.embed_dim)})
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's learned temperature
        trunc_normal_init(self.heads)
        trunc_normal_init(self.retrieval)
        if video:
            trunc_normal_init(self.video.proj)
        trunc_normal_init(self.text.proj)

    @classmethod
    def text_side(cls, cfg: EViLMConfig) -> EViLM:
        """Text encoder, fusion decoder and retrieval projections only (no video encoder, no heads)."""
        return cls(cfg, video=False, heads=False)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "type_text", "type_video", "frame_embed", "region_embed", "logit_scale"}

    def forward_features(self, pixels: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Joint encoding -> {"cls" [B, D], "text" [B, L, D], "video" [B, T*g*g, D]}."""
        return self._joint(self.video(pixels), input_ids, attention_mask)

    def _joint(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """Video tokens e^V [B, N, D] + text ids -> the fused outputs, split by modality."""
        text = self.text(input_ids, attention_mask)
        h = self.fusion(text, attention_mask, video)
        n_text = text.shape[1]
        return {"cls": h[:, 0], "text": h[:, 1:1 + n_text], "video": h[:, 1 + n_text:]}

    def forward_options(self, pixels: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Joint encoding of each clip with each of its K texts, the video encoded once per clip:
        pixels [B, T, 3, H, W], ids and mask [B, K, L] -> {"cls" [B, K, D]}."""
        b, k = input_ids.shape[:2]
        video = self.video(pixels).repeat_interleave(k, dim=0)  # [B*K, N, D], clip i's tokens K times
        ids, mask = input_ids.flatten(0, 1), attention_mask.flatten(0, 1)
        h = self.fusion(self.text(ids, mask), mask, video, cls_only=self._cls_only)
        return {"cls": h[:, 0].unflatten(0, (b, k))}

    def forward_pretrain(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         clean_ids: torch.Tensor, clean_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """forward_features plus the unimodal retrieval embeddings ("video_emb", "text_emb" [B, E])
        of the same clips (video encoded once) and of their own, unmasked captions: the inputs of
        the optional video-text contrastive term of pre-training."""
        video = self.video(pixels)
        out = self._joint(video, input_ids, attention_mask)
        out["video_emb"] = self._video_embedding(video)
        out["text_emb"] = self.embed_text(clean_ids, clean_mask)
        return out

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mode: str = "joint", clean_ids: torch.Tensor | None = None,
                clean_mask: torch.Tensor | None = None) -> dict:
        """The call every training task goes through, so DDP sees one forward per step:
        joint -> forward_features; options -> forward_options; unimodal -> {"video", "text"}
        retrieval embeddings (embed_video, embed_text); pretrain -> forward_pretrain."""
        if mode == "joint":
            return self.forward_features(pixels, input_ids, attention_mask)
        if mode == "pretrain":
            return self.forward_pretrain(pixels, input_ids, attention_mask, clean_ids, clean_mask)
        if mode == "options":
            return self.forward_options(pixels, input_ids, attention_mask)
        if mode == "unimodal":
            return {"video": self.embed_video(pixels), "text": self.embed_text(input_ids, attention_mask)}
        raise ValueError(f"unknown forward mode {mode!r} (joint | options | unimodal | pretrain)")

    def video_cls(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unimodal pass [CLS, e^V + t^V] -> the [CLS] output [B, D] (before the retrieval projection)."""
        return self._video_cls(self.video(pixels))

    @property
    def _cls_only(self) -> bool:
        """Whether a pass that needs only the [CLS] output computes the fusion's last block for [CLS]
        alone (fusion.cls_block): at inference, yes; in training, the full block, so the published
        training runs stay bit-identical (the values agree to float rounding either way;
        docs/performance.md, "[CLS]-only last block")."""
        return not self.training

    def _video_cls(self, video: torch.Tensor) -> torch.Tensor:
        return self.fusion(None, None, video, cls_only=self._cls_only)[:, 0]

    def _video_embedding(self, video: torch.Tensor) -> torch.Tensor:
        """Video tokens e^V -> l2-normalised retrieval embedding [B, E]."""
        return self._project("video", self._video_cls(video))

    def _project(self, side: str, cls: torch.Tensor) -> torch.Tensor:
        """[CLS] [B, D] -> l2-normalised retrieval embedding [B, E], always in fp32: under bf16 autocast
        a bf16 embedding keeps ~3 significant digits, which reorders near scores (measured on the
        quickstart: R@1 14.4 -> 8.8; docs/performance.md, "Precision"). One small matmul, no cost."""
        with torch.autocast(cls.device.type, enabled=False):
            return F.normalize(self.retrieval[side](cls.float()), dim=-1)

    def embed_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unimodal pass [CLS, e^V + t^V] -> l2-normalised retrieval embedding [B, E]."""
        return self._video_embedding(self.video(pixels))

    def embed_frame_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """embed_video from the frames' `video.frame_tokens` [B, T, g*g, D] (computed once per
        frame, shared by the windows that take it) -> [B, E]."""
        return self._video_embedding(self.video.place(tokens))

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal pass [CLS, e^L + t^L] -> l2-normalised retrieval embedding [B, E]."""
        h = self.fusion(self.text(input_ids, attention_mask), attention_mask, None, cls_only=self._cls_only)
        return self._project("text", h[:, 0])

    def trunk_parameters(self) -> int:
        """Parameters without any head (the paper's 16M figure)."""
        return sum(p.numel() for m in (self.video, self.text, self.fusion) for p in m.parameters())
