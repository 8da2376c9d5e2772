"""What `evilm serve` holds while it runs (docs/serving.md): each index with the text side of the
model that built it, its catalog and its query batcher, loaded once, in the background, so the
server answers `/healthz` and shows "index loading" at once and `/readyz` only when every index
is ready.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from evilm_core.errors import EvilmError
from evilm_core.retrieval.query import Hit, Searcher
from evilm_core.serve.batching import QueryBatcher
from evilm_core.serve.catalog import Catalog
from evilm_core.settings import RunSettings

if TYPE_CHECKING:
    from evilm_core.predict.answer import ClipAnswerer

log = logging.getLogger("evilm.serve")


@dataclass
class ServeConfig:
    indexes: dict[str, str]  # name -> index directory; the first is the default
    settings: RunSettings  # the run's resolved device, precision, threads and decoder
    host: str = "127.0.0.1"  # the address to bind (another than loopback needs a token or --insecure)
    port: int = 8000  # 0: any free port (printed)
    token: str | None = None  # bearer token every /api request must carry (None: none needed)
    max_k: int = 100  # results per query at most
    max_offset: int = 10_000  # how deep a page may start
    max_query_chars: int = 1_000  # a longer query is refused (413)
    max_queries: int = 64  # queries in one POST /api/search at most
    max_body_bytes: int = 64 * 1024  # a larger request body is refused (413) before it is read
    max_batch: int = 16  # queries embedded in one forward pass at most
    max_wait_ms: float = 2.0  # how long the first query of a batch waits for others
    batches_in_flight: int = 2  # batches computing at once (one computes while the next gathers)
    graceful_s: float = 10.0  # on SIGTERM, in-flight requests get this long to finish
    exact: bool = False  # scan every embedding even where an index has an ANN index
    qa: str | None = None  # a qa, mc or pre-trained checkpoint that answers questions about clips


@dataclass
class ServedIndex:
    name: str
    searcher: Searcher  # the index and its model's text side
    catalog: Catalog  # keys, captions, files, frames
    batcher: QueryBatcher | None = None  # started on the server's event loop

    def run_batch(self, payloads: list[tuple[list[str], int]]) -> list[list[list[Hit]]]:
        """One forward pass for the queries of every request in the batch, then each request's
        top-k (payload: (texts, k)); runs on the batcher's worker thread."""
        texts = [t for batch, _ in payloads for t in batch]
        hits = self.searcher.rank(self.searcher.embed(texts), texts, max(k for _, k in payloads), meta=False)
        out, at = [], 0
        for batch, k in payloads:
            out.append([h[:k] for h in hits[at:at + len(batch)]])
            at += len(batch)
        return out

    def similar(self, key: str, k: int) -> list[Hit] | None:
        """The clips nearest to the clip `key`, from its stored embedding (no decoding)."""
        row = self.catalog.row(key)
        if row is None:
            return None
        query = self.searcher.index.embedding(row)[None, :]  # [1, E]
        return self.searcher.rank(np.ascontiguousarray(query), [key], k, meta=False)[0]


@dataclass
class Service:
    config: ServeConfig
    indexes: dict[str, ServedIndex] = field(default_factory=dict)
    answerer: "ClipAnswerer | None" = None  # config.qa's model, loaded once
    error: str | None = None  # why loading failed (the server then answers 503 with it)
    started: threading.Event = field(default_factory=threading.Event)  # the batchers run: queries are served

    @property
    def ready(self) -> bool:
        return self.started.is_set() and self.error is None

    def load(self) -> None:
        """Open every index and its text side (the slow part: seconds from a checkpoint)."""
        try:
            for name, directory in self.config.indexes.items():
                searcher = Searcher(directory, exact=self.config.exact, settings=self.config.settings)
                self.indexes[name] = ServedIndex(name, searcher, Catalog(searcher.index, self.config.settings.decoder))
                log.info("serve: index %r (%s): %d clips, %s text side", name, directory, len(searcher.index),
                         searcher.text.kind)
            if self.config.qa:
                from evilm_core.predict.answer import ClipAnswerer  # torch: only a server that answers needs it

                self.answerer = ClipAnswerer(self.config.qa, self.config.settings)
                log.info("serve: answering questions with %s", self.answerer.info.describe())
        except EvilmError as err:
            self.error = str(err)
            log.error("serve: %s", err)

    def index(self, name: str | None) -> ServedIndex:
        """The index `name` (default: the first); an unknown name is an EvilmError naming the known ones."""
        name = name or next(iter(self.config.indexes))
        if name not in self.indexes:
            raise EvilmError(f"no index named {name!r}; this server has {', '.join(self.config.indexes)}")
        return self.indexes[name]
