"""What every command shares: stderr console and logging, progress, --json output, recipe options.

Conventions (docs/design.md, "CLI conventions"): results go to stdout (one JSON object with --json; otherwise the
human-readable result: tables, summaries), logs and progress go to stderr, and rich's live
progress turns into plain periodic log lines when stderr is not a terminal (so SLURM logs stay readable).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
# results for people (tables, summaries) when --json does not claim stdout: `evilm evaluate ... > r.txt` keeps them
stdout_console = Console(soft_wrap=True)
log = logging.getLogger("evilm")
STATE = {"debug": False}


def results_console(json_out: bool) -> Console:
    """Where a command's human-readable result goes: stdout, or stderr when --json prints the
    JSON object on stdout (which then stays the only thing there)."""
    return console if json_out else stdout_console


def is_main_process() -> bool:
    """Rank 0 under torchrun/SLURM (or a plain process): the one that prints results."""
    import os

    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger("evilm")
    if not is_main_process():
        level = logging.WARNING  # other ranks speak only when something is wrong
    if root.handlers:
        return
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def round_floats(obj: Any, digits: int = 7) -> Any:
    """Floats to `digits` significant digits, recursively: most come from float32 tensors, whose
    float64 repr carries noise (7.118750095367432 for 7.11875). A NaN or an infinity becomes null:
    JSON has no such number (`NaN` would make the line unreadable to every JSON parser), and a
    non-finite value is no result anyway (docs/reliability.md, "Non-finite numbers")."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """The one machine-readable object a command prints on stdout (rank 0 only), floats rounded
    to 7 significant digits (float32's precision)."""
    if not is_main_process():
        return
    sys.stdout.write(json.dumps(round_floats(obj), default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


@contextmanager
def progress(description: str) -> Iterator:
    """Yields a callback `update(done, total, **fields)`; live bar on a TTY, log lines otherwise."""
    if not is_main_process():
        yield lambda *a, **k: None
        return
    if console.is_terminal:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(description, total=None, info="")

            def update(done: int, total: int | None = None, **fields):
                info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
                bar.update(task, completed=done, total=total, info=info)

            yield update
        return
    last = [0.0]

    def update(done: int, total: int | None = None, **fields):
        now = time.monotonic()
        if now - last[0] < 10 and done != total:  # a line every 10 s at most, plus the last
            return
        last[0] = now
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        log.info("%s %d/%s %s", description, done, total if total is not None else "?", info)

    yield update


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
