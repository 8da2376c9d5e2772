"""The four things predict runs, each in two halves: `compute` where the model is (a CPU loader
worker, or the main process with a GPU) turns a batch of clips into scores, and `rows` in the
main process turns a clip's scores into its output lines. The scores come from
models/scoring.py and the lines from evaluation/predictions.py, the code `evaluate
--predictions` runs too.

| head  | scores per clip | line (besides "key") |
|-------|-----------------|----------------------|
| qa    | answer probabilities [Q, A], one row per question | question, answers: top-k {answer, prob} |
| mc    | match log-odds, one per option of each item | question?, options, scores, chosen, answer |
| probe | label probabilities [C] | labels: top-k {label, prob} |
| texts | cosine similarity to each text [T] | texts (or labels): top-k {text, score} |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evilm_core.data.dataset import Sample
from evilm_core.data.records.record import ClipRecord
from evilm_core.evaluation import predictions
from evilm_core.fs import escape_key
from evilm_core.models.scoring import (
    answer_logits,
    features_of_tokens,
    joint_cls,
    label_logits,
    match_log_odds,
    similarities,
    video_tokens,
)
from evilm_core.predict.inputs import Clip, Item, Plan
from evilm_core.text.tokens import TextTokens


@dataclass
class Head:
    """What a run computes; pickled into each CPU loader worker."""

    kind: str  # qa | mc | probe | texts (predict/inputs.py HEADS)
    classes: list[str] | None = None  # qa: the answers; probe: the labels (head order)
    feature: str = "cls"  # probe: its input feature
    text_emb: torch.Tensor | None = None  # texts: the texts' embeddings [T, E] (CPU, float32)

    def compute(self, net, batch: dict) -> dict:
        """A batch of clips (pixels, and for qa / mc their text pairs) -> {"scores": one tensor per
        clip, on the CPU}. The video side runs once per clip for all its items."""
        tokens = video_tokens(net, batch.pop("pixels"))  # [B, N, D] e^V
        if self.kind in ("qa", "mc"):
            pairs = batch.pop("pairs")
            counts = [ids.shape[0] for ids, _ in pairs]
            ids = torch.cat([ids for ids, _ in pairs]).to(tokens.device)
            mask = torch.cat([mask for _, mask in pairs]).to(tokens.device)
            cls = joint_cls(net, tokens, counts, ids, mask)
            scores = answer_logits(net, cls).softmax(-1) if self.kind == "qa" else match_log_odds(net, cls)
            return {"scores": list(scores.float().cpu().split(counts))}
        if self.kind == "probe":
            scores = label_logits(net, features_of_tokens(net, tokens, self.feature)).softmax(-1)
        else:
            scores = similarities(net._video_embedding(tokens), self.text_emb.to(tokens.device))
        return {"scores": list(scores.float().cpu())}

    def rows(self, clip: Clip, scores: torch.Tensor, plan: Plan, k: int) -> list[dict]:
        """One clip's lines, one per item, in input order."""
        key = {"key": escape_key(clip.record.video)}
        if not bool(torch.isfinite(scores).all()):
            return [error_row(clip.record.video, "nonfinite", "the model's scores are NaN or infinite")]
        if self.kind == "qa":
            return [{**key, "question": item.question, **predictions.answers(row, self.classes, k)}
                    for item, row in zip(clip.items, scores)]
        if self.kind == "mc":
            parts = scores.split([len(item.options) for item in clip.items])
            return [{**key, **({"question": item.question} if item.question else {}),
                     **predictions.options(part, item.options)} for item, part in zip(clip.items, parts)]
        if self.kind == "probe":
            return [{**key, **predictions.labels(scores, self.classes, k)}]
        return [{**key, **predictions.texts(scores, plan.names, k, plan.field)}]


def error_row(video: str, reason: str, detail: str) -> dict:
    """The line of a clip that could not be answered (missing, corrupt, short, nonfinite)."""
    return {"key": escape_key(video), "error": reason, "detail": detail}


def open_predictor(directory: str, head: Head, threads: int, precision: str = "fp32"):
    """In a CPU loader worker (engine/workers.py): the checkpoint's model, in the run's `precision`
    (bf16 weights in bf16: models/loading.py for_precision), as a batch -> scores function."""
    from evilm_core.models.loading import for_precision, load_checkpoint

    net = for_precision(load_checkpoint(directory).model.eval(), precision)
    return lambda batch: head.compute(net, batch)


class PairFields:
    """A clip's text inputs for the joint pass: each item's question (qa) or (question, option)
    pairs (mc, `[CLS] q [SEP] o [SEP]`, or the option alone), as ids and mask [n, L]."""

    def __init__(self, tokens: TextTokens, items: list[list[Item]]):
        self.tokens, self.items = tokens, items  # items[i]: those of dataset record i

    def __call__(self, record: ClipRecord, sample: Sample) -> dict:
        pairs = []
        for item in self.items[sample.index]:
            if item.options is None:
                pairs.append(self.tokens(item.question))
            else:
                pairs += [self.tokens(item.question, o) if item.question else self.tokens(o) for o in item.options]
        return {"pairs": (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))}
