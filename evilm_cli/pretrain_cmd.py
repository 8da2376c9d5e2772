"""`evilm pretrain RECIPE`: stage 2, MLM + VTM + MVM."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.recipe_opts import OVERRIDES, PRINT_CONFIG, REPLAN, RESUME, run_training


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain(
        recipe: Path = typer.Argument(..., help="A `kind: pretrain` recipe. "
                                      "A file, or a bundled recipe's name (evilm recipes ls)."),
        overrides: list[str] = OVERRIDES,
        resume: bool = RESUME,
        replan: bool = REPLAN,
        print_config: bool = PRINT_CONFIG,
        threads: int = options.threads("pretrain"),
        json_out: bool = options.json_out("{checkpoint, step, skipped, metrics, ...}"),
    ):
        """Stage 2: pre-train E-ViLM with MLM + VTM + MVM.

        Paper 3.4: masked language modelling, video-text matching and masked video modelling
        against the tokenizer's codes (from a label cache, or online). SIGINT or SIGTERM writes
        a checkpoint and stops; --resume continues from it.

        Example: evilm pretrain recipes/synthetic/pretrain.yaml --set loss.mvm=0
        Multi-GPU: torchrun --nproc_per_node=8 --no-python evilm pretrain recipes/webvid.yaml
        """
        from evilm_core.pretrain.train import train_pretrain

        run_training("pretrain", train_pretrain, recipe, overrides, "replan" if replan else resume, print_config, json_out, expect="pretrain", threads=threads)
