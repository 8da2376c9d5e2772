"""Per-item predictions as JSON objects: what a head answered for one clip, built in one place for
`evilm predict` and `evilm evaluate --predictions`, so the two print the same answers for the
same scores (docs/predict.md). The scores come from models/scoring.py.

Rankings sort by score, highest first, stably: equal scores keep their input order (the first
of two tied answers is the one `argmax` picks). Scores and probabilities are rounded to 6
decimals, as `retrieve query` prints its scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DIGITS = 6


@dataclass
class PredictionRows:
    """What `evaluate --predictions` collects while it scores a split."""

    k: int = 5  # answers, labels, keys or texts kept per item
    rows: list[dict] = field(default_factory=list)  # one JSON object per item, in evaluation order


def ranked(scores: torch.Tensor, names: list[str], k: int | None, name: str, score: str) -> list[dict]:
    """scores [N] for `names` -> the best `k` (None: all) as [{name: ..., score: ...}], best first."""
    order = torch.sort(scores.float().cpu(), descending=True, stable=True)
    n = len(names) if k is None else min(k, len(names))
    return [{name: names[i], score: round(float(v), DIGITS)}
            for v, i in zip(order.values[:n].tolist(), order.indices[:n].tolist())]


def answers(probs: torch.Tensor, vocab: list[str], k: int) -> dict:
    """QA: the top-k answers with their probabilities (probs [A] over the answer vocabulary)."""
    return {"answers": ranked(probs, vocab, k, "answer", "prob")}


def labels(probs: torch.Tensor, names: list[str], k: int) -> dict:
    """Linear probe: the top-k labels with their probabilities."""
    return {"labels": ranked(probs, names, k, "label", "prob")}


def options(scores: torch.Tensor, texts: list[str]) -> dict:
    """Multiple choice: every option's match score (log-odds) in option order and the chosen one."""
    chosen = int(scores.argmax()) if len(texts) else -1
    return {"options": list(texts), "scores": [round(float(s), DIGITS) for s in scores.float().cpu().tolist()],
            "chosen": chosen, "answer": texts[chosen] if chosen >= 0 else None}


def texts(scores: torch.Tensor, names: list[str], k: int | None, field: str = "text") -> dict:
    """Video-to-text: the texts (or zero-shot labels, `field` "label") ranked by cosine similarity."""
    return {f"{field}s": ranked(scores, names, k, field, "score")}


def top_keys(scores: torch.Tensor, keys: list[str], k: int) -> list[str]:
    """Text-to-video: the keys of the k best clips."""
    return [row["key"] for row in ranked(scores, keys, k, "key", "score")]


def first_answer(prediction: dict) -> str | None:
    """The answer (or label) a prediction ranks first; None when it has none."""
    for entries, name in (("answers", "answer"), ("labels", "label"), ("texts", "text")):
        if prediction.get(entries):
            return prediction[entries][0][name]
    return prediction.get("answer")
