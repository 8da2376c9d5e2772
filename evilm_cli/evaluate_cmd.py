"""`evilm evaluate RECIPE --checkpoint CKPT`: a task's metrics for any checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, results_console
from evilm_cli.recipe_opts import OVERRIDES, load


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        recipe: Path = typer.Argument(..., help="A `kind: finetune` recipe: its task and data.test / data.val. "
                                      "A file, or a bundled recipe's name (evilm recipes ls)."),
        checkpoint: Path = typer.Option(..., "--checkpoint",
                                        help="A checkpoint dir, run dir (final/, else newest step_*) "
                                        "or Hub id hf-hub:ORG/NAME[@REV]."),
        split: str = typer.Option("test", "--split", help="Evaluate on data.test (test) or data.val (val)."),
        overrides: list[str] = OVERRIDES,
        precision: str = options.precision("evaluate"),
        threads: int = options.threads("evaluate"),
        rerank: int = typer.Option(0, "--rerank", min=0, help="Retrieval: also re-rank each text's top-K clips by "
                                   "the matching (VTM) head on the joint pass; reports both rankings [0: off]."),
        predictions: Path = typer.Option(None, "--predictions", help="Also write one JSON line per item to this "
                                         "file: what the model answered and the gold answer (docs/predict.md)."),
        top_k: int = typer.Option(5, "-k", "--top-k", min=1, help="With --predictions: answers, labels, keys or "
                                  "texts listed per item."),
        json_out: bool = options.json_out('{"task": ..., "metrics": {...}}'),
    ):
        """Evaluate a checkpoint on the recipe's task (the paper's metrics).

        Fine-tuned checkpoints use their task head;
        a pre-trained checkpoint is evaluated zero-shot for mc (VTM match score) and retrieval
        (unimodal embeddings), as in the paper's Table 4. Accuracies and recalls are percentages.

        Example: evilm evaluate recipes/synthetic/retrieval.yaml --checkpoint runs/synthetic/pretrain --json
        Per item: evilm evaluate synthetic/qa --checkpoint runs/synthetic/qa --predictions qa.jsonl
        """
        from evilm_core.finetune.run import evaluate_checkpoint

        cfg = load(recipe, overrides, expect="finetune", threads=threads, precision=precision)
        result = evaluate_checkpoint(cfg, checkpoint, split, rerank=rerank, predictions=predictions, top_k=top_k)
        results_console(json_out).print(f"evaluate {result['task']} ({split}): "
                      + "  ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items()))
        if json_out:
            emit_json(result)
