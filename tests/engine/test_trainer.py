"""The shared training loop (engine/trainer.py) on a toy task: steps per epoch, gradient
accumulation, metrics.jsonl rows, checkpoints and final/, refusal to overwrite a run, and
SIGTERM -> checkpoint -> --resume giving the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.checkpoints import files as ckpt
from evilm_core.config.sections import DataConfig, OptimConfig, OutputConfig, RunSections, TrainConfig
from evilm_core.engine.distributed import DistInfo
from evilm_core.engine.trainer import Trainer
from evilm_core.errors import EvilmError, TrainingInterrupted
from evilm_core.settings import RunSettings


class ToyData(torch.utils.data.Dataset):
    """y = x . w + noise; item 3 is an undecodable clip (a skip marker, as ClipDataset returns)."""

    def __init__(self, n: int = 20, skip: tuple[int, ...] = (3,)):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
        self.skip, self.epochs = skip, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        if i in self.skip:
            return {"index": i, "skip": (f"v{i}.mp4", "corrupt", "")}
        return {"index": i, "x": self.x[i], "y": self.y[i]}


class ToyTask:
    """A linear regression; `noisy`: the loss draws from the step's generator (like masks and
    VTM negatives do); `stop_at`: SIGTERM arrives during that loss call."""

    vocab = None

    def __init__(self, stop_at: int | None = None, noisy: bool = True):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.stop_at, self.noisy, self.calls, self.evaluations = stop_at, noisy, 0, 0

    def loss(self, model, batch, gen):
        self.calls += 1
        if self.calls == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or SLURM's preemption does mid-step
        noise = torch.rand((), generator=gen) if self.noisy else 0.0  # per-step randomness: replayed on resume
        loss = F.mse_loss(model(batch["x"]).squeeze(-1), batch["y"]) * (1 + 0.01 * noise)
        return loss, {"loss": float(loss.detach())}

    def evaluate(self, model):
        self.evaluations += 1
        return {"mse": mse(model)}

    def export(self, model, directory: Path) -> Path:
        return ckpt.write_checkpoint(directory, model.state_dict(), {"format": "toy"})


@torch.no_grad()
def mse(model: nn.Module) -> float:
    data = ToyData(skip=())
    return float(F.mse_loss(model(data.x).squeeze(-1), data.y))


def recipe(run_dir: Path, batch_size: int = 4, **train) -> RunSections:
    return RunSections(kind="toy", seed=3, data=DataConfig(batch_size=batch_size, num_workers=0, image_size=64),
                       optim=OptimConfig(lr=0.2, schedule="constant", weight_decay=0.0),
                       train=TrainConfig(**{"epochs": 2, "log_every": 1, "device": "cpu", **train}),
                       output=OutputConfig(dir=str(run_dir)))


def rows(run_dir: Path) -> tuple[list[dict], list[dict]]:
    all_rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in all_rows if "split" not in r], [r for r in all_rows if r.get("split") == "val"]


def fit(run_dir: Path, task: ToyTask | None = None, data: ToyData | None = None, resume: bool = False,
        batch_size: int = 4, **train):
    task = task or ToyTask()
    trainer = Trainer(recipe(run_dir, batch_size, **train), task, data or ToyData(), DistInfo(), RunSettings())
    return trainer, task, trainer.fit(resume=resume)


def test_a_run_writes_metrics_checkpoints_and_final(tmp_path):
    run = tmp_path / "run"
    data = ToyData()
    start = mse(ToyTask().model)
    trainer, task, result = fit(run, data=data, keep_checkpoints=1)
    assert trainer.steps_per_epoch == 5 and trainer.total_steps == 10  # 20 clips, batch 4
    assert result["step"] == 10 and result["skipped"] == 2 and result["world_size"] == 1
    assert result["replicas_in_sync"] and result["checkpoint"] == str(run / "final")
    assert data.epochs == [0, 1]
    train_rows, val_rows = rows(run)
    assert [r["step"] for r in train_rows] == list(range(1, 11))
    assert all({"loss", "lr", "clips_per_s", "skipped", "epoch"} <= set(r) for r in train_rows)
    assert train_rows[-1]["skipped"] == 2 and train_rows[0]["lr"] == 0.2
    assert [r["step"] for r in val_rows] == [5, 10]  # eval_every 0: each epoch end, the last on the final weights
    assert result["metrics"] == {"mse": val_rows[-1]["mse"]} and task.evaluations == 2
    assert [p.name for p in ckpt.step_checkpoints(run)] == ["step_00000010"]  # keep_checkpoints 1
    assert torch.equal(ckpt.read_weights(run / "final")["weight"], task.model.weight.detach())
    assert ckpt.read_yaml_config(run)["train"]["epochs"] == 2  # config.yaml: the run's recipe
    state = ckpt.read_trainer_state(run / "step_00000010")
    assert (state["step"], state["epoch"], state["skipped"], state["world"]) == (10, 1, 2, 1)
    assert val_rows[-1]["mse"] < val_rows[0]["mse"] < start  # it learns


def test_max_steps_and_eval_and_save_every(tmp_path):
    trainer, task, result = fit(tmp_path / "run", max_steps=7, eval_every=3, save_every=3, keep_checkpoints=5)
    assert trainer.total_steps == 7 and result["step"] == 7
    _, val_rows = rows(tmp_path / "run")
    assert [r["step"] for r in val_rows] == [3, 6, 7]
    assert [p.name for p in ckpt.step_checkpoints(tmp_path / "run")] == ["step_00000003", "step_00000006",
                                                                           "step_00000007"]


class NoValidationTask(ToyTask):
    def evaluate(self, model):  # a recipe without data.val
        self.evaluations += 1
        return {}


def test_no_validation_set_writes_no_empty_rows_or_lines(tmp_path, caplog):
    with caplog.at_level("INFO", logger="evilm"):
        _, task, result = fit(tmp_path / "run", task=NoValidationTask())
    train_rows, val_rows = rows(tmp_path / "run")
    assert task.evaluations == 2 and len(train_rows) == 10 and val_rows == [] and result["metrics"] == {}
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval step")]


def test_grad_accum_two_half_batches_give_the_weights_of_one_full_batch(tmp_path):
    data = ToyData(skip=())
    full, _, _ = fit(tmp_path / "full", ToyTask(noisy=False), data, epochs=1)
    half, _, _ = fit(tmp_path / "half", ToyTask(noisy=False), data, epochs=1, batch_size=2, grad_accum=2)
    assert half.steps_per_epoch == full.steps_per_epoch == 5 and half.pos.step == full.pos.step == 5
    torch.testing.assert_close(half.model.weight, full.model.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(half.model.bias, full.model.bias, atol=1e-6, rtol=1e-5)


def test_a_run_directory_with_checkpoints_needs_resume(tmp_path):
    fit(tmp_path / "run", epochs=1)
    with pytest.raises(EvilmError, match="already holds checkpoints; pass --resume"):
        fit(tmp_path / "run", epochs=1)


def test_sigterm_writes_a_checkpoint_and_resume_continues_exactly(tmp_path):
    _, _, reference = fit(tmp_path / "ref")
    ref_rows, _ = rows(tmp_path / "ref")
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as err:
        fit(run, task=ToyTask(stop_at=7))  # in the second epoch's second step: it finishes, then stops
    assert err.value.step == 7 and err.value.signal == signal.SIGTERM
    assert err.value.checkpoint == str(run / "step_00000007")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    state = ckpt.read_trainer_state(run / "step_00000007")
    assert (state["step"], state["epoch"], state["batch"]) == (7, 1, 2)
    assert [r["step"] for r in rows(run)[0]] == list(range(1, 8))
    trainer, _, result = fit(run, resume=True)
    assert result["step"] == 10 and result["skipped"] == reference["skipped"] == 2
    resumed_rows, _ = rows(run)
    assert [r["step"] for r in resumed_rows] == list(range(1, 11))
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in ref_rows]
    final, ref_final = ckpt.read_weights(run / "final"), ckpt.read_weights(tmp_path / "ref" / "final")
    assert all(torch.equal(final[k], ref_final[k]) for k in ref_final)


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    _, _, result = fit(tmp_path / "run", resume=True, epochs=1)
    assert result["step"] == 5
