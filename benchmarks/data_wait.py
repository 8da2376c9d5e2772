"""How long pre-training waits for data: the synthetic pre-training step reading the mp4 files
(decoded in the loop) vs reading the shard set `evilm data shards` made of them.

Runs `evilm pretrain` of a quickstart directory's recipe for a few steps per variant, interleaved
(mp4, shards, mp4, shards, ...), one thread, and reports the medians of `data_wait_share`,
`data_wait_s` and `step_s` from each run's metrics.jsonl (the trainer times every wait for a
batch). Needs a finished quickstart (`evilm quickstart --out quickstart`).

    OMP_NUM_THREADS=1 python benchmarks/data_wait.py quickstart --steps 12 --rounds 2 --out wait.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path


def run(quickstart: Path, train: Path, steps: int, workers: int, out: Path) -> list[dict]:
    shutil.rmtree(out, ignore_errors=True)
    sets = {"data.train": train, "data.val": "null", "train.max_steps": steps, "train.log_every": 1,
            "train.save_every": 0, "train.eval_every": 0, "data.num_workers": workers, "output.dir": out}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(["evilm", "pretrain", str(quickstart / "recipes" / "pretrain.yaml"), *args], check=True,
                   env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "data_wait_share" in r][1:]  # the first step includes start-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quickstart", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers of both variants")
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    variants = {"mp4": a.quickstart / "data" / "train.jsonl", "shards": a.quickstart / "shards" / "train"}
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            for name, train in variants.items():
                rows[name] += run(a.quickstart, train, a.steps, a.workers, Path(tmp) / name)
    result = {name: {key: round(statistics.median(r[key] for r in rs), 4)
                     for key in ("data_wait_share", "data_wait_s", "step_s", "clips_per_s")}
              for name, rs in rows.items()}
    result["settings"] = {"steps": a.steps, "rounds": a.rounds, "workers": a.workers, "threads": 1}
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
