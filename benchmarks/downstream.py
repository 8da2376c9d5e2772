"""Fine-tuning from the pre-trained checkpoint vs from scratch vs the trivial baseline, for each
task, with the synthetic recipes exactly as a user runs them (the `evilm` command).

    python benchmarks/downstream.py --runs runs/synthetic --out runs/downstream

Needs data/synth (`evilm data synth data/synth --videos 800 --size 96 --frames 8`) and
runs/synthetic/pretrain (recipes/synthetic/{tokenizer,pretrain}.yaml + `evilm label`). For each of
qa, mc, retrieval, probe: `evilm finetune recipes/synthetic/<task>.yaml` with init.checkpoint =
the pre-trained run, and with init.checkpoint = null, then `evilm evaluate ... --json` on the test
split. Results: OUT/results.jsonl (one line per task and start; finished ones are not redone) and
a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("retrieval", "qa", "mc", "probe")
HEADLINE = {"retrieval": "t2v_R@1", "qa": "accuracy", "mc": "accuracy", "probe": "accuracy"}


def evilm(*args: str) -> dict:
    exe = Path(sys.executable).with_name("evilm")
    proc = subprocess.run([str(exe), *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evilm {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(task: str, start: str, pretrained: Path, out: Path) -> dict:
    recipe = str(REPO / "recipes" / "synthetic" / f"{task}.yaml")
    run_dir = out / f"{task}_{start}"
    init = str(pretrained) if start == "pretrained" else "null"
    if not (run_dir / "final").is_dir():
        evilm("finetune", recipe, "--set", f"init.checkpoint={init}", "--set", f"output.dir={run_dir}")
    return evilm("evaluate", recipe, "--checkpoint", str(run_dir))["metrics"]


def table(rows: list[dict]) -> str:
    lines = ["| task | metric | trivial baseline | from scratch | from pre-trained |", "|---|---|---|---|---|"]
    for task in TASKS:
        got = {r["start"]: r["metrics"] for r in rows if r["task"] == task}
        if len(got) < 2:
            continue
        key = HEADLINE[task]
        s = got["scratch"]
        base = {"retrieval": min(100.0, 100.0 / s.get("num_videos", 1)), "qa": s.get("majority_baseline"),
                "mc": s.get("chance"), "probe": s.get("chance")}[task]
        lines.append(f"| {task} | {key} | {base:.1f} | {s[key]:.1f} | {got['pretrained'][key]:.1f} |")
        if task == "retrieval":
            lines.append(f"| retrieval | t2v_R@10 | {min(100.0, 1000.0 / s['num_videos']):.1f} | "
                         f"{s['t2v_R@10']:.1f} | {got['pretrained']['t2v_R@10']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/synthetic"), help="holds pretrain/ (the start)")
    parser.add_argument("--out", type=Path, default=Path("runs/downstream"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.is_file() else []
    done = {(r["task"], r["start"]) for r in rows}
    for task in args.tasks:
        for start in ("scratch", "pretrained"):
            if (task, start) in done:
                continue
            row = {"task": task, "start": start, "metrics": run(task, start, args.runs / "pretrain", args.out)}
            rows.append(row)
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
