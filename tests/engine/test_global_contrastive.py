"""The contrastive terms over the global batch (engine/distributed.py::global_contrastive_loss):
on 2 gloo ranks, the mean of the ranks' losses equals the single-process loss on the
concatenated batch, and so do the gradients after DDP's averaging, also with a shared key across
ranks (a positive on the other rank) and unequal rows per rank (a skipped clip)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from evilm_core.engine.distributed import global_contrastive_loss
from evilm_core.models.losses import contrastive_loss, same_key

KEYS = ["a", "b", "c", "a", "d", "e", "b"]  # "a" and "b" have positives on both ranks


def _inputs():
    g = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(len(KEYS), 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(len(KEYS), 8, generator=g), dim=-1)
    return video, text, torch.tensor(2.0)


def _single():
    video, text, scale = (t.clone().requires_grad_(True) for t in _inputs())
    loss = contrastive_loss(video, text, scale, same_key(KEYS))
    loss.backward()
    return loss.item(), video.grad, text.grad, scale.grad


def _rank(rank: int, world: int, port: int, split: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = slice(0, split) if rank == 0 else slice(split, len(KEYS))
    video, text, scale = _inputs()
    video, text = video[rows].clone().requires_grad_(True), text[rows].clone().requires_grad_(True)
    scale = scale.clone().requires_grad_(True)
    loss = global_contrastive_loss(video, text, scale, KEYS[rows])
    loss.backward()
    grads = [video.grad, text.grad, scale.grad.reshape(1)]
    for g in grads[2:]:  # DDP all-reduces parameter gradients (logit_scale) as a mean
        dist.all_reduce(g)
        g /= world
    # embeddings: what DDP's 1/world makes of them; lists, as tensors shared with a dead process cannot be read
    queue.put((rank, loss.item(), [(g / world).tolist() for g in grads[:2]], grads[2].tolist()))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("split", [4, 3])  # 4 + 3 rows: equal batches are 3.5 each, so 4/3 and 3/4
def test_two_ranks_give_the_single_process_loss_and_gradients(split):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, split, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    loss, video_grad, text_grad, scale_grad = _single()
    assert sum(r[1] for r in results) / 2 == pytest.approx(loss, abs=1e-6)
    assert torch.allclose(torch.tensor([row for r in results for row in r[2][0]]), video_grad, atol=1e-6)
    assert torch.allclose(torch.tensor([row for r in results for row in r[2][1]]), text_grad, atol=1e-6)
    assert torch.allclose(torch.tensor(results[0][3]), scale_grad.reshape(1), atol=1e-6)


def test_without_gradients_the_local_batch_is_used():
    video, text, scale = _inputs()
    with torch.no_grad():
        assert global_contrastive_loss(video, text, scale, KEYS) == contrastive_loss(video, text, scale,
                                                                                      same_key(KEYS))
