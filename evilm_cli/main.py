"""The `evilm` command: a thin Typer app. Each command parses, validates and calls one core
function; user errors (EvilmError) print one paragraph and exit 2, with no traceback unless
--debug is given."""

from __future__ import annotations

import os
import sys

from evilm_core.workers import die_with_parent_when_spawned, loader_worker_death, mark_parent

die_with_parent_when_spawned()  # first thing in a worker multiprocessing spawns (evilm_core/workers.py)

import typer  # noqa: E402
from rich.markup import escape

from evilm_cli import (
    data_cmd,
    evaluate_cmd,
    export_cmd,
    finetune_cmd,
    label_cmd,
    plot_cmd,
    predict_cmd,
    pretrain_cmd,
    profile_cmd,
    push_cmd,
    quickstart_cmd,
    recipes_cmd,
    retrieve_cmd,
    serve_cmd,
    tokenize_cmd,
    validate_cmd,
)
from evilm_cli.common import STATE, console, setup_logging
from evilm_cli.help_style import adapt as _classic_help
from evilm_core import __version__
from evilm_core.errors import EvilmError, TrainingInterrupted

app = typer.Typer(
    name="evilm",
    help="E-ViLM: train and use a small, fast video-language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help strings are plain text: `[default: ...]` prints as written
)
_classic_help()
# one module per command (or command group), each adding itself with register(app), in help order
COMMANDS = (quickstart_cmd, data_cmd, tokenize_cmd, label_cmd, pretrain_cmd, finetune_cmd, evaluate_cmd,
            predict_cmd, retrieve_cmd, serve_cmd, export_cmd, push_cmd, profile_cmd, plot_cmd, recipes_cmd, validate_cmd)
for command in COMMANDS:
    command.register(app)


def _version(value: bool):
    if value:
        typer.echo(f"evilm {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    STATE["debug"] = STATE["debug"] or debug
    setup_logging()


def _take_debug(argv: list[str]) -> list[str]:
    """`--debug` anywhere before a `--` (after the subcommand too: `evilm pretrain r.yaml --debug`)
    sets debug mode; the rest of the command line is left for typer."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--debug" in argv[:end]:
        STATE["debug"] = True
        os.environ["EVILM_DEBUG"] = "1"  # decode workers inherit it: FFmpeg's lines are shown (evilm_core/data/video/read.py)
        return [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return argv


def _fail(err: EvilmError) -> None:
    """An EvilmError ends the command with its paragraph and exit 2 (--debug: the traceback)."""
    if STATE["debug"]:
        raise err
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    mark_parent()  # the workers this command starts compare their parent with it (evilm_core/workers.py)
    try:
        app(args=_take_debug(sys.argv[1:]), prog_name="evilm")
    except TrainingInterrupted as err:  # a checkpoint was written; say where
        console.print(f"[yellow]stopped:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except EvilmError as err:
        _fail(err)
    except RuntimeError as err:
        # a DataLoader's worker death can surface as PyTorch's RuntimeError outside the loader (its
        # SIGCHLD handler raises wherever the main process is): the same paragraph, no traceback
        death = loader_worker_death(err)
        if death is None:
            raise
        _fail(death)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":  # `python -m evilm_cli.main`; torchrun's documented form is `--no-python evilm`
    main()
