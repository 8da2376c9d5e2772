"""The paper's ablations (Tables 5 and 6) in miniature, on the synthetic data, over several seeds.

    python benchmarks/ablations.py --out runs/ablations --seeds 0 1 2 --table docs/ablations.md

Table 5 analogue: no pre-training / VTM / VTM+MLM / VTM+MLM+MVM, each then fine-tuned for
text-to-video retrieval, open-ended QA, multiple choice and a linear probe (test split).
Table 6 analogue: the MVM targets of VTM+MLM+MVM from the semantic (focal) tokenizer, from a
tokenizer trained with plain BCE, from a randomly initialised frozen tokenizer, or no MVM.

Every pre-trained row also has the video-text contrastive term (loss.vtc = 1): on this data
VTM does not leave chance level without it (docs/pretraining.md). The recipes are the
bundled recipes/synthetic/*.yaml, set up as the quickstart sets them (`evilm_core/quickstart/
recipes.py`), with the epochs below, and are written next to each run. Results go to OUT/results.jsonl one line per (seed, pre-training, task), so
an interrupted run continues where it stopped; the table is rebuilt from that file.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path

from evilm_core.quickstart.recipes import SIZES, image_size, stage_recipe

log = logging.getLogger("ablations")
ABLATION_SIZES = {"quickstart": replace(SIZES["quickstart"], videos=600, pretrain_epochs=6, retrieval_epochs=5,
                                        qa_epochs=4),
                  "quickstart-tiny": SIZES["quickstart-tiny"]}  # a smoke test of the script itself
SIZE_NAME = "quickstart"
SIZE = ABLATION_SIZES[SIZE_NAME]
MC_EPOCHS = 2
TOKENIZERS = ("focal", "bce", "random")
PRETRAIN = {  # name -> (loss weights, tokenizer whose codes are the MVM targets)
    "vtm": ({"mlm": 0.0, "vtm": 1.0, "mvm": 0.0, "vtc": 1.0}, None),
    "vtm_mlm": ({"mlm": 1.0, "vtm": 1.0, "mvm": 0.0, "vtc": 1.0}, None),
    "vtm_mlm_mvm": ({"mlm": 1.0, "vtm": 1.0, "mvm": 1.0, "vtc": 1.0}, "focal"),
    "mvm_bce": ({"mlm": 1.0, "vtm": 1.0, "mvm": 1.0, "vtc": 1.0}, "bce"),
    "mvm_random": ({"mlm": 1.0, "vtm": 1.0, "mvm": 1.0, "vtc": 1.0}, "random"),
}
TASKS = ("retrieval", "qa", "mc", "probe")


def recipe_of(name: str, data: Path, run: Path, seed: int, written: Path, mc: bool = False, **values):
    """The bundled synthetic recipe `name` on the manifests in `data`, writing to `run`, with this
    script's epochs and the dotted-key `values`."""
    prefix = "mc_" if mc else ""
    paths = {f"data.{s}": str(data / f"{prefix}{s}.jsonl") for s in ("train", "val", "test")}
    epochs = {"tokenizer": SIZE.tokenizer_epochs, "pretrain": SIZE.pretrain_epochs, "retrieval": SIZE.retrieval_epochs,
              "qa": SIZE.qa_epochs, "mc": MC_EPOCHS}.get(name)
    values = {**paths, "output.dir": str(run), **({"train.epochs": epochs} if epochs else {}), **values}
    return stage_recipe(name, run, SIZE_NAME, seed, values, written=written)


def tokenizer(kind: str, data: Path, base: Path, seed: int) -> Path:
    """Train (focal, bce) or just initialise (random) a tokenizer, export it, label the train clips."""
    from evilm_core.label.labeler import run_label
    from evilm_core.models.tokenizer import SemanticTokenizer
    from evilm_core.models.tokenizer import export_tokenizer
    from evilm_core.tokenizer.train import tokenizer_vocab, train_tokenizer
    from evilm_core.data.records.manifest import read_manifest
    from evilm_core.text.vocab import SPECIAL_TOKENS

    run, labels = base / f"tok_{kind}", base / f"labels_{kind}"
    if (labels / "meta.json").is_file() and (base / f"labels_{kind}.json").is_file():
        return labels
    recipe = recipe_of("tokenizer", data, run, seed, base / "recipes" / f"tok_{kind}.yaml",
                       **{"loss.word_loss": "bce" if kind == "bce" else "focal"})
    if kind == "random":
        import torch

        vocab = tokenizer_vocab(recipe, [r.caption or "" for r in read_manifest(recipe.data.train)])
        recipe.model.num_words = len(vocab) - len(SPECIAL_TOKENS)
        torch.manual_seed(seed)
        export_tokenizer(SemanticTokenizer(recipe.model), vocab, run / "final")
    elif not (run / "final").is_dir():
        train_tokenizer(recipe, resume=True)
    summary = run_label(manifest=data / "train.jsonl", tokenizer=run, out=labels, num_candidates=2 * SIZE.num_frames,
                        batch_size=16, num_workers=0)
    (base / f"labels_{kind}.json").write_text(json.dumps(summary) + "\n")
    return labels


def pretrain(name: str, data: Path, base: Path, seed: int) -> Path:
    from evilm_core.pretrain.train import train_pretrain

    run = base / f"pt_{name}"
    if (run / "final").is_dir():
        return run / "final"
    loss, tok = PRETRAIN[name]
    mvm = {"mvm.labels": None, "mvm.tokenizer": str(base / "tok_focal")} if tok is None else {  # vocab.txt only
        "mvm.labels": str(base / f"labels_{tok}"), "mvm.tokenizer": str(base / f"tok_{tok}")}
    train_pretrain(recipe_of("pretrain", data, run, seed, base / "recipes" / f"pt_{name}.yaml", **{
        "loss": dict(loss), "data.val": None, **mvm}), resume=True)
    return run / "final"


def finetune_and_evaluate(task: str, init: Path | None, data: Path, run: Path, seed: int) -> dict:
    from evilm_core.finetune.run import evaluate_checkpoint
    from evilm_core.finetune.run import train_finetune

    extra = {"mc.num_options": 5, "data.batch_size": 8} if task == "mc" else {}
    recipe = recipe_of(task, data, run, seed, run / "recipe.yaml", mc=task == "mc",
                       **{"init.checkpoint": str(init) if init else None, **extra})
    if not (run / "final").is_dir():
        train_finetune(recipe, resume=True)
    return evaluate_checkpoint(recipe, run / "final", "test")["metrics"]


def run_all(out: Path, seeds: list[int]) -> None:
    from evilm_core.prepare.synth import generate

    data, results = out / "data", out / "results.jsonl"
    if not (data / "synth.json").is_file():
        generate(data, num_videos=SIZE.videos, seed=0, frames=SIZE.frames, size=image_size(SIZE_NAME))
    done = {(r["seed"], r["pretrain"], r["task"]) for r in read_results(results)}
    for seed in seeds:
        base = out / f"seed{seed}"
        usage = {k: json.loads((base / f"labels_{k}.json").read_text())["codebook_usage"]
                 for k in TOKENIZERS if tokenizer(k, data, base, seed)}
        for name in ("scratch", *PRETRAIN):
            if all((seed, name, t) in done for t in TASKS):
                continue
            init = None if name == "scratch" else pretrain(name, data, base, seed)
            for task in TASKS:
                if (seed, name, task) in done:
                    continue
                start = time.perf_counter()
                metrics = finetune_and_evaluate(task, init, data, base / f"ft_{name}_{task}", seed)
                tok = PRETRAIN.get(name, (None, None))[1]
                row = {"seed": seed, "pretrain": name, "task": task, "metrics": metrics,
                       "codebook_usage": usage.get(tok), "seconds": round(time.perf_counter() - start, 1)}
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                log.info("seed %d %s %s: %s", seed, name, task, metrics)


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def _metric(rows: list[dict], name: str, task: str, key: str) -> list[float]:
    return [r["metrics"][key] for r in rows if r["pretrain"] == name and r["task"] == task]


def markdown(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    t5 = [("no pre-training", "scratch"), ("VTM", "vtm"), ("VTM + MLM", "vtm_mlm"), ("VTM + MLM + MVM", "vtm_mlm_mvm")]
    t6 = [("semantic tokenizer (focal)", "vtm_mlm_mvm"), ("BCE tokenizer", "mvm_bce"),
          ("random frozen tokenizer", "mvm_random"), ("no MVM", "vtm_mlm")]
    lines = [f"Seeds: {', '.join(map(str, seeds))}; mean ± std over seeds; percentages on the synthetic test split.", "",
             "| pre-training | t2v R@1 | t2v R@5 | t2v R@10 | QA acc | MC acc | probe top-1 |",
             "|---|---|---|---|---|---|---|"]
    videos = _metric(rows, "scratch", "retrieval", "num_videos")
    if videos:
        base = [f"{min(100.0, 100.0 * k / videos[0]):.1f}" for k in (1, 5, 10)]
        base += [_cell(_metric(rows, "scratch", "qa", "majority_baseline"))]
        base += [_cell(_metric(rows, "scratch", t, "chance")) for t in ("mc", "probe")]
        lines.append("| trivial baseline (chance; QA: majority answer) | " + " | ".join(base) + " |")
    for label, name in t5:
        cells = [_cell(_metric(rows, name, "retrieval", f"t2v_R@{k}")) for k in (1, 5, 10)]
        cells += [_cell(_metric(rows, name, t, "accuracy")) for t in ("qa", "mc", "probe")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| MVM targets | codebook usage | t2v R@1 | t2v R@10 | QA acc | MC acc |", "|---|---|---|---|---|---|"]
    for label, name in t6:
        usage = [100 * r["codebook_usage"] for r in rows if r["pretrain"] == name and r["task"] == "qa"
                 and r["codebook_usage"] is not None]
        cells = [_cell(usage) if usage else "–", _cell(_metric(rows, name, "retrieval", "t2v_R@1")),
                 _cell(_metric(rows, name, "retrieval", "t2v_R@10")), _cell(_metric(rows, name, "qa", "accuracy")),
                 _cell(_metric(rows, name, "mc", "accuracy"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table", type=Path, default=None, help="Also write the markdown tables to this file.")
    parser.add_argument("--table-only", action="store_true", help="Rebuild the tables from OUT/results.jsonl.")
    parser.add_argument("--size", choices=sorted(ABLATION_SIZES), default="quickstart")
    args = parser.parse_args()
    global SIZE, SIZE_NAME, MC_EPOCHS
    SIZE_NAME, SIZE = args.size, ABLATION_SIZES[args.size]
    MC_EPOCHS = 1 if args.size == "quickstart-tiny" else MC_EPOCHS
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.table_only:
        run_all(args.out, args.seeds)
    text = markdown(read_results(args.out / "results.jsonl"))
    print(text)
    if args.table:
        args.table.write_text(text)


if __name__ == "__main__":
    main()
