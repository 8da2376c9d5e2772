"""`evilm tokenize-train RECIPE`: stage 1, the semantic VQ video tokenizer."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.recipe_opts import OVERRIDES, PRINT_CONFIG, REPLAN, RESUME, run_training


def register(app: typer.Typer) -> None:
    @app.command("tokenize-train")
    def tokenize_train(
        recipe: Path = typer.Argument(..., help="A `kind: tokenizer` recipe. "
                                      "A file, or a bundled recipe's name (evilm recipes ls)."),
        overrides: list[str] = OVERRIDES,
        resume: bool = RESUME,
        replan: bool = REPLAN,
        print_config: bool = PRINT_CONFIG,
        threads: int = options.threads("tokenize-train"),
        json_out: bool = options.json_out("{checkpoint, step, skipped, metrics, ...}"),
    ):
        """Stage 1: train the semantic VQ video tokenizer.

        Paper 3.3: ViT/32 encoder, l2-normalised codebook, caption-word decoder with focal loss.
        The final checkpoint (output.dir/final) keeps encoder + codebook only; use it with
        `evilm label`.

        Example: evilm tokenize-train recipes/synthetic/tokenizer.yaml --set train.epochs=2
        Multi-GPU: torchrun --nproc_per_node=8 --no-python evilm tokenize-train recipes/tokenizer_webvid.yaml
        """
        from evilm_core.tokenizer.train import train_tokenizer

        run_training("tokenizer", train_tokenizer, recipe, overrides, "replan" if replan else resume, print_config, json_out, expect="tokenizer", threads=threads)
