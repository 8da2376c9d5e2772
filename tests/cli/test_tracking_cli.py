"""Tracking and pictures through the console script: `evilm pretrain` with `logging.tensorboard`
writes events that TensorBoard's own reader gives back equal to metrics.jsonl, and `evilm plot`
draws the run; its bad inputs are one-line errors (exit 2) naming the path."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from evilm_core.engine.tracking import scalars
from tests.helpers.cli import REPO, last_json, run_evilm

RECIPE = str(REPO / "recipes/synthetic/pretrain.yaml")


def sets(values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def run(synth_dir, tmp_path_factory) -> Path:
    """A tiny pre-training (MLM + VTM: no tokenizer or label cache needed) with TensorBoard on."""
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tracking") / "pretrain"
    run_evilm("pretrain", RECIPE, *sets({
        "model.video_encoder": "edgenext_xx_small", "model.image_size": 64, "data.image_size": 64,
        "model.text_layers": 1, "model.fusion_layers": 1, "model.fusion_dim": 96, "model.fusion_heads": 2,
        "model.codebook_size": 16, "loss.mvm": 0, "mvm.labels": "null", "mvm.tokenizer": "null",
        "data.num_workers": 0, "data.batch_size": 8, "train.epochs": 2, "train.log_every": 1,
        "data.train": synth_dir / "train.jsonl", "data.val": synth_dir / "val.jsonl", "output.dir": out,
        "logging.tensorboard": "true"}), "--json")
    return out


def test_tensorboard_events_equal_metrics_jsonl(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, list] = {}
    for row in rows:
        for tag, value in scalars(row).items():
            expected.setdefault(tag, []).append((row["step"], float(np.float32(value))))
    assert set(acc.Tags()["scalars"]) == set(expected)
    assert {"train/loss", "train/mlm_loss", "train/vtm_loss", "train/mlm_acc", "train/vtm_acc", "train/lr",
            "train/data_wait_share", "val/mlm_loss", "val/vtm_acc"} <= set(expected)
    for tag, points in expected.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == points, tag
    assert [s for s, _ in expected["train/loss"]] == list(range(1, 9))  # 28 clips / 8 -> 4 steps x 2 epochs
    assert [s for s, _ in expected["val/mlm_loss"]] == [4, 8]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_draws_the_run(run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pics" / "curves.png"
    result = last_json(run_evilm("plot", run, "--out", out, "--json").stdout)
    assert result["out"] == str(out) and result["rows"] == 10 and result["steps"] == [1, 8]
    assert result["panels"][:3] == ["total loss", "MLM loss", "VTM loss"] and "learning rate" in result["panels"]
    assert result["nonfinite"] == {}
    width, height = png_size(out)
    assert 800 <= width <= 3000 and 600 <= height <= 3000 and out.stat().st_size > 20_000
    human = run_evilm("plot", run)  # default: RUN_DIR/curves.png; a one-line result on stdout
    assert human.stdout.startswith(f"wrote {run / 'curves.png'}: ") and png_size(run / "curves.png") == (width, height)


def test_plot_bad_inputs_name_the_path(run, tmp_path):
    missing = run_evilm("plot", tmp_path / "nothing", check=False)
    assert missing.returncode == 2 and "no such run directory" in missing.stderr
    no_metrics = run_evilm("plot", run.parent, check=False)
    assert no_metrics.returncode == 2 and f"{run.parent} holds no metrics.jsonl" in no_metrics.stderr
    assert "below it have one: pretrain" in no_metrics.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    result = run_evilm("plot", empty, check=False)
    assert result.returncode == 2 and "metrics.jsonl is empty" in result.stderr and "Traceback" not in result.stderr
