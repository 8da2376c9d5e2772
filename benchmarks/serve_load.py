"""`evilm serve` under load, on loopback only (docs/benchmarks.md, "Serving"):

    python benchmarks/serve_load.py --index onnx=INDEX_FROM_EXPORT --index checkpoint=INDEX \
        --queries data/synth/test.jsonl --clients 32 --seconds 60 --out docs/serve_load.json

For every index and the batching settings of `--variants` (default: `16x2`, dynamic batching with
two batches in flight, the server's default; `1x1`, one query per forward pass, one at a time;
MAXxIN = `--max-batch MAX --batches-in-flight IN`), a fresh server answers `wrk` (Debian's wrk: `apt-get install
wrk`) with `--clients` connections for `--seconds`, cycling through the manifest's captions as
GET /api/search?q=...&k=10. Variants run interleaved (A, B, A, B, ... over `--rounds`).
Reported per variant: queries/s, p50 and p99 latency, errors (non-2xx and socket errors), the
server's RSS at start and end, and the batch sizes the server saw (its /metrics). The server
runs with `--threads` intra-op threads; wrk shares the same machine (one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_plus

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evilm_core.data.records.manifest import read_manifest  # noqa: E402


def start_server(index: str, variant: str, threads: int) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).with_name("evilm")
    max_batch, in_flight = variant.split("x")
    proc = subprocess.Popen([str(exe), "serve", "--index", index, "--port", "0", "--threads", str(threads),
                             "--max-batch", max_batch, "--batches-in-flight", in_flight], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = None
    while url is None:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"evilm serve exited {proc.wait()}")
        m = re.search(r"evilm serve: (http://\S+/)", line)
        url = m.group(1) if m else None
    while httpx.get(url + "readyz").status_code != 200:
        time.sleep(0.2)
    return proc, url


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def lua_script(queries: list[str], path: Path) -> Path:
    items = ",\n".join(json.dumps("/api/search?k=10&q=" + quote_plus(q)) for q in queries)
    path.write_text(f"local paths = {{\n{items}\n}}\nlocal i = 0\n"
                    "request = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n")
    return path


def run_wrk(url: str, script: Path, clients: int, seconds: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"qps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": ms("50%"),
            "p99_ms": ms("99%"), "errors": (int(errors.group(1)) if errors else 0)
            + (sum(map(int, sockets.groups())) if sockets else 0)}


def batch_sizes(url: str) -> float:
    """Mean queries per forward pass, from the server's Prometheus metrics."""
    text = httpx.get(url + "metrics").text
    total = float(re.search(r"^evilm_batch_queries_sum ([\d.e+]+)", text, re.M).group(1))
    count = float(re.search(r"^evilm_batch_queries_count ([\d.e+]+)", text, re.M).group(1))
    return total / count if count else 0.0


def measure(index: str, variant: str, script: Path, args) -> dict:
    proc, url = start_server(index, variant, args.threads)
    try:
        run_wrk(url, script, args.clients, 3)  # warm-up: first batches, page cache
        start_rss = rss_mib(proc.pid)
        result = run_wrk(url, script, args.clients, args.seconds)
        return {**result, "rss_start_mib": round(start_rss, 1), "rss_end_mib": round(rss_mib(proc.pid), 1),
                "mean_batch": round(batch_sizes(url), 2)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", action="append", required=True, help="LABEL=INDEX_DIR (repeatable)")
    ap.add_argument("--queries", type=Path, required=True, help="a manifest whose captions are the queries")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="the server's --threads")
    ap.add_argument("--variants", default="16x2,1x1", help="MAX_BATCHxIN_FLIGHT, comma-separated")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    queries = list(dict.fromkeys(r.caption for r in read_manifest(args.queries) if r.caption))
    script = lua_script(queries, Path(tempfile.mkdtemp()) / "queries.lua")
    variants = [(label, index, v) for label, _, index in (s.partition("=") for s in args.index)
                for v in args.variants.split(",")]
    rows: dict[str, list[dict]] = {f"{label}, {v}": [] for label, _, v in variants}
    for _ in range(args.rounds):
        for label, index, v in variants:
            row = measure(index, v, script, args)
            rows[f"{label}, {v}"].append(row)
            print(f"{label}, {v}: {row}", flush=True)
    summary = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
    report = {"clients": args.clients, "seconds": args.seconds, "rounds": args.rounds, "server_threads": args.threads,
              "cpus": os.cpu_count(), "load_before": os.getloadavg(), "queries": len(queries), "runs": rows,
              "median": summary}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
