"""What every run needs from the machine (engine/runtime.py): the device, autocast, unwrapping
DDP, in-order evaluation batches that count skips, and metrics.jsonl."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from evilm_core.engine import runtime
from evilm_core.machine import autocast
from evilm_core.engine.runtime import MetricsLog, choose_device, eval_batches, to_device, unwrap
from evilm_core.errors import EvilmError
from tests.helpers.finetune import ListDataset


def test_choose_device_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto", local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize("name", ["foo", "gpu", "cuda:x", ""])
def test_choose_device_rejects_unknown_names(name):
    with pytest.raises(EvilmError, match=f"device must be auto, cpu, cuda or cuda:N, got {name!r}"):
        choose_device(name)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_choose_device_cuda_without_a_gpu_is_a_user_error(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EvilmError, match=f"device {name!r}: CUDA is not available on this machine; use cpu"):
        choose_device(name)


def test_choose_device_gives_each_rank_its_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only names are built, nothing runs on it
    assert choose_device("auto", local_rank=2) == torch.device("cuda:2")
    assert choose_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert choose_device("cuda:3", local_rank=1) == torch.device("cuda:3")  # an explicit index is kept


def test_autocast_is_bf16_only_when_asked():
    cpu = torch.device("cpu")
    with autocast("bf16", cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("fp32", cpu):
        assert not torch.is_autocast_enabled("cpu")


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
