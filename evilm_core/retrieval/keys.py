"""An index's key list on disk, read without turning it into Python objects.

keys.txt holds one escaped key per line (evilm_core/fs.py `escape_key`); keys.offsets beside it
holds N+1 little-endian int64 byte offsets, line i = bytes [off[i], off[i+1] - 1). `KeyList`
memory-maps both, so opening a 100M-key index costs two mmaps, and a lookup decodes one line;
the keys of a 100M index as a Python list would take GBs of RAM and minutes to read.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_path, atomic_write_text, escape_key, read_text, unescape_key

OFFSETS_SUFFIX = ".offsets"


def offsets_path(path: Path) -> Path:
    return path.with_suffix(OFFSETS_SUFFIX)


def read_keys(path: Path) -> list[str]:
    """Every key of a (small) key file as a list: parts and the build side."""
    return [unescape_key(k) for k in read_text(path, "key list").split("\n")[:-1]] if path.is_file() else []


def write_keys(path: Path, keys: Iterable[str], offsets: bool = False, tmp_suffix: str = "") -> None:
    """keys.txt (fsynced), and with `offsets` its keys.offsets; `tmp_suffix` names both files
    with a suffix (the files being folded in before they are renamed into place)."""
    lines = [escape_key(k) + "\n" for k in keys]
    target = path.with_name(path.name + tmp_suffix)
    atomic_write_text(target, lines, fsync=True)
    if offsets:
        sizes = np.fromiter((len(line.encode("utf-8")) for line in lines), dtype=np.int64, count=len(lines))
        table = np.concatenate([[0], np.cumsum(sizes)]).astype("<i8")
        with atomic_path(offsets_path(path).with_name(offsets_path(path).name + tmp_suffix)) as tmp:
            table.tofile(tmp)


def _random_access(mapped) -> None:
    """Lookups are random: no read-ahead (each fault would page in ~128 KiB around one key)."""
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)


class KeyList(Sequence[str]):
    """keys.txt as a read-only sequence: `keys[i]` decodes line i only."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size if path.is_file() else 0
        self._map = None
        if size:
            with open(path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            _random_access(self._map)
        self._offsets = self._open_offsets(size)

    def _open_offsets(self, size: int) -> np.ndarray:
        if not size:
            return np.zeros(1, dtype=np.int64)
        table_path = offsets_path(self.path)
        if not (table_path.is_file() and table_path.stat().st_size >= 8):
            raise EvilmError(f"{table_path} is missing: the index {self.path.parent} is incomplete or damaged; "
                             "rebuild it with `evilm retrieve index`")
        table = np.memmap(table_path, dtype="<i8", mode="r")
        _random_access(getattr(table, "_mmap", None))
        if int(table[-1]) != size:
            raise EvilmError(f"{table_path} does not match {self.path} ({int(table[-1])} bytes listed, {size} "
                             "present); the index is damaged, rebuild it with `evilm retrieve index`")
        return table

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, end = int(self._offsets[i]), int(self._offsets[i + 1]) - 1
        try:
            return unescape_key(self._map[start:end].decode("utf-8"))
        except UnicodeDecodeError as err:
            raise EvilmError(f"{self.path}: line {i + 1} is not UTF-8 text (byte {start + err.start}); the index is "
                             "damaged, rebuild it with `evilm retrieve index`") from None

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class Keys(Sequence[str]):
    """The consolidated KeyList followed by the keys of parts not folded in yet (small lists)."""

    def __init__(self, consolidated: KeyList, pending: list[str]):
        self.consolidated, self.pending = consolidated, pending

    def __len__(self) -> int:
        return len(self.consolidated) + len(self.pending)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.consolidated)
        if i < 0:
            i += len(self)
        return self.consolidated[i] if i < n else self.pending[i - n]
