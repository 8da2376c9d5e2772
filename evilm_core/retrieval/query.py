"""`evilm retrieve query`: text queries against an index, loading only the text side.

A query needs the text encoder, the fusion decoder (the text-only pass [CLS, e^L + t^L]) and
the text retrieval projection; the video encoder and every head stay on disk (safetensors reads
tensors by name). The checkpoint is the one the index records unless another is given, and its
weights must hash to the index's `model_hash`: embeddings of two models are not comparable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from evilm_core import checkpoint as ckpt
from evilm_core.data.text import TextTokens
from evilm_core.errors import EvilmError
from evilm_core.models.loading import load_text_side, resolve_checkpoint
from evilm_core.retrieval.index import IndexView

log = logging.getLogger("evilm.retrieve")


@dataclass
class Hit:
    query: str  # the query text as given
    rank: int  # 1 = best
    key: str  # the clip's key in the index
    score: float  # cosine similarity of the embeddings


class Searcher:
    """An index plus the text side of the model that built it."""

    def __init__(self, index: str | Path, checkpoint: str | Path | None = None):
        self.index = IndexView(index)
        meta = self.index.meta
        source = checkpoint if checkpoint is not None else meta.checkpoint
        try:
            directory = resolve_checkpoint(source)
        except EvilmError as err:
            hint = "" if checkpoint is not None else " (the checkpoint the index records; pass --checkpoint if it moved)"
            raise EvilmError(f"{err}{hint}") from None
        digest = ckpt.file_sha256(directory / ckpt.WEIGHTS)
        if digest != meta.model_hash:
            raise EvilmError(f"index {self.index.directory} was built by another model: its embeddings come from "
                             f"weights with sha256 {meta.model_hash[:12]} ({meta.checkpoint}), but {directory} has "
                             f"{digest[:12]}; query with the checkpoint that built the index, or rebuild the index")
        self.model, self.directory = load_text_side(directory)
        if self.model.cfg.embed_dim != meta.embed_dim:
            raise EvilmError(f"index {self.index.directory} has {meta.embed_dim}-d embeddings but the model gives "
                             f"{self.model.cfg.embed_dim}-d")
        self.tokens = TextTokens(directory, self.model.cfg.max_text_len)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokens.batch(texts)
        return self.model.embed_text(ids, mask).float()

    def search(self, texts: list[str], k: int) -> list[list[Hit]]:
        scores, rows = self.index.search(self.embed(texts), k)
        return [[Hit(q, r + 1, self.index.keys[int(i)], float(s)) for r, (s, i) in enumerate(zip(srow, irow))]
                for q, srow, irow in zip(texts, scores.tolist(), rows.tolist())]

    def stream(self, queries: Iterable[str], k: int) -> Iterator[list[Hit]]:
        """One query at a time, so results of each line of a pipe appear as it arrives."""
        for text in queries:
            yield self.search([text], k)[0]


def check_query(text: str, where: str) -> str:
    if not text.strip():
        raise EvilmError(f"{where}: the query is empty; give words to search for")
    return text.strip()
