"""Approximate nearest-neighbour search over an index's rows with FAISS (`--ann KIND`).

The exact scan (IndexView.search) reads every row per query: ~0.2 s at 1M x 128 on two cores,
linear in N. An ANN index answers in milliseconds at the price of recall (docs/benchmarks.md,
"Approximate search"). Rows are unit vectors, so inner product is cosine and every kind uses
METRIC_INNER_PRODUCT:

    faiss-ivf    IndexIVFFlat: k-means into `nlist` lists, a query scans the `nprobe` nearest
                 lists exactly. Full vectors (4E bytes per row + 8 for the id).
    faiss-ivfpq  IndexIVFPQ: the same lists, residuals product-quantised to `m` bytes per row
                 (default E/8): ~30x smaller, lower recall.
    faiss-hnsw   IndexHNSWFlat (M=32): a graph; no training, `efSearch` is the breadth of a
                 query (default 64). Slow to build, full vectors plus the graph.

Files beside embeddings.safetensors: `ann.faiss` (faiss.write_index) and `ann.json` (what was
built, with what parameters, over how many rows). ann.json is written last and removed first on
a rebuild, so it is the commit point: a kill mid-build leaves no ann.json and queries search
exactly. `count` must equal the exact index's row count; the caller checks it (rows added after
the ANN build are not in it).

Building never holds all rows twice: training uses a seeded random sample (max(nlist*64, 65536)
rows, at most N) and rows are added in chunks of 262,144 copied one at a time, so a 10M-row
memory map is read through, not loaded. The ANN index itself is held in RAM when built and when
opened (IVF-flat and HNSW: about the size of the embeddings; IVF-PQ: m + 8 bytes per row).

This module imports no torch: search takes and returns numpy arrays.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_path, atomic_write_text, read_text

log = logging.getLogger("evilm.retrieval")
KINDS = ("faiss-ivf", "faiss-ivfpq", "faiss-hnsw")
ANN_INDEX, ANN_META = "ann.faiss", "ann.json"
FORMAT = "evilm-ann/1"
ADD_CHUNK = 262_144  # rows copied and added at a time: 256 MiB at E=256
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64
PQ_BITS = 8
MIN_PER_CENTROID = 39  # FAISS warns below 39 training points per k-means centroid


def check_ann_kind(kind: str) -> None:
    """Fail early (before hours of embedding) on an unknown kind or a missing faiss."""
    if kind not in KINDS:
        raise EvilmError(f"--ann {kind!r} is not a kind of approximate index; use one of {', '.join(KINDS)}")
    _faiss(kind)


def _faiss(kind: str):
    try:
        import faiss
    except ImportError:
        raise EvilmError(f"--ann {kind} needs faiss: pip install 'evilm[faiss]' (or faiss-gpu)") from None
    return faiss


def set_threads(threads: int | None) -> None:
    """FAISS's OpenMP threads (process-wide). None leaves FAISS's default; pass torch's count
    (torch.get_num_threads()) so both libraries use the same share of the machine."""
    if threads is not None:
        _faiss("faiss-ivf").omp_set_num_threads(max(1, int(threads)))


def default_nlist(n: int) -> int:
    """~4 sqrt(N) inverted lists, at most N // 39 so k-means has 39 training points per list."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // MIN_PER_CENTROID))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query by default: 32 (never more than nlist). On the clustered benchmark
    (benchmarks/ann.py) recall@10 is 0.97 at 100k rows and ~1.0 at 1M with 32; nprobe 8 already
    gives 0.95 / 0.998 there, but real embeddings are less separable than gaussian clusters, so
    the default leaves margin at ~1-2 ms per query; lower it per query (search nprobe=)."""
    return max(1, min(32, nlist))


def default_m(dim: int) -> int:
    """PQ sub-quantizers: E/8 (one byte per 8 dimensions), else the largest divisor of E below it."""
    target = max(1, dim // 8)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def _new_index(faiss, kind: str, dim: int, nlist: int | None, m: int | None, seed: int, ef_search: int):
    """An empty FAISS index of `kind` (faiss's Python layer keeps the quantizer alive with it)."""
    if kind == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = ef_search  # also in the file: a reader using faiss directly gets the same
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "faiss-ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = seed
    index.cp.seed = seed
    index.cp.spherical = True  # unit-norm centroids: lists are cones around directions, as the rows are
    return index


def _check_build(rows: np.ndarray, kind: str, nlist: int | None, m: int | None) -> tuple[int, int]:
    if kind not in KINDS:
        raise EvilmError(f"--ann {kind!r} is not a kind of approximate index; use one of {', '.join(KINDS)}")
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise EvilmError(f"an ANN index needs a non-empty [N, E] matrix of rows, got shape {tuple(rows.shape)}")
    n, dim = rows.shape
    if kind != "faiss-hnsw" and nlist is not None and not 1 <= nlist <= n:
        raise EvilmError(f"--nlist {nlist}: must be 1 to the number of rows ({n})")
    if kind == "faiss-ivfpq":
        if m is not None and (m < 1 or dim % m):
            raise EvilmError(f"faiss-ivfpq: m={m} sub-quantizers must divide the embedding size {dim}")
        if n < MIN_PER_CENTROID * 2 ** PQ_BITS:
            raise EvilmError(f"faiss-ivfpq needs at least {MIN_PER_CENTROID * 2 ** PQ_BITS} rows to train its "
                             f"{2 ** PQ_BITS}-code quantizers ({n} here); use faiss-ivf or faiss-hnsw, or exact search")
    return n, dim


def _train_sample(rows: np.ndarray, nlist: int, size: int | None, seed: int) -> np.ndarray:
    """A seeded random subset of rows, sorted (sequential reads of a memory map), as one copy."""
    n = rows.shape[0]
    size = min(n, max(nlist * MIN_PER_CENTROID, size if size is not None else max(nlist * 64, 65_536)))
    if size >= n:
        return np.ascontiguousarray(rows, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return np.ascontiguousarray(rows[pick], dtype=np.float32)


def build_ann(rows: np.ndarray, kind: str, path: Path, nlist: int | None = None, nprobe: int | None = None,
              seed: int = 0, train_size: int | None = None, m: int | None = None, ef_search: int | None = None,
              threads: int | None = None) -> dict:
    """Build an ANN index of `kind` over `rows` [N, E] float32 (unit-norm; a read-only memmap is
    fine) and write `path`/ann.faiss and `path`/ann.json. Returns the ann.json record.

    nlist / nprobe / train_size / m apply to the IVF kinds, ef_search to faiss-hnsw; None picks
    the defaults above. `threads` sets FAISS's OpenMP threads (None: FAISS's default)."""
    n, dim = _check_build(rows, kind, nlist, m)
    faiss = _faiss(kind)
    set_threads(threads)
    path, t0 = Path(path), time.perf_counter()
    ivf = kind != "faiss-hnsw"
    nlist = (nlist or default_nlist(n)) if ivf else None
    m = (m or default_m(dim)) if kind == "faiss-ivfpq" else None
    nprobe = (nprobe or default_nprobe(nlist)) if ivf else None
    if ivf and not 1 <= nprobe <= nlist:
        raise EvilmError(f"--nprobe {nprobe}: must be 1 to nlist ({nlist})")
    ef_search = None if ivf else (ef_search or HNSW_EF_SEARCH)
    (path / ANN_META).unlink(missing_ok=True)  # from here until the new ann.json: no ANN index
    index = _new_index(faiss, kind, dim, nlist, m, seed, ef_search)
    if ivf:
        sample = _train_sample(rows, nlist, train_size, seed)
        log.info("ann %s: training %d lists on %d of %d rows", kind, nlist, sample.shape[0], n)
        index.train(sample)
        del sample
    for start in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(rows[start:start + ADD_CHUNK], dtype=np.float32))
        log.info("ann %s: added %d of %d rows", kind, min(n, start + ADD_CHUNK), n)
    with atomic_path(path / ANN_INDEX) as tmp:
        faiss.write_index(index, str(tmp))
    record = {"format": FORMAT, "kind": kind, "count": n, "dim": dim, "metric": "inner_product",
              "nlist": nlist, "nprobe": nprobe,
              "m": m, "nbits": PQ_BITS if m else None, "M": None if ivf else HNSW_M,
              "efConstruction": None if ivf else HNSW_EF_CONSTRUCTION,
              "efSearch": ef_search, "seed": seed,
              "build_seconds": round(time.perf_counter() - t0, 3),
              "bytes_per_vector": round((path / ANN_INDEX).stat().st_size / n, 2),
              "faiss_version": faiss.__version__}
    atomic_write_text(path / ANN_META, json.dumps(record, indent=2) + "\n")  # the commit point
    log.info("ann %s: %d rows in %.1f s, %.1f bytes per row", kind, n, record["build_seconds"],
             record["bytes_per_vector"])
    return record


def _read_record(directory: Path) -> dict:
    path = directory / ANN_META
    try:
        record = json.loads(read_text(path, "ANN description"))
        if not isinstance(record, dict) or not isinstance(record.get("count"), int):
            raise ValueError("not an object with a count")
    except ValueError as err:
        raise EvilmError(f"{path} is damaged ({err}); rebuild it with `evilm retrieve index ... --ann KIND`") from None
    if record.get("kind") not in KINDS:
        raise EvilmError(f"{path}: unknown ANN kind {record.get('kind')!r} (this version knows {', '.join(KINDS)}); "
                         "rebuild it with `evilm retrieve index ... --ann KIND`")
    return record


@dataclass
class AnnIndex:
    """An opened ANN index: `kind`, `count` (rows covered), `dim`, the ann.json record, the FAISS index."""

    directory: Path
    record: dict
    index: object

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def count(self) -> int:
        return self.record["count"]

    @property
    def dim(self) -> int:
        return self.record["dim"]

    @classmethod
    def open(cls, directory: str | Path, threads: int | None = None) -> "AnnIndex | None":
        """The ANN index of an index directory; None when none was built (no ann.json)."""
        directory = Path(directory)
        if not (directory / ANN_META).is_file():
            return None
        record = _read_record(directory)
        kind = record["kind"]
        faiss = _faiss(kind)
        set_threads(threads)
        path = directory / ANN_INDEX
        rebuild = f"rebuild it with `evilm retrieve index ... --ann {kind}`"
        try:
            # memory-mapped, read-only: the lists stay in the page cache, so a 10 GB IVF index opens in
            # milliseconds instead of ~10 s of reading (docs/benchmarks.md, "Exact vs approximate search")
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except (RuntimeError, OSError) as err:
            detail = next((ln for ln in str(err).splitlines() if ln.strip()), "unreadable")[:200]
            raise EvilmError(f"{path} is missing, damaged or truncated ({detail}); {rebuild}") from None
        if index.ntotal != record["count"] or index.d != record["dim"]:
            raise EvilmError(f"{path} holds {index.ntotal} rows of {index.d} dims but {ANN_META} says "
                             f"{record['count']} of {record['dim']}: the files do not belong together; {rebuild}")
        return cls(directory, record, index)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product for unit-norm queries [Q, E] -> (scores [Q, k] float32,
        rows [Q, k] int64). Where fewer than k rows were found (few lists probed, tiny lists)
        the tail is rows -1 with score -inf: callers drop rows < 0.

        nprobe (IVF kinds) and ef_search (faiss-hnsw) override ann.json's for this call; they
        are passed as per-call parameters, so concurrent searches do not race on the index."""
        faiss = _faiss(self.kind)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise EvilmError(f"ANN search: queries of shape {tuple(queries.shape)}, expected [Q, {self.dim}]")
        k = max(1, min(int(k), self.count))
        if self.kind == "faiss-hnsw":
            if nprobe is not None:
                raise EvilmError("faiss-hnsw has no nprobe; its search breadth is efSearch (ef_search)")
            params = faiss.SearchParametersHNSW(efSearch=int(ef_search or self.record["efSearch"]))
        else:
            if ef_search is not None:
                raise EvilmError(f"{self.kind} has no efSearch; its search breadth is nprobe")
            probe = int(nprobe or self.record["nprobe"])
            if not 1 <= probe <= self.record["nlist"]:
                raise EvilmError(f"nprobe {probe}: must be 1 to the index's {self.record['nlist']} lists")
            params = faiss.SearchParametersIVF(nprobe=probe)
        scores, rows = self.index.search(queries, k, params=params)
        rows = rows.astype(np.int64, copy=False)
        scores[rows < 0] = -np.inf
        return scores, rows


def refresh_ann(directory: str | Path, kind: str | None = None, threads: int | None = None, **options) -> dict:
    """After consolidation: build the ANN index of `kind` (None: the kind already there) unless
    one of that kind already covers every row. Returns {kind, count, built, build_seconds}."""
    from evilm_core.retrieval.index import IndexView

    directory = Path(directory)
    view = IndexView(directory)
    old = _read_record(directory) if (directory / ANN_META).is_file() else None
    kind = kind or (old or {}).get("kind")
    if kind is None:
        raise EvilmError(f"{directory}: no ANN index to refresh; pass --ann KIND ({', '.join(KINDS)})")
    if old and old["kind"] == kind and old["count"] == len(view) and (directory / ANN_INDEX).is_file():
        return {"kind": kind, "count": old["count"], "built": False, "build_seconds": 0.0}
    if len(view.blocks) != 1:
        raise EvilmError(f"{directory}: the index has parts not folded in yet; the ANN index is built once "
                         "`evilm retrieve index` has consolidated every shard")
    if old and old["kind"] == kind:  # keep the parameters a user chose for this kind
        options = {key: old.get(name) for key, name in (("nprobe", "nprobe"), ("m", "m"), ("ef_search", "efSearch"))
                   if old.get(name) is not None} | options
    record = build_ann(view.blocks[0], kind, directory, threads=threads, **options)
    return {"kind": kind, "count": record["count"], "built": True, "build_seconds": record["build_seconds"]}
