"""Experiment tracking (engine/tracking.py) on the toy task of test_trainer.py: the recipe's
`logging:` section, TensorBoard events that equal metrics.jsonl also across a crash and
--resume (no step twice), W&B offline runs continued by --resume, and the missing-package error."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from evilm_core.config.loader import from_dict
from evilm_core.config.sections import LoggingConfig
from evilm_core.engine import tracking
from evilm_core.engine.distributed import DistInfo
from evilm_core.engine.trainer import Trainer
from evilm_core.errors import EvilmError, RecipeError
from evilm_core.settings import RunSettings
from tests.engine.test_trainer import ToyData, ToyTask, recipe, rows


class CrashingTask(ToyTask):
    """A crash (not a signal: no checkpoint at the crash) during the loss call `crash_at`."""

    def __init__(self, crash_at: int):
        super().__init__()
        self.crash_at = crash_at

    def loss(self, model, batch, gen):
        if self.calls + 1 == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().loss(model, batch, gen)


def fit(run_dir: Path, logging: LoggingConfig, task=None, resume: bool = False, **train) -> dict:
    r = dataclasses.replace(recipe(run_dir, **train), logging=logging)
    return Trainer(r, task or ToyTask(), ToyData(), DistInfo(), RunSettings()).fit(resume=resume)


def crash_then_resume(run_dir: Path, logging: LoggingConfig) -> None:
    """Checkpoint at step 6, rows up to 7 logged, crash in step 8; the resume logs 7-10 again."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(run_dir, logging, CrashingTask(crash_at=8), save_every=3)  # one loss call per step
    assert [r["step"] for r in rows(run_dir)[0]] == list(range(1, 8))
    fit(run_dir, logging, resume=True, save_every=3)
    assert [r["step"] for r in rows(run_dir)[0]] == list(range(1, 11))


def test_scalars_name_split_and_term():
    assert tracking.scalars({"step": 4, "epoch": 0, "loss": 1.5, "lr": 1e-3, "skipped": 2}) == {
        "train/loss": 1.5, "train/lr": 1e-3, "train/skipped": 2.0}
    assert tracking.scalars({"step": 4, "epoch": 0, "split": "val", "val_mlm_acc": 0.5, "word_mAP": 0.25,
                             "note": "text", "flag": True}) == {"val/mlm_acc": 0.5, "val/word_mAP": 0.25}


def test_logging_section_keys_and_yaml_off():
    assert LoggingConfig() == LoggingConfig(tensorboard=False, wandb="off", wandb_project="evilm", run_name=None)
    assert from_dict(LoggingConfig, {"wandb": False}, "logging").wandb == "off"  # YAML 1.1 reads a bare `off` as false
    assert from_dict(LoggingConfig, {"wandb": "offline", "tensorboard": True}, "logging").wandb == "offline"
    with pytest.raises(RecipeError, match="logging.wandb must be off, offline or online, got true"):
        from_dict(LoggingConfig, {"wandb": True}, "logging")
    with pytest.raises(RecipeError, match="logging.wandb"):
        from_dict(LoggingConfig, {"wandb": "cloud"}, "logging")


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "wandb")
                        else real(name, *a))
    with pytest.raises(EvilmError, match=r"logging.tensorboard needs the tensorboard package.*pip install "
                                         r"'evilm\[tensorboard\]'"):
        tracking.RunLog(tmp_path, LoggingConfig(tensorboard=True), is_main=True)
    with pytest.raises(EvilmError, match=r"pip install 'evilm\[wandb\]'"):
        tracking.RunLog(tmp_path, LoggingConfig(wandb="offline"), is_main=False)  # every rank checks: all fail together
    assert [type(s).__name__ for s in tracking.RunLog(tmp_path, LoggingConfig(), True).sinks] == ["JsonlSink"]
    assert tracking.RunLog(tmp_path, LoggingConfig(), False).sinks == []  # other ranks log nothing


def read_tensorboard(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard stores it: float32 values, step by step."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for tag, value in tracking.scalars(row).items():
            expected.setdefault(tag, []).append((row["step"], float(np.float32(value))))
    return expected


def test_tensorboard_equals_metrics_jsonl_across_a_crash_and_resume(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    crash_then_resume(run, LoggingConfig(tensorboard=True))
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per process start
    seen, expected = read_tensorboard(run / "tensorboard"), expected_scalars(run)
    assert {"train/loss", "train/lr", "train/clips_per_s", "train/skipped", "val/mse"} <= set(seen)
    assert seen == expected  # steps 1-10 once each; step 7's clips_per_s is the resumed run's, not the crashed one's


def test_a_fresh_start_drops_the_events_of_an_attempt_without_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(run, LoggingConfig(tensorboard=True), CrashingTask(crash_at=4), epochs=1)  # before the first checkpoint
    assert [s for s, _ in read_tensorboard(run / "tensorboard")["train/loss"]] == [1, 2, 3]
    fit(run, LoggingConfig(tensorboard=True), epochs=1)  # nothing to resume: a fresh start
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert read_tensorboard(run / "tensorboard") == expected_scalars(run)


def test_wandb_offline_run_is_continued_by_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_CONFIG_DIR": tmp_path / "cfg", "WANDB_CACHE_DIR": tmp_path / "cache",
                        "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = tmp_path / "run"
    crash_then_resume(run, LoggingConfig(wandb="offline", run_name="toy"))
    run_id = (run / "wandb" / tracking.WANDB_ID_FILE).read_text().strip()
    attempts = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(attempts) == 2  # the crashed attempt and the resumed one: one W&B run id, synced together
    for attempt in attempts:
        data = (attempt / f"run-{run_id}.wandb").read_bytes()
        assert b"train/loss" in data and b"train/lr" in data
    assert b"val/mse" in (attempts[-1] / f"run-{run_id}.wandb").read_bytes()
