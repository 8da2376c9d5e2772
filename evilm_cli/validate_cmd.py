"""`evilm validate RECIPE`: check a recipe without running it."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, results_console
from evilm_cli.recipe_opts import OVERRIDES, PRINT_CONFIG, load


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        recipe: Path = typer.Argument(..., help="Recipe YAML. "
                                      "A file, or a bundled recipe's name (evilm recipes ls)."),
        overrides: list[str] = OVERRIDES,
        print_config: bool = PRINT_CONFIG,
        json_out: bool = options.json_out("{recipe, kind, valid}"),
    ):
        """Check a recipe's keys, types and values without running anything.

        Example: evilm validate recipes/synthetic/tokenizer.yaml --set optim.lr=3e-4
        """
        cfg = load(recipe, overrides, print_config=print_config)
        if json_out:
            emit_json({"recipe": str(recipe), "kind": cfg.kind, "valid": True})
        else:
            results_console(False).print(f"{recipe}: valid '{cfg.kind}' recipe")
