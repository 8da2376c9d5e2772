"""Clip records held compactly: the canonical JSON of each record, one per line, in a file that is
memory-mapped, with an int64 table of (offset, length, sample) per record (docs/data.md, "Memory
at scale").

A Python `ClipRecord` per clip costs ~220 bytes plus its strings: 2.5M WebVid records are
~555 MiB in every process that holds the list, and DataLoader workers each got a copy. A
`RecordTable` is ~24 bytes per record of index in memory, the text stays in the page cache
(shared by every process on the node), and a record becomes a `ClipRecord` only when read.
The `sample` column says which sample of a shard set holds the record's frames (-1: none).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from evilm_core.data.records.record import ClipRecord
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_path, disk_errors

TEXT, INDEX = "records.jsonl", "records.i64"
_COLUMNS = 3  # offset, length, sample


def write_record_table(rows: Iterable[tuple[ClipRecord, int]], directory: str | os.PathLike) -> int:
    """Write (record, sample) rows as DIR/records.jsonl + DIR/records.i64, each atomically
    (the index last: a reader never sees an index longer than its text). Returns the count."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index: list[tuple[int, int, int]] = []
    with disk_errors(directory), atomic_path(directory / TEXT) as tmp, open(tmp, "wb") as fh:
        offset = 0
        for record, sample in rows:
            line = json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True).encode("utf-8",
                                                                                            "surrogateescape")
            fh.write(line + b"\n")
            index.append((offset, len(line), int(sample)))
            offset += len(line) + 1
    table = np.asarray(index, dtype="<i8").reshape(-1, _COLUMNS)
    with disk_errors(directory), atomic_path(directory / INDEX) as tmp:
        table.tofile(tmp)
    return len(table)


class RecordTable(Sequence):
    """Read-only records of a directory written by `write_record_table`. Picklable without its
    memory maps (each process maps the files itself)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self._text: np.memmap | None = None
        self._index: np.ndarray | None = None
        n = self.index.shape[0]
        if n and int(self.index[-1, 0] + self.index[-1, 1]) > os.path.getsize(self.dir / TEXT):
            raise EvilmError(f"{self.dir / TEXT}: shorter than its index {self.dir / INDEX} says (truncated?)")

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            path = self.dir / INDEX
            if not path.is_file() or path.stat().st_size % (8 * _COLUMNS):
                raise EvilmError(f"{path}: missing or not a record index (size must be a multiple of "
                                 f"{8 * _COLUMNS} bytes)")
            self._index = np.memmap(path, dtype="<i8", mode="r").reshape(-1, _COLUMNS) if path.stat().st_size \
                else np.zeros((0, _COLUMNS), dtype="<i8")
        return self._index

    @property
    def text(self) -> np.memmap:
        if self._text is None:
            path = self.dir / TEXT
            if not path.is_file():
                raise EvilmError(f"{path}: missing (the record text of {self.dir})")
            self._text = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
        return self._text

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_text": None, "_index": None}

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def raw(self, i: int) -> dict:
        """Record i's JSON object."""
        offset, length, _ = (int(v) for v in self.index[i])
        line = bytes(self.text[offset:offset + length])
        try:
            return json.loads(line.decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as err:
            raise EvilmError(f"{self.dir / TEXT}: record {i + 1} is damaged ({err})") from None

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        sample = int(self.index[i, 2])
        return ClipRecord(**self.raw(i), sample=sample if sample >= 0 else None)

    def __iter__(self) -> Iterator[ClipRecord]:
        for i in range(len(self)):
            yield self[i]

    def sample(self, i: int) -> int:
        """The shard-set sample holding record i's frames (-1: none)."""
        return int(self.index[i, 2])

    @property
    def samples(self) -> np.ndarray:
        """[N] int64: the sample of every record."""
        return np.asarray(self.index[:, 2])

    def fingerprint(self) -> str:
        """sha256 of the record text (12 hex digits): what `--resume` compares (engine/resume.py)."""
        digest = hashlib.sha256(str(len(self)).encode())
        text = self.text
        for start in range(0, len(text), 1 << 24):
            digest.update(memoryview(text[start:start + (1 << 24)]))
        return digest.hexdigest()[:12]


def table_of(records: Sequence, directory: str | os.PathLike) -> RecordTable:
    """`records` as a RecordTable in `directory` (a RecordTable is returned as it is)."""
    if isinstance(records, RecordTable):
        return records
    write_record_table(((r, -1) for r in records), directory)
    return RecordTable(directory)
