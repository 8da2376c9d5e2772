"""The `evilm` command: a thin Typer app. Each command parses, validates and calls one core
function; user errors (EvilmError) print one paragraph and exit 2, with no traceback unless
--debug is given."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from evilm_cli import (data_cmd, evaluate_cmd, export_cmd, finetune_cmd, label_cmd, pretrain_cmd, profile_cmd,
                       quickstart_cmd, retrieve_cmd, tokenize_cmd, validate_cmd)
from evilm_cli.common import STATE, console, setup_logging
from evilm_core import __version__
from evilm_core.errors import EvilmError, TrainingInterrupted

app = typer.Typer(
    name="evilm",
    help="E-ViLM: train and use a small, fast video-language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(retrieve_cmd.app, name="retrieve")
tokenize_cmd.register(app)
pretrain_cmd.register(app)
finetune_cmd.register(app)
evaluate_cmd.register(app)
label_cmd.register(app)
validate_cmd.register(app)
profile_cmd.register(app)
quickstart_cmd.register(app)
export_cmd.register(app)


def _version(value: bool):
    if value:
        typer.echo(f"evilm {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    STATE["debug"] = debug
    setup_logging()


def main() -> None:
    try:
        app()
    except TrainingInterrupted as err:  # a checkpoint was written; say where
        console.print(f"[yellow]stopped:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except EvilmError as err:
        if STATE["debug"]:
            raise
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":  # `python -m evilm_cli.main` (what torchrun launches)
    main()
