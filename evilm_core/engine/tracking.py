"""Experiment tracking (docs/tracking.md): every metrics row goes to metrics.jsonl, the run's
source of truth, and to the optional sinks a recipe's `logging:` section turns on: TensorBoard
(RUN_DIR/tensorboard/) and Weights & Biases (RUN_DIR/wandb/). Only rank 0 logs.

A sink is opened once per process with the step the run resumed from (None: a fresh start).
A fresh start drops whatever an earlier attempt left (a kill before the first checkpoint); a
resumed one drops the rows after the checkpoint's step, which the run logs again: metrics.jsonl
rewrites its file, TensorBoard writes a purge marker that its reader honours, W&B keeps the
first value of a step it already has (the same one: a resumed run replays exactly).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import secrets
from pathlib import Path
from typing import Any, Protocol

from evilm_core.config.sections import LoggingConfig
from evilm_core.engine.runtime import MetricsLog
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text

log = logging.getLogger("evilm.engine")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "evilm-run-id"  # inside RUN_DIR/wandb/: the W&B run a --resume continues
NOT_SCALARS = ("step", "epoch", "split")  # row keys that say where a row is, not what was measured
# recipe switch -> (module that must import, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class MetricSink(Protocol):
    def open(self, resumed_step: int | None, recipe: Any) -> None: ...
    def write(self, row: dict) -> None: ...
    def close(self) -> None: ...


def scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row as tracker scalars: `train/<key>` or `val/<key>` (the row's split; a
    val row's `val_` prefix is dropped), numbers only (not step, epoch or split)."""
    split = row.get("split", "train")
    out = {}
    for key, value in row.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = key[len(split) + 1:] if key.startswith(f"{split}_") else key
        out[f"{split}/{name}"] = float(value)
    return out


def require(switch: str) -> None:
    """An EvilmError naming the extra to install when the package `logging.<switch>` needs is missing."""
    module, extra = EXTRAS[switch]
    if importlib.util.find_spec(module) is None:
        raise EvilmError(f"recipe key logging.{switch} needs the {module} package, which is not installed: "
                         f"pip install 'evilm[{extra}]' (or turn logging.{switch} off)")


class JsonlSink(MetricsLog):
    """metrics.jsonl (engine/runtime.py), the row format every other sink follows."""

    def open(self, resumed_step: int | None, recipe: Any = None) -> None:
        if resumed_step is None:
            self.clear()
        else:
            self.truncate(resumed_step)

    def close(self) -> None:
        pass  # every row is appended and closed as it comes


class TensorBoardSink:
    """Scalars for `tensorboard --logdir RUN_DIR/tensorboard`, one event file per process start."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = None

    def open(self, resumed_step: int | None, recipe: Any = None) -> None:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        if resumed_step is None:  # events of an attempt that kept no checkpoint
            for old in self.dir.glob("events.out.tfevents.*"):
                old.unlink()
        # purge_step: TensorBoard's reader drops the events logged at and after it by earlier attempts
        purge = None if resumed_step is None else resumed_step + 1
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=purge)

    def write(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=row["step"])
        self.writer.flush()  # a row every train.log_every steps: on disk as soon as metrics.jsonl's

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbSink:
    """A W&B run (mode offline or online) under RUN_DIR/wandb/; a --resume continues the same run."""

    def __init__(self, run_dir: str | Path, config: LoggingConfig):
        self.run_dir, self.config, self.run = Path(run_dir), config, None

    def open(self, resumed_step: int | None, recipe: Any = None) -> None:
        require("wandb")
        import wandb

        directory = self.run_dir / WANDB_DIR
        id_file = directory / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resumed_step is not None and id_file.is_file() else None
        run_id = run_id or secrets.token_hex(4)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(id_file, run_id + "\n", fsync=False)
        c = self.config
        settings = {"project": c.wandb_project, "name": c.run_name or self.run_dir.name, "id": run_id,
                    "resume": "allow", "mode": c.wandb, "dir": str(self.run_dir),
                    "config": dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else None}
        try:
            self.run = wandb.init(**settings)
        except Exception as err:  # wandb's own errors (no API key for online, no network): a user problem
            raise EvilmError(f"logging.wandb: {c.wandb}: wandb.init failed ({type(err).__name__}: {err}); "
                             "log in with `wandb login`, or use logging.wandb: offline and `wandb sync` later") from err

    def write(self, row: dict) -> None:
        values = scalars(row)
        if values:
            self.run.log(values, step=row["step"])

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class RunLog:
    """All sinks of one run: metrics.jsonl always, the others as `logging:` says; rank 0 only
    (other ranks keep none). The packages are checked on every rank, so all ranks fail together."""

    def __init__(self, run_dir: str | Path, config: LoggingConfig | None, is_main: bool):
        config = config or LoggingConfig()
        wanted = {"tensorboard": config.tensorboard, "wandb": config.wandb != "off"}
        for switch, on in wanted.items():
            if on:
                require(switch)
        self.sinks: list[MetricSink] = []
        if is_main:
            self.sinks.append(JsonlSink(run_dir))
            if wanted["tensorboard"]:
                self.sinks.append(TensorBoardSink(run_dir))
            if wanted["wandb"]:
                self.sinks.append(WandbSink(run_dir, config))

    def open(self, resumed_step: int | None, recipe: Any = None) -> None:
        for sink in self.sinks:
            sink.open(resumed_step, recipe)

    def write(self, row: dict) -> None:
        for sink in self.sinks:
            sink.write(row)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # a tracker that fails to close must not hide the run's own outcome
                log.exception("closing %s failed", type(sink).__name__)
