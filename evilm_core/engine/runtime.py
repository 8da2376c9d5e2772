"""What every stage's run needs besides its settings (evilm_core/settings.py), in one place each:
the model inside its DDP and compile wrappers, an evaluation DataLoader, the metrics.jsonl log,
and the record of the software and machine a run used (`environment`, written into every run
directory and --json)."""

from __future__ import annotations

import json
import logging
import os
import platform
import weakref
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from evilm_core.data.dataset import collate_clips
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_write_text
from evilm_core.workers import LOADER_PIPE_ERRORS, WorkerInit, loader_worker_death

log = logging.getLogger("evilm.engine")
METRICS_FILE = "metrics.jsonl"
# what a result depends on (float sums follow the thread count; docs/reliability.md, "Reproducible numbers")
RECORDED_PACKAGES = ("evilm", "torch", "timm", "transformers", "tokenizers", "numpy", "safetensors", "decord", "av",
                     "torchcodec")


def environment(device: torch.device | str | None = None) -> dict:
    """Library versions, threads and device of this process: written beside every result."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.device(device) if device is not None else torch.device("cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"versions": {"python": platform.python_version(), **versions}, "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "device": str(device), "gpu": gpu,
            "cpu": platform.processor() or platform.machine()}


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers (or the model itself)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if hasattr(model, "module") else model


def compile_model(model: nn.Module, enabled: bool) -> nn.Module:
    """`train.compile`: torch.compile the training model, DDP wrapper included (torch's DDP notes:
    wrap, then compile, so dynamo splits the graph at DDP's gradient buckets). The first steps
    compile (forward and backward); a new input shape, such as a short last batch, compiles again.
    Inductor generates Triton kernels on CUDA and C++ on the CPU (a C++ compiler is needed, and
    minutes); EVILM_COMPILE_BACKEND picks another torch.compile backend (the tests: aot_eager)."""
    if not enabled:
        return model
    backend = os.environ.get("EVILM_COMPILE_BACKEND", "inductor")
    log.info("train.compile: torch.compile (backend %s); the first steps compile the model", backend)
    return torch.compile(model, backend=backend)


def peak_memory(device: torch.device) -> dict[str, float]:
    """{"max_memory_mib": the most CUDA memory this process's tensors have held} on CUDA, else {}."""
    if device.type != "cuda":
        return {}
    return {"max_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20}


_EVAL_LOADERS: "weakref.WeakKeyDictionary[Dataset, dict]" = weakref.WeakKeyDictionary()


class WorkerDeath:
    """A DataLoader whose worker death (a decoder's segfault, the out-of-memory killer) ends the run
    as an EvilmError that says what happened and what to do, not as a traceback. A DataLoader
    cannot give the clip back (docs/reliability.md, "Workers"): `evilm data check` finds it."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            yield from self.loader
        except (RuntimeError, *LOADER_PIPE_ERRORS) as err:
            death = loader_worker_death(err, pipe_errors=True)
            if death is None:
                raise
            raise death from None


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, collate_fn: Callable = collate_clips,
                pin_memory: bool = False, worker_init_fn: Callable | None = None) -> WorkerDeath:
    """In-order batches for evaluation, labelling and indexing. Workers are spawned, never forked
    (decord readers and CUDA state do not survive a fork), and persist: evaluating the same
    dataset again (validation every epoch) reuses the loader and its workers instead of
    spawning fresh ones with a fresh copy of the dataset. They end when the dataset is freed, and
    with this process however it ends (evilm_core/workers.py)."""
    if not num_workers:
        return WorkerDeath(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                                      pin_memory=pin_memory))
    key = (batch_size, num_workers, collate_fn, pin_memory, worker_init_fn)
    try:
        cached = _EVAL_LOADERS.setdefault(dataset, {})
    except TypeError:  # a dataset that cannot be weakly referenced: no reuse
        cached = {}
    if key not in cached:
        cached[key] = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                                 num_workers=num_workers, pin_memory=pin_memory,
                                 worker_init_fn=WorkerInit(worker_init_fn),
                                 multiprocessing_context="spawn", persistent_workers=True)
    return WorkerDeath(cached[key])


def eval_batches(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device, counts: dict):
    """Usable batches in order, on `device`; skipped clips are added to counts['skipped']."""
    for batch in eval_loader(dataset, batch_size, num_workers):
        counts["skipped"] = counts.get("skipped", 0) + len(batch["skipped"])
        if batch["size"]:
            yield to_device(batch, device)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class MetricsLog:
    """A run directory's metrics.jsonl: one JSON object per row, appended as training goes."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE

    def write(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def truncate(self, step: int) -> None:
        """Drop rows after `step`: a resumed run writes them again. A torn last line (a crash in the
        middle of an append) is dropped too; a damaged line before it is an error naming it."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        rows = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):
                    break  # torn by a crash mid-append: that row is written again
                raise EvilmError(f"{self.path}:{n}: not a JSON row; fix or delete the line, then --resume") from None
            if row.get("step", 0) <= step:
                rows.append(line)
        atomic_write_text(self.path, "".join(r + "\n" for r in rows), fsync=False)
