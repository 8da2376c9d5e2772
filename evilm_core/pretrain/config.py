"""The `pretrain` recipe (paper 3.4, 4.1): MLM + VTM + MVM with per-term weights and switches,
so the paper's Table 5/6 ablations are recipes, not code edits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evilm_core.config.loader import path_field
from evilm_core.config.sections import InitConfig, RunSections, check_model_fits_data
from evilm_core.models.config import EViLMConfig


@dataclass
class MaskingConfig:
    video_ratio: float = 0.4  # share of region cells masked per frame (block-wise, BEiT)
    min_block: int = 4  # smallest block BEiT's generator tries, in cells
    text_ratio: float = 0.15  # share of words masked for MLM
    vtm_negatives: float = 0.5  # share of each batch given another clip's caption


@dataclass
class PretrainLossConfig:
    mlm: float = 1.0  # weight of L_MLM (0 switches it and word masking off)
    vtm: float = 1.0  # weight of L_VTM (0 switches it and mismatched pairs off)
    mvm: float = 1.0  # weight of L_MVM (0 switches it and video masking off)
    vtc: float = 0.0  # weight of a video-text contrastive term (not in the paper; 0 = the paper's eq. 8)


@dataclass
class MVMConfig:
    targets: Literal["cache", "online"] = "cache"  # label cache (default) or the tokenizer run in the step
    labels: str | None = path_field()  # label cache directory (`evilm label --out`), for targets: cache
    tokenizer: str | None = path_field()  # tokenizer checkpoint: checks the cache, runs online, gives vocab.txt
    candidates: int = 8  # F candidate frames per clip in the cache (T are sampled, one per group)


@dataclass
class PretrainRecipe(RunSections):
    """`kind: pretrain`: stage 2 (`evilm pretrain`)."""

    model: EViLMConfig = field(default_factory=EViLMConfig)  # the student (`size:` names a preset)
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # MVM regions, MLM words, VTM pairs
    loss: PretrainLossConfig = field(default_factory=PretrainLossConfig)  # eq. 8 weights and switches
    mvm: MVMConfig = field(default_factory=MVMConfig)  # where the MVM targets come from
    vocab_file: str | None = path_field()  # vocab.txt; default: the tokenizer's, else built from captions
    init: InitConfig = field(default_factory=InitConfig)  # optional starting weights

    def __post_init__(self):
        check_model_fits_data(self.model, self.data)
        if self.loss.mvm > 0 and self.mvm.targets == "cache" and self.mvm.candidates % self.data.num_frames:
            raise ValueError(f"mvm.candidates ({self.mvm.candidates}) must be a multiple of data.num_frames "
                             f"({self.data.num_frames}): one frame is drawn per group of candidates")
