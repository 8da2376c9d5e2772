"""`evilm plot RUN_DIR`: a training run's curves from its metrics.jsonl (docs/tracking.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, results_console


def register(app: typer.Typer) -> None:
    @app.command("plot")
    def plot(
        run_dir: Path = typer.Argument(..., help="A training run directory (a recipe's output.dir) or its "
                                       "metrics.jsonl."),
        out: Path = typer.Option(None, "--out", "-o", help="The picture to write: .png, .svg or .pdf "
                                 "[default: RUN_DIR/curves.png]."),
        json_out: bool = options.json_out("{out, rows, steps, panels, nonfinite}"),
    ):
        """Draw every term a run logged, one panel per group, against the step.

        Train rows are solid lines, validation rows dashed with dots: the total loss and each
        objective's loss (log scale where a loss spans a decade), accuracies, recall and ranks,
        codebook usage, learning rate, throughput, data-wait share and skipped clips. NaN/Inf
        values are gaps, marked and counted. Needs matplotlib: pip install 'evilm[plot]'.

        Example: evilm plot runs/synthetic/pretrain --out curves.png
        """
        from evilm_core.engine.plot import plot_run

        result = plot_run(run_dir, out)
        if json_out:
            emit_json(result)
            return
        steps, bad = result["steps"], sum(result["nonfinite"].values())
        results_console(False).print(f"wrote {result['out']}: {len(result['panels'])} panels from {result['rows']} "
                                     f"rows (steps {steps[0]}-{steps[1]})"
                                     + (f", {bad} non-finite values shown as gaps" if bad else ""),
                                     highlight=False, soft_wrap=True)
