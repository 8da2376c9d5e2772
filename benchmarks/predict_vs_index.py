"""`evilm predict` (QA, one question per clip) against `evilm retrieve index` on the same clips
with the paper-size model, interleaved, on 2 cores (docs/benchmarks.md, "Predict").

    python benchmarks/predict_vs_index.py --work /tmp/evilm-1k --out docs/predict_vs_index.json

The clips and the model are benchmarks/msrvtt_round.py's (1,000 H.264 clips of 320x240, 10-15 s,
a paper-size E-ViLM with random weights: the cost does not depend on them); a QA head of
`--answers` answers is attached (MSRVTT-QA keeps 1,500), so both commands load the same
checkpoint. Each round runs the two commands one after the other, the order alternating (A B,
B A, ...), each as a user runs it: `--videos DIR`, 4 frames, `--threads 2`, every other option
at its default (CPU loader workers that decode and compute, precision auto). clips/s = clips /
wall time of the command, start-up included. The figure: median clips/s of predict / of index.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from msrvtt_round import make_data  # noqa: E402

from evilm_core.checkpoints import files as ckpt  # noqa: E402
from evilm_core.models.heads import attach_head  # noqa: E402
from evilm_core.models.loading import load_checkpoint  # noqa: E402
from evilm_core.models.pretrained import export_model  # noqa: E402

EXE = str(Path(sys.executable).with_name("evilm"))
QUESTION = "what is moving across the scene?"


def qa_model(work: Path, model: Path, answers: int) -> Path:
    """The paper model with a QA head over `answers` made-up answers (random weights)."""
    out = work / "paper_qa"
    if not (out / ckpt.WEIGHTS).is_file():
        loaded = load_checkpoint(model)
        torch.manual_seed(0)
        attach_head(loaded.model, "qa", answers)
        export_model(loaded.model, out, loaded.vocab, "qa", classes=[f"answer{i}" for i in range(answers)])
    return out


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([EXE, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"evilm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def run_index(work: Path, model: Path, threads: int, tag: str) -> float:
    out = work / f"index-{tag}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh index: an existing one would only be extended
    return timed(["retrieve", "index", "--checkpoint", str(model), "--videos", str(work / "videos"), "--out", str(out),
                  "--threads", str(threads)])


def run_predict(work: Path, model: Path, threads: int, tag: str) -> float:
    out = work / f"predict-{tag}.jsonl"
    out.unlink(missing_ok=True)  # a fresh file: an existing one would be resumed
    seconds = timed(["predict", "--checkpoint", str(model), "--videos", str(work / "videos"), "--question", QUESTION,
                     "--out", str(out), "--threads", str(threads)])
    lines = out.read_text().splitlines()
    assert len(lines) == len(list((work / "videos").glob("*.mp4"))) and "answers" in json.loads(lines[0])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/evilm-1k"))
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--answers", type=int, default=1500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = qa_model(args.work, make_data(args.work, args.clips, 2), args.answers)
    clips = len(list((args.work / "videos").glob("*.mp4")))
    rows, load = [], [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = [("index", run_index), ("predict", run_predict)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            seconds = run(args.work, model, args.threads, str(r))
            rows.append({"round": r, "command": name, "seconds": round(seconds, 1),
                         "clips_per_s": round(clips / seconds, 2)})
            load.append(os.getloadavg()[0])
            print(json.dumps(rows[-1]), flush=True)
    median = {name: statistics.median(r["clips_per_s"] for r in rows if r["command"] == name)
              for name in ("index", "predict")}
    result = {"clips": clips, "threads": args.threads, "answers": args.answers, "rounds": rows,
              "median_clips_per_s": median, "predict_over_index": round(median["predict"] / median["index"], 3),
              "load_average_1min": [round(x, 2) for x in load], "cpus": os.cpu_count()}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("clips", "median_clips_per_s", "predict_over_index")}))


if __name__ == "__main__":
    main()
