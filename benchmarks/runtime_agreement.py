"""Does each CPU path rank as the fp32 PyTorch path does? The quickstart's retrieval model through
`evilm retrieve index` + `evilm retrieve query` (the test captions from stdin, -k 10), once per
path: PyTorch fp32 (the reference), PyTorch bf16 (bf16 weights, models/loading.py for_precision),
the ONNX export in onnxruntime fp32, in OpenVINO fp32 and bf16 (--runtime openvino), and the
export's text tower in onnxruntime dynamic int8 (`--text-int8`) where asked. Per path: R@1/5/10
of the test captions (their own clip among the top k) and the share of the distinct captions whose
top-10 keys are those of the reference (as a set, and in order).

    python benchmarks/runtime_agreement.py --quickstart runs/quickstart --out docs/runtime_agreement.json

The export is made (`evilm export`) when --export does not hold one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("evilm"))


def evilm(*args, stdin: str | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([EXE, *map(str, args)], input=stdin, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise SystemExit(f"evilm {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def top10(index: Path, captions: list[str], source: Path, extra: list[str]) -> dict[str, list[str]]:
    out = evilm("retrieve", "query", "--index", index, "--checkpoint", source, "-k", "10", "--json", *extra,
                stdin="".join(c + "\n" for c in captions))
    table: dict[str, list[str]] = {}
    for line in out.splitlines():
        row = json.loads(line)
        table.setdefault(row["query"], []).append(row["key"])
    return table


def recall(rows: list[dict], table: dict[str, list[str]]) -> dict[str, float]:
    return {f"R@{k}": round(100 * sum(r["video"] in table[r["caption"]][:k] for r in rows) / len(rows), 2)
            for k in (1, 5, 10)}


def paths(checkpoint: Path, export: Path, with_int8: bool) -> list[tuple[str, Path, list[str], list[str]]]:
    """(name, source, index options, query options)."""
    found = [("torch fp32", checkpoint, ["--precision", "fp32"], ["--precision", "fp32"]),
             ("torch bf16 (bf16 weights)", checkpoint, ["--precision", "bf16"], ["--precision", "bf16"]),
             ("onnxruntime fp32", export, ["--runtime", "onnxruntime", "--precision", "fp32"],
              ["--runtime", "onnxruntime"])]
    try:
        import openvino  # noqa: F401

        found += [("openvino fp32", export, ["--runtime", "openvino", "--precision", "fp32"],
                   ["--runtime", "openvino", "--precision", "fp32"]),
                  ("openvino bf16", export, ["--runtime", "openvino", "--precision", "bf16"],
                   ["--runtime", "openvino", "--precision", "bf16"])]
    except ImportError:
        print("openvino is not installed: its paths are left out", file=sys.stderr)
    if with_int8:
        found.append(("onnxruntime fp32 index, int8 text", export, ["--runtime", "onnxruntime", "--precision", "fp32"],
                      ["--runtime", "onnxruntime", "--text-int8"]))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quickstart", type=Path, required=True, help="a finished `evilm quickstart` --out directory")
    ap.add_argument("--export", type=Path, default=None, help="its retrieval model's export (default: QUICKSTART/export)")
    ap.add_argument("--work", type=Path, default=None, help="where the indexes go (default: QUICKSTART/agreement)")
    ap.add_argument("--text-int8", action="store_true", help="also the int8 text tower (retrieve query --text-int8)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    qs, checkpoint = args.quickstart, args.quickstart / "retrieval" / "final"
    export, work = args.export or qs / "export", args.work or qs / "agreement"
    if not (export / "export.json").is_file():
        evilm("export", checkpoint, "--out", export, "--format", "onnx")
    manifest = qs / "data" / "test.jsonl"
    rows = records(manifest)
    captions = list(dict.fromkeys(r["caption"] for r in rows))
    results, reference = [], None
    for name, source, index_opts, query_opts in paths(checkpoint, export, args.text_int8):
        index = work / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        if not (index / "index.yaml").is_file():
            evilm("retrieve", "index", "--checkpoint", source, "--manifest", manifest, "--out", index, "--workers", "0",
                  *index_opts)
        began = time.monotonic()
        table = top10(index, captions, source, query_opts)
        seconds = time.monotonic() - began
        reference = reference or table
        same_set = sum(set(table[c]) == set(reference[c]) for c in captions) / len(captions)
        same_order = sum(table[c] == reference[c] for c in captions) / len(captions)
        results.append({"path": name, **recall(rows, table), "top10_same_keys": round(100 * same_set, 2),
                        "top10_same_order": round(100 * same_order, 2), "query_process_s": round(seconds, 2)})
        print(json.dumps(results[-1]), flush=True)
    summary = {"quickstart": str(qs), "test_clips": len(rows), "captions": len(captions), "results": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
