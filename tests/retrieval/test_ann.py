"""The FAISS ANN index (retrieval/ann.py): each kind's recall@10 against an exact numpy scan on
clustered unit vectors (20k rows, 64 dims, 256 gaussian centres, noise 0.12 per dimension), the
round trip through ann.faiss / ann.json, memory-mapped input, and the messages of an unknown
kind, a damaged file and a missing faiss."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from evilm_core.errors import EvilmError  # noqa: E402
from evilm_core.retrieval import ann  # noqa: E402

N, DIM, CENTRES, NOISE, QUERIES, K = 20_000, 64, 256, 0.12, 200, 10
IVF_NPROBE = 8  # of 512 lists (the default nlist at 20k rows: 20000 // 39)
PQ_M = 16  # 16 bytes per row; the default E/8 = 8 bytes reaches only ~0.45 on this set


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, CENTRES, n)] + NOISE * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[np.memmap, np.ndarray, np.ndarray]:
    """Rows as a read-only memmap (as IndexView gives them), held-out queries, exact top-10."""
    both = clustered(N + QUERIES)
    path = tmp_path_factory.mktemp("rows") / "rows.f32"
    both[:N].tofile(path)
    rows = np.memmap(path, dtype=np.float32, mode="r", shape=(N, DIM))
    queries = both[N:]
    exact = np.argsort(-(queries @ both[:N].T), axis=1)[:, :K]
    return rows, queries, exact


@pytest.fixture(scope="module")
def built(data, tmp_path_factory) -> dict[str, Path]:
    rows = data[0]
    out = {}
    for kind in ann.KINDS:
        out[kind] = tmp_path_factory.mktemp(kind)
        ann.build_ann(rows, kind, out[kind], m=PQ_M if kind == "faiss-ivfpq" else None, threads=1)
    return out


def recall(rows: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(r) & set(e)) / K for r, e in zip(rows.tolist(), exact.tolist())]))


@pytest.mark.parametrize("kind, nprobe, floor", [("faiss-ivf", IVF_NPROBE, 0.9), ("faiss-hnsw", None, 0.9),
                                                 ("faiss-ivfpq", IVF_NPROBE, 0.5)])
def test_recall_at_10(data, built, kind, nprobe, floor):
    _, queries, exact = data
    index = ann.AnnIndex.open(built[kind], threads=1)
    scores, rows = index.search(queries, K, nprobe=nprobe)
    assert scores.shape == rows.shape == (QUERIES, K) and scores.dtype == np.float32 and rows.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    got = recall(rows, exact)
    print(f"{kind} recall@10 = {got:.3f}")
    assert got >= floor


def test_files_and_record(data, built):
    rows = data[0]
    for kind, directory in built.items():
        record = json.loads((directory / ann.ANN_META).read_text())
        assert record["kind"] == kind and record["count"] == N and record["dim"] == DIM
        assert record["bytes_per_vector"] == pytest.approx((directory / ann.ANN_INDEX).stat().st_size / N, abs=0.01)
        index = ann.AnnIndex.open(directory)
        assert (index.kind, index.count, index.dim) == (kind, N, DIM)
        if kind == "faiss-hnsw":
            assert record["efSearch"] == 64 and record["nlist"] is None
        else:
            assert record["nlist"] == N // 39 and 1 <= record["nprobe"] <= record["nlist"]
        assert record["m"] == (PQ_M if kind == "faiss-ivfpq" else None)
        # a row searched for itself comes back first (exact kinds of storage; PQ approximately)
        _, hits = index.search(np.asarray(rows[:20]), 5)
        assert np.mean(hits[:, 0] == np.arange(20)) >= (0.8 if kind == "faiss-ivfpq" else 1.0)
    assert not list(built["faiss-ivf"].glob(".*tmp"))  # the temp file was renamed in


def test_fewer_than_k_are_marked(data, built):
    index = ann.AnnIndex.open(built["faiss-ivf"])
    scores, rows = index.search(data[1][:3], 200, nprobe=1)  # one list of ~40 rows cannot give 200
    assert (rows < 0).any() and np.all(np.isneginf(scores[rows < 0])) and np.all(np.isfinite(scores[rows >= 0]))


def test_open_without_ann(tmp_path):
    assert ann.AnnIndex.open(tmp_path) is None


def test_wrong_knob_and_query_shape(built, data):
    hnsw, ivf = ann.AnnIndex.open(built["faiss-hnsw"]), ann.AnnIndex.open(built["faiss-ivf"])
    with pytest.raises(EvilmError, match="efSearch"):
        hnsw.search(data[1], K, nprobe=8)
    with pytest.raises(EvilmError, match="nprobe 9999"):
        ivf.search(data[1], K, nprobe=9999)
    with pytest.raises(EvilmError, match=r"expected \[Q, 64\]"):
        ivf.search(data[1][:, :32], K)
    assert hnsw.search(data[1][:5], K, ef_search=128)[1].shape == (5, K)


def test_unknown_kind(tmp_path):
    with pytest.raises(EvilmError, match="faiss-ivf, faiss-ivfpq, faiss-hnsw"):
        ann.build_ann(clustered(100), "faiss-lsh", tmp_path)
    with pytest.raises(EvilmError, match="faiss-lsh"):
        ann.check_ann_kind("faiss-lsh")


def test_damaged_file(built, tmp_path):
    for name in (ann.ANN_INDEX, ann.ANN_META):
        (tmp_path / name).write_bytes((built["faiss-ivf"] / name).read_bytes())
    data = (tmp_path / ann.ANN_INDEX).read_bytes()
    (tmp_path / ann.ANN_INDEX).write_bytes(data[:len(data) // 2])
    with pytest.raises(EvilmError, match=r"ann\.faiss .*damaged.*evilm retrieve index \.\.\. --ann faiss-ivf"):
        ann.AnnIndex.open(tmp_path)
    (tmp_path / ann.ANN_INDEX).unlink()
    with pytest.raises(EvilmError, match="missing"):
        ann.AnnIndex.open(tmp_path)
    (tmp_path / ann.ANN_META).write_text("{not json")
    with pytest.raises(EvilmError, match=r"ann\.json is damaged"):
        ann.AnnIndex.open(tmp_path)


def test_faiss_missing(monkeypatch, built, tmp_path):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    message = r"--ann faiss-hnsw needs faiss: pip install 'evilm\[faiss\]' \(or faiss-gpu\)"
    with pytest.raises(EvilmError, match=message):
        ann.check_ann_kind("faiss-hnsw")
    with pytest.raises(EvilmError, match=message):
        ann.build_ann(clustered(100), "faiss-hnsw", tmp_path)
    with pytest.raises(EvilmError, match=r"--ann faiss-ivf needs faiss"):
        ann.AnnIndex.open(built["faiss-ivf"])


def test_ivfpq_needs_rows_and_divisor(tmp_path):
    with pytest.raises(EvilmError, match="at least 9984 rows"):
        ann.build_ann(clustered(1000), "faiss-ivfpq", tmp_path)
    with pytest.raises(EvilmError, match="must divide"):
        ann.build_ann(clustered(10_000), "faiss-ivfpq", tmp_path, m=7)
    assert ann.default_m(256) == 32 and ann.default_m(100) == 10 and ann.default_m(7) == 1
    assert ann.default_nlist(1_000_000) == 4000 and ann.default_nlist(20_000) == 512 and ann.default_nlist(10) == 1


def test_refresh_ann_builds_once_and_after_rows_are_added(tmp_path):
    """The index build's hook: build over the consolidated rows, skip when the ANN index already
    covers them, rebuild (keeping the chosen nprobe) when videos were added."""
    torch = pytest.importorskip("torch")
    from evilm_core.retrieval import index as ix

    meta = ix.IndexMeta(ix.FORMAT, "0" * 64, "ckpt", DIM, 4, 64, str(tmp_path))
    ix.write_meta(tmp_path, meta)
    rows = torch.from_numpy(clustered(1200))
    ix.write_part(tmp_path, "p0", [f"v{i}.mp4" for i in range(1000)], rows[:1000])
    assert ix.consolidate(tmp_path, meta)
    first = ann.refresh_ann(tmp_path, "faiss-ivf", threads=1, nprobe=3)
    assert first["built"] and first["count"] == 1000
    assert not ann.refresh_ann(tmp_path)["built"]  # kind None: the one already there, up to date
    ix.write_part(tmp_path, "p1", [f"v{i}.mp4" for i in range(1000, 1200)], rows[1000:])
    assert ix.consolidate(tmp_path, ix.read_meta(tmp_path))
    again = ann.refresh_ann(tmp_path)
    index = ann.AnnIndex.open(tmp_path)
    assert again["built"] and index.count == 1200 and index.record["nprobe"] == 3
    _, hits = index.search(rows[1100:1110].numpy(), 1)
    assert (hits[:, 0] == np.arange(1100, 1110)).all()
    with pytest.raises(EvilmError, match="no ANN index to refresh"):
        ann.refresh_ann(_copy_without_ann(tmp_path))


def _copy_without_ann(directory: Path) -> Path:
    for name in (ann.ANN_META, ann.ANN_INDEX):
        (directory / name).unlink()
    return directory
