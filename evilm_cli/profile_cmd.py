"""`evilm profile RECIPE`: parameters and GFLOPs per component, next to the paper's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from evilm_cli import options
from evilm_cli.common import console, emit_json, stdout_console
from evilm_cli.recipe_opts import OVERRIDES, load


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        recipe: Path = typer.Argument(..., help="A recipe with an E-ViLM `model:` section (e.g. kind: pretrain). "
                                      "A file, or a bundled recipe's name (evilm recipes ls)."),
        frames: int = typer.Option(None, "--frames", help="Frames per clip [default: the recipe's data.num_frames]."),
        text_len: int = typer.Option(40, "--text-len", help="Caption length in tokens (no padding)."),
        vocab_size: int = typer.Option(None, "--vocab-size",
                                       help="Text vocabulary size [default: the recipe's, else the paper's 9,420]."),
        overrides: list[str] = OVERRIDES,
        threads: int = options.threads("profile"),
        json_out: bool = options.json_out("{params, gflops, uncounted_ops, ...}"),
    ):
        """Count parameters and GFLOPs per model component (paper 4.1).

        Builds the recipe's model on the CPU (no pretrained download) and counts one clip plus
        one caption with fvcore (one multiply-add = one FLOP, as the paper and EdgeNeXt count):
        video encoder, text encoder, fusion decoder and each head, next to the paper's 16M
        parameters without heads, 12.2 GFLOPs per 4-frame clip and EdgeNeXt-S's 1.26 GFLOPs per
        256 px frame.

        Example: evilm profile recipes/webvid.yaml --frames 8 --json
        """
        from evilm_core.profiling import profile_recipe

        cfg = load(recipe, overrides, threads=threads)
        with console.status("profiling (tracing the model on the CPU)"):
            result = profile_recipe(cfg, frames=frames, text_len=text_len, vocab_size=vocab_size)
        if json_out:
            emit_json(result)
        else:
            print_profile(result)


def _m(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _g(x: float) -> str:
    return f"{x:.3f}" if x >= 0.01 else f"{x:.2g}"


def profile_table(r: dict[str, Any]) -> Table:
    """One row per component; the paper column only where the paper states a figure."""
    p, g, paper = r["params"], r["gflops"], r["paper"]
    t = Table(title=f"E-ViLM profile: {r['frames']} frames x {r['image_size']} px + {r['text_len']} tokens")
    for col in ("component", "params (M)", "GFLOPs", "paper"):
        t.add_column(col, justify="left" if col in ("component", "paper") else "right")
    t.add_row("video encoder", _m(p["video_encoder"]), _g(g["video_encoder"]), "")
    t.add_row(f"  {r['backbone']['name']}, 1 frame", _m(r["backbone"]["params"]),
              _g(r["backbone"]["gflops_per_frame"]),
              f"{paper['edgenext_small_per_frame_params_M']}M* / {paper['edgenext_small_per_frame_gflops']}")
    t.add_row("  + projection, per frame", "", _g(g["video_encoder_per_frame"]), "")
    t.add_row("text encoder", _m(p["text_encoder"]), _g(g["text_encoder"]), "")
    t.add_row("fusion decoder", _m(p["fusion"]), _g(g["fusion"]), "", end_section=True)
    t.add_row("total without heads", _m(p["total_without_heads"]), _g(g["total_without_heads"]),
              f"{paper['params_without_heads_M']}M", end_section=True)
    for name in ("mlm", "vtm", "mvm", "retrieval"):
        t.add_row(f"head: {name}", _m(p["heads"][name]), _g(g["heads"][name]), "")
    t.add_section()
    t.add_row("total", _m(p["total"]), _g(g["total"]), f"{paper['gflops_total']} (4 frames)")
    return t


def print_profile(r: dict[str, Any]) -> None:
    """The table, then the footnotes that make its numbers comparable with the paper's."""
    from evilm_core.profiling import IMAGENET_HEAD_NOTE

    stdout_console.print(profile_table(r))
    stdout_console.print(f"paper: EdgeNeXt-S at 256 px per frame; * {IMAGENET_HEAD_NOTE}.", highlight=False,
                  soft_wrap=True)
    stdout_console.print(f"counting: {r['counting']} (element-wise ops such as add, GELU and softmax are not counted); "
                  f"vocab_size {r['vocab_size']} ({r['vocab_source']})", highlight=False, soft_wrap=True)
    if r["uncounted_ops"]:
        ops = ", ".join(f"{k.removeprefix('aten::')} x{v}" for k, v in r["uncounted_ops"].items())
        stdout_console.print(f"uncounted ops: {ops}", highlight=False, soft_wrap=True)
