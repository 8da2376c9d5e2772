"""The thread policy on an idle and on a busy machine: the quickstart's pre-training steps.

    python benchmarks/threads_busy.py --quickstart quickstart --steps 24 --busy 2
    python benchmarks/threads_busy.py --whole --repeats 1 --busy 2   # the whole quickstart

Runs `evilm pretrain` of the quickstart's own recipe for a fixed number of steps (fresh output
directory each time) with the policy (`--threads 0`: auto) and without it (`--threads N` = torch's
default, one per core: what torch does when nothing sets it), interleaved A, B, A, B; first on the
idle machine, then with `--busy` CPU-bound processes running (a lab server shared with other
jobs). Reports wall seconds per run, medians, the thread count auto chose, and the final loss
(the same recipe, so the losses show what the thread count changes in the numbers).
With `--whole` each run is a complete `evilm quickstart` in a fresh directory (wall time of the
whole pipeline, and its results table's retrieval recall and QA accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("evilm"))
BUSY = "while True: pass"


def _timed(args: list[str], threads: int) -> tuple[float, str, dict]:
    """Run `evilm ARGS --threads N --json` without OMP_NUM_THREADS -> (wall s, threads chosen, result)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    t = time.perf_counter()
    proc = subprocess.run([EXE, *args, "--threads", str(threads), "--json"], capture_output=True, text=True, env=env,
                          check=True)
    wall = time.perf_counter() - t
    # the run's settings line (evilm_core/settings.py): "run settings: cpu, fp32, 2 threads, decoder pyav (...)"
    found = (re.search(r"run settings: [^,]+, [^,]+, (\d+) threads?\b", line) for line in proc.stderr.splitlines())
    chosen = next((m.group(1) for m in found if m), "?")
    return round(wall, 1), chosen, json.loads(proc.stdout.splitlines()[-1])


def run(recipe: Path, steps: int, threads: int, out: Path) -> dict:
    wall, chosen, result = _timed(["pretrain", str(recipe), "--set", f"train.max_steps={steps}", "--set",
                                   f"output.dir={out}", "--set", "train.eval_every=0"], threads)
    return {"threads_flag": threads, "threads_used": chosen, "seconds": wall, "loss": result["metrics"].get("loss")}


def run_whole(threads: int, out: Path) -> dict:
    """One complete `evilm quickstart` (every stage) in a fresh directory."""
    wall, chosen, result = _timed(["quickstart", "--out", str(out)], threads)
    return {"threads_flag": threads, "threads_used": chosen, "seconds": wall, "results": result}


def rounds(recipe: Path | None, steps: int, default: int, work: Path, tag: str, repeats: int) -> list[dict]:
    """A, B, A, B: auto then torch's default; recipe None runs the whole quickstart."""
    rows = []
    for r in range(repeats):
        for threads in (0, default):
            out = work / f"{tag.split()[0]}-{threads}-{r}"
            row = run_whole(threads, out) if recipe is None else run(recipe, steps, threads, out)
            rows.append({**row, "machine": tag})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", type=Path, help="A quickstart directory (its pre-training recipe).")
    parser.add_argument("--whole", action="store_true", help="Time whole quickstarts instead.")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes for the busy case.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    default = torch.get_num_threads()
    if not args.whole and args.quickstart is None:
        parser.error("--quickstart DIR is needed unless --whole")
    recipe = None if args.whole else args.quickstart / "recipes" / "pretrain.yaml"
    work = Path(tempfile.mkdtemp(prefix="evilm-threads-"))
    rows = rounds(recipe, args.steps, default, work, "idle", args.repeats)
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        time.sleep(2)
        rows += rounds(recipe, args.steps, default, work, f"busy ({args.busy} CPU-bound processes)", args.repeats)
    finally:
        for hog in hogs:
            hog.kill()
    summary = {}
    for machine in dict.fromkeys(r["machine"] for r in rows):
        for threads in (0, default):
            times = [r["seconds"] for r in rows if r["machine"] == machine and r["threads_flag"] == threads]
            summary[f"{machine}, {'auto' if threads == 0 else f'{threads} threads'}"] = statistics.median(times)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "median_seconds": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
