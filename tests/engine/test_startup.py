"""The start of every training run (engine/startup.py): the resolved recipe is a copy, the
training manifest must be named, and rank 0 writes the run's vocabulary and class files."""

from __future__ import annotations

import copy
import json

import pytest

from evilm_core.config.sections import DataConfig, OutputConfig, TrainConfig
from evilm_core.data.records.table import RecordTable
from evilm_core.engine.startup import resolved, start_run, write_run_files
from evilm_core.errors import EvilmError
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.text.vocab import read_vocab
from tests.helpers.models import VOCAB, tiny_config


def test_resolved_leaves_the_original_recipe_unchanged():
    recipe = PretrainRecipe(model=tiny_config(vocab_size=0), data=DataConfig(image_size=64, num_frames=2), seed=4)
    before = copy.deepcopy(recipe)
    out = resolved(recipe, vocab_size=20, dropout=0.2)
    assert out is not recipe and out.model is not recipe.model
    assert out.model.vocab_size == 20 and out.model.dropout == 0.2
    assert recipe == before and recipe.model.vocab_size == 0 and recipe.model.dropout == 0.0
    assert out.data == recipe.data and out.seed == 4 and type(out) is PretrainRecipe
    ft = FinetuneRecipe(task="qa", model=tiny_config(), data=DataConfig(image_size=64, num_frames=2))
    assert resolved(ft, vocab_size=7).task == "qa" and ft.model.vocab_size == 20


def test_start_run_needs_the_training_manifest(tmp_path):
    recipe = PretrainRecipe(model=tiny_config(), data=DataConfig(image_size=64, num_frames=2),
                            output=OutputConfig(dir=str(tmp_path / "run")))
    with pytest.raises(EvilmError, match="data.train is not set"):
        start_run(recipe)


def test_start_run_reads_the_manifest_and_write_run_files_fills_the_run_dir(tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"video": f"v{i}.mp4", "caption": f"w{i}"}) + "\n" for i in range(3)))
    recipe = PretrainRecipe(model=tiny_config(), data=DataConfig(train=str(manifest), image_size=64, num_frames=2),
                            train=TrainConfig(device="cpu"), output=OutputConfig(dir=str(tmp_path / "run")))
    run = start_run(recipe)
    assert run.info.rank == 0 and run.info.world == 1 and run.info.is_main and str(run.info.device) == "cpu"
    assert [r.video for r in run.records] == ["v0.mp4", "v1.mp4", "v2.mp4"]
    # only the records, as a memory-mapped table that DataLoader workers share (docs/data.md)
    assert run.run_dir == tmp_path / "run" and [p.name for p in run.run_dir.iterdir()] == ["records"]
    assert isinstance(run.records, RecordTable) and run.records[1].caption == "w1"
    write_run_files(run, VOCAB, {"answers.txt": "yes\nno\n"})
    assert read_vocab(run.run_dir) == VOCAB and (run.run_dir / "answers.txt").read_text() == "yes\nno\n"
