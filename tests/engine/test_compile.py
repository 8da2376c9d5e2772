"""`train.compile`: the trainer runs a torch.compile'd model (engine/runtime.py compile_model) and
its losses stay those of eager mode; old recipe hashes stay valid while the switch is off."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from evilm_core.engine import resume
from evilm_core.engine.resume import recipe_hash
from evilm_core.engine.runtime import compile_model, unwrap
from evilm_core.recipes import load_recipe
from tests.helpers.cli import REPO

RECIPE = REPO / "recipes/synthetic/pretrain.yaml"


def tiny_recipe(synth_dir: Path, out: Path, compile: bool):
    sets = {"data.train": synth_dir / "train.jsonl", "data.val": "null", "data.image_size": 64,
            "data.batch_size": 4, "data.num_workers": 0, "model.size": "quickstart-tiny", "masking.min_block": 1,
            "loss.mvm": 0, "mvm.tokenizer": "null", "mvm.labels": "null", "train.max_steps": 3, "train.epochs": 0,
            "train.log_every": 1, "train.device": "cpu", "train.compile": str(compile).lower(), "output.dir": out}
    return load_recipe(RECIPE, [f"{k}={v}" for k, v in sets.items()])


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "lr" in r]


def test_compile_model_wraps_and_unwraps():
    net = torch.nn.Linear(3, 2)
    assert compile_model(net, False) is net
    compiled = compile_model(net, True)
    assert compiled is not net and unwrap(compiled) is net


def test_recipe_hash_unchanged_while_compile_is_off(synth_dir, tmp_path, monkeypatch):
    off, on = tiny_recipe(synth_dir, tmp_path, False), tiny_recipe(synth_dir, tmp_path, True)
    assert recipe_hash(off) != recipe_hash(on)
    current, asdict = recipe_hash(off), dataclasses.asdict

    def before_the_switch(recipe):  # the recipe as a checkpoint written before train.compile existed saw it
        raw = asdict(recipe)
        raw["train"].pop("compile")
        return raw

    monkeypatch.setattr(resume.dataclasses, "asdict", before_the_switch)
    assert recipe_hash(off) == current


def test_compiled_pretraining_matches_eager(synth_dir, tmp_path, monkeypatch):
    """aot_eager traces forward and backward through dynamo and AOTAutograd like inductor does,
    without inductor's minutes of C++ compilation on a CPU (the GPU check runs inductor)."""
    from evilm_core.pretrain.train import train_pretrain

    monkeypatch.setenv("EVILM_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    eager = train_pretrain(tiny_recipe(synth_dir, tmp_path / "eager", False))
    compiled = train_pretrain(tiny_recipe(synth_dir, tmp_path / "compiled", True))
    assert eager["step"] == compiled["step"] == 3
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(a) == len(b) == 3 and all(math.isfinite(x) for x in b)
    assert b == pytest.approx(a, rel=1e-3)
    # the checkpoint holds the plain model's keys (no `_orig_mod.` prefix): it loads anywhere
    from evilm_core.checkpoints import files as ckpt
    assert not any(k.startswith("_orig_mod") for k in ckpt.read_weights(tmp_path / "compiled" / "final"))
