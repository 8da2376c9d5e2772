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
import torch.nn as nn
from safetensors import safe_open

from evilm_core.engine import checkpoint as ckpt
from evilm_core.errors import EvilmError
from evilm_core.finetune.loading import checkpoint_model_config, resolve_checkpoint
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import FusionDecoder, text_embedding
from evilm_core.models.text_encoder import TextEncoder
from evilm_core.pretrain.data import TextTokens
from evilm_core.retrieval.index import IndexView

log = logging.getLogger("evilm.retrieve")
TEXT_PREFIXES = ("text.", "fusion.", "retrieval.text.")


class TextSide(nn.Module):
    """The part of EViLM a text query runs through; parameter names match EViLM's."""

    def __init__(self, cfg: EViLMConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg)
        self.fusion = FusionDecoder(cfg)
        self.retrieval = nn.ModuleDict({"text": nn.Linear(cfg.fusion_dim, cfg.embed_dim)})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """EViLM.embed_text's computation -> l2-normalised [B, E]."""
        return text_embedding(self, input_ids, attention_mask)


def load_text_side(checkpoint: str | Path) -> tuple[TextSide, Path]:
    directory = resolve_checkpoint(checkpoint)
    cfg = checkpoint_model_config(directory)
    model = TextSide(cfg)
    with safe_open(str(directory / ckpt.WEIGHTS), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(TEXT_PREFIXES)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise EvilmError(f"{directory}: text-side weights do not fit its config ({str(err)[:300]})") from None
    return model.eval(), directory


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
        pairs = [self.tokens(t) for t in texts]
        ids, mask = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        return self.model(ids, mask).float()

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
