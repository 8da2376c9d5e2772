"""The `tokenizer` recipe (paper 3.3, 4.1; docs/design.md, "Tokenizer"); the model's own config
is evilm_core/models/tokenizer.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evilm_core.config.loader import path_field
from evilm_core.config.sections import RunSections, check_model_fits_data
from evilm_core.models.config import CodebookConfig, TokenizerModelConfig


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


@dataclass
class TokenizerRecipe(RunSections):
    """`kind: tokenizer`: stage 1 (`evilm tokenize-train`)."""

    model: TokenizerModelConfig = field(default_factory=TokenizerModelConfig)  # the VQ tokenizer
    codebook: CodebookConfig = field(default_factory=CodebookConfig)  # how the codebook learns
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)  # word and VQ loss weights
    vocab: VocabConfig = field(default_factory=VocabConfig)  # the caption words predicted

    def __post_init__(self):
        if self.model.image_size == 0:  # resolved at load: the frames the data section gives
            self.model.image_size = self.data.image_size
        check_model_fits_data(self.model, self.data)
