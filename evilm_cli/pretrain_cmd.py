"""`evilm pretrain RECIPE`: stage 2, MLM + VTM + MVM."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli.common import console, emit_json, is_main_process, progress
from evilm_cli.recipe_opts import OVERRIDES, PRINT_CONFIG, RESUME, load


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain(
        recipe: Path = typer.Argument(..., help="A `kind: pretrain` recipe."),
        overrides: list[str] = OVERRIDES,
        resume: bool = RESUME,
        print_config: bool = PRINT_CONFIG,
        json_out: bool = typer.Option(False, "--json", help="Print {checkpoint, step, skipped, metrics} on stdout."),
    ):
        """Stage 2: pre-train E-ViLM with MLM + VTM + MVM.

        Paper 3.4: masked language modelling, video-text matching and masked video modelling
        against the tokenizer's codes (from a label cache, or online). SIGINT or SIGTERM writes
        a checkpoint and stops; --resume continues from it.

        Example: evilm pretrain recipes/synthetic/pretrain.yaml --set loss.mvm=0
        Multi-GPU: torchrun --nproc_per_node=8 -m evilm_cli.main pretrain recipes/webvid.yaml
        """
        from evilm_core.pretrain.train import train_pretrain

        cfg = load(recipe, overrides, expect="pretrain", print_config=print_config)
        with progress("pretrain") as update:
            result = train_pretrain(cfg, resume=resume, progress=update)
        if is_main_process():
            console.print(f"pretrain: {result['checkpoint']}  step {result['step']}  skipped {result['skipped']}  "
                          + "  ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items()))
        if json_out:
            emit_json(result)
