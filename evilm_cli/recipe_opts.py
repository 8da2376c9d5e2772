"""What the recipe-driven commands share: --set overrides, --print-config, --resume, --json, and the
body of the three training commands (load, train with progress, print a summary line)."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli.common import emit_json, is_main_process, progress, results_console
from evilm_core.config.loader import dump_yaml
from evilm_core.recipes import load_recipe


def load(recipe: Path, overrides: list[str], expect: str | None = None, print_config: bool = False, **train_keys):
    """Load and type-check `recipe`; with --print-config print the resolved YAML and exit 0.
    `train_keys` (threads=, precision=) are command-line flags for train.* keys: None leaves the recipe's."""
    extra = [f"train.{key}={value}" for key, value in train_keys.items() if value is not None]
    cfg = load_recipe(recipe, [*overrides, *extra], expect=expect)
    if print_config:
        typer.echo(dump_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


# The recipe options every recipe-driven command shares (one definition, one help text).
OVERRIDES = typer.Option([], "--set", help="Override a key: --set section.key=value (repeatable).")
RESUME = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in output.dir.")
REPLAN = typer.Option(False, "--replan", help="With --resume: accept another recipe, data or number of processes "
                      "(the LR schedule and epoch position are re-planned; see docs/reliability.md).")
PRINT_CONFIG = typer.Option(False, "--print-config", help="Print the resolved recipe and exit.")


def metrics_line(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))


def run_training(name: str, train, recipe: Path, overrides: list[str], resume: bool | str, print_config: bool,
                 json_out: bool, expect: str, threads: int | None = None) -> None:
    """Load the recipe, run `train(cfg, resume=, progress=)` under a progress display, print the
    checkpoint, step and final metrics (rank 0), and the result as JSON with --json. `resume`:
    False, True, or "replan" (--replan implies --resume)."""
    cfg = load(recipe, overrides, expect=expect, print_config=print_config, threads=threads)
    label = f"{name} {cfg.task}" if getattr(cfg, "task", None) else name
    with progress(label) as update:
        result = train(cfg, resume=resume, progress=update)
    if is_main_process():
        results_console(json_out).print(f"{label}: {result['checkpoint']}  step {result['step']}  skipped {result.get('skipped', 0)}  "
                      + metrics_line(result["metrics"]))
    if json_out:
        emit_json(result)
