"""`evilm predict` on the quickstart's checkpoints (docs/predict.md, "Checked on the quickstart").

    evilm quickstart --out quickstart            # once
    python benchmarks/predict_checks.py --quickstart quickstart --out docs/predict_checks.json

1. QA: `predict` over the test shard set with the qa checkpoint, against `evaluate --predictions`
   on the same split: how many lines are identical (key, question, top-5 answers and their
   probabilities) and how many have the same first answer.
2. Retrieval, video-to-text: `predict --texts` (the test captions, in manifest order) with the
   retrieval checkpoint, against evaluate's video-to-text lines: identical top-5 texts and scores.
3. Zero-shot labels (`--labels`, `--template`) with the pre-trained and the retrieval checkpoint:
   top-1 accuracy on the 160 test clips against chance (1 / classes) and the majority class, for
   the synthetic action classes (as named, and in the captions' words) and, as a control the
   models do learn, the background colour.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

EXE = str(Path(sys.executable).with_name("evilm"))
MOTIONS = {"moves left": "moving left", "moves right": "moving right", "moves up": "moving up",
           "moves down": "moving down", "grows": "growing", "shrinks": "shrinking"}  # caption words -> action class
IN_WORDS = {label: words for words, label in MOTIONS.items()}
LABELS = {  # name -> (labels, template, the gold label of a test record)
    "action classes as named": ("|".join(MOTIONS.values()), "a video of {}", lambda r: r["label"]),
    "action classes in the captions' words": ("|".join(MOTIONS), "a {}", lambda r: IN_WORDS[r["label"]]),
    "action classes in a caption's frame": ("|".join(MOTIONS), "a red circle {} on a black background",
                                            lambda r: IN_WORDS[r["label"]]),
    "background colour (control)": ("black|gray|brown|navy", "a red circle moves left on a {} background",
                                    lambda r: re.search(r"on a (\w+) background", r["caption"]).group(1)),
}


def evilm(*args) -> str:
    proc = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"evilm {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def compare(theirs: list[dict], mine: list[dict], field: str) -> dict:
    """Identical lines (the field's whole ranking) and lines with the same first entry."""
    name = field[:-1]
    pairs = list(zip(theirs, mine))
    assert len(theirs) == len(mine) and all(a["key"] == b["key"] for a, b in pairs)
    return {"lines": len(pairs), "identical": sum(a[field] == b[field] for a, b in pairs),
            "same_first": sum(a[field][0][name] == b[field][0][name] for a, b in pairs)}


def qa_check(qs: Path, work: Path) -> dict:
    evilm("evaluate", qs / "recipes/qa.yaml", "--checkpoint", qs / "qa", "--predictions", work / "ev_qa.jsonl")
    evilm("predict", "--checkpoint", qs / "qa", "--manifest", qs / "shards/test", "--precision", "fp32", "--json",
          "--out", work / "pr_qa.jsonl")
    gold = lines(work / "ev_qa.jsonl")
    return {**compare(gold, lines(work / "pr_qa.jsonl"), "answers"),
            "evaluate_accuracy": 100.0 * sum(r["correct"] for r in gold) / len(gold)}


def retrieval_check(qs: Path, work: Path) -> dict:
    captions = work / "captions.txt"
    captions.write_text("".join(r["caption"] + "\n" for r in lines(qs / "data/test.jsonl")))
    evilm("evaluate", qs / "recipes/retrieval.yaml", "--checkpoint", qs / "retrieval", "--predictions",
          work / "ev_ret.jsonl")
    evilm("predict", "--checkpoint", qs / "retrieval", "--manifest", qs / "shards/test", "--texts", captions,
          "--precision", "fp32", "--json", "--out", work / "pr_ret.jsonl")
    v2t = [r for r in lines(work / "ev_ret.jsonl") if r["direction"] == "v2t"]
    return compare(v2t, lines(work / "pr_ret.jsonl"), "texts")


def zero_shot(qs: Path, work: Path) -> dict:
    records = {r["video"]: r for r in lines(qs / "data/test.jsonl")}
    out = {}
    for checkpoint in ("pretrain", "retrieval"):
        for name, (labels, template, gold) in LABELS.items():
            path = work / f"zs-{checkpoint}-{len(out)}.jsonl"
            path.unlink(missing_ok=True)
            evilm("predict", "--checkpoint", qs / checkpoint, "--manifest", qs / "shards/test", "--labels", labels,
                  "--template", template, "--precision", "fp32", "-k", "1", "--out", path)
            rows = lines(path)
            truth = [gold(records[r["key"]]) for r in rows]
            correct = sum(r["labels"][0]["label"] == t for r, t in zip(rows, truth))
            out[f"{checkpoint}: {name}"] = {
                "labels": labels, "template": template, "clips": len(rows),
                "accuracy": round(100.0 * correct / len(rows), 1),
                "chance": round(100.0 / len(labels.split("|")), 1),
                "majority": round(100.0 * Counter(truth).most_common(1)[0][1] / len(rows), 1)}
            print(json.dumps({f"{checkpoint}: {name}": out[f"{checkpoint}: {name}"]}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", type=Path, default=Path("quickstart"))
    parser.add_argument("--work", type=Path, help="where the lines go (default: QUICKSTART/predict-checks)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    qs = args.quickstart.absolute()
    work = args.work or qs / "predict-checks"
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("pr_qa.jsonl", "pr_ret.jsonl"):
        (work / stale).unlink(missing_ok=True)  # a fresh run: an existing --out file would be resumed
    result = {"qa": qa_check(qs, work), "retrieval_v2t": retrieval_check(qs, work)}
    print(json.dumps(result), flush=True)
    result["zero_shot"] = zero_shot(qs, work)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
