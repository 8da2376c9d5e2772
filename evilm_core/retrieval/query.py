"""`evilm retrieve query`: text queries against an index, loading only the text side.

A query needs the text encoder, the fusion decoder (the text-only pass [CLS, e^L + t^L]) and
the text retrieval projection; the video encoder and every head stay on disk (safetensors reads
tensors by name), or the text tower of an export runs in onnxruntime or OpenVINO, on NumPy arrays:
that path never imports torch, so a one-query process starts in about a second (docs/performance.md,
"Start-up"). The checkpoint is the one
the index records unless another is given, and its weights must hash to the index's
`model_hash`: embeddings of two models are not comparable. Queries are embedded in batches of
what has arrived (docs/performance.md, "Queries").
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from evilm_core.errors import EvilmError
from evilm_core.evaluation.moments import DEFAULT_MERGE
from evilm_core.retrieval.index import IndexView, nonfinite_index
from evilm_core.retrieval.moments import VideoRuns, find_moments
from evilm_core.retrieval.sides import open_ann, open_text_side
from evilm_core.settings import RunSettings, autocast, resolve_settings
from evilm_core.text.tokens import TextTokens

log = logging.getLogger("evilm.retrieval")
# The model reads the first max_text_len tokens of a query (~40 words): the rest of a longer one is
# never tokenized, so a 10 MB line costs no more than a sentence.
MAX_QUERY_CHARS = 10_000


@dataclass
class Hit:
    query: str  # the query text as given
    rank: int  # 1 = best
    key: str  # the clip's key in the index
    score: float  # cosine similarity of the embeddings (a moment: of its best window)
    meta: dict | None = None  # the clip's provenance (its record's `meta`: a source's url, status, ...), if any
    start: float | None = None  # a moment of a window index: where it starts in the video (seconds)
    end: float | None = None  # and where it ends


class Searcher:
    """An index plus the text side of the model that built it (a checkpoint's PyTorch text side,
    or the text tower of an `evilm export` directory run by onnxruntime or OpenVINO), and its ANN
    index when one was built (`--ann`) unless `exact`."""

    def __init__(self, index: str | Path, checkpoint: str | Path | None = None, precision: str = "fp32",
                 exact: bool = False, threads: int = 0, settings: RunSettings | None = None, per_video: int | None = None,
                 merge: float | None = None, runtime: str = "auto", text_int8: bool = False):
        settings = settings or resolve_settings("cpu", precision, threads, decoder=None, runtime=runtime)
        self.index = IndexView(index)
        meta = self.index.meta
        self.runs = VideoRuns(self.index) if meta.window is not None else None  # moments (docs/retrieval.md)
        self.per_video, self.merge = check_moment_options(self.index.directory, meta.window, per_video, merge)
        self.text = open_text_side(checkpoint if checkpoint is not None else meta.checkpoint, settings,
                                   given=checkpoint is not None, text_int8=text_int8)
        if self.text.kind == "torch":
            settings.apply()  # an export's query process never imports torch
        if self.text.model_hash != meta.model_hash:
            raise EvilmError(f"index {self.index.directory} was built by another model: its embeddings come from "
                             f"weights with sha256 {meta.model_hash[:12]} ({meta.checkpoint}), but {self.text.directory} "
                             f"has {self.text.model_hash[:12]}; query with the checkpoint (or its export) that built "
                             "the index, or rebuild the index")
        if self.text.embed_dim != meta.embed_dim:
            raise EvilmError(f"index {self.index.directory} has {meta.embed_dim}-d embeddings but the model gives "
                             f"{self.text.embed_dim}-d")
        self.tokens = TextTokens(self.text.directory, self.text.max_text_len)
        self.ann = None if exact else open_ann(self.index, threads=settings.threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Queries -> l2-normalised embeddings [Q, E] float32."""
        if self.text.kind != "torch":
            return self.text.embed_text(*self.tokens.batch(texts, as_numpy=True))  # [Q, L] ids and mask in
        import torch

        ids, mask = self.tokens.batch(texts)  # [Q, L]
        with torch.no_grad(), autocast(self.text.precision, "cpu"):
            return self.text.embed_text(ids, mask).float().numpy()  # [Q, E]

    def search(self, texts: list[str], k: int) -> list[list[Hit]]:
        read = [text[:MAX_QUERY_CHARS] for text in texts]
        for text in read:
            unknown = self.tokens.unknown_words(text)
            if unknown:
                log.warning("query %s: %s%s not in the model's vocabulary (%d words); searched without %s",
                            short_text(text), ", ".join(repr(w[:40]) for w in unknown[:10]),
                            f" and {len(unknown) - 10} more" if len(unknown) > 10 else "", self.tokens.vocab_size,
                            "it" if len(unknown) == 1 else "them")
        return self.rank(self.embed(read), texts, k)

    def rank(self, queries: np.ndarray, texts: list[str], k: int, meta: bool = True) -> list[list[Hit]]:
        """The top-k clips (moments, on a window index) of each embedded query [Q, E]: through the
        ANN index when there is one, else exactly. `meta`: each hit carries its clip's provenance
        (a read per hit; the server, which shows its catalog's metadata, leaves it out)."""
        search = self.index.search if self.ann is None else self.ann.search
        if self.runs is not None:
            found = [find_moments(self.index, self.runs, query, k, self.per_video, search, self.merge)
                     for query in queries]
            if not all(np.isfinite(m.score) for moments in found for m in moments):  # the ANN index's scores
                raise nonfinite_index(self.index)
            return [[Hit(q, r + 1, m.key, m.score, start=m.start, end=m.end) for r, m in enumerate(moments)]
                    for q, moments in zip(texts, found)]
        scores, rows = search(queries, min(k, len(self.index)))
        if not np.isfinite(scores[rows >= 0]).all():  # the ANN index's scores (the exact scan checks its own)
            raise nonfinite_index(self.index)
        keys, index = self.index.keys, self.index
        return [[Hit(q, r + 1, keys[int(i)], float(s), index.row_meta(int(i)) if meta else None)
                 for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0]
                for q, srow, irow in zip(texts, scores.tolist(), rows.tolist())]

    def stream(self, queries: Iterable[str], k: int, batch: int = 64) -> Iterator[list[Hit]]:
        """Results per query, in input order, as soon as they are ready: the queries that have
        arrived (up to `batch`) are embedded and searched together, and none waits for more to
        come (the first line of a pipe is answered at once). A reader thread drains `queries`."""
        arrived: queue.Queue = queue.Queue()
        threading.Thread(target=_drain, args=(iter(queries), arrived), daemon=True).start()
        finished = False
        while not finished:
            items = [arrived.get()]
            while len(items) < batch:
                try:
                    items.append(arrived.get_nowait())
                except queue.Empty:
                    break
            texts = [value for kind, value in items if kind == "text"]
            if texts:
                yield from self.search(texts, k)
            for kind, value in items:
                if kind == "error":
                    raise value
                finished = finished or kind == "end"


def _drain(queries: Iterator[str], arrived: queue.Queue) -> None:
    try:
        for text in queries:
            arrived.put(("text", text))
    except BaseException as err:  # raised again in the consumer, after the queries before it
        arrived.put(("error", err))
    arrived.put(("end", None))


def short_text(text: str, limit: int = 200) -> str:
    """A query as messages and results echo it: its first `limit` characters, then how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_moment_options(index: Path, window: float | None, per_video: int | None,
                         merge: float | None) -> tuple[int, float]:
    """(per_video, merge) for a window index (defaults: 1, DEFAULT_MERGE); either option is an
    error on an index without windows."""
    given = [f"--{name} {value}" for name, value in (("per-video", per_video), ("merge", merge)) if value is not None]
    if window is None and given:
        raise EvilmError(f"{' '.join(given)}: index {index} has one row per video (built without --window); "
                         "moments need a window index")
    merge = DEFAULT_MERGE if merge is None else merge
    if per_video is not None and per_video < 1:
        raise EvilmError(f"--per-video {per_video}: keep at least 1 moment per video")
    if not 0.0 <= merge <= 1.0:
        raise EvilmError(f"--merge {merge}: must be in [0, 1] (0: single windows; 1: merge down to the video's "
                         "median window score)")
    return per_video or 1, merge


def check_query(text: str, where: str) -> str:
    if not text.strip():
        raise EvilmError(f"{where}: the query is empty; give words to search for")
    return text.strip()
