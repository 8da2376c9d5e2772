"""The GPU check's batch search (benchmarks/gpu_check.py, part `bisect`), run as a child process:
the largest bf16 pre-training batch of the recipe's model that fits, by doubling then bisection.

Each probe runs a few fused MLM + VTM + MVM steps (forward, backward, AdamW) on random clips
(benchmarks/pretrain_throughput.py's batch: data loading does not change GPU memory) and catches
CUDA's out-of-memory error itself, frees the cache and goes on. One JSON line per probe on
stdout, as it goes, so a parent that kills it at its time cap still has the probes so far; the
last line is {"max_batch": ..., "oom_at": ...}.

    python benchmarks/gpu_check_probe.py '{"recipe": "recipes/webvid.yaml", "device": "cuda", ...}'
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import fake_batch  # noqa: E402

from evilm_core.engine.optim import build_optimizer  # noqa: E402
from evilm_core.pretrain.objectives import PretrainTask  # noqa: E402
from evilm_core.recipes import load_recipe  # noqa: E402


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


class Prober:
    def __init__(self, spec: dict):
        overrides = [*spec["model"], f"data.image_size={spec['size']}", "train.precision=bf16"]
        overrides += [f"model.vocab_size={spec['vocab']}"] if spec["vocab"] else []
        self.recipe = load_recipe(spec["recipe"], overrides)
        self.device, self.steps = torch.device(spec["device"]), spec["steps"]
        m = self.recipe.model
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(m.vocab_size - 5)]
        self.task = PretrainTask(self.recipe, vocab, None)
        self.model = self.task.model.to(self.device).train()
        self.opt = build_optimizer(self.model, self.recipe.optim)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _steps(self, batch_size: int) -> float:
        """Seconds per step; its tensors die with this frame (so an OOM frees them)."""
        batch = fake_batch(self.recipe, batch_size, self.device)
        self.sync()
        tic = time.perf_counter()
        for step in range(self.steps):
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                loss, _ = self.task.loss(self.model, batch, torch.Generator().manual_seed(step))
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.sync()
        return (time.perf_counter() - tic) / self.steps

    def probe(self, batch_size: int) -> dict:
        row: dict = {"batch": batch_size}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            row.update(ok=True, step_s=self._steps(batch_size))
            if self.device.type == "cuda":
                row["max_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not out_of_memory(e):
                raise
            row.update(ok=False, error="out of memory")
        self.opt.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        return row


def search(prober: Prober, start: int, limit: int, step: int, deadline: float) -> tuple[int, int | None]:
    """Double from `start` until a probe fails or `limit`, then bisect to `step` clips."""
    lo, hi, b = 0, None, start
    while time.monotonic() < deadline:
        if prober.probe(b)["ok"]:
            lo = b
            if b >= limit:
                break
            b = min(2 * b, limit)
        else:
            hi = b
            break
    while hi is not None and hi - lo > step and time.monotonic() < deadline:
        mid = max(lo + step, (lo + hi) // 2 // step * step)
        if mid >= hi:
            break
        if prober.probe(mid)["ok"]:
            lo = mid
        else:
            hi = mid
    return lo, hi


def main() -> None:
    spec = json.loads(sys.argv[1])
    deadline = time.monotonic() + spec["budget_s"]
    prober = Prober(spec)
    lo, hi = search(prober, spec["start"], spec["limit"], spec["step"], deadline)
    print(json.dumps({"max_batch": lo, "oom_at": hi, "granularity": spec["step"],
                      "stopped_by_time": time.monotonic() >= deadline}), flush=True)


if __name__ == "__main__":
    main()
