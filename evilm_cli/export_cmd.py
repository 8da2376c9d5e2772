"""`evilm export CKPT --out DIR`: the retrieval towers of a checkpoint as ONNX or torch.export
programs, for serving without the training code (evilm_core/export)."""

from __future__ import annotations

from pathlib import Path

import typer

from evilm_cli import options
from evilm_cli.common import emit_json, results_console


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        checkpoint: Path = typer.Argument(..., help="A checkpoint dir, run dir (final/, else newest step_*) "
                                        "or Hub id hf-hub:ORG/NAME[@REV]."),
        out: Path = typer.Option(..., "--out", help="Export directory: created, or an existing export replaced."),
        fmt: str = typer.Option("onnx", "--format", help="onnx (onnxruntime, needs the onnx extra) or torch "
                                "(torch.export .pt2 programs)."),
        frames: int = typer.Option(4, "--frames", min=1, help="Frames per video the video tower takes (fixed; "
                                   "index with the same --frames)."),
        json_out: bool = options.json_out(),
    ):
        """Export the video and text towers of an E-ViLM checkpoint for serving.

        Writes video.onnx + text.onnx (or .pt2), vocab.txt and export.json.
        The towers are checked against PyTorch before anything is published.
        Batch size is dynamic; frame count and text length are fixed.
        `evilm retrieve index/query --checkpoint DIR` accept the export directory.

        Example: evilm export runs/synthetic/retrieval --out runs/synthetic/export
        """
        from evilm_core.export.towers import export_towers

        summary = export_towers(checkpoint, out, fmt=fmt, num_frames=frames)
        check = summary["check"]
        results_console(json_out).print(f"exported {summary['format']} towers of {summary['checkpoint']} to {summary['out']} in "
                      f"{summary['seconds']:.1f} s (max |diff| vs PyTorch: video {check['video_max_abs_diff']:.2g}, "
                      f"text {check['text_max_abs_diff']:.2g})", highlight=False, soft_wrap=True)
        if json_out:
            emit_json(summary)
