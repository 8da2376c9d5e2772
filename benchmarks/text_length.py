"""The text tower of an export: fixed length (padded to max_text_len, exports before the
dynamic-length change) vs dynamic length (cut to the batch's longest real length), per call of
ExportedTowers.embed_text on tokenized captions, one thread, interleaved (A, B, A, B; medians).

Each checkpoint's text tower is exported twice into --work (the fixed one as `evilm export`
wrote it before: only the batch dynamic, export.json without "text_length"); the video tower is
not exported. Also reports each OpenVINO text tower's second open (its compiled-model cache).

    python benchmarks/text_length.py --checkpoint /tmp/qs/quickstart/retrieval --checkpoint /work/bench/paper \\
        --captions /tmp/qs/quickstart/data/test.jsonl --work /tmp/evilm-textlen --out docs/text_length.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from evilm_core.data.records.manifest import read_manifest
from evilm_core.export import towers as T
from evilm_core.export.runtime import META, ExportedTowers
from evilm_core.text.tokens import TextTokens

RUNTIMES = ("onnxruntime", "openvino")


def export_text(checkpoint: Path, out: Path, dynamic: bool) -> Path:
    """`out` with text.onnx, vocab.txt and export.json; the fixed variant as before the change."""
    if (out / META).is_file():
        return out
    loaded = T.load_evilm(checkpoint)
    model = loaded.model.eval()
    out.mkdir(parents=True, exist_ok=True)
    args = T.example_inputs(model, 4, batch=2)["text"]
    dims = T._dynamic(T.TEXT_INPUTS, model.cfg.max_text_len)
    if not dynamic:
        dims = {n: {0: d[0]} for n, d in dims.items()}
    how = T._export_onnx(T.TextTower(model).eval(), args, T.TEXT_INPUTS, T.OUTPUTS["text"], out / "text.onnx", None,
                         dims)
    shutil.copyfile(loaded.directory / "vocab.txt", out / "vocab.txt")
    meta = T._metadata(loaded, "onnx", 4, how)
    if not dynamic:
        meta.pop("text_length"), meta.pop("min_text_len")
        meta["inputs"]["text"] = [{**i, "shape": ["batch", model.cfg.max_text_len]} for i in meta["inputs"]["text"]]
    (out / META).write_text(json.dumps(meta, indent=2))
    return out


def time_calls(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each fn, run A, B, A, B, ... `rounds` times (`reps` calls a round)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up (and OpenVINO's compile)
    for _ in range(rounds):
        for k, f in fns.items():
            began = time.perf_counter()
            for _ in range(reps):
                f()
            times[k].append((time.perf_counter() - began) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def second_open(export: Path, runtime: str, ids, mask) -> float:
    began = time.perf_counter()
    ExportedTowers.open(export, 1, runtime, "fp32").embed_text(ids[:1], mask[:1])
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, action="append", required=True)
    ap.add_argument("--captions", type=Path, required=True, help="a manifest whose captions are the queries")
    ap.add_argument("--work", type=Path, default=Path("/tmp/evilm-textlen"))
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    captions = list(dict.fromkeys(r.caption for r in read_manifest(a.captions)))
    results = {"uptime": os.popen("uptime").read().strip(), "rows": []}
    for ckpt in a.checkpoint:
        name = ckpt.name if ckpt.name != "retrieval" else "quickstart"
        variants = {v: export_text(ckpt, a.work / f"{name}-{v}", v == "dynamic") for v in ("fixed", "dynamic")}
        tokens = TextTokens(variants["fixed"], json.loads((variants["fixed"] / META).read_text())["max_text_len"])
        for runtime in RUNTIMES:
            towers = {v: ExportedTowers.open(d, 1, runtime, "fp32") for v, d in variants.items()}
            for batch in map(int, a.batches.split(",")):
                ids, mask = tokens.batch((captions * batch)[:batch], as_numpy=True)
                fns = {v: (lambda t=t, i=ids, m=mask: t.embed_text(i, m)) for v, t in towers.items()}
                diff = float(abs(fns["fixed"]() - fns["dynamic"]()).max())
                med = time_calls(fns, a.rounds, reps=max(1, 16 // batch))
                row = {"model": name, "runtime": runtime, "batch": batch, "max_text_len": ids.shape[1],
                       "longest": int(mask.sum(1).max()), "fixed_ms": med["fixed"] * 1e3,
                       "dynamic_ms": med["dynamic"] * 1e3, "speedup": med["fixed"] / med["dynamic"],
                       "max_abs_diff": diff}
                if runtime == "openvino" and batch == 1:
                    row["second_open_s"] = {v: second_open(d, runtime, ids, mask) for v, d in variants.items()}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    results["uptime_end"] = os.popen("uptime").read().strip()
    print(results["uptime"], "|", results["uptime_end"])
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
