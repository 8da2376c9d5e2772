"""`evilm quickstart`: the whole pipeline on synthetic data, then a results table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from evilm_cli import options
from evilm_cli.common import emit_json, progress, results_console

STAGE_TITLES = {"data": "data synth", "shards": "data shards", "tokenizer": "tokenize-train", "label": "label", "pretrain": "pretrain",
                "retrieval": "finetune retrieval", "qa": "finetune qa", "index": "retrieve index",
                "evaluate": "evaluate", "profile": "profile"}


def results_table(result: dict) -> Table:
    r, qa = result["retrieval"], result["qa"]
    table = Table(title=f"evilm quickstart: {result['out']}", title_justify="left")
    table.add_column("result")
    table.add_column("value", justify="right")
    table.add_column("reference", justify="right")
    for k in (1, 5, 10):
        table.add_row(f"text-to-video R@{k} (test, {r['num_videos']} clips)", f"{r[f't2v_R@{k}']:.1f}%",
                      f"chance {r[f'chance_R@{k}']:.1f}%")
    table.add_row(f"QA accuracy (test, {qa['num_examples']} questions)", f"{qa['accuracy']:.1f}%",
                  f"majority answer {qa['majority_baseline']:.1f}%")
    table.add_row("codebook usage (train clips)", f"{100 * result['codebook_usage']:.1f}%", "")
    table.add_row("parameters without heads / GFLOPs per clip",
                  f"{result['params'] / 1e6:.2f}M / {result['gflops']:.2f}", "paper: 16M / 12.2")
    for stage, seconds in result["stage_seconds"].items():
        table.add_row(f"  time: {STAGE_TITLES[stage]}", f"{seconds:.0f} s", "")
    table.add_row("time: total (this invocation)", f"{result['seconds']:.0f} s", "")
    return table


def artefacts_table(result: dict) -> Table:
    table = Table(title="artefacts (reuse them with the individual commands)", title_justify="left")
    table.add_column("what")
    table.add_column("where")
    for name, path in result["artefacts"].items():
        table.add_row(name, path)
    table.add_row("recipes", str(Path(result["out"]) / "recipes"))
    return table


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        out: Path = typer.Option(Path("quickstart"), "--out", help="Directory for every artefact; re-running resumes."),
        size: str = typer.Option("quickstart", "--size", help="A model size of the registry: quickstart (minutes on a "
                                 "2-core CPU) or quickstart-tiny (a smoke test)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the data and of every stage."),
        threads: int = options.threads("quickstart"),
        json_out: bool = options.json_out("the results"),
    ):
        """Run the whole pipeline on synthetic data, learning for real, in minutes on a CPU.

        data synth -> tokenize-train -> label -> pretrain (MLM + VTM + MVM) -> finetune
        (retrieval, QA) -> retrieve index -> evaluate -> profile, then a results table:
        retrieval recall next to chance, QA accuracy next to the majority answer, codebook
        usage, model size and time per stage. No network needed.

        Example: evilm quickstart --out quickstart --json
        Then:    evilm retrieve query --index quickstart/index "a red star shrinks on a black background"
        """
        from evilm_core.quickstart.pipeline import Quickstart

        runner = Quickstart(out, size, seed, threads=threads, stage_progress=lambda stage: progress(STAGE_TITLES[stage]))
        result = runner.run()
        out_console = results_console(json_out)
        out_console.print(results_table(result))
        out_console.print(artefacts_table(result))
        if json_out:
            emit_json(result)
