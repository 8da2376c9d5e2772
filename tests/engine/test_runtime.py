"""What every run needs besides its settings (engine/runtime.py): unwrapping DDP, in-order
evaluation batches that count skips, and metrics.jsonl."""

from __future__ import annotations

import json

import torch
import torch.nn as nn

from evilm_core.engine import runtime
from evilm_core.engine.runtime import MetricsLog, eval_batches, to_device, unwrap
from tests.helpers.finetune import ListDataset


def test_unwrap_and_to_device():
    inner = nn.Linear(2, 2)

    class Wrapper(nn.Module):  # what DistributedDataParallel looks like
        def __init__(self):
            super().__init__()
            self.module = inner

    assert unwrap(Wrapper()) is inner and unwrap(inner) is inner
    batch = to_device({"x": torch.ones(2), "video": ["a", "b"], "size": 2}, torch.device("cpu"))
    assert torch.equal(batch["x"], torch.ones(2)) and batch["video"] == ["a", "b"] and batch["size"] == 2


def test_eval_batches_keep_order_drop_empty_batches_and_count_skips():
    items = [{"index": 0, "x": torch.tensor(0.0)}, {"index": 1, "skip": ("b.mp4", "corrupt", "")},
             {"index": 2, "skip": ("c.mp4", "missing", "")}, {"index": 3, "skip": ("d.mp4", "missing", "")},
             {"index": 4, "x": torch.tensor(4.0)}]
    counts = {"skipped": 1}  # adds to what is already counted
    batches = list(eval_batches(ListDataset(items), 2, 0, torch.device("cpu"), counts))
    assert [b["index"].tolist() for b in batches] == [[0], [4]]  # the all-skipped batch [2, 3] is not yielded
    assert counts["skipped"] == 4
    fresh: dict = {}
    list(eval_batches(ListDataset(items), 5, 0, torch.device("cpu"), fresh))
    assert fresh == {"skipped": 3}


def test_metrics_log_appends_clears_and_truncates(tmp_path):
    log = MetricsLog(tmp_path)
    assert log.path == tmp_path / runtime.METRICS_FILE
    log.truncate(3)  # nothing written yet: nothing to do
    assert not log.path.exists()
    for step in (1, 2, 3, 4, 5):
        log.write({"step": step, "loss": 1.0 / step})
        if step % 2 == 0:
            log.write({"step": step, "split": "val", "acc": step})
    log.write({"note": "no step"})
    rows = [json.loads(r) for r in log.path.read_text().splitlines()]
    assert len(rows) == 8 and rows[0] == {"step": 1, "loss": 1.0}
    log.truncate(3)  # a run resumed at step 3 writes the later rows again
    kept = [json.loads(r) for r in log.path.read_text().splitlines()]
    assert [(r.get("step"), r.get("split")) for r in kept] == [(1, None), (2, None), (2, "val"), (3, None),
                                                               (None, None)]
    assert [p.name for p in tmp_path.iterdir()] == [runtime.METRICS_FILE]  # rewritten in place, no temp file left
    log.clear()
    assert not log.path.exists()
    log.clear()  # clearing twice is fine
