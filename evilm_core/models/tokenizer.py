"""Semantic VQ video tokenizer (paper 3.3, Fig. 4; docs/design.md, "Tokenizer"): the model
(its config is in config.py) and its export / loading (the one call `evilm label` and `evilm pretrain` use).

frames -> ViT/32 encoder (per frame) -> linear to 32-d -> l2-normalised nearest-code look-up
(straight-through) -> decoder (self-attention blocks over all T x h x w codes of the clip) ->
mean over tokens -> HEAD^S -> K caption-word logits. After training only encoder, projection and
codebook are kept (`with_decoder=False`): that is the tokenizer used for MVM targets.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.config.loader import from_dict, section_error, to_dict
from evilm_core.errors import EvilmError, RecipeError
from evilm_core.models.backbones import create_backbone, trunc_normal_init
from evilm_core.models.config import GRID_STRIDE, CodebookConfig, TokenizerModelConfig
from evilm_core.models.quantizer import VectorQuantizer

EXPORT_FORMAT = "evilm-tokenizer/1"


class SemanticTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerModelConfig, codebook: CodebookConfig | None = None, with_decoder: bool = True):
        super().__init__()
        self.cfg = cfg
        codebook = codebook or CodebookConfig()
        self.encoder = create_backbone(cfg.encoder, cfg.pretrained, img_size=cfg.image_size, **cfg.encoder_args)
        patch = tuple(self.encoder.patch_embed.patch_size)
        if patch != (GRID_STRIDE, GRID_STRIDE):
            raise EvilmError(f"tokenizer encoder '{cfg.encoder}' has patch size {patch[0]}, but the student's "
                             f"region grid has stride {GRID_STRIDE}: use a ViT with patch 32")
        self.grid = cfg.image_size // GRID_STRIDE
        self.proj = nn.Linear(self.encoder.num_features, cfg.code_dim)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, ema=codebook.ema,
                                         decay=codebook.ema_decay, kmeans_init=codebook.kmeans_init,
                                         restart_unused=codebook.restart_unused)
        trunc_normal_init(self.proj)
        self.decoder = self._build_decoder(cfg) if with_decoder else None

    def _build_decoder(self, cfg: TokenizerModelConfig) -> nn.ModuleDict:
        if cfg.num_words < 1:
            raise EvilmError("tokenizer model.num_words must be set from the vocabulary before building")
        d = cfg.decoder_dim
        dec = nn.ModuleDict({
            "embed": nn.Linear(cfg.code_dim, d),
            "blocks": nn.ModuleList([Block(d, cfg.decoder_heads, qkv_bias=True) for _ in range(cfg.decoder_depth)]),
            "norm": nn.LayerNorm(d),
            "head": nn.Linear(d, cfg.num_words),  # HEAD^S
        })
        trunc_normal_init(dec)
        # position (region) and frame embeddings: word targets like "moves left" need where and when
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.grid * self.grid, d))
        self.frame_embed = nn.Parameter(torch.zeros(1, cfg.max_frames, 1, d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.frame_embed, std=0.02)
        return dec

    def forward_encoder(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, T, 3, H, W] -> unnormalised codes z [B, T, h, w, code_dim]."""
        b, t = pixels.shape[:2]
        feats = self.encoder.forward_features(pixels.flatten(0, 1))  # [B*T, prefix + h*w, C]
        feats = feats[:, self.encoder.num_prefix_tokens:]
        z = self.proj(feats)  # [B*T, h*w, D]
        return z.view(b, t, self.grid, self.grid, -1)

    def forward_decoder(self, zq: torch.Tensor) -> torch.Tensor:
        """zq [B, T, h, w, D] -> word logits [B, K] (mean over all T*h*w decoder outputs, eq. 5)."""
        b, t = zq.shape[:2]
        x = self.decoder["embed"](zq.flatten(2, 3))  # [B, T, h*w, d]
        x = (x + self.pos_embed + self.frame_embed[:, :t]).flatten(1, 2)  # [B, T*h*w, d]
        for block in self.decoder["blocks"]:
            x = block(x)
        return self.decoder["head"](self.decoder["norm"](x).mean(dim=1))

    def forward(self, pixels: torch.Tensor):
        """-> (word logits [B, K], codes [B, T, h, w], vq loss terms)."""
        z = self.forward_encoder(pixels)
        zq, codes, vq = self.quantizer(z)
        return self.forward_decoder(zq), codes, vq

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, T, 3, H, W] -> codes [B, T, h, w] (the MVM targets; no training updates)."""
        z = torch.nn.functional.normalize(self.forward_encoder(pixels).float(), dim=-1)
        return self.quantizer.lookup(z)

    def tokenizer_state_dict(self) -> dict[str, torch.Tensor]:
        """What the exported tokenizer keeps: encoder + projection + codebook (docs/design.md, "Tokenizer")."""
        keep = ("encoder.", "proj.", "quantizer.codebook")
        return {k: v for k, v in self.state_dict().items() if k.startswith(keep)}


def export_tokenizer(tok: SemanticTokenizer, vocab: list[str], directory: str | Path) -> Path:
    """Write encoder + projection + codebook only: the tokenizer used for MVM targets.
    `pretrained` is stored as false: the weights are in the file, loading must not download."""
    cfg = {"format": EXPORT_FORMAT, "model": {**to_dict(tok.cfg), "pretrained": False}}
    return ckpt.write_checkpoint(directory, tok.tokenizer_state_dict(), cfg, vocab)


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> tuple[SemanticTokenizer, dict]:
    """Load an exported tokenizer (encoder + codebook) for labelling; returns (model, info)."""
    directory = resolve_checkpoint(path, "tokenizer")
    cfg = ckpt.read_yaml_config(directory)
    if cfg.get("format") != EXPORT_FORMAT:
        raise EvilmError(f"{directory} is not an exported tokenizer (config.yaml format is {cfg.get('format')!r}, "
                         f"expected {EXPORT_FORMAT!r})")
    if not isinstance(cfg.get("model"), dict):
        raise EvilmError(f"{ckpt.config_file(directory)} has no 'model' section: not an exported tokenizer")
    try:
        model_cfg = from_dict(TokenizerModelConfig, cfg["model"], "model")
    except RecipeError as err:
        raise EvilmError(f"{ckpt.config_file(directory)}: not a tokenizer this evilm builds "
                         f"({section_error(err)})") from None
    model = ckpt.build_checked(lambda: SemanticTokenizer(model_cfg, with_decoder=False), directory, "tokenizer")
    weights = ckpt.read_weights(directory)
    bad = ckpt.nonfinite_tensors(weights)
    if bad:  # every code would be 0: a cache of nothing, silently
        raise EvilmError(f"{directory}: {len(bad)} tokenizer weight tensors are NaN or infinite (e.g. {bad[0]}); the "
                         "tokenizer run diverged. Retrain it (lower optim.lr) before labelling")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(("quantizer.initialized", "quantizer.last_used", "quantizer.steps"))]
    if missing or unexpected:
        raise EvilmError(f"{directory}: weights do not match the tokenizer config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    info = {"dir": str(directory), "sha256": ckpt.file_sha256(directory / ckpt.WEIGHTS),
            "codebook_size": model_cfg.codebook_size, "image_size": model_cfg.image_size, "grid": model.grid}
    return model.to(device).eval(), info
