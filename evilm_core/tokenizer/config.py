"""Tokenizer model config and the `tokenizer` recipe (paper 3.3, 4.1; DESIGN 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evilm_core.config.loader import path_field, register_recipe
from evilm_core.config.sections import RunSections, check_model_fits_data

GRID_STRIDE = 32  # student stride == tokenizer patch (DESIGN 3): a region is a 32x32 cell


@dataclass
class TokenizerModelConfig:
    encoder: str = "vit_base_patch32_clip_224"  # timm ViT with patch 32 (paper: CLIP ViT-B/32)
    encoder_args: dict[str, int] = field(default_factory=dict)  # timm overrides (embed_dim, depth, num_heads)
    pretrained: bool | str = False  # false | true (timm hub) | path/to/weights.safetensors
    image_size: int = 0  # frame size; 0 = take data.image_size
    code_dim: int = 32  # dimension of the l2-normalised codes
    codebook_size: int = 9420  # M codebook entries
    decoder_depth: int = 8  # self-attention blocks over the quantised codes
    decoder_dim: int = 384  # decoder width
    decoder_heads: int = 6  # decoder attention heads
    max_frames: int = 16  # size of the decoder's frame embedding table
    num_words: int = 0  # K caption words (set from the vocabulary when the model is built)


@dataclass
class CodebookConfig:
    kmeans_init: bool = True  # initialise the codebook by cosine k-means on the first batch
    ema: bool = True  # EMA codebook updates (replaces the codebook term of eq. 7)
    ema_decay: float = 0.99  # EMA decay
    restart_unused: int = 100  # re-seed codes unused for this many steps (0: never)


@dataclass
class TokenizerLossConfig:
    word_loss: Literal["focal", "bce"] = "focal"  # eq. 6, or plain BCE (Table 6 comparison)
    gamma_pos: float = 0.0  # focusing exponent on positive words (eq. 6: 0)
    gamma_neg: float = 1.0  # focusing exponent on negative words (eq. 6: 1)
    word_weight: float = 1.0  # weight of the word loss; its scale is small (mean over K words)
    codebook_weight: float = 1.0  # weight of ||sg[E(x)] - c||^2 (eq. 7)
    commitment_weight: float = 1.0  # weight of ||E(x) - sg[c]||^2 (eq. 7)


@dataclass
class VocabConfig:
    file: str | None = path_field()  # an existing vocab.txt; default: build from data.train captions
    max_words: int | None = None  # keep at most this many words (paper: 9,415 + 5 specials = 9,420)
    top_share: float | None = None  # or keep this share of the distinct words (paper: top 30%)
    min_count: int = 1  # drop words seen fewer times


@register_recipe("tokenizer")
@dataclass
class TokenizerRecipe(RunSections):
    model: TokenizerModelConfig = field(default_factory=TokenizerModelConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)

    def __post_init__(self):
        if self.model.image_size == 0:
            self.model.image_size = self.data.image_size
        check_model_fits_data(self)
