"""Exact scan vs FAISS ANN indexes (evilm_core/retrieval/ann.py) at 1M and 10M rows of 256 dims.

    python benchmarks/ann.py --quick                      # 100k rows, a smoke run (~1 min)
    python benchmarks/ann.py --sizes 1000000 --out ann_1m.json
    nohup python benchmarks/ann.py --sizes 10000000 --out ann_10m.json > ann_10m.log 2>&1 &
    python benchmarks/ann.py --sizes 10000000 --nlist 4096 --kinds faiss-ivf,faiss-ivfpq  # ~10 GB RAM

Data. Random unit vectors are the worst case for IVF (no cluster structure: every list is as
near as any other) and unlike real embeddings, so the rows are clustered: 4,096 gaussian centres
drawn uniformly on the sphere, cluster sizes lognormal (sigma 1: real collections are uneven),
each point = centre + N(0, noise^2 I) with noise 0.05 per dimension (noise norm ~0.8, cosine to
its centre ~0.78), renormalised. Queries: 1,000 held-out points of the same distribution (a
separate random stream). Rows are written to a float32 memory map under --workdir in chunks of
262,144 (10M x 256 = 10 GB: never two copies in RAM) and reused by later runs.

Exact search: a chunked numpy scan of the memory map (matmul + argpartition per 262,144 rows,
then merge), the same algorithm as the product's IndexView.search (which does it in torch);
replicated here so no index directory, checkpoint or torch is needed. It is also the ground
truth of recall@10.

Measured per method: build time (FAISS with --build-threads), bytes per vector (ann.faiss size /
N), median latency of one query at a time and the per-query time in batches of 64, both on one
thread (faiss.omp_set_num_threads(1), OPENBLAS_NUM_THREADS=1), recall@10 against exact over the
1,000 queries, for ivf / ivfpq nprobe 8, 16, 32, 64 and hnsw efSearch 64, 128. faiss-hnsw is
skipped above --hnsw-max rows (default 2M): building it at 10M on two cores takes hours and
~13 GB of RAM beside the memory map; the script says so when it skips.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: latencies are one-thread numbers

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evilm_core.retrieval import ann  # noqa: E402

CHUNK, K, BATCH = 262_144, 10, 64
SWEEPS = {"faiss-ivf": ("nprobe", (8, 16, 32, 64)), "faiss-ivfpq": ("nprobe", (8, 16, 32, 64)),
          "faiss-hnsw": ("efSearch", (64, 128))}


def make_data(workdir: Path, n: int, dim: int, centres: int, noise: float, queries: int,
              seed: int = 0) -> tuple[np.memmap, np.ndarray]:
    """Clustered unit rows as a memmap under workdir (reused when complete) and held-out queries."""
    stem = workdir / f"clustered_n{n}_d{dim}_c{centres}_s{noise}_seed{seed}"
    rows_path, done = stem.with_suffix(".f32"), stem.with_suffix(".done")
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim)).astype(np.float32)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    weight = rng.lognormal(0.0, 1.0, centres)
    weight /= weight.sum()

    def draw(r: np.random.Generator, count: int) -> np.ndarray:
        x = centre[r.choice(centres, size=count, p=weight)]
        x += noise * r.standard_normal((count, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    q = draw(np.random.default_rng(seed + 1), queries)
    if not done.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        out = np.memmap(rows_path, dtype=np.float32, mode="w+", shape=(n, dim))
        r = np.random.default_rng(seed + 2)
        for start in range(0, n, CHUNK):
            out[start:start + CHUNK] = draw(r, min(CHUNK, n - start))
        out.flush()
        del out
        done.write_text("ok\n")
        print(f"wrote {n:,} x {dim} rows to {rows_path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return np.memmap(rows_path, dtype=np.float32, mode="r", shape=(n, dim)), q


def exact_search(rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by dot product, scanning the rows in chunks (IndexView.search's algorithm, numpy)."""
    best_s = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((q.shape[0], 0), dtype=np.int64)
    for start in range(0, rows.shape[0], CHUNK):
        s = q @ rows[start:start + CHUNK].T
        top = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        best_i = np.concatenate([best_i, top + start], 1)
        keep = np.argpartition(-best_s, min(k, best_s.shape[1]) - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def timed(search, q: np.ndarray, singles: int) -> dict:
    """Median ms of one query at a time (over `singles` queries, after one warm-up) and ms per
    query over all queries in batches of BATCH; returns the batched results too."""
    search(q[:1])
    lat = []
    for i in range(singles):
        t0 = time.perf_counter()
        search(q[i:i + 1])
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rows = np.concatenate([search(q[i:i + BATCH])[1] for i in range(0, q.shape[0], BATCH)])
    batch_ms = (time.perf_counter() - t0) * 1e3 / q.shape[0]
    return {"single_ms": round(statistics.median(lat) * 1e3, 3), "batch64_ms_per_query": round(batch_ms, 3),
            "rows": rows}


def recall_at_k(rows: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(r) & set(t)) for r, t in zip(rows.tolist(), truth.tolist()))
    return round(hits / truth.size, 4)


def bench_kind(kind: str, rows: np.ndarray, q: np.ndarray, truth: np.ndarray, workdir: Path,
               build_threads: int, nlist: int | None = None, train_size: int | None = None) -> list[dict]:
    directory = workdir / f"ann_{kind}_{rows.shape[0]}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    ivf = {"nlist": nlist, "train_size": train_size} if kind != "faiss-hnsw" else {}
    record = ann.build_ann(rows, kind, directory, threads=build_threads, **ivf)
    ann.set_threads(1)
    t0 = time.perf_counter()
    index = ann.AnnIndex.open(directory)
    open_s = time.perf_counter() - t0
    knob, values = SWEEPS[kind]
    out = []
    for value in values:
        kw = {"ef_search": value} if knob == "efSearch" else {"nprobe": min(value, record["nlist"])}
        t = timed(lambda x: index.search(x, K, **kw), q, singles=min(200, q.shape[0]))
        out.append({"method": kind, "param": f"{knob} {value}", "build_s": record["build_seconds"],
                    "build_threads": build_threads, "open_s": round(open_s, 2),
                    "bytes_per_vector": record["bytes_per_vector"], "nlist": record["nlist"], "m": record["m"],
                    "recall_at_10": recall_at_k(t.pop("rows"), truth), **t})
        print(_row(rows.shape[0], out[-1]), flush=True)
    shutil.rmtree(directory)
    return out


def bench_size(n: int, args) -> list[dict]:
    rows, q = make_data(args.workdir, n, args.dim, args.centres, args.noise, args.queries)
    t0 = time.perf_counter()
    truth = np.concatenate([exact_search(rows, q[i:i + BATCH], K)[1] for i in range(0, q.shape[0], BATCH)])
    print(f"N={n:,}: exact top-{K} of {q.shape[0]} queries in {time.perf_counter() - t0:.1f} s", flush=True)
    t = timed(lambda x: exact_search(rows, x, K), q[:BATCH * 2], singles=20 if n <= 2_000_000 else 5)
    t.pop("rows")
    results = [{"method": "exact (numpy chunked scan)", "param": "-", "build_s": 0.0, "bytes_per_vector": 4 * args.dim,
                "recall_at_10": 1.0, **t}]
    print(_row(n, results[-1]), flush=True)
    for kind in args.kinds:
        if kind == "faiss-hnsw" and n > args.hnsw_max:
            print(f"N={n:,}: faiss-hnsw skipped: above --hnsw-max {args.hnsw_max:,}. Its build is serial-ish "
                  f"graph insertion (~N log N): at 1M it takes minutes on two cores, so hours at {n:,}, and it "
                  f"holds ~{n * (4 * args.dim + 2 * ann.HNSW_M * 4) / 2 ** 30:.0f} GiB in RAM besides the rows",
                  flush=True)
            continue
        results += bench_kind(kind, rows, q, truth, args.workdir, args.build_threads, args.nlist, args.train_size)
    for r in results:
        r["n"] = n
    if not args.keep:
        for path in args.workdir.glob(f"clustered_n{n}_*"):
            path.unlink()
    return results


def _row(n: int, r: dict) -> str:
    return (f"| {n:,} | {r['method']} | {r['param']} | {r['build_s']:.1f} | {r['bytes_per_vector']:.0f} | "
            f"{r['recall_at_10']:.3f} | {r['single_ms']:.2f} | {r['batch64_ms_per_query']:.3f} |")


HEADER = ("| N | method | search knob | build s | bytes/vector | recall@10 | one query, median ms | "
          "ms per query, batches of 64 |\n|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated row counts")
    parser.add_argument("--quick", action="store_true", help="100,000 rows only (a smoke run)")
    parser.add_argument("--dim", type=int, default=256, help="embedding size (the paper model's: 256)")
    parser.add_argument("--centres", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.05, help="gaussian noise per dimension around a centre")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default=",".join(ann.KINDS))
    parser.add_argument("--build-threads", type=int, default=2, help="FAISS threads while building")
    parser.add_argument("--nlist", type=int, help="IVF lists (default: the product's, ~4 sqrt(N))")
    parser.add_argument("--train-size", type=int, help="IVF k-means sample (default: the product's)")
    parser.add_argument("--hnsw-max", type=int, default=2_000_000, help="skip faiss-hnsw above this many rows")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/evilm_ann_bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated rows for the next run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    for kind in args.kinds:
        ann.check_ann_kind(kind)
    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    import faiss

    results, t0 = [], time.perf_counter()
    print(HEADER, flush=True)
    for n in sizes:
        results += bench_size(n, args)
    print(f"\n{HEADER}\n" + "\n".join(_row(r["n"], r) for r in results))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.out:
        meta = {"dim": args.dim, "centres": args.centres, "noise": args.noise, "cluster_sizes": "lognormal sigma 1",
                "queries": args.queries, "k": K, "batch": BATCH, "query_threads": 1,
                "build_threads": args.build_threads, "faiss": faiss.__version__, "numpy": np.__version__,
                "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                "load_average_at_end": os.getloadavg(), "total_s": round(time.perf_counter() - t0, 1)}
        args.out.write_text(json.dumps({"setup": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
