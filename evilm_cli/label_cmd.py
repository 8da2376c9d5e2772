"""`evilm label`: cache the tokenizer's codes for every video (offline MVM targets; docs/design.md, "Label cache")."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, progress, results_console
from evilm_core.errors import EvilmError


def _check_merge_args(**given) -> None:
    extra = [name for name, value in given.items() if value]
    if extra:
        raise EvilmError(f"--merge only takes --out (and --json); drop {', '.join(extra)}")


def _print(summary: dict, out) -> None:
    if "merged_shards" in summary:
        out.print(f"label: merged {summary['merged_shards']} shards into {summary['out']}: ", end="")
    else:
        out.print(f"label: {summary['out']}: {summary['newly_labelled']} newly labelled, ", end="")
    out.print(f"{summary['labelled']}/{summary['videos']} videos labelled, {summary['skipped']} skipped "
                  f"(missing {summary['missing']}, corrupt {summary['corrupt']}), codebook usage "
                  f"{summary['codebook_usage']:.1%}, {summary['seconds']:.1f} s", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("label")
    def label(
        out: Path = typer.Option(..., "--out", help="Cache directory (created, or resumed when it exists)."),
        videos: Path = typer.Option(None, "--videos", help="Label every video file under this directory."),
        manifest: Path = typer.Option(None, "--manifest", help="Label the distinct videos of this manifest."),
        tokenizer: Path = typer.Option(None, "--tokenizer", help="Exported tokenizer dir, or a tokenize-train run dir."),
        format: str = typer.Option("auto", "--format", help="Manifest format (auto, jsonl, webvid, ...)."),
        root: Path = typer.Option(None, "--root", help="Where relative video paths resolve (default: the manifest's directory)."),
        candidates: int = typer.Option(8, "--candidates", min=1, help="Candidate frames per video (segment centres)."),
        flips: bool = typer.Option(False, "--flips", help="Also cache codes of the horizontally flipped frames."),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Videos per tokenizer call."),
        workers: int = typer.Option(2, "--workers", min=0, help="Decoding processes (0: decode in this process)."),
        device: str = options.device("label"),
        shard: str = typer.Option(None, "--shard", help="i/n: label only videos with index % n == i, into OUT/shard-i-of-n/."),
        precision: str = options.precision("label"),
        threads: int = options.threads("label"),
        merge: bool = typer.Option(False, "--merge", help="Merge OUT/shard-*-of-n/ into OUT, then exit."),
        json_out: bool = options.json_out(),
        decoder: str = options.decoder("label"),
        max_video_bytes: int = options.max_video_bytes(),
        min_codebook_usage: float = typer.Option(None, "--min-codebook-usage", min=0.0, max=1.0, show_default="0.1",
                                                 help="Warn when the tokenizer uses a smaller share of its codes on "
                                                 "these videos (a diverged or collapsed tokenizer)."),
    ):
        """Cache the tokenizer's codes for every video (offline MVM targets).

        Runs the tokenizer once and stores codes for F candidate frames per video (uint16,
        memory-mapped), so pretraining never runs the tokenizer. Re-running the same command
        resumes an interrupted run; undecodable videos are recorded and skipped.

        Example: evilm label --manifest data/synth/train.jsonl --tokenizer runs/synthetic/tokenizer --out runs/synthetic/labels
        Sharded: evilm label --videos data/webvid/videos --tokenizer runs/tok --out cache/labels --shard 0/4 (one per node), then evilm label --merge --out cache/labels
        """
        from evilm_core.label.labeler import run_label
        from evilm_core.label.writer import merge_shards

        if merge:
            _check_merge_args(**{"--videos": videos, "--manifest": manifest, "--tokenizer": tokenizer,
                                 "--shard": shard, "--root": root, "--flips": flips})
            with progress("label merge") as update:
                summary = merge_shards(out, progress=update)
        else:
            if tokenizer is None:
                raise EvilmError("--tokenizer is required (the exported tokenizer, or a tokenize-train run dir)")
            with progress("label") as update:
                summary = run_label(videos=videos, manifest=manifest, format=format, root=root, tokenizer=tokenizer,
                                    out=out, num_candidates=candidates, flips=flips, batch_size=batch_size,
                                    num_workers=workers, device=device, split=shard, precision=precision,
                                    threads=threads, decoder=decoder, progress=update,
                                    max_video_bytes=max_video_bytes, **({} if min_codebook_usage is None else
                                                                        {"min_codebook_usage": min_codebook_usage}))
        _print(summary, results_console(json_out))
        if json_out:
            emit_json(summary)
