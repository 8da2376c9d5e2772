"""Atomic file writes: a crash never leaves a half-written file under its final name.

Every writer in the project goes through `atomic_path`: the content is written to a temporary
name in the same directory (per process, so concurrent writers never collide), flushed, and
renamed over the target with `os.replace`; on any error the temporary file is removed. See
docs/design.md, "Checkpoints".
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str | Iterable[str], fsync: bool = True) -> Path:
    """Write `text` (or its pieces, streamed) as UTF-8 with '\\n' line ends to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines([text] if isinstance(text, str) else text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    return Path(path)


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write JSON objects one per line, streamed and atomically (a manifest is never read half-written)."""
    return atomic_write_text(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
