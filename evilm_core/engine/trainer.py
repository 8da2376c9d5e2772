"""The project's one training loop: the tokenizer, pre-training and the qa, mc and retrieval
fine-tuning tasks plug into it (docs/design.md, "Training loop").

A `TrainTask` owns the model and says how to compute a loss on a batch, how to evaluate and
what to export at the end; the trainer owns everything else: data order, AdamW + schedule,
gradient accumulation and clipping, bf16 autocast, DDP, metrics.jsonl (and the TensorBoard and
W&B sinks: engine/tracking.py), atomic checkpoints, `--resume` to the exact batch (or refused:
engine/resume.py), and SIGINT/SIGTERM/SIGUSR1 -> checkpoint and stop (docs/reliability.md, "Signals").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from evilm_core.checkpoints import files as ckpt
from evilm_core.config.loader import save_yaml
from evilm_core.config.sections import RunSections
from evilm_core.data.dataset import collate_clips
from evilm_core.engine.distributed import DistInfo, barrier
from evilm_core.engine.optim import build_optimizer, lr_at
from evilm_core.engine.resume import (
    LAST_CHECKPOINT,
    check_identity,
    checkpoint_to_resume,
    replanned_batch,
    run_identity,
)
from evilm_core.engine.runtime import WorkerDeath, compile_model, environment, peak_memory, to_device
from evilm_core.engine.sampler import ResumableSampler
from evilm_core.engine.seed import rng_state, set_rng_state
from evilm_core.engine.tracking import RunLog
from evilm_core.errors import EvilmError, TrainingInterrupted
from evilm_core.evaluation.metrics import require_finite_metrics
from evilm_core.fs import atomic_write_text
from evilm_core.settings import RunSettings
from evilm_core.workers import WorkerInit

log = logging.getLogger("evilm.engine")
# SIGUSR1: what SLURM sends before a time limit or preemption (`--signal=USR1@120`)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class TrainTask(Protocol):
    model: nn.Module
    vocab: list[str]

    def loss(self, model: nn.Module, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def export(self, model: nn.Module, directory: Path) -> Path: ...


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch: int = 0  # micro-batches of this epoch already consumed
    skipped: int = 0  # clips skipped so far (undecodable)
    nonfinite: int = 0  # optimizer steps skipped so far for a NaN/Inf loss or gradient


class Trainer:
    def __init__(self, recipe: RunSections, task: TrainTask, dataset: Dataset, info: DistInfo, settings: RunSettings,
                 progress: Callable[..., None] | None = None):
        self.recipe, self.task, self.dataset, self.info, self.settings = recipe, task, dataset, info, settings
        self.progress = progress
        self.run_dir = Path(recipe.output.dir)
        self.model = task.model.to(info.device)
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.wrapped = self.model
        if info.world > 1:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.wrapped = compile_model(self.wrapped, recipe.train.compile)  # after DDP, as torch's DDP notes say
        # datasets that take (epoch, index) keys let the loader's workers persist across epochs
        self.persistent = bool(getattr(dataset, "epoch_keys", False))
        self.sampler = ResumableSampler(len(dataset), recipe.seed, info.rank, info.world, tag_epoch=self.persistent)
        t = recipe.train
        micro_per_epoch = math.ceil(len(self.sampler) / recipe.data.batch_size)
        self.steps_per_epoch = max(1, micro_per_epoch // t.grad_accum)
        self.total_steps = t.epochs * self.steps_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps) if t.epochs else t.max_steps
        self.pos = Position()
        self.window = _Window()  # metrics since the last metrics.jsonl row (spans epochs)
        self._stop_signal: int | None = None
        self.metrics_log = RunLog(self.run_dir, recipe.logging, info.is_main)  # metrics.jsonl + logging:
        self.nonfinite_run = 0  # consecutive steps skipped for a NaN/Inf loss or gradient
        self.identity = run_identity(recipe, dataset, info.world)  # what --resume compares
        self.replanned: list[str] = []  # what --replan accepted, for the result
        self._train_loader: DataLoader | None = None

    # ------------------------------------------------------------------ state
    def _trainer_state(self) -> dict:
        p = self.pos
        return {"step": p.step, "epoch": p.epoch, "batch": p.batch, "skipped": p.skipped, "nonfinite": p.nonfinite,
                "optimizer": self.optimizer.state_dict(), "rng": rng_state(), "batch_size": self.recipe.data.batch_size,
                **self.identity}

    def save(self) -> Path | None:
        """Write step_XXXXXXXX (once per step: the same step is never written twice) and prune."""
        path = self.run_dir / f"step_{self.pos.step:08d}"
        check_finite_weights(self.model, path)  # on every rank: all stop together
        if self.info.is_main and not ckpt.is_checkpoint(path):
            ckpt.write_checkpoint(path, self.model.state_dict(), self.recipe, self.task.vocab, self._trainer_state())
            ckpt.prune_checkpoints(self.run_dir, self.recipe.train.keep_checkpoints)
            atomic_write_text(self.run_dir / LAST_CHECKPOINT, json.dumps({"last": path.name, "step": self.pos.step}) + "\n")
            log.info("checkpoint %s", path)
        barrier()
        return path if self.info.is_main else None

    def resume(self, replan: bool = False) -> bool:
        last = checkpoint_to_resume(self.run_dir)
        if last is None:
            log.info("no checkpoint in %s; starting from scratch", self.run_dir)
            return False
        state = ckpt.read_trainer_state(last)
        self.replanned = check_identity(state, self.identity, last, replan)
        self.model.load_state_dict(ckpt.read_weights(last))
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.pos = Position(state["step"], state["epoch"], state["batch"], state["skipped"], state.get("nonfinite", 0))
        if self.replanned:
            self._replan(state)
        log.info("resumed from %s (step %d, epoch %d)", last, self.pos.step, self.pos.epoch)
        return True

    def _replan(self, state: dict) -> None:
        """--replan: keep the step (the LR follows the new total_steps from it) and convert this
        epoch's position through the clips already consumed."""
        batch, exact = replanned_batch(state, self.pos.batch, self.recipe.data.batch_size, self.info.world)
        if batch * self.recipe.data.batch_size >= len(self.sampler):
            self.pos.epoch, batch = self.pos.epoch + 1, 0
        self.pos.batch = batch
        log.warning("--replan: %s; continuing at step %d of %d, epoch %d batch %d%s", "; ".join(self.replanned),
                    self.pos.step, self.total_steps, self.pos.epoch, batch,
                    "" if exact else " (the new global batch does not divide the clips consumed: up to one "
                    "batch of this epoch's clips is seen twice)")

    def _log_row(self, row: dict) -> None:
        self.metrics_log.write(row)  # rank 0 holds the sinks, the other ranks none

    # ------------------------------------------------------------------ loop
    def _signal(self, signum, _frame) -> None:
        log.warning("signal %d: finishing this step, writing a checkpoint, then stopping", signum)
        self._stop_signal = signum

    def _should_stop(self) -> bool:
        return self._any_rank(bool(self._stop_signal))

    def _any_rank(self, value: bool) -> bool:
        """True on every rank when `value` is true on one (all ranks take the same branch)."""
        flag = torch.tensor([1.0 if value else 0.0])
        if self.info.world > 1:
            flag = flag.to(self.info.device)
            dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def _loader(self) -> DataLoader:
        """The training loader, made once: its workers persist across epochs (the sampler tags each
        index with its epoch), so an epoch does not re-spawn them with a fresh copy of the dataset."""
        d = self.recipe.data
        self.sampler.set_epoch(self.pos.epoch, skip=self.pos.batch * d.batch_size)
        self.dataset.set_epoch(self.pos.epoch)
        if self._train_loader is None or not self.persistent:
            # An explicit generator: creating the loader must not consume the global RNG (resume exactness).
            self._train_loader = DataLoader(
                self.dataset, batch_size=d.batch_size, sampler=self.sampler, collate_fn=collate_clips,
                generator=torch.Generator().manual_seed(self.recipe.seed), num_workers=d.num_workers,
                pin_memory=self.info.device.type == "cuda", persistent_workers=self.persistent and d.num_workers > 0,
                multiprocessing_context="spawn" if d.num_workers else None,
                worker_init_fn=WorkerInit() if d.num_workers else None)  # workers die with this process
        return self._train_loader

    def fit(self, resume: bool | str = False) -> dict[str, Any]:
        """Train to the end. `resume`: True continues the newest complete checkpoint exactly,
        "replan" also accepts another recipe, data or number of processes (engine/resume.py)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and ckpt.latest_checkpoint(self.run_dir) is not None:
            raise EvilmError(f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                             "or set output.dir to a new directory")
        resumed = bool(resume) and self.resume(replan=resume == "replan")
        # a fresh start drops an earlier attempt's rows (a kill before the first checkpoint), a resume those after it
        self.metrics_log.open(self.pos.step if resumed else None, self.recipe)
        env = environment(self.info.device)
        if self.info.is_main:
            save_yaml(self.recipe, self.run_dir / "config.yaml")
            atomic_write_text(self.run_dir / "environment.json", json.dumps(env, indent=2) + "\n", fsync=False)
        old = {s: signal.signal(s, self._signal) for s in STOP_SIGNALS}
        try:
            metrics = self._run()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            self.metrics_log.close()
        return {**metrics, "environment": env, **({"replanned": self.replanned} if self.replanned else {})}

    def _run(self) -> dict[str, Any]:
        t = self.recipe.train
        last_eval: dict[str, float] = {}
        while self.pos.step < self.total_steps:
            self._epoch()
            if self._stop_signal is not None or self.pos.step >= self.total_steps:
                break
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
            if t.eval_every == 0:
                last_eval = self._evaluate()
            if t.save_every == 0:
                self.save()
        if self._stop_signal is not None:
            path = self.save()
            raise TrainingInterrupted(self._stop_signal, self.pos.step, path or self.run_dir)
        # The loop leaves by `break` right after the last epoch, before its end-of-epoch eval:
        # evaluate the final weights here, so the reported metrics are those of the checkpoint.
        last_eval = self._evaluate()
        path = self.save()
        self._check_publishable(last_eval, path)
        final = self.task.export(self.model, self.run_dir / "final") if self.info.is_main else None
        in_sync = self._replicas_in_sync()
        return {"checkpoint": str(final or self.run_dir / "final"), "step": self.pos.step,
                "skipped": self.pos.skipped, "world_size": self.info.world, "replicas_in_sync": in_sync,
                "metrics": last_eval}

    def _check_publishable(self, last_eval: dict, checkpoint: Path | None) -> None:
        """A run that skipped non-finite steps publishes final/ only when a finite validation vouches
        for the weights it ended with: without one, finite but huge weights (an lr far too high skips
        3 of 4 updates and makes 1e5 of the fourth) would pass as a model (docs/reliability.md,
        "Non-finite numbers"). Validation ran on rank 0; every rank takes the same branch."""
        if not self._any_rank(bool(self.pos.nonfinite) and self.info.is_main and not last_eval):
            return
        raise EvilmError(
            f"run {self.run_dir}: {self.pos.nonfinite} of {self.pos.step} optimizer steps were skipped for a NaN/Inf "
            f"loss or gradient, and without a validation set nothing shows the weights it ended with are usable, so "
            f"final/ was not written (the last checkpoint, {checkpoint or self.run_dir}, is kept). Lower optim.lr and "
            "train again into a new output.dir, or let a validation decide: the same command with `--resume --replan "
            "--set data.val=FILE` evaluates the last checkpoint and writes final/ if the metrics are finite")

    def _replicas_in_sync(self) -> bool:
        """Do all ranks end with bit-identical weights? (DDP keeps them so; a False here means a
        rank-local update slipped in, e.g. an unsynchronised buffer.)"""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        if self.info.world == 1:
            return True
        digests: list = [None] * self.info.world
        dist.all_gather_object(digests, digest.hexdigest())
        if len(set(digests)) > 1:
            log.error("replicas diverged: weight digests per rank %s", digests)
        return len(set(digests)) == 1

    def _evaluate(self) -> dict[str, float]:
        metrics = {}
        if self.info.is_main:
            self.model.eval()
            with torch.no_grad(), self.settings.autocast():
                metrics = require_finite_metrics(self.task.evaluate(self.model), f"validation at step {self.pos.step}")
            self.model.train()
            if metrics:  # a recipe without a validation set has nothing to report: no empty row or line
                self._log_row({"step": self.pos.step, "epoch": self.pos.epoch, "split": "val", **metrics})
                log.info("eval step %d: %s", self.pos.step, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        barrier()
        return metrics

    def _epoch(self) -> None:
        t, accum = self.recipe.train, self.recipe.train.grad_accum
        self.model.train()
        micro, batches = 0, iter(WorkerDeath(self._loader()))
        while True:
            tic = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            self.window.data_wait += time.perf_counter() - tic  # the step waited this long for data
            self.pos.batch += 1
            self._count_skips(batch)
            if batch["size"] == 0:
                continue
            sync = (micro + 1) % accum == 0
            ctx = self.wrapped.no_sync() if (self.info.world > 1 and not sync) else nullcontext()
            with ctx, self.settings.autocast():
                loss, parts = self.task.loss(self.wrapped, to_device(batch, self.info.device), self._generator())
            with ctx:
                (loss / accum).backward()
            micro += 1
            self.window.add(parts, batch["size"] * self.info.world, accum)
            if not sync:
                continue
            self._optimizer_step()
            self.window.steps += 1
            if self.pos.step % t.log_every == 0 or self.pos.step == self.total_steps:
                self._log_row({"step": self.pos.step, "epoch": self.pos.epoch,
                               "lr": self.optimizer.param_groups[0]["lr"], **self.window.row(),
                               "skipped": self.pos.skipped, "skipped_nonfinite": self.pos.nonfinite,
                               **peak_memory(self.info.device)})
                self.window = _Window()
            if self.progress:
                self.progress(self.pos.step, self.total_steps, loss=float(parts.get("loss", loss.item())))
            if t.eval_every and self.pos.step % t.eval_every == 0:
                self._evaluate()
                self.window.restart_clock()  # clips/s measures training, not evaluation
            if t.save_every and self.pos.step % t.save_every == 0:
                self.save()
                self.window.restart_clock()
            if self.pos.step >= self.total_steps or self._should_stop():
                return

    def _generator(self) -> torch.Generator:
        """Randomness of this micro-batch's step (masks, negatives): a function of the position
        only, so a resumed run draws what the interrupted one would have."""
        p = self.pos
        seed = hash((self.recipe.seed, p.epoch, p.batch, self.info.rank)) % (2**63)
        return torch.Generator().manual_seed(seed)

    def _optimizer_step(self) -> None:
        """One update, or none when the loss or a gradient is NaN/Inf: the step is counted as skipped
        (gradients are all-reduced, so every rank decides the same), and too many in a row stop the run."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.pos.step, self.total_steps, self.recipe.optim)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.recipe.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else grad_norm(params)
        if bool(torch.isfinite(norm)):
            self.optimizer.step()
            self.nonfinite_run = 0
        else:
            self.pos.nonfinite, self.nonfinite_run = self.pos.nonfinite + 1, self.nonfinite_run + 1
            log.warning("step %d: the loss or a gradient is NaN/Inf; update skipped (%d in a row)", self.pos.step,
                        self.nonfinite_run)
            if self.nonfinite_run >= self.recipe.train.max_nonfinite:
                last = ckpt.latest_checkpoint(self.run_dir)
                kept = f"the last checkpoint, {last}, holds finite weights" if last else "no checkpoint was written"
                raise EvilmError(f"training diverged: {self.nonfinite_run} steps in a row had a NaN/Inf loss or "
                                 f"gradient (step {self.pos.step}); {kept}. Lower optim.lr or raise "
                                 "train.max_nonfinite")
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1

    def _count_skips(self, batch: dict) -> None:
        for video, reason, detail in batch["skipped"]:
            self.pos.skipped += 1
            if self.pos.skipped <= 20:
                log.warning("skipped %s (%s%s)", video, reason, f": {detail}" if detail else "")
            elif self.pos.skipped == 21:
                log.warning("more clips skipped; the count goes on in metrics.jsonl")


class _Window:
    """Running sums of the step metrics between two metrics.jsonl rows, and the clip rate."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps, self.clips, self.tic = 0, 0, time.perf_counter()
        self.data_wait = 0.0  # seconds spent waiting for the loader
        self.clock_steps = 0  # steps done before the clock last restarted

    def add(self, parts: dict[str, float], clips: int, accum: int) -> None:
        for k, v in parts.items():
            if math.isfinite(v):  # a skipped, non-finite step is counted apart (skipped_nonfinite)
                self.sums[k] = self.sums.get(k, 0.0) + v / accum
        self.clips += clips

    def restart_clock(self) -> None:
        self.clips, self.tic, self.data_wait, self.clock_steps = 0, time.perf_counter(), 0.0, self.steps

    def row(self) -> dict[str, float]:
        elapsed = max(1e-9, time.perf_counter() - self.tic)
        return {**{k: v / max(1, self.steps) for k, v in self.sums.items()}, "clips_per_s": self.clips / elapsed,
                "step_s": elapsed / max(1, self.steps - self.clock_steps),
                "data_wait_s": self.data_wait / max(1, self.steps - self.clock_steps),
                "data_wait_share": self.data_wait / elapsed}


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global l2 norm of the gradients (NaN/Inf if any gradient is), without changing them."""
    if not params:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params]))


def check_finite_weights(model: nn.Module, where: Path) -> None:
    """A checkpoint never holds NaN/Inf weights: refuse to write one (the previous one stays)."""
    bad = ckpt.nonfinite_tensors(model.state_dict())
    if bad:
        raise EvilmError(f"not writing {where}: {len(bad)} weight tensors are NaN or infinite (e.g. {bad[0]}); the "
                         "run diverged. The last complete checkpoint is intact; lower optim.lr and --resume from it")
