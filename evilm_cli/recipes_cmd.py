"""`evilm recipes ls` and `evilm recipes cp`: the recipes that ship with evilm (evilm_core/bundled.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, results_console

app = typer.Typer(help="The bundled recipes: list them, copy one to edit. Any command that takes a recipe "
                  "also takes a bundled recipe's name (evilm pretrain synthetic/pretrain).", no_args_is_help=True)


@app.command("ls")
def ls(json_out: bool = options.json_out("[{name, kind, task, launch, path}, ...]")):
    """List the bundled recipes: name, kind, task and the launch line each one opens with.

    Example: evilm recipes ls
    """
    from evilm_core.bundled import list_bundled

    recipes = list_bundled()
    if json_out:
        emit_json([r.as_dict() for r in recipes])
        return
    rows = [("name", "kind", "task", "launch")] + [(r.name, r.kind or "?", r.task or "-", r.launch or "")
                                                    for r in recipes]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out = results_console(False)
    for row in rows:
        out.print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3],
                  markup=False, highlight=False)


@app.command("cp")
def cp(
    name: str = typer.Argument(..., help="A bundled recipe's name (webvid, synthetic/pretrain; .yaml optional)."),
    dest: Path = typer.Argument(Path("."), help="Target file, or a directory to write NAME.yaml in [default: .]."),
    force: bool = typer.Option(False, "--force", help="Replace the target file if it exists."),
    json_out: bool = options.json_out("{recipe, path}"),
):
    """Copy a bundled recipe to edit it. Relative paths in a recipe resolve against the working
    directory, so the copy reads the same files as the bundled one from the same place.

    Example: evilm recipes cp synthetic/pretrain my_pretrain.yaml
    """
    from evilm_core.bundled import bundled_name, copy_bundled

    target = copy_bundled(name, dest, force=force)
    if json_out:
        emit_json({"recipe": bundled_name(name), "path": str(target)})
    else:
        results_console(False).print(f"{target}  (from the bundled recipe {bundled_name(name)})",
                                     markup=False, highlight=False)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="recipes")
