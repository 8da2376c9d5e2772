"""`evilm plot RUN_DIR`: a run's curves from its metrics.jsonl (docs/tracking.md, "Pictures").

Every logged term is drawn against the step, train rows solid and validation rows dashed, one
panel per group: the total loss, each objective's loss, accuracies, retrieval recall and rank,
word prediction, codebook usage and perplexity, temperature, learning rate, throughput, time per
step, data-wait share, peak GPU memory and skipped counts; a term no group knows gets a panel of
its own. A loss panel whose values span a decade or more gets a log scale. NaN/Inf values are
gaps, marked on the step axis and counted in a note. matplotlib (the `evilm[plot]` extra) draws off-screen
(its Agg canvas; no display, no pyplot state).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evilm_core.engine.runtime import METRICS_FILE
from evilm_core.errors import EvilmError
from evilm_core.fs import atomic_path, read_text

log = logging.getLogger("evilm.engine")
CURVES_FILE = "curves.png"
FORMATS = (".png", ".svg", ".pdf")
OBJECTIVES = {"mlm": "MLM", "vtm": "VTM", "mvm": "MVM", "vtc": "VTC", "word": "word"}
# (pattern for a key without its split prefix, panel title): the first match wins; panels come in this order
PANELS = [
    (r"loss", "total loss"),
    (r"codebook_loss|commitment", "VQ losses (codebook, commitment)"),
    (r"(?P<obj>.+)_loss", "{obj} loss"),
    (r"(.+_)?acc", "accuracy (share)"),
    (r"accuracy|majority_baseline|chance", "accuracy (%)"),
    (r"[tv]2[tv]_R@\d+", "recall@K (%)"),
    (r"[tv]2[tv]_M[dn]R", "rank (median, mean)"),
    (r"word_.+", "word prediction"),
    (r"codebook_usage|batch_codes_used", "codebook usage (share of entries)"),
    (r"perplexity", "codebook perplexity"),
    (r"temperature", "temperature"),
    (r"lr", "learning rate"),
    (r"clips_per_s", "throughput (clips/s)"),
    (r"step_s|data_wait_s", "time per step (s)"),
    (r"data_wait_share", "data-wait share (of step time)"),
    (r"max_memory_mib", "peak GPU memory (MiB)"),
    (r"skipped(_nonfinite)?", "skipped (running count)"),
]
NOT_TERMS = re.compile(r"step|epoch|split|num_examples|num_videos|oov_\w+")  # where a row is, or a fixed count


@dataclass
class Series:
    key: str  # the term without its split prefix (`mlm_acc` for train and val rows)
    split: str  # train | val (a row's `split`, train when absent)
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # NaN where the logged value was not finite

    @property
    def nonfinite(self) -> int:
        return sum(1 for v in self.values if not math.isfinite(v))


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def panel_of(key: str) -> tuple[int, str]:
    """(the panel's place in PANELS, its title) for a term; unknown terms go last, titled by the key."""
    for rank, (pattern, title) in enumerate(PANELS):
        match = re.fullmatch(pattern, key)
        if match:
            obj = match.groupdict().get("obj")
            return rank, title.format(obj=OBJECTIVES.get(obj, obj)) if obj else title
    return len(PANELS), key


def term(key: str, split: str) -> str:
    """A row's key without its split's prefix: a val row's `val_mlm_acc` is the term `mlm_acc`."""
    return key[len(split) + 1:] if key.startswith(f"{split}_") else key


def group_panels(rows: list[dict]) -> dict[str, list[Series]]:
    """Panel title -> its series, panels in PANELS order (objectives in OBJECTIVES order, then as
    first logged), series as first logged. Non-numbers and NOT_TERMS keys are left out."""
    series: dict[tuple[str, str], Series] = {}
    for row in rows:
        split = str(row.get("split", "train"))
        for key, value in row.items():
            name = term(key, split)
            if NOT_TERMS.fullmatch(name) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            s = series.setdefault((name, split), Series(name, split))
            s.steps.append(row["step"])
            s.values.append(float(value) if math.isfinite(value) else math.nan)
    objective_rank = {name: i for i, name in enumerate(OBJECTIVES)}
    panels: dict[str, list[Series]] = {}
    order: dict[str, tuple] = {}
    for first, s in enumerate(series.values()):
        rank, title = panel_of(s.key)
        obj = s.key.rsplit("_", 1)[0]
        order.setdefault(title, (rank, objective_rank.get(obj, len(objective_rank)), first))
        panels.setdefault(title, []).append(s)
    return {title: panels[title] for title in sorted(panels, key=order.__getitem__)}


def find_metrics(run: str | Path) -> Path:
    """RUN_DIR/metrics.jsonl (or the file itself); an error naming the path otherwise."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise EvilmError(f"{run}: no such run directory")
    path = run / METRICS_FILE
    if not path.is_file():
        below = sorted(str(p.parent.relative_to(run)) for p in run.glob(f"*/{METRICS_FILE}"))
        hint = f"; the run directories below it have one: {', '.join(below)}" if below else ""
        raise EvilmError(f"{run} holds no {METRICS_FILE}: not a training run directory (its output.dir), or a run "
                         f"that has logged nothing yet{hint}")
    return path


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (a run writing or killed mid-append) is left out."""
    lines = [(n, line) for n, line in enumerate(read_text(path, "metrics log").splitlines(), 1) if line.strip()]
    if not lines:
        raise EvilmError(f"{path} is empty: the run has not logged a row yet (one comes every train.log_every steps)")
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == lines[-1][0]:
                log.warning("%s:%d: not a complete JSON row (torn by a kill, or still being written); left out",
                            path, n)
                continue
            raise EvilmError(f"{path}:{n}: not a JSON row; fix or delete the line") from None
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
            raise EvilmError(f"{path}:{n}: a metrics row must be a JSON object with an integer 'step', got {line[:80]}")
        rows.append(row)
    return rows


def run_title(path: Path, rows: list[dict]) -> str:
    """`DIR: kind (task), N rows, steps a-b`, the kind from the run's config.yaml when it has one."""
    kind = ""
    try:
        cfg = yaml.safe_load((path.parent / "config.yaml").read_text(encoding="utf-8"))
        kind = f"{cfg['kind']}" + (f" ({cfg['task']})" if cfg.get("task") else "") + ", "
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        pass
    steps = [r["step"] for r in rows]
    return f"{path.parent}: {kind}{len(rows)} rows, steps {min(steps)}-{max(steps)}"


def plot_run(run: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Draw RUN_DIR's metrics.jsonl into `out` (default RUN_DIR/curves.png; .png, .svg or .pdf)."""
    path = find_metrics(run)
    out = Path(out) if out is not None else path.parent / CURVES_FILE
    if out.suffix.lower() not in FORMATS:
        raise EvilmError(f"--out {out}: the picture's name must end in {', '.join(FORMATS)}")
    if not available():
        raise EvilmError("evilm plot needs matplotlib, which is not installed: pip install 'evilm[plot]'")
    rows = read_rows(path)
    panels = group_panels(rows)
    if not panels:
        raise EvilmError(f"{path} holds no numeric terms to plot ({len(rows)} rows)")
    nonfinite = {f"{s.key} ({s.split})": s.nonfinite for p in panels.values() for s in p if s.nonfinite}
    note = ""
    if nonfinite:
        note = (f"{sum(nonfinite.values())} non-finite values (NaN/Inf) shown as gaps, marked x on the step axis: "
                + ", ".join(f"{k} x{v}" for k, v in nonfinite.items()))
    data = draw(panels, run_title(path, rows), note, out.suffix.lower()[1:])
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    log.info("wrote %s (%d panels from %d rows of %s)", out, len(panels), len(rows), path)
    steps = [r["step"] for r in rows]
    return {"out": str(out), "metrics": str(path), "rows": len(rows), "steps": [min(steps), max(steps)],
            "panels": list(panels), "nonfinite": nonfinite}


def log_scale(title: str, series: list[Series]) -> bool:
    """A loss panel whose finite values are all positive and span a decade or more."""
    values = [v for s in series for v in s.values if math.isfinite(v)]
    return ("loss" in title and bool(values) and min(values) > 0 and max(values) / min(values) >= 10)


def draw(panels: dict[str, list[Series]], title: str, note: str, fmt: str = "png") -> bytes:
    """The figure as `fmt` bytes: panels three to a row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.4 * cols, 3.5 * rows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, series) in zip(axes, panels.items()):
        draw_panel(ax, name, series)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=12)
    if note:
        fig.supxlabel(note, fontsize=9, color="tab:red")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100)
    return buf.getvalue()


def draw_panel(ax, name: str, series: list[Series]) -> None:
    """One panel: a colour per term, train solid, val dashed with dots; NaN/Inf as gaps marked x."""
    colours = {}
    for s in series:
        colour = colours.setdefault(s.key, f"C{len(colours) % 10}")
        label = s.split if len({x.key for x in series}) == 1 else f"{s.key} ({s.split})"
        val = s.split != "train"
        ax.plot(s.steps, s.values, color=colour, label=label, linestyle="--" if val else "-",
                marker="o" if val or len(s.steps) < 30 else None, markersize=4 if val else 2.5, linewidth=1.4)
        bad = [step for step, v in zip(s.steps, s.values) if not math.isfinite(v)]
        if bad:
            ax.plot(bad, [0.03] * len(bad), "x", color="tab:red", transform=ax.get_xaxis_transform(),
                    clip_on=False, label=f"{label}: non-finite")
    if log_scale(name, series):
        ax.set_yscale("log")
        name += " (log scale)"
    elif name.startswith("skipped"):  # counts: from 0, and a flat 0 still reads as "none"
        top = max([v for s in series for v in s.values if math.isfinite(v)], default=0)
        ax.set_ylim(-0.02 * max(1, top), max(1, top) * 1.1)
    ax.set_title(name, fontsize=11)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
