"""Data order that is a pure function of (seed, epoch) and can start mid-epoch.

Every rank sees a disjoint, equal-length slice of the same permutation (padded by wrapping,
as DistributedSampler does), and `set_epoch(epoch, skip=k)` starts after the first k indices of
this rank's slice, so a resumed run consumes exactly the batches the interrupted one had not.
With `tag_epoch`, indices come as `(epoch, index)`: DataLoader workers persist across epochs
with their own copy of the dataset, so the epoch travels with each index instead (ClipDataset
reads it; docs/data.md, "Memory at scale").
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True,
                 tag_epoch: bool = False):
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.tag_epoch = tag_epoch  # yield (epoch, index) instead of index
        self.per_rank = math.ceil(size / world) if size else 0
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world
        order = (order * math.ceil(total / max(1, len(order))))[:total]  # pad by wrapping
        return order[self.rank:total:self.world]

    def __iter__(self):
        indices = self._indices()[self.skip:]
        return iter([(self.epoch, i) for i in indices] if self.tag_epoch else indices)

    def __len__(self) -> int:
        return self.per_rank
