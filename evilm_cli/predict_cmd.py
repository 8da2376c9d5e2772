"""`evilm predict --checkpoint CKPT [VIDEO ...]`: a trained model answers for your own videos."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import console, progress


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        files: list[Path] = typer.Argument(None, help="Video files (or give --videos DIR or --manifest M)."),
        checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint dir, run dir (final/, else newest "
                                        "step_*) or Hub id hf-hub:ORG/NAME[@REV]: fine-tuned qa, mc, probe or "
                                        "retrieval, or pre-trained."),
        videos: Path = typer.Option(None, "--videos", help="Every video file under this directory."),
        manifest: Path = typer.Option(None, "--manifest", help="A manifest (any reader format; its questions or "
                                      "options are used) or a shard set."),
        root: Path = typer.Option(None, "--root", help="Where a manifest's relative paths resolve (default: its "
                                  "directory)."),
        question: str = typer.Option(None, "--question", help="QA: the question for every clip (default: the "
                                     "manifest's 'question'). MC: paired with each option."),
        choices: str = typer.Option(None, "--options", help="Multiple choice: the options for every clip, "
                                    "'a|b|c' (default: the manifest's 'options')."),
        texts: Path = typer.Option(None, "--texts", help="Retrieval or pre-trained: rank these texts (one per line) "
                                   "for each clip."),
        labels: str = typer.Option(None, "--labels", help="Retrieval or pre-trained: zero-shot labels 'a|b|c', "
                                   "ranked for each clip."),
        template: str = typer.Option(None, "--template", help="How a --labels entry becomes a text, e.g. 'a video "
                                     "of {}' [default: {}]."),
        top_k: int = typer.Option(5, "-k", "--top-k", min=1, help="Answers, labels or texts per line."),
        out: Path = typer.Option(None, "--out", help="Write JSON lines to this file instead of stdout; a re-run "
                                 "skips the clips already there (resume)."),
        frames: int = typer.Option(4, "--frames", min=1, help="Frames per clip (segment centres)."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Clips per loader batch."),
        workers: int = typer.Option(None, "--workers", min=0, show_default="auto", help="Loader processes. On the "
                                    "CPU each decodes and runs the model on its clips (auto: one per core, at most "
                                    "8); with a GPU they decode (auto: 2). 0: everything in this process."),
        device: str = options.device("predict"),
        precision: str = options.precision("predict"),
        threads: int = options.threads("predict"),
        decoder: str = options.decoder("predict"),
        json_out: bool = options.json_out(help="One JSON object per line (what --out stores) instead of TSV lines."),
    ):
        """Answer with a checkpoint's head for each video: the top -k answers to a question (qa), each
        option's match score (mc, or zero-shot with a pre-trained checkpoint), the top -k labels
        (probe), or given texts ranked (retrieval or pre-trained: --texts, --labels).

        Prints TSV lines in input order, flushed per batch: key, question, rank, answer, score (an
        unreadable clip: key, question, error, reason, detail); --json prints one object per line.
        The summary (answered, skipped, seconds) goes to stderr. See docs/predict.md.

        \b
        Examples:
          evilm predict --checkpoint runs/synthetic/qa --videos clips/ --question "how does the red star move?"
          evilm predict --checkpoint runs/synthetic/qa --manifest data/synth/test.jsonl --out answers.jsonl
          evilm predict --checkpoint runs/synthetic/pretrain clip.mp4 --options "a red star grows|a red star shrinks"
          evilm predict --checkpoint runs/synthetic/probe --videos clips/ -k 3
          evilm predict --checkpoint runs/synthetic/retrieval --videos clips/ --labels "black|navy" --template "a {} background"
        """
        from evilm_core.predict.inputs import PredictRequest
        from evilm_core.predict.output import json_line, tsv_lines
        from evilm_core.predict.run import run_predict

        def emit(rows: list[dict]) -> None:
            for row in rows:
                sys.stdout.write(json_line(row) + "\n" if json_out else "".join(t + "\n" for t in tsv_lines(row)))
            sys.stdout.flush()

        req = PredictRequest(checkpoint=str(checkpoint), files=[str(f) for f in files or []],
                             videos=str(videos) if videos else None, manifest=str(manifest) if manifest else None,
                             root=str(root) if root else None, question=question, options=choices,
                             texts=str(texts) if texts else None, labels=labels, template=template, top_k=top_k,
                             out=str(out) if out else None, num_frames=frames, batch_size=batch_size,
                             num_workers=workers, device=device, precision=precision, threads=threads,
                             decoder=decoder)
        with progress("predict") as update:
            s = run_predict(req, emit=None if out else emit, progress=update)
        where = f", {s['already']} already in {out}" if out else ""
        console.print(f"predict ({s['head']}): {s['answered']} clips answered, {s['skipped']} skipped (unreadable)"
                      f"{where}; {s['seconds']:.1f} s, {s['clips_per_s']:.2f} clips/s", highlight=False, soft_wrap=True)
