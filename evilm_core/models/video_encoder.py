"""Video encoder: timm EdgeNeXt per frame -> final 32-stride map flattened -> linear to the fusion
width, plus frame and region embeddings (paper 3.1: "flatten and concatenate all embeddings,
followed by a linear transformation")."""

from __future__ import annotations

import torch
import torch.nn as nn

from evilm_core.errors import EvilmError
from evilm_core.models.backbones import create_backbone
from evilm_core.models.config import GRID_STRIDE, EViLMConfig


class VideoEncoder(nn.Module):
    def __init__(self, cfg: EViLMConfig):
        super().__init__()
        self.backbone = create_backbone(cfg.video_encoder, cfg.pretrained, **cfg.video_args)
        stride = self.backbone.feature_info[-1]["reduction"]
        if stride != GRID_STRIDE:
            raise EvilmError(f"video encoder '{cfg.video_encoder}' has output stride {stride}, but the MVM "
                             f"region grid (tokenizer patch size) is {GRID_STRIDE}")
        self.grid = cfg.grid
        self.proj = nn.Linear(self.backbone.num_features, cfg.fusion_dim)
        self.frame_embed = nn.Parameter(torch.zeros(1, cfg.max_frames, 1, cfg.fusion_dim))
        self.region_embed = nn.Parameter(torch.zeros(1, 1, self.grid * self.grid, cfg.fusion_dim))
        nn.init.trunc_normal_(self.frame_embed, std=0.02)
        nn.init.trunc_normal_(self.region_embed, std=0.02)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, T, 3, H, W] -> backbone map [B, T, g*g, C], region (t, i, j) at index i*g + j."""
        b, t = pixels.shape[:2]
        fmap = self.backbone.forward_features(pixels.flatten(0, 1))  # [B*T, C, g, g]
        # EdgeNeXt's head normalises channels after pooling; applied per region instead it is the
        # final norm of every region token (and no backbone parameter is left without a gradient).
        head_norm = getattr(getattr(self.backbone, "head", None), "norm", None)
        if head_norm is not None:
            fmap = head_norm(fmap)
        if fmap.shape[-1] != self.grid or fmap.shape[-2] != self.grid:
            raise EvilmError(f"frames of {pixels.shape[-1]} px give a {fmap.shape[-2]}x{fmap.shape[-1]} grid; "
                             f"the model expects {self.grid}x{self.grid} (image_size {self.grid * GRID_STRIDE})")
        return fmap.flatten(2).transpose(1, 2).reshape(b, t, self.grid * self.grid, -1)

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W] -> projected region tokens [N, g*g, D]: the part of the encoder that
        sees one frame at a time, so windows sharing a frame share this work (docs/retrieval.md,
        "Moments")."""
        return self.proj(self.forward_features(frames.unsqueeze(1)).squeeze(1))

    def place(self, tokens: torch.Tensor) -> torch.Tensor:
        """frame tokens [B, T, g*g, D] -> video tokens e^V [B, T*g*g, D]: frame t's embedding and
        the region embeddings added (t-major, then row, then column)."""
        x = tokens + self.frame_embed[:, :tokens.shape[1]] + self.region_embed
        return x.flatten(1, 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, T, 3, H, W] -> video tokens e^V [B, T*g*g, D] (t-major, then row, then column)."""
        b, t = pixels.shape[:2]
        return self.place(self.frame_tokens(pixels.flatten(0, 1)).unflatten(0, (b, t)))
