"""Recipe loading shared by the training commands: --set overrides and --print-config."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_core.config import load_recipe
from evilm_core.config.loader import dump_yaml


def load(recipe: Path, overrides: list[str], expect: str | None = None, print_config: bool = False):
    """Load and type-check `recipe`; with --print-config print the resolved YAML and exit 0."""
    cfg = load_recipe(recipe, overrides, expect=expect)
    if print_config:
        typer.echo(dump_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


# The recipe options every recipe-driven command shares (one definition, one help text).
OVERRIDES = typer.Option([], "--set", help="Override a key: --set section.key=value (repeatable).")
RESUME = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in output.dir.")
PRINT_CONFIG = typer.Option(False, "--print-config", help="Print the resolved recipe and exit.")
