"""bf16 autocast vs fp32 and 1 thread vs all cores on the inference paths, on the CPU.

    python benchmarks/precision_threads.py --quickstart quickstart --out docs/precision_threads.json

In-process (variants interleaved A, B, A, B; medians): the paper-size video side (EdgeNeXt-S,
4 frames at 256 px), the quickstart's video side and tokenizer (the `label` path), and the text
side one query at a time and in batches of 64; each at one thread and at all cores, fp32 and
bf16, with the cosine (codes: agreement) of bf16 to fp32. Through the `evilm` command: `retrieve
index` and `label` of the quickstart's shards, --precision fp32 vs bf16, interleaved, wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM

EXE = str(Path(sys.executable).with_name("evilm"))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare(name: str, run, items: int, threads: tuple[int, ...], rounds: int = 2) -> list[dict]:
    """run(precision) -> output tensor; items per call. Rows per (threads, precision)."""
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        seconds = {"fp32": [], "bf16": []}
        for _ in range(rounds):  # interleaved
            for p in ("fp32", "bf16"):
                seconds[p].append(timed(lambda: run(p), 2))
        ref, low = run("fp32").float(), run("bf16").float()
        agree = (F.cosine_similarity(ref, low, dim=-1).min().item() if ref.is_floating_point() and ref.dim() > 1
                 else (ref == low).float().mean().item())
        for p in ("fp32", "bf16"):
            s = statistics.median(seconds[p])
            rows.append({"path": name, "threads": n, "precision": p, "per_s": round(items / s, 2),
                         "ms_per_item": round(1000 * s / items, 2)})
        rows[-1]["speedup_vs_fp32"] = round(rows[-2]["ms_per_item"] / rows[-1]["ms_per_item"], 2)
        rows[-1]["agreement_vs_fp32"] = round(agree, 6)
    return rows


def with_precision(fn):
    def run(p):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
            return fn()
    return run


def model_rows(quickstart: Path | None, threads: tuple[int, ...]) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    paper = EViLM(EViLMConfig.sized("paper", vocab_size=9420)).eval()
    clips = torch.randn(4, 4, 3, 256, 256)  # [B, T, 3, H, W]
    rows += compare("video side, paper size (4 x 256 px)", with_precision(lambda: paper.embed_video(clips)), 4,
                    threads)
    ids = torch.randint(5, 9420, (64, 40))
    mask = torch.ones_like(ids)
    rows += compare("text side, paper size, 1 query", with_precision(lambda: paper.embed_text(ids[:1], mask[:1])), 1,
                    threads)
    rows += compare("text side, paper size, batch of 64", with_precision(lambda: paper.embed_text(ids, mask)), 64,
                    threads)
    if quickstart is not None:
        rows += quickstart_rows(quickstart, threads)
    return rows


def quickstart_rows(quickstart: Path, threads: tuple[int, ...]) -> list[dict]:
    from evilm_core.models.loading import load_checkpoint
    from evilm_core.models.tokenizer import load_tokenizer

    net = load_checkpoint(quickstart / "retrieval" / "final").model.eval()
    clips = torch.randn(16, 4, 3, 96, 96)
    rows = compare("video side, quickstart (4 x 96 px)", with_precision(lambda: net.embed_video(clips)), 16, threads)
    tok, _ = load_tokenizer(quickstart / "tokenizer", torch.device("cpu"))
    tok = tok.float().eval()
    frames = torch.randn(16, 8, 3, 96, 96)
    rows += compare("tokenizer codes, quickstart (label, 8 x 96 px)", with_precision(lambda: tok.encode(frames)), 16,
                    threads)
    return rows


def cli_rows(quickstart: Path, rounds: int) -> list[dict]:
    """`evilm retrieve index` and `evilm label` of the quickstart's shards, fp32 vs bf16, interleaved."""
    rows, work = [], Path(tempfile.mkdtemp(prefix="evilm-prec-"))
    commands = {
        "retrieve index (160 clips)": lambda out, p: [EXE, "retrieve", "index", "--checkpoint",
                                                      str(quickstart / "retrieval" / "final"), "--manifest",
                                                      str(quickstart / "shards" / "test"), "--out", str(out),
                                                      "--workers", "0", "--precision", p, "--json"],
        "label (560 clips, 8 frames)": lambda out, p: [EXE, "label", "--manifest", str(quickstart / "shards" / "train"),
                                                       "--tokenizer", str(quickstart / "tokenizer"), "--out", str(out),
                                                       "--workers", "0", "--precision", p, "--json"],
    }
    for name, command in commands.items():
        seconds = {"fp32": [], "bf16": []}
        for r in range(rounds):
            for p in ("fp32", "bf16"):
                out = work / f"{name.split()[0]}-{p}-{r}"
                t = time.perf_counter()
                subprocess.run(command(out, p), capture_output=True, text=True, check=True)
                seconds[p].append(round(time.perf_counter() - t, 2))  # wall, start-up included
        for p in ("fp32", "bf16"):
            rows.append({"command": name, "precision": p, "seconds": statistics.median(seconds[p]),
                         "runs": seconds[p]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", type=Path, help="A finished `evilm quickstart --out` directory.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON here.")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    threads = tuple(sorted({1, os.cpu_count() or 1}))
    result = {"model": model_rows(args.quickstart, threads), "threads_tested": threads,
              "cli": cli_rows(args.quickstart, args.rounds) if args.quickstart else []}
    for row in result["model"] + result["cli"]:
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
