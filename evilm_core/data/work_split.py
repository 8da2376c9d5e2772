"""The `--shard i/n` work split of the whole-collection commands (`label`, `retrieve index`,
`data shards`, `predict`): process i of n takes the items i, i+n, i+2n, ... of a fixed order, so
n processes anywhere cover a collection once, with no coordination (docs/design.md, "Scale").
Named apart from a WebDataset shard (data/shards/), which is a tar of samples."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from evilm_core.errors import EvilmError


@dataclass(frozen=True)
class WorkSplit:
    index: int  # i: this process's part, 0 <= i < count
    count: int  # n: how many processes share the work

    @classmethod
    def parse(cls, spec: str | tuple[int, int] | WorkSplit | None) -> WorkSplit | None:
        """'i/n' (or (i, n)) -> WorkSplit with 0 <= i < n; None stays None (the whole collection)."""
        if spec is None or isinstance(spec, WorkSplit):
            return spec
        if isinstance(spec, tuple):
            i, n = spec
        else:
            m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
            i, n = (int(m.group(1)), int(m.group(2))) if m else (-1, 0)
        if not 0 <= i < n:
            raise EvilmError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4 ... 3/4), got {spec!r}")
        return cls(i, n)

    def take(self, items: Sequence) -> list:
        """The items this part owns: i, i+n, i+2n, ..."""
        return list(items[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = WorkSplit(0, 1)  # one process does everything
