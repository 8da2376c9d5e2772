"""`evilm push CKPT ORG/NAME`: publish a model export on the Hugging Face Hub (docs/hub.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, results_console


def register(app: typer.Typer) -> None:
    @app.command("push")
    def push(
        checkpoint: Path = typer.Argument(..., help="A model export or run dir (its final/)."),
        repo: str = typer.Argument(..., help="The Hub model repository, ORG/NAME (created if it does not exist)."),
        private: bool = typer.Option(False, "--private", help="Create the repository private."),
        revision: str = typer.Option(None, "--revision", help="Upload to this branch (created from main if need "
                                     "be) [default: main]."),
        license: str = typer.Option(None, "--license", help="The model card's license field (e.g. apache-2.0) "
                                    "[default: the card's, else none]."),
        json_out: bool = options.json_out("{repo, revision, url, commit, files}"),
    ):
        """Upload a checkpoint to the Hugging Face Hub, model card written first.

        Writes (or refreshes) the checkpoint's model card README.md from its run's recipe and final
        metrics, then uploads model.safetensors, config.json, vocab.txt, README.md and the class
        file. Needs a token with write access (HF_TOKEN or `hf auth login`) and the network.
        Load it anywhere a checkpoint is taken: --checkpoint hf-hub:ORG/NAME.

        Example: evilm push runs/synthetic/retrieval my-org/evilm-ret --private
        """
        from evilm_core.checkpoints.push import push_checkpoint

        result = push_checkpoint(checkpoint, repo, private=private, revision=revision, license=license)
        results_console(json_out).print(f"pushed {result['checkpoint']} to {result['url']} ({result['revision']}"
                                        f"{', commit ' + result['commit'][:12] if result['commit'] else ''}): "
                                        f"{', '.join(result['files'])}", highlight=False, soft_wrap=True)
        if json_out:
            emit_json(result)
