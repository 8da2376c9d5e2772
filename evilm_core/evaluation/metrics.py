"""The paper's metrics, with their edge cases decided and stated.

Retrieval ranks are pessimistic under ties: the true item is ranked after every other item with
an equal score (rank = 1 + #higher + #equal others). A model that scores everything the same
therefore gets the worst rank, not the best; an optimistic rule would give it R@1 = 100%.
"""

from __future__ import annotations

import math

import torch

from evilm_core.errors import EvilmError


def require_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """A NaN or an infinity is never scored: it would rank as a perfect match (a NaN compares
    neither higher nor equal). Raises an EvilmError saying how many and of what."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise EvilmError(f"{bad} of {values.numel()} {what} are NaN or infinite, so no metric can be computed; "
                         "the model's weights or inputs are not finite (a diverged run? check metrics.jsonl)")
    return values


def require_finite_metrics(metrics: dict, where: str) -> dict:
    """Every float of a metrics dict is finite, else an EvilmError naming the keys."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise EvilmError(f"{where}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} NaN or infinite; the run "
                         "diverged or its inputs are not finite (see metrics.jsonl), so no result is reported")
    return metrics


def retrieval_ranks(scores: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """scores [Q, N] (query x candidate), targets [Q] index of each query's true candidate
    (default: the diagonal) -> 1-based rank of the true candidate per query."""
    q = scores.shape[0]
    targets = torch.arange(q) if targets is None else targets
    true = scores[torch.arange(q), targets].unsqueeze(1)  # [Q, 1]
    higher = (scores > true).sum(1)
    ties = (scores == true).sum(1) - 1  # other candidates tied with the true one
    return 1 + higher + ties


def rank_metrics(ranks: torch.Tensor, prefix: str, ks=(1, 5, 10)) -> dict[str, float]:
    """R@K in percent, median rank (MdR) and mean rank (MnR)."""
    ranks = ranks.float()
    out = {f"{prefix}_R@{k}": float((ranks <= k).float().mean() * 100) for k in ks}
    out[f"{prefix}_MdR"] = float(torch.quantile(ranks, 0.5))  # numpy's median: mean of the middle two
    out[f"{prefix}_MnR"] = float(ranks.mean())
    return out


def retrieval_metrics(sim: torch.Tensor, text_to_video: torch.Tensor | None = None) -> dict[str, float]:
    """sim [T, V] text x video similarities; text_to_video [T] the true video of each text
    (default diagonal). Video-to-text: `video_to_text_ranks`."""
    t = sim.shape[0]
    require_finite(sim, "text-video similarities")
    t2v_target = torch.arange(t) if text_to_video is None else text_to_video
    metrics = rank_metrics(retrieval_ranks(sim, t2v_target), "t2v")
    metrics.update(rank_metrics(torch.tensor(list(video_to_text_ranks(sim, t2v_target).values())), "v2t"))
    return metrics


def video_to_text_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> dict[int, int]:
    """{video: rank} for each video with a text: the best-ranked of its texts, ranked against the
    other videos' texts only (its own captions never compete with each other; a tie with another
    video's text counts against it), MSR-VTT style."""
    t = sim.shape[0]
    ranks = {}
    for video in range(sim.shape[1]):
        own = (text_to_video == video).nonzero().flatten()
        if own.numel() == 0:
            continue
        column, others = sim[:, video], torch.ones(t, dtype=torch.bool)
        others[own] = False
        ranks[video] = 1 + int((column[others] >= column[own].max()).sum())
    return ranks


def accuracy(predictions: list, answers: list) -> float:
    """Share (percent) of predictions equal to the answers; an answer the model cannot produce
    (outside its answer vocabulary) simply never matches, so it counts as wrong, not dropped."""
    if not answers:
        return 0.0
    return 100.0 * sum(p == a for p, a in zip(predictions, answers)) / len(answers)
