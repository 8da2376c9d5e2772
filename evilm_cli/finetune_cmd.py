"""`evilm finetune RECIPE`: stage 3, QA / multiple choice / retrieval / linear probe."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.recipe_opts import OVERRIDES, PRINT_CONFIG, REPLAN, RESUME, run_training


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune(
        recipe: Path = typer.Argument(..., help="A `kind: finetune` recipe (task: qa | mc | retrieval | probe). "
                                      "A file, or a bundled recipe's name (evilm recipes ls)."),
        overrides: list[str] = OVERRIDES,
        resume: bool = RESUME,
        replan: bool = REPLAN,
        print_config: bool = PRINT_CONFIG,
        threads: int = options.threads("finetune"),
        json_out: bool = options.json_out("{checkpoint, step, skipped, metrics, ...}"),
    ):
        """Stage 3: fine-tune on QA, multiple choice, retrieval or a linear probe.

        Fine-tune E-ViLM on a downstream task (paper 4.2), starting from init.checkpoint (a
        pre-trained checkpoint, run directory or Hub id hf-hub:ORG/NAME; null trains
        from scratch). qa, mc and retrieval
        train the whole model; probe freezes it and trains a linear classifier on cached features.
        The fine-tuned model is written to output.dir/final/; evaluate it with `evilm evaluate`.

        Example: evilm finetune recipes/synthetic/qa.yaml --set qa.num_answers=50
        Multi-GPU: torchrun --nproc_per_node=8 --no-python evilm finetune recipes/msrvtt_qa.yaml
        """
        from evilm_core.finetune.run import train_finetune

        run_training("finetune", train_finetune, recipe, overrides, "replan" if replan else resume, print_config, json_out, expect="finetune", threads=threads)
