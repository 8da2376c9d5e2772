"""The progress callback of every long-running core function (docs/design.md, "Layers"): the
caller may pass `progress(done, total, **fields)`; core code calls it and never prints. The CLI
draws it (a live bar on a terminal, a log line every 10 s otherwise: evilm_cli/common.py)."""

from __future__ import annotations

from typing import Callable

Progress = Callable[..., None]  # progress(done: int, total: int | None, **fields) -> None
