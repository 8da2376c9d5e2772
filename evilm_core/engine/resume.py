"""What `--resume` checks before it continues a run (docs/reliability.md, "Resume").

A resumed run must be the interrupted run continued, or it is refused: the trainer state
records the run's identity (number of processes, global batch, a hash of the resolved recipe
without the keys that cannot change the result, and a fingerprint of the training data) and
a resume compares it with this run's, naming both values of whatever differs. `--replan` accepts
a change and re-plans: the LR schedule follows the new total steps, and the epoch position is
converted through the clips already consumed (exact when the new global batch divides it).
A run directory whose checkpoint.json records a complete checkpoint but that holds none any more
is refused too, instead of silently starting from step 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from evilm_core.checkpoints import files as ckpt
from evilm_core.config.sections import MAX_VIDEO_BYTES
from evilm_core.errors import EvilmError
from evilm_core.fs import clean_stale_temps

log = logging.getLogger("evilm.engine")

# recipe keys that cannot change what a run computes: free to differ on --resume
FREE_KEYS = {"output": None, "logging": None, "data": ("num_workers",),
             "train": ("device", "keep_checkpoints", "log_every", "save_every", "max_nonfinite")}
# keys added later, hashed only when set away from their default: older checkpoints stay resumable
LATER_KEYS = {"train": {"compile": False}, "data": {"max_video_bytes": MAX_VIDEO_BYTES}}


def recipe_hash(recipe: Any) -> str:
    """sha256 of the resolved recipe, without FREE_KEYS (12 hex digits)."""
    raw = dataclasses.asdict(recipe)
    for section, keys in FREE_KEYS.items():
        if keys is None:
            raw.pop(section, None)
        elif isinstance(raw.get(section), dict):
            for key in keys:
                raw[section].pop(key, None)
    for section, defaults in LATER_KEYS.items():
        for key, default in defaults.items():
            if isinstance(raw.get(section), dict) and raw[section].get(key, default) == default:
                raw[section].pop(key, None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def data_fingerprint(dataset: Any) -> str:
    """sha256 over the training records' videos and texts in order (12 hex digits); `len` only
    for a dataset without records."""
    records = getattr(dataset, "records", None)
    if hasattr(records, "fingerprint"):  # a RecordTable hashes its file
        return records.fingerprint()
    digest = hashlib.sha256(str(len(dataset)).encode())
    for r in records or ():
        digest.update(f"{r.video}\0{r.caption}\0{r.question}\0{r.answer}\0{r.options}\0{r.label}\n".encode(
            "utf-8", "surrogateescape"))
    return digest.hexdigest()[:12]


def run_identity(recipe: Any, dataset: Any, world: int) -> dict:
    return {"world": world, "global_batch": recipe.data.batch_size * world * recipe.train.grad_accum,
            "recipe_hash": recipe_hash(recipe), "data": data_fingerprint(dataset), "clips": len(dataset)}


def check_identity(saved: dict, current: dict, where: Path, replan: bool) -> list[str]:
    """The differences between the checkpoint's run and this one; refused unless `replan`."""
    names = {"world": "processes", "global_batch": "global batch (clips per step)", "recipe_hash": "recipe hash",
             "data": "training data fingerprint", "clips": "training clips"}
    diffs = [f"{names[k]}: checkpoint {saved[k]}, this run {current[k]}" for k in names
             if k in saved and saved[k] != current[k]]
    if diffs and not replan:
        raise EvilmError(f"--resume from {where} refused: this run is not the one that wrote it (" + "; ".join(diffs)
                         + "). Resume with the same recipe, data and number of processes, or pass --replan to "
                         "continue with the new setting (the LR schedule and the epoch position are re-planned)")
    return diffs


def replanned_batch(saved: dict, batches_done: int, batch_size: int, world: int) -> tuple[int, bool]:
    """This epoch's micro-batches already consumed, converted to the new per-process batch and
    number of processes through the clips consumed; (batches, exact)."""
    old_world = saved.get("world", 1)
    old_batch = saved.get("batch_size", batch_size)
    clips = batches_done * old_batch * old_world  # the sampler hands out one global order, rank-interleaved
    per_batch = batch_size * world
    return clips // per_batch, clips % per_batch == 0


LAST_CHECKPOINT = "checkpoint.json"  # {"last": "step_XXXXXXXX", "step": N}, rewritten after every save


def checkpoint_to_resume(run_dir: Path) -> Path | None:
    """The newest complete step checkpoint of `run_dir` (stale temporaries cleaned first, a
    checkpoint moved aside by a kill moved back), None for a run that never completed one (it
    starts again from step 0: nothing is lost); an error when one was completed
    (checkpoint.json says so) but none is left."""
    for action in clean_stale_temps(run_dir):
        log.info("--resume: %s (left by a killed run)", action)
    last = ckpt.latest_checkpoint(run_dir)
    if last is not None:
        return last
    record = run_dir / LAST_CHECKPOINT
    if record.is_file():
        raise EvilmError(f"--resume: {record} records a complete checkpoint ({record.read_text(errors='replace').strip()})"
                         f" but {run_dir} holds none any more; restore it, or start again without --resume in a new "
                         "output.dir (or delete this one)")
    return None
