"""ResumableSampler (engine/sampler.py): data order a pure function of (seed, epoch), disjoint
equal-length rank slices, and a mid-epoch start that continues exactly."""

from __future__ import annotations

import pytest

from evilm_core.engine.sampler import ResumableSampler


def _slices(size: int, world: int, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    out = []
    for rank in range(world):
        s = ResumableSampler(size, seed=seed, rank=rank, world=world)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@pytest.mark.parametrize("size,world", [(12, 3), (12, 1), (13, 4), (5, 8)])
def test_rank_slices_are_disjoint_equal_length_and_cover_the_epoch(size, world):
    slices = _slices(size, world)
    per_rank = -(-size // world)
    assert all(len(s) == per_rank == len(ResumableSampler(size, rank=r, world=world)) for r, s in enumerate(slices))
    seen = sum(slices, [])
    assert set(seen) == set(range(size))  # every item in the epoch
    padding = per_rank * world - size  # the tail is padded by wrapping, as DistributedSampler does
    assert len(seen) - len(set(seen)) == padding
    if padding == 0:
        assert len(seen) == len(set(seen))  # disjoint


def test_order_depends_only_on_seed_and_epoch():
    assert _slices(20, 2, seed=1, epoch=3) == _slices(20, 2, seed=1, epoch=3)
    assert _slices(20, 2, seed=1, epoch=3) != _slices(20, 2, seed=1, epoch=4)
    assert _slices(20, 2, seed=1, epoch=3) != _slices(20, 2, seed=2, epoch=3)
    plain = ResumableSampler(7, shuffle=False)
    assert list(plain) == list(range(7))


def test_skip_continues_exactly_where_the_interrupted_epoch_stopped():
    for rank in range(3):
        s = ResumableSampler(31, seed=5, rank=rank, world=3)
        s.set_epoch(2)
        full = list(s)
        for k in (0, 1, 4, len(full)):
            s.set_epoch(2, skip=k)
            assert list(s) == full[k:]
        assert len(s) == len(full)  # the epoch's length does not change with the skip
        s.set_epoch(3)
        assert len(list(s)) == len(full)  # the next epoch starts from its beginning


def test_empty_dataset():
    s = ResumableSampler(0, world=2)
    assert len(s) == 0 and list(s) == []
