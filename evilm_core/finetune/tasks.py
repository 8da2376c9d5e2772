"""The fine-tuning tasks the shared Trainer runs (qa, mc, retrieval): what trains, the loss,
validation and export. Parameters no task loss reaches are frozen at construction (DDP waits
for every trainable parameter's gradient; AdamW would decay them for nothing):

| task      | trains besides the trunk      | frozen                                   |
|-----------|-------------------------------|------------------------------------------|
| qa        | heads.qa (MLP on joint [CLS]) | mlm, vtm, mvm heads, retrieval, scale     |
| mc        | heads.vtm (match score)       | mlm, mvm heads, retrieval, scale          |
| retrieval | retrieval projections, scale  | mlm, vtm, mvm heads                       |
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.config.sections import DataConfig
from evilm_core.data.manifest import ClipRecord
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.finetune.evaluate import evaluate_mc, evaluate_qa, evaluate_retrieval
from evilm_core.finetune.loading import export_finetuned, freeze_except
from evilm_core.finetune.scoring import contrastive_loss, logit_scale_value, option_scores, same_video, unwrap
from evilm_core.models.evilm import EViLM
from evilm_core.pretrain.data import TextTokens


class FinetuneTask:
    name = ""
    keep: tuple[str, ...] = ()  # heads (or 'retrieval', 'logit_scale') trained besides the trunk

    def __init__(self, recipe: FinetuneRecipe, net: EViLM, vocab: list[str], val=None,
                 classes: list[str] | None = None):
        self.recipe, self.model, self.vocab, self.val, self.classes = recipe, net, vocab, val, classes
        freeze_except(net, self.keep)

    @property
    def data(self) -> DataConfig:
        return self.recipe.data

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None:
            return {}
        net = unwrap(model)
        return {f"val_{k}": v for k, v in self._evaluate(net, next(net.parameters()).device).items()}

    def _evaluate(self, net: EViLM, device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    def export(self, model: nn.Module, directory: Path) -> Path:
        return export_finetuned(unwrap(model), directory, self.name, self.vocab, classes=self.classes)


def _parts(loss: torch.Tensor, **extra: torch.Tensor) -> dict[str, float]:
    return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in extra.items()}}


class QATask(FinetuneTask):
    """Open-ended QA as classification over the answer vocabulary (`classes`, most frequent first)."""

    name, keep = "qa", ("qa",)

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator):
        out = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])
        logits = unwrap(model).heads["qa"](out["cls"]).float()
        loss = F.cross_entropy(logits, batch["answer"])  # training records are all in the vocabulary
        return loss, _parts(loss, acc=(logits.argmax(-1) == batch["answer"]).float().mean())

    def _evaluate(self, net, device):
        return evaluate_qa(net, self.val, self.classes, self.data, device)


class MCTask(FinetuneTask):
    """Multiple choice: cross-entropy over the options' VTM match scores."""

    name, keep = "mc", ("vtm",)

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator):
        scores = option_scores(model, batch["pixels"], batch["option_ids"], batch["option_mask"])
        loss = F.cross_entropy(scores, batch["answer"])
        return loss, _parts(loss, acc=(scores.argmax(-1) == batch["answer"]).float().mean())

    def _evaluate(self, net, device):
        return evaluate_mc(net, self.val, self.data, device)


class RetrievalTask(FinetuneTask):
    """Text-to-video retrieval with the dual encoder; `val` is (records, video root, text tokens)."""

    name, keep = "retrieval", ("retrieval", "logit_scale")

    def __init__(self, recipe: FinetuneRecipe, net: EViLM, vocab: list[str],
                 val: tuple[list[ClipRecord], str, TextTokens] | None = None, classes=None):
        super().__init__(recipe, net, vocab, val, classes)
        with torch.no_grad():  # the recipe's initial temperature (a resumed run then loads its own)
            net.logit_scale.fill_(math.log(1.0 / recipe.retrieval.temperature_init))

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator):
        out = model(batch["pixels"], batch["input_ids"], batch["attention_mask"], mode="unimodal")
        scale = unwrap(model).logit_scale
        loss = contrastive_loss(out["video"], out["text"], scale, same_video(batch["video"], out["video"].device))
        return loss, _parts(loss, temperature=1.0 / logit_scale_value(scale))

    def _evaluate(self, net, device):
        records, root, tokens = self.val
        return evaluate_retrieval(net, records, root, self.data, tokens, device)


TASK_CLASSES = {"qa": QATask, "mc": MCTask, "retrieval": RetrievalTask}
