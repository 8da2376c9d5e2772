"""CPU loader workers that decode AND compute (docs/performance.md, "Indexing on the CPU"): the
pattern of `evilm retrieve index` and `evilm predict`. On the CPU each loader worker collates
its clips and runs the model on them with its own copy of it, so decoding and computing of
different batches overlap on separate cores without any process oversubscribing them
(`settings.index_plan` shares the threads out); the batch carries small results back to the
main process, not pixels. With a GPU the workers only decode and the main process computes.
"""

from __future__ import annotations

from typing import Callable

import torch

from evilm_core.data.dataset import collate_clips
from evilm_core.errors import EvilmError
from evilm_core.settings import autocast

# opener(threads) -> compute(batch) -> fields to add to the batch (it may pop "pixels")
Opener = Callable[[int], Callable[[dict], dict]]


class ComputeInWorker:
    """The collate_fn of a command whose CPU loader workers compute: in each worker, stack the
    clips, then add `compute(batch)`'s fields, where compute = `opener(threads)` is built on
    first use in that worker (`threads` intra-op threads) and kept. `opener` must pickle (a
    top-level function, or a functools.partial of one): it travels to the spawned workers.
    An EvilmError while opening (weights that do not load) comes back as the batch's "error"
    for the main process to raise in its own words."""

    def __init__(self, opener: Opener, precision: str, threads: int, collate: Callable[[list], dict] = collate_clips):
        self.opener, self.precision, self.threads = opener, precision, threads
        self.collate = collate  # items -> batch: collate_clips, or a window index's collate_span
        self._compute: Callable[[dict], dict] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_compute": None}  # each worker opens its own

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collate(items)
        if batch["size"]:
            if self._compute is None:
                torch.set_num_threads(self.threads)
                try:
                    self._compute = self.opener(self.threads)
                except EvilmError as err:
                    return {**batch, "error": str(err)}
            with torch.no_grad(), autocast(self.precision, "cpu"):
                batch.update(self._compute(batch))
        return batch
