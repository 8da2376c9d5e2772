"""evilm against the models users would pick instead, on the CPU, per clip (video side, 4 frames)
and per query (text side, one caption), each model on each runtime evilm uses, interleaved; the
table says each model's best runtime and its time over evilm's (above 1: evilm is faster).

    pip install 'evilm[bench,onnx,openvino]' -c constraints.txt
    python benchmarks/peers.py --work /tmp/evilm-peers --out docs/peers.json --threads 1

Models (random weights: speed does not depend on them; open_clip's `pretrained=None`):
evilm paper size (256 px, its `evilm export` run through evilm's own runtime adapter,
export/runtime.py), CLIP ViT-B/32 on 4 frames at 224 px (the CLIP4Clip backbone), MobileCLIP2-S0
(256 px, reparameterized as for inference) and PE-Core-T-16 (384 px). Runtimes: PyTorch fp32 and
bf16 weights (autocast is left out: on ViT-B/32 it is 6x slower than fp32), onnxruntime fp32,
OpenVINO fp32 and bf16 (static batch). Then a per-op profile (OpenVINO's per-layer counters,
summed by layer type) of evilm's and ViT-B/32's video side on OpenVINO bf16: where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

CAPTION = "a man in a red shirt throws a ball to a dog on the beach"
PEERS = {"CLIP ViT-B/32 x4": "ViT-B-32", "MobileCLIP2-S0": "MobileCLIP2-S0", "PE-Core-T-16-384": "PE-Core-T-16-384"}
OV_CONFIG = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}  # as export/openvino.py


def interleave(fns: dict, rounds: int, warm: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, run A, B, C, ... `rounds` times after `warm` calls each."""
    for f in fns.values():
        for _ in range(warm):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            began = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - began)
    return {k: statistics.median(v) for k, v in times.items()}


def cosine(a, b) -> float:
    a, b = (np.asarray(x, np.float64).reshape(len(x), -1) for x in (a, b))
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def evilm_sides(work: Path, threads: int):
    """evilm's video and text towers: a paper-size random checkpoint and its ONNX export in `work`."""
    from evilm_core.export.towers import export_towers
    from evilm_core.models.config import EViLMConfig
    from evilm_core.models.evilm import EViLM
    from evilm_core.models.loading import load_checkpoint

    ckpt, export = work / "evilm_paper", work / "evilm_paper_onnx"
    if not (ckpt / "model.safetensors").is_file():
        torch.manual_seed(0)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(9415)]
        EViLM(EViLMConfig.sized("paper", vocab_size=len(vocab))).save_pretrained(ckpt, vocab=vocab)
    if not (export / "export.json").is_file():
        export_towers(ckpt, export)
    net = load_checkpoint(ckpt).model.eval()
    ids = torch.full((1, net.cfg.max_text_len), 0)
    ids[0, :13] = torch.tensor([2] + [7 + i for i in range(11)] + [3])  # [CLS] 11 words [SEP], padded as the tokenizer does
    return net, export, (ids, (ids > 0).long())


def peer_sides(name: str):
    import open_clip
    from timm.utils.model import reparameterize_model

    model = open_clip.create_model(name, pretrained=None).eval()
    if "MobileCLIP" in name:
        model = reparameterize_model(model)  # MobileOne/FastViT branches folded, as for inference
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    tokens = open_clip.get_tokenizer(name)([CAPTION])
    return model, size, tokens


class Encode(torch.nn.Module):
    """One side of a model (its method `side`) as a module of its inputs: what the exporters trace."""

    def __init__(self, owner: torch.nn.Module, side: str):
        super().__init__()
        self.owner, self.side = owner, side

    def forward(self, *x):
        return getattr(self.owner, self.side)(*x)


def onnx_file(module: torch.nn.Module, args: tuple, path: Path) -> Path | None:
    """`module` exported to ONNX with these static shapes (kept in `path` for the next run), or None."""
    if path.is_file():
        return path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, verbose=False)
        return path
    except Exception as err:  # a model the exporter cannot take: that runtime is left out for it
        print(f"ONNX export of {path.name} failed: {str(err).splitlines()[0][:160]}", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def runtimes(module: torch.nn.Module, args: tuple, onnx: Path | None, threads: int) -> dict:
    """{runtime: a call} for one side of one model."""
    import copy

    torch_bf = copy.deepcopy(module).to(torch.bfloat16)
    if hasattr(torch_bf.owner, "retrieval"):
        torch_bf.owner.retrieval.float()  # evilm's projection takes the [CLS] in fp32 (models/evilm.py _project)
    bf_args = tuple(a.bfloat16() if a.is_floating_point() else a for a in args)
    calls = {"torch fp32": lambda: module(*args), "torch bf16": lambda: torch_bf(*bf_args)}
    if onnx is None:
        return calls
    import onnxruntime as ort
    import openvino as ov

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    calls["onnxruntime fp32"] = lambda: session.run(None, feeds)[0]
    core, arrays = ov.Core(), [a.numpy() for a in args]
    for precision in ("f32", "bf16"):
        config = {**OV_CONFIG, "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
        request = core.compile_model(static_model(core, onnx, args), "CPU", config).create_infer_request()
        calls[f"openvino {precision.replace('f32', 'fp32')}"] = lambda r=request: r.infer(arrays)[0]
    return calls


def static_model(core, onnx: Path, args: tuple):
    """The ONNX graph with these input shapes (as evilm's runtime compiles its video tower: export/openvino.py)."""
    model = core.read_model(str(onnx))
    model.reshape({port.get_any_name(): list(a.shape) for port, a in zip(model.inputs, args)})
    return model


def ov_profile(onnx: Path, args: tuple, threads: int, top: int = 8) -> list[tuple[str, float]]:
    """OpenVINO bf16 per-layer counters of one call, summed by layer type: [(type, ms)], largest first."""
    import openvino as ov

    config = {**OV_CONFIG, "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16", "PERF_COUNT": True}
    core = ov.Core()
    request = core.compile_model(static_model(core, onnx, args), "CPU", config).create_infer_request()
    arrays = [a.numpy() for a in args]
    for _ in range(3):
        request.infer(arrays)
    by_type: dict[str, float] = {}
    for info in request.profiling_info:
        by_type[info.node_type] = by_type.get(info.node_type, 0.0) + info.real_time.total_seconds() * 1e3
    return sorted(by_type.items(), key=lambda kv: -kv[1])[:top]


def sides(work: Path, threads: int) -> dict[str, dict[str, tuple]]:
    """{model: {"clip" | "query": (module, args, ONNX file or None)}}; evilm's ONNX files are its
    `evilm export`."""
    net, export, text_args = evilm_sides(work, threads)
    g = torch.Generator().manual_seed(0)
    out = {"evilm (paper, 256 px)": {
        "clip": (Encode(net, "embed_video"), (torch.randn(1, 4, 3, 256, 256, generator=g),), export / "video.onnx"),
        "query": (Encode(net, "embed_text"), text_args, export / "text.onnx")}}
    for label, name in PEERS.items():
        model, size, tokens = peer_sides(name)
        slug = "".join(c if c.isalnum() else "_" for c in name)
        video, text = Encode(model, "encode_image"), Encode(model, "encode_text")
        frames = (torch.randn(4, 3, size, size, generator=g),)
        out[f"{label} ({size} px)"] = {"clip": (video, frames, onnx_file(video, frames, work / f"{slug}_clip.onnx")),
                                       "query": (text, (tokens,), onnx_file(text, (tokens,), work / f"{slug}_query.onnx"))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/evilm-peers"), help="checkpoint, exports (kept for reruns)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    models = sides(args.work, args.threads)
    results: dict = {"threads": args.threads, "rounds": args.rounds, "load_before": os.getloadavg(), "sides": {}}
    for side in ("clip", "query"):
        calls, refs = {}, {}
        for model, parts in models.items():
            module, inputs, onnx = parts[side]
            with torch.inference_mode():
                refs[model] = module(*inputs).float().numpy()
                for runtime, call in runtimes(module, inputs, onnx, args.threads).items():
                    calls[(model, runtime)] = call
        with torch.inference_mode():
            medians = interleave(calls, args.rounds)
            rows = []
            for (model, runtime), call in calls.items():
                got = call()
                got = got.float().numpy() if hasattr(got, "float") else np.asarray(got)
                rows.append({"model": model, "runtime": runtime, "ms": round(medians[(model, runtime)] * 1e3, 2),
                             "cosine_to_fp32": round(cosine(got, refs[model]), 5)})
        results["sides"][side] = rows
        print_table(side, rows)
    results["load_after"] = os.getloadavg()
    results["profile"] = {}
    for model in list(models)[:2]:  # evilm and ViT-B/32 x4: where the video side's time goes
        module, inputs, onnx = models[model]["clip"]
        if onnx is not None:
            results["profile"][model] = ov_profile(onnx, inputs, args.threads)
            print(f"OpenVINO bf16 per-layer time, {model}: " +
                  ", ".join(f"{t} {ms:.1f} ms" for t, ms in results["profile"][model]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def print_table(side: str, rows: list[dict]) -> None:
    best = {}
    for r in rows:
        if r["cosine_to_fp32"] >= 0.998 and (r["model"] not in best or r["ms"] < best[r["model"]]["ms"]):
            best[r["model"]] = r
    ours = next(iter(best.values()))
    print(f"\n{side}: ms per {side} (median), each model's best runtime marked *, last column: its best over evilm's best")
    for model, b in best.items():
        cells = "  ".join(f"{r['runtime']} {r['ms']:.1f}{'*' if r is b else ''} (cos {r['cosine_to_fp32']:.4f})"
                          for r in rows if r["model"] == model)
        print(f"  {model:28s} {cells}  | best/evilm {b['ms'] / ours['ms']:.2f}")


if __name__ == "__main__":
    main()
