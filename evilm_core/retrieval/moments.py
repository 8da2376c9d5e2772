"""Queries over a window index: hits grouped per video and merged into moments (video, start,
end, score) by the rule of evaluation/moments.py (docs/retrieval.md, "Moments").

A video's windows are one run of rows (folding parts in groups them; evilm_core/retrieval/
index.py), so the runs are found from the times alone: a run starts at a block's first row, at
a window starting at 0 s, or where the video's duration or the time order changes. For a query,
the top R rows (exact scan or ANN) name the candidate videos; each one's windows are all scored
(one slice of the memory map) and merged, and the best k moments over the candidates are the
answer. A video outside the candidates has no row above the R-th score, so when the k-th moment
scores at least that, the answer is the exact one; otherwise R grows (x4) and the search runs
again. NumPy only (a query over an ONNX export imports no torch).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from evilm_core.evaluation.moments import DEFAULT_MERGE, propose_moments
from evilm_core.retrieval.index import IndexView

FIRST_CANDIDATES = 64  # rows a query looks at first (more when k or per_video ask for it)


@dataclass
class Found:
    key: str  # the video's key
    start: float  # seconds
    end: float  # seconds
    score: float  # the moment's peak window score


class VideoRuns:
    """Where each video's windows are among a window index's rows."""

    def __init__(self, index: IndexView):
        self.index = index
        self.bounds: list[int] = []  # first row of each run (global), then the row count
        self.offsets: list[int] = []  # first global row of each block
        offset = 0
        for block, times in zip(index.blocks, index.times):
            self.offsets.append(offset)
            start, duration = times[:, 0], times[:, 2]
            new = np.ones(len(times), dtype=bool)
            new[1:] = (start[1:] == 0) | (duration[1:] != duration[:-1]) | (start[1:] <= start[:-1])
            self.bounds += (np.flatnonzero(new) + offset).tolist()
            offset += len(block)
        self.bounds.append(offset)

    def run_of(self, row: int) -> tuple[int, int]:
        """The run [a, b) (global rows) holding `row`."""
        i = bisect.bisect_right(self.bounds, row) - 1
        return self.bounds[i], self.bounds[i + 1]

    def rows(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [n, E], times [n, 3]) of global rows [a, b) (one run: inside one block)."""
        block = bisect.bisect_right(self.offsets, a) - 1
        lo, hi = a - self.offsets[block], b - self.offsets[block]
        return np.asarray(self.index.blocks[block][lo:hi]), np.asarray(self.index.times[block][lo:hi])


def find_moments(index: IndexView, runs: VideoRuns, query: np.ndarray, k: int, per_video: int,
                 search, merge: float = DEFAULT_MERGE) -> list[Found]:
    """The k best moments for one l2-normalised query [E] (at most `per_video` per video).
    `search(queries [1, E], n)` -> (scores [1, n], rows [1, n]): the exact scan or the ANN index."""
    want = max(FIRST_CANDIDATES, 4 * k * per_video)
    while True:
        scores, rows = search(query[None], min(want, len(index)))
        found, seen = [], set()
        for row in rows[0].tolist():
            if row < 0:
                continue
            a, b = runs.run_of(row)
            if a in seen:
                continue
            seen.add(a)
            emb, times = runs.rows(a, b)
            key = index.keys[a]
            found += [Found(key, m.start, m.end, m.score)
                      for m in propose_moments(emb @ query, times, per_video, merge)]
        found.sort(key=lambda f: -f.score)  # stable: equal scores keep the candidates' order
        floor = float(scores[0, -1]) if scores.shape[1] else -np.inf
        if want >= len(index) or (len(found) >= k and found[k - 1].score >= floor):
            return found[:k]
        want *= 4
