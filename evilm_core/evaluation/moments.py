"""Moments in long videos: the rule that merges a video's windows into moments, and the
temporal grounding metrics with their two baselines (docs/retrieval.md, "Moments").

Merge rule (`propose_moments`), on the scores of one video's windows for one query, in time
order: the best window not yet in a moment is a peak; its moment grows to the neighbouring
windows on either side while their scores stay at or above

    peak - merge * (peak - median of the video's window scores)

and stops at a window already in a moment. `merge` = 0 keeps single windows (only equal scores
join), 1 merges down to the video's typical score. The moment is [first window's start, last
window's end] and scores its peak; the next peak starts the next moment. Measuring the scale
against the video's own median makes the rule independent of a model's cosine range.

Metrics (the Charades-STA / ActivityNet Captions protocol): a query's moments are ranked in its
own video; R@k at IoU t is the share of queries with a moment among the top k whose temporal IoU
with the ground truth is at least t, mIoU the mean IoU of the top moment. A query with several
ground-truth windows (QVHighlights, DiDeMo's annotators) takes the best IoU over them. Numbers
only (no torch), so a query over an export imports none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MERGE = 0.1  # chosen on a validation set: docs/benchmarks.md, "Moments"
IOUS = (0.3, 0.5, 0.7)
RANKS = (1, 5)
RANDOM_POSITIONS = 2001  # placements of the random baseline's window, evenly spread over the video


@dataclass
class Moment:
    start: float  # seconds
    end: float  # seconds
    score: float  # the peak window's score
    first: int  # index of its first window (in the video's windows)
    last: int  # index of its last window


def propose_moments(scores: np.ndarray, times: np.ndarray, count: int, merge: float = DEFAULT_MERGE) -> list[Moment]:
    """Up to `count` moments of one video, best first. scores [K] (its windows, in time order),
    times [K, >=2] (start, end in seconds). `merge` in [0, 1] (module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    taken = np.zeros(len(scores), dtype=bool)
    typical = float(np.median(scores)) if len(scores) else 0.0
    moments: list[Moment] = []
    for peak in np.argsort(-scores, kind="stable"):
        if len(moments) >= count:
            break
        if taken[peak]:
            continue
        floor = scores[peak] - merge * max(0.0, scores[peak] - typical)
        lo = hi = int(peak)
        while lo > 0 and not taken[lo - 1] and scores[lo - 1] >= floor:
            lo -= 1
        while hi + 1 < len(scores) and not taken[hi + 1] and scores[hi + 1] >= floor:
            hi += 1
        taken[lo:hi + 1] = True
        moments.append(Moment(float(times[lo, 0]), float(times[hi, 1]), float(scores[peak]), lo, hi))
    return moments


def fixed_windows(scores: np.ndarray, times: np.ndarray, count: int) -> list[Moment]:
    """The baseline without merging: the `count` best windows as they are (overlaps allowed)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:count]
    return [Moment(float(times[i, 0]), float(times[i, 1]), float(scores[i]), int(i), int(i)) for i in order]


def temporal_iou(start, end, truths: np.ndarray) -> np.ndarray:
    """IoU of windows [start, end] (numbers or arrays of one shape) with each ground-truth window
    truths [G, 2] -> the best over the truths, in the shape of `start`."""
    start, end = np.asarray(start, dtype=np.float64)[..., None], np.asarray(end, dtype=np.float64)[..., None]
    gs, ge = truths[:, 0], truths[:, 1]
    inter = np.clip(np.minimum(end, ge) - np.maximum(start, gs), 0, None)
    union = np.maximum(end, ge) - np.minimum(start, gs)
    return (inter / np.where(union > 0, union, 1.0)).max(-1)


def _hits(ious: list[float], ranks=RANKS, thresholds=IOUS) -> dict[str, bool]:
    return {f"R@{k}_IoU{t}": any(i >= t for i in ious[:k]) for k in ranks for t in thresholds}


def query_scores(moments: list[Moment], truths: np.ndarray) -> dict[str, float]:
    """One query's hits (R@k at each IoU, 0 or 100) and the IoU of its top moment."""
    ious = [float(temporal_iou(m.start, m.end, truths)) for m in moments]
    return {**{k: 100.0 * v for k, v in _hits(ious).items()}, "mIoU": 100.0 * (ious[0] if ious else 0.0)}


def random_scores(lengths: list[float], duration: float, truths: np.ndarray) -> dict[str, float]:
    """The expected scores of windows of the given lengths (the query's moments', best first)
    placed independently and uniformly at random in the video: P(hit within the top k) =
    1 - prod(1 - p_i), p_i the share of placements of window i at IoU >= t; mIoU the mean IoU
    of the first window over its placements."""
    per_window = []
    for length in lengths:
        length = min(length, duration)
        starts = np.linspace(0.0, duration - length, RANDOM_POSITIONS)
        per_window.append(temporal_iou(starts, starts + length, truths))  # [P]
    out = {}
    for k in RANKS:
        for t in IOUS:
            miss = np.prod([1.0 - float((ious >= t).mean()) for ious in per_window[:k]])
            out[f"R@{k}_IoU{t}"] = 100.0 * (1.0 - miss)
    out["mIoU"] = 100.0 * float(per_window[0].mean()) if per_window else 0.0
    return out


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over queries."""
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} if rows else {}
