"""The `finetune` recipe (paper 4.2): open-ended QA, multiple choice, text-to-video retrieval and
the linear probe, one `task:` key, each with its own small section; `moments` (evaluation only:
moments inside long videos, docs/retrieval.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evilm_core.config.sections import InitConfig, RunSections, check_model_fits_data
from evilm_core.evaluation.moments import DEFAULT_MERGE
from evilm_core.models.config import EViLMConfig

TASKS = ("qa", "mc", "retrieval", "probe", "moments")


@dataclass
class QAConfig:
    num_answers: int = 1000  # classify over the most frequent training answers; others count as wrong in evaluation


@dataclass
class MCConfig:
    # a training record without `options` (e.g. MSR-VTT captions) gets its caption plus this many
    # minus one captions of other clips as options; records with `options` use theirs
    num_options: int = 5


@dataclass
class RetrievalConfig:
    temperature_init: float = 0.07  # initial softmax temperature; learned (logit scale capped at 100)


@dataclass
class MomentsConfig:
    window: float = 4.0  # seconds per window (as `retrieve index --window`)
    stride: float = 2.0  # seconds between window starts (more than 0, at most the window)
    merge: float = DEFAULT_MERGE  # how far below its peak a neighbouring window may score and join the moment (0-1)


@dataclass
class ProbeConfig:
    # the unimodal video [CLS] before (cls) or after (embed) the retrieval projection
    feature: Literal["cls", "embed"] = "cls"
    lr: float = 1.0e-3  # AdamW learning rate of the linear classifier
    weight_decay: float = 0.0  # AdamW weight decay of the linear classifier
    epochs: int = 300  # passes over the cached training features
    batch_size: int = 256  # features per classifier step
    cache: bool = True  # keep extracted features in output.dir/features/ for re-runs


@dataclass
class FinetuneRecipe(RunSections):
    """`kind: finetune`: stage 3 (`evilm finetune`, `evilm evaluate`); one `task:` and its section."""

    task: Literal["qa", "mc", "retrieval", "probe", "moments"] | None = None  # required
    model: EViLMConfig = field(default_factory=EViLMConfig)  # from scratch; with init, the checkpoint's wins
    init: InitConfig = field(default_factory=InitConfig)  # a pre-trained checkpoint or run dir; null: scratch
    qa: QAConfig = field(default_factory=QAConfig)  # open-ended QA settings
    mc: MCConfig = field(default_factory=MCConfig)  # multiple-choice settings
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)  # text-to-video retrieval settings
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # linear-probe settings
    moments: MomentsConfig = field(default_factory=MomentsConfig)  # moment retrieval (evaluation) settings

    def __post_init__(self):
        if self.task is None:
            raise ValueError(f"recipe key 'task' is required: one of {', '.join(TASKS)}")
        if self.qa.num_answers < 2:
            raise ValueError(f"qa.num_answers must be >= 2, got {self.qa.num_answers}")
        if self.mc.num_options < 2:
            raise ValueError(f"mc.num_options must be >= 2, got {self.mc.num_options}")
        if not 0 < self.retrieval.temperature_init <= 1:
            raise ValueError(f"retrieval.temperature_init must be in (0, 1], got {self.retrieval.temperature_init}")
        m = self.moments
        if not (m.window > 0 and 0 < m.stride <= m.window):
            raise ValueError(f"moments.window must be > 0 and moments.stride in (0, window], got {m.window} and "
                             f"{m.stride}")
        if not 0 <= m.merge <= 1:
            raise ValueError(f"moments.merge must be in [0, 1], got {m.merge}")
        if self.init.checkpoint is None and self.task != "moments":  # else the model is a checkpoint's: checked then
            check_model_fits_data(self.model, self.data)
