"""`evilm quickstart`: the whole pipeline on synthetic data, in one directory.

    data synth -> data shards -> tokenize-train -> label -> pretrain -> finetune retrieval, qa
    -> retrieve index -> evaluate -> profile

Every stage after `data shards` reads the shard sets (frames decoded once), the path the
quickstart shows users for real data (docs/data.md). The training stages run the bundled
`recipes/synthetic/*.yaml` (quickstart/recipes.py). The run settings (device, threads, decoder)
are resolved once, at the start, and every stage gets them.

Each stage's recipe is written to DIR/recipes/ and its result to DIR/stages/<stage>.json when it
finishes; a re-run with the same DIR skips finished stages and continues an interrupted training
stage from its last checkpoint. Every artefact stays in DIR for the individual commands; the
pre-training stage also draws its curves, DIR/pretrain/curves.png (`evilm plot`, evilm[plot]).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager

from evilm_core.config.loader import from_dict, read_yaml
from evilm_core.engine.runtime import environment
from evilm_core.errors import EvilmError, TrainingInterrupted
from evilm_core.fs import atomic_write_text
from evilm_core.quickstart.recipes import KINDS, SIZES, image_size, stage_recipe
from evilm_core.settings import RunSettings, resolve_precision, resolve_settings

log = logging.getLogger("evilm.quickstart")
STAGES = ("data", "shards", "tokenizer", "label", "pretrain", "retrieval", "qa", "index", "evaluate", "profile")
StageProgress = Callable[[str], ContextManager[Callable]]


class Quickstart:
    def __init__(self, out: str | Path, size: str = "quickstart", seed: int = 0, threads: int = 0,
                 stage_progress: StageProgress | None = None):
        if size not in SIZES:
            raise EvilmError(f"--size {size!r} is not a quickstart size; choose one of {', '.join(SIZES)} (the "
                             "model registry's sizes, evilm_core/models/config.py)")
        self.out, self.size, self.seed = Path(out).absolute(), SIZES[size], seed
        self.size_name, self.threads = size, threads
        self.image_size = image_size(size)
        self.stage_progress = stage_progress or (lambda name: nullcontext(None))
        self.results: dict[str, dict] = {}
        self.settings: RunSettings | None = None  # resolved once, in run()

    # ------------------------------------------------------------------ bookkeeping

    def _marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def _check_settings(self) -> None:
        """A DIR started with other settings would mix runs: refuse instead of resuming."""
        path, mine = self.out / "quickstart.json", {"size": self.size_name, "seed": self.seed}
        if path.is_file():
            saved = _read_json(path)
            if saved != mine:
                raise EvilmError(f"{self.out} holds a quickstart run with {saved}, not {mine}; use another --out "
                                 "or the same settings to resume it")
        else:
            atomic_write_text(path, json.dumps(mine) + "\n", fsync=False)

    def _recipe(self, name: str, **values):
        """The bundled synthetic recipe `name` with the quickstart's paths and `values` (dotted keys)."""
        return stage_recipe(name, self.out, self.size_name, self.seed, values)

    def _written(self, name: str):
        """A recipe as its stage wrote it into DIR/recipes/ (a resumed run reads it back)."""
        raw = read_yaml(self.out / "recipes" / f"{name}.yaml")
        return from_dict(KINDS[raw["kind"]], raw)

    def run_stage(self, stage: str, fn: Callable[[Callable | None], dict]) -> dict:
        marker = self._marker(stage)
        if marker.is_file():
            self.results[stage] = _read_json(marker)
            log.info("quickstart: %s already done (%s), skipped", stage, marker)
            return self.results[stage]
        start = time.perf_counter()
        try:
            with self.stage_progress(stage) as update:
                result = fn(update)
        except TrainingInterrupted as err:  # the trainer's hint (--resume) is not how a quickstart continues
            raise err.with_hint(f"quickstart stage {stage}", f"run the same `evilm quickstart --out {self.out}` "
                                "again to continue") from None
        result = {**result, "seconds": round(time.perf_counter() - start, 2)}
        atomic_write_text(marker, json.dumps(result, default=str) + "\n", fsync=False)
        self.results[stage] = result
        log.info("quickstart: %s done in %.1f s", stage, result["seconds"])
        return result

    # ------------------------------------------------------------------ stages

    def data(self, update) -> dict:
        from evilm_core.prepare.synth import generate

        s = self.size
        summary = generate(self.out / "data", num_videos=s.videos, seed=self.seed, frames=s.frames,
                           size=self.image_size, workers=os.cpu_count(), progress=update)
        return {"splits": summary["splits"], "dir": str(self.out / "data")}

    def shards(self, update) -> dict:
        from evilm_core.data.shards.writer import ShardSettings
        from evilm_core.prepare.shards import ShardRequest, build_shards

        settings = ShardSettings(candidates=2 * self.size.num_frames, size=self.image_size,
                                 decoder=self.settings.decoder)
        counts = {}
        for i, split in enumerate(("train", "val", "test")):
            req = ShardRequest(input=str(self.out / "data" / f"{split}.jsonl"), out=str(self.out / "shards" / split),
                               settings=settings, samples_per_shard=100, workers=os.cpu_count() or 1)
            counts[split] = build_shards(req)["written"]
            if update:
                update(i + 1, 3)
        return {"samples": counts, "dir": str(self.out / "shards")}

    def tokenizer(self, update) -> dict:
        from evilm_core.tokenizer.train import train_tokenizer

        result = train_tokenizer(self._recipe("tokenizer"), resume=True, progress=update, settings=self.settings)
        return {"checkpoint": result["checkpoint"], "metrics": result["metrics"], "dir": str(self.out / "tokenizer")}

    def label(self, update) -> dict:
        from evilm_core.label.labeler import run_label

        summary = run_label(manifest=self.out / "shards" / "train", tokenizer=self.out / "tokenizer",
                            out=self.out / "labels", num_candidates=2 * self.size.num_frames, batch_size=16,
                            num_workers=0, settings=self.settings, progress=update)
        return {"codebook_usage": summary["codebook_usage"], "labelled": summary["labelled"],
                "skipped": summary["skipped"], "dir": summary["out"]}

    def pretrain(self, update) -> dict:
        from evilm_core.pretrain.train import train_pretrain

        recipe = self._recipe("pretrain", **{"mvm.labels": str(self.out / "labels"),
                                             "mvm.tokenizer": str(self.out / "tokenizer")})
        result = train_pretrain(recipe, resume=True, progress=update, settings=self.settings)
        return {"checkpoint": result["checkpoint"], "metrics": result["metrics"], "dir": str(self.out / "pretrain"),
                "curves": curves(self.out / "pretrain")}

    def finetune(self, task: str, update) -> dict:
        from evilm_core.finetune.run import train_finetune

        recipe = self._recipe(task, **{"init.checkpoint": str(self.out / "pretrain" / "final")})
        result = train_finetune(recipe, resume=True, progress=update, settings=self.settings)
        return {"checkpoint": result["checkpoint"], "metrics": result["metrics"], "dir": str(self.out / task)}

    def index(self, update) -> dict:
        from evilm_core.retrieval.build import IndexRequest, build_index

        req = IndexRequest(checkpoint=str(self.out / "retrieval" / "final"), out=str(self.out / "index"),
                           manifest=str(self.out / "shards" / "test"), num_frames=self.size.num_frames,
                           batch_size=self.size.batch_size, num_workers=0)
        # `retrieve index`'s own default precision is auto (bf16 where native), the training stages' fp32
        precision = resolve_precision("auto", self.settings.device)
        summary = build_index(req, progress=update, settings=dataclasses.replace(self.settings, precision=precision))
        return {"videos": summary["total"], "skipped": summary["skipped_total"], "dir": summary["index"]}

    def evaluate(self, update) -> dict:
        from evilm_core.finetune.run import evaluate_checkpoint

        metrics = {}
        for i, task in enumerate(("retrieval", "qa")):
            recipe = self._written(task)  # as the fine-tuning stage wrote it
            metrics[task] = evaluate_checkpoint(recipe, self.out / task / "final", "test",
                                                settings=self.settings)["metrics"]
            if update:
                update(i + 1, 2)
        return metrics

    def profile(self, update) -> dict:
        from evilm_core.checkpoints.files import read_checkpoint_vocab
        from evilm_core.profiling import profile_recipe

        vocab = read_checkpoint_vocab(self.out / "pretrain" / "final")
        result = profile_recipe(self._written("pretrain"), vocab_size=len(vocab), settings=self.settings)
        return {"params": result["params"], "gflops": result["gflops"]}

    # ------------------------------------------------------------------ all

    def run(self) -> dict:
        start = time.perf_counter()
        self._check_settings()
        # every stage's recipe says device auto and threads 0 (auto): decided here, once, for all of them;
        # precision fp32 is the training recipes' and `label`'s own
        self.settings = resolve_settings("auto", "fp32", self.threads, "auto").apply()
        self.environment = environment(self.settings.torch_device)  # versions and threads the numbers depend on
        atomic_write_text(self.out / "environment.json", json.dumps(self.environment, indent=2) + "\n", fsync=False)
        for stage in STAGES:
            if stage in ("retrieval", "qa"):
                self.run_stage(stage, lambda update, task=stage: self.finetune(task, update))
            else:
                self.run_stage(stage, getattr(self, stage))
        return self.summary(time.perf_counter() - start)

    def summary(self, seconds: float) -> dict:
        r = self.results
        ret, qa = r["evaluate"]["retrieval"], r["evaluate"]["qa"]
        n = ret["num_videos"]
        return {
            "retrieval": {**{k: ret[k] for k in ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MdR")},
                          "chance_R@1": min(100.0, 100.0 / n), "chance_R@5": min(100.0, 500.0 / n),
                          "chance_R@10": min(100.0, 1000.0 / n),
                          "num_videos": n},
            "qa": {"accuracy": qa["accuracy"], "majority_baseline": qa["majority_baseline"],
                   "num_examples": qa["num_examples"]},
            "codebook_usage": r["label"]["codebook_usage"],
            "params": r["profile"]["params"]["total_without_heads"], "gflops": r["profile"]["gflops"]["total"],
            "seconds": round(seconds, 1),
            "stage_seconds": {s: r[s]["seconds"] for s in STAGES},
            "artefacts": {**{s: r[s]["dir"] for s in ("data", "shards", "tokenizer", "label", "pretrain", "retrieval",
                                                      "qa", "index")},
                          **({"pretrain curves": r["pretrain"]["curves"]} if r["pretrain"].get("curves") else {})},
            "out": str(self.out),
            "environment": self.environment,
        }


def curves(run_dir: Path) -> str | None:
    """RUN_DIR/curves.png of a training stage (`evilm plot`), where matplotlib is installed."""
    from evilm_core.engine import plot

    if not plot.available():
        log.info("quickstart: no curves.png in %s: matplotlib is not installed (pip install 'evilm[plot]', then "
                 "`evilm plot %s`)", run_dir, run_dir)
        return None
    try:
        return plot.plot_run(run_dir)["out"]
    except EvilmError as err:  # a picture is a by-product: it never fails the stage
        log.warning("quickstart: no curves.png in %s: %s", run_dir, err)
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvilmError(f"{path} is damaged ({err}); delete it and run the same `evilm quickstart` again (the "
                         "stage it records is then redone)") from None
