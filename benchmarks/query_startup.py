"""Start-up of a one-query process over an export: `evilm retrieve query --index INDEX --checkpoint
EXPORT -k 5 "..."`, wall time of the whole process, per runtime, interleaved (A, B, C, A, ...).
The first OpenVINO run compiles and fills the export's cache (reported apart); the rest read it.

    python benchmarks/query_startup.py --index /data/index --export /data/export --runs 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("evilm"))
QUERY = "a man in a red shirt throws a ball to a dog on the beach"
VARIANTS = {"onnxruntime fp32 (the default)": ["--runtime", "onnxruntime"],
            "openvino fp32": ["--runtime", "openvino", "--precision", "fp32"],
            "openvino bf16": ["--runtime", "openvino", "--precision", "bf16"],
            "onnxruntime int8 text (--text-int8)": ["--runtime", "onnxruntime", "--text-int8"]}


def once(index: Path, export: Path, extra: list[str]) -> tuple[float, str]:
    began = time.perf_counter()
    proc = subprocess.run([EXE, "retrieve", "query", "--index", str(index), "--checkpoint", str(export), "-k", "5",
                           *extra, QUERY], capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-1500:])
    return time.perf_counter() - began, proc.stdout.splitlines()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--export", type=Path, required=True, help="the ONNX export the index was built with")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    first = {name: round(once(args.index, args.export, extra)[0], 2) for name, extra in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    top = {}
    for _ in range(args.runs):
        for name, extra in VARIANTS.items():
            seconds, top[name] = once(args.index, args.export, extra)
            times[name].append(seconds)
    result = {"load_avg": os.getloadavg(), "runs": args.runs, "first_run_s": first,
              "median_s": {k: round(statistics.median(v), 2) for k, v in times.items()},
              "min_s": {k: round(min(v), 2) for k, v in times.items()}, "top_hit": top}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
