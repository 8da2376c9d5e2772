"""Pre-training step throughput of the paper model on random tensors (no data loading).

Measures the model side of `evilm pretrain recipes/webvid.yaml`: one fused MLM + VTM + MVM step
(forward, backward, AdamW) on batches of 4-frame 256 px clips and 40-token captions, with MVM
targets drawn at random. Reports clips/s and peak accelerator memory.

    python benchmarks/pretrain_throughput.py --device cuda --precision bf16 --batch-size 64
    python benchmarks/pretrain_throughput.py --device cpu --batch-size 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from evilm_core.recipes import load_recipe
from evilm_core.engine.optim import build_optimizer
from evilm_core.pretrain.objectives import PretrainTask


def fake_batch(recipe, batch: int, device: torch.device) -> dict:
    d, m = recipe.data, recipe.model
    g = m.grid
    ids = torch.randint(5, m.vocab_size, (batch, m.max_text_len), device=device)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return {
        "pixels": torch.randn(batch, d.num_frames, 3, d.image_size, d.image_size, device=device),
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        "mvm_targets": torch.randint(0, m.codebook_size, (batch, d.num_frames, g, g), device=device),
        "caption": [f"caption {i}" for i in range(batch)], "size": batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/webvid.yaml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16" if torch.cuda.is_available() else "fp32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["model.pretrained=false", "model.vocab_size=9420"])
    device = torch.device(args.device)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(recipe.model.vocab_size - 5)]
    task = PretrainTask(recipe, vocab, None)
    model = task.model.to(device).train()
    opt = build_optimizer(model, recipe.optim)
    batch = fake_batch(recipe, args.batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss, _ = task.loss(model, batch, torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            timings.append(time.perf_counter() - tic)
    per_step = sorted(timings)[len(timings) // 2]  # median: robust to a stray slow step
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision": args.precision, "batch_size": args.batch_size, "median_step_s": per_step,
              "clips_per_s": args.batch_size / per_step,
              "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
              "torch": torch.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
