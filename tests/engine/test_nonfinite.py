"""A diverging run never passes as a result: NaN/Inf steps are skipped and counted, too many in a
row stop the run with the last finite checkpoint intact, NaN weights are never written, and
metrics refuse non-finite scores. Also: the recipe's ranges, a torn metrics.jsonl line, and
replacing a checkpoint of the same name."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from evilm_core.checkpoints import files as ckpt
from evilm_core.config.sections import DataConfig, OptimConfig, TrainConfig
from evilm_core.engine.runtime import MetricsLog
from evilm_core.errors import EvilmError
from evilm_core.evaluation.metrics import require_finite_metrics, retrieval_metrics
from evilm_core.fs import temp_sibling
from tests.engine.test_trainer import ToyTask, fit, rows


class NaNTask(ToyTask):
    """The toy regression whose loss is NaN on the calls listed in `bad`."""

    def __init__(self, bad: set[int]):
        super().__init__(noisy=False)
        self.bad = bad

    def loss(self, model, batch, gen):
        self.calls += 1
        loss = F.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])
        if self.calls in self.bad:
            loss = loss * float("nan")
        return loss, {"loss": float(loss.detach())}


def test_a_nan_step_is_skipped_counted_and_leaves_the_weights_finite(tmp_path):
    task = NaNTask(bad={2, 3})
    _, _, result = fit(tmp_path / "run", task=task)
    assert result["step"] == 10 and all(bool(torch.isfinite(p).all()) for p in task.model.parameters())
    train_rows, _ = rows(tmp_path / "run")
    assert train_rows[-1]["skipped_nonfinite"] == 2 and len(train_rows) == 10
    assert all(math.isfinite(r["loss"]) for r in train_rows if "loss" in r)  # a skipped step logs no loss
    assert ckpt.read_trainer_state(tmp_path / "run" / "step_00000010")["nonfinite"] == 2


def test_too_many_nan_steps_in_a_row_stop_the_run(tmp_path):
    task = NaNTask(bad=set(range(6, 100)))  # diverges in epoch 2, after the epoch-1 checkpoint
    with pytest.raises(EvilmError, match=r"training diverged: 3 steps in a row.*max_nonfinite"):
        fit(tmp_path / "run", task=task, max_nonfinite=3)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path / "run")] == ["step_00000005"]
    assert all(bool(torch.isfinite(t).all()) for t in ckpt.read_weights(tmp_path / "run" / "step_00000005").values())


class NoValidation(ToyTask):
    def evaluate(self, model):
        return {}


def test_nan_weights_are_never_written(tmp_path):
    task = NoValidation()
    with torch.no_grad():
        task.model.weight.fill_(float("inf"))
    with pytest.raises(EvilmError, match=r"not writing .*step_00000005.*NaN or infinite"):
        fit(tmp_path / "run", task=task, max_nonfinite=100)
    assert ckpt.step_checkpoints(tmp_path / "run") == []
    with pytest.raises(EvilmError, match=r"validation at step 5: mse is NaN or infinite"):  # with validation
        fit(tmp_path / "run2", task=_inf_task(), max_nonfinite=100)


def _inf_task() -> ToyTask:
    task = ToyTask()
    with torch.no_grad():
        task.model.weight.fill_(float("inf"))
    return task


def test_metrics_refuse_non_finite_scores():
    sim = torch.eye(4)
    sim[1, 2] = float("nan")
    with pytest.raises(EvilmError, match="1 of 16 text-video similarities are NaN or infinite"):
        retrieval_metrics(sim)
    with pytest.raises(EvilmError, match="validation: val_loss is NaN"):
        require_finite_metrics({"val_loss": float("nan"), "n": 3}, "validation")


@pytest.mark.parametrize("section, values, message", [
    (DataConfig, {"batch_size": 0}, "data.batch_size must be >= 1, got 0"),
    (DataConfig, {"batch_size": -4}, "data.batch_size must be >= 1, got -4"),
    (TrainConfig, {"grad_accum": 0}, "train.grad_accum must be >= 1"),
    (TrainConfig, {"log_every": 0}, "train.log_every must be >= 1"),
    (TrainConfig, {"epochs": -1}, "train.epochs must be >= 0"),
    (TrainConfig, {"epochs": 0}, "would train nothing"),
    (TrainConfig, {"device": "foo"}, "train.device must be auto, cpu, cuda or cuda:N, got 'foo'"),
    (OptimConfig, {"lr": 0.0}, "optim.lr must be > 0"),
])
def test_ranges_are_checked_when_the_recipe_is_read(section, values, message):
    with pytest.raises(ValueError, match=message):
        section(**values)


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    log = MetricsLog(tmp_path)
    log.path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    log.truncate(2)
    assert [json.loads(r)["step"] for r in log.path.read_text().splitlines()] == [1, 2]
    log.path.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(EvilmError, match=r"metrics.jsonl:2: not a JSON row"):
        log.truncate(3)


def test_replacing_a_checkpoint_keeps_one_complete_copy(tmp_path, monkeypatch):
    directory = tmp_path / "final"
    ckpt.write_checkpoint(directory, {"w": torch.zeros(2)}, {"format": "toy"})
    real_replace = ckpt.os.replace

    def crash_on_second(src, dst):  # a kill right after the old copy was moved aside
        if src == temp_sibling(directory) and temp_sibling(directory, "old").exists():
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(directory, {"w": torch.ones(2)}, {"format": "toy"})
    moved_aside = [p for p in tmp_path.iterdir() if p == temp_sibling(directory, "old")]
    assert len(moved_aside) == 1 and ckpt.is_checkpoint(moved_aside[0])  # the old copy is whole
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    ckpt.write_checkpoint(directory, {"w": torch.ones(2)}, {"format": "toy"})
    assert torch.equal(ckpt.read_weights(directory)["w"], torch.ones(2))
