"""Where does a model keep the synthetic action (motion) label? A diagnostic for the linear probe.

    python benchmarks/probe_features.py --checkpoint runs/synthetic/pretrain [--supervised 15]

On data/synth (the probe recipe's frames and size), for the pre-trained checkpoint and for the
same model at random initialisation, a linear probe (the `evilm finetune` probe's own
`fit_linear`) on three frozen features:

    cls     the unimodal video [CLS] (what `probe.feature: cls` uses)          [D]
    frames  the fused video tokens, averaged per frame, frames concatenated     [T*D]
    grid    the backbone's region map of every frame, concatenated (no pooling) [T*g*g*C]

Test top-1 on all clips and on one-shape clips (a two-shape clip's label is the motion of the
shape its caption names first, which the pixels do not show). `--supervised N` also trains
readouts end to end on the label for N epochs from random initialisation (rows of SUPERVISED):
the video-only [CLS] + a linear layer with the backbone trainable and frozen, a linear layer on
the flattened video tokens e^V (no decoder), and the [CLS] with the frame and region embeddings
drawn at the scale of the tokens they are added to. Can the architecture learn the label at this
scale at all, and which part stops it? `--rows` picks rows, `--skip-frozen` skips the first
table. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evilm_core.recipes import load_recipe  # noqa: E402
from evilm_core.data.clips import open_clips  # noqa: E402
from evilm_core.data.video.read import resolve_decoder  # noqa: E402
from evilm_core.errors import EvilmError  # noqa: E402
from evilm_core.finetune.config import ProbeConfig  # noqa: E402
from evilm_core.engine.runtime import eval_batches  # noqa: E402
from evilm_core.finetune.data import label_vocab  # noqa: E402
from evilm_core.models.loading import load_checkpoint  # noqa: E402
from evilm_core.finetune.probe import fit_linear, probe_dataset  # noqa: E402
from evilm_core.models.evilm import EViLM  # noqa: E402

FEATURES = ("cls", "frames", "grid")


def load_split(data, manifest: Path, labels: list[str]) -> dict:
    """Decode a split once (evaluation frames) -> {pixels [N, T, 3, H, W], labels [N], one_shape [N],
    captions}."""
    source = open_clips(manifest)  # a shard set (the recipe's default) or a manifest of videos
    records = list(source.records)
    dataset = probe_dataset(records, source, data, labels, seed=0, decoder=resolve_decoder("auto"))
    pixels, ys = [], []
    for batch in eval_batches(dataset, data.batch_size, data.num_workers, torch.device("cpu"), {}):
        pixels.append(batch["pixels"])
        ys.append(batch["label"])
    captions = [r.caption or "" for r in records]
    one_shape = torch.tensor([" while " not in c for c in captions])
    return {"pixels": torch.cat(pixels), "labels": torch.cat(ys), "one_shape": one_shape, "captions": captions}


@torch.no_grad()
def features(net: EViLM, pixels: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    net.eval()
    out: dict[str, list] = {k: [] for k in FEATURES}
    for start in range(0, len(pixels), batch):
        px = pixels[start:start + batch]
        b, t = px.shape[:2]
        grid = net.video.forward_features(px)  # [B, T, g*g, C]
        fused = net.fusion(None, None, net.video(px))  # [B, 1 + T*g*g, D]
        out["cls"].append(fused[:, 0])
        out["frames"].append(fused[:, 1:].unflatten(1, (t, -1)).mean(2).flatten(1))
        out["grid"].append(grid.flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}


def probe_accuracy(train_x, train_y, test_x, test_y, test_one: torch.Tensor, classes: int) -> tuple[float, float]:
    head = nn.Linear(train_x.shape[1], classes)
    torch.manual_seed(0)
    fit_linear(head, train_x, train_y, ProbeConfig())
    with torch.no_grad():
        hit = (head(test_x).argmax(-1) == test_y).float()
    return 100 * float(hit.mean()), 100 * float(hit[test_one].mean())


SUPERVISED = {  # row -> (readout, backbone frozen, frame/region embeddings at the token scale)
    "[CLS], backbone trained": ("cls", False, False),
    "[CLS], backbone frozen": ("cls", True, False),
    "video tokens e^V, no decoder, backbone trained": ("tokens", False, False),
    "[CLS], backbone trained, embeddings at token scale": ("cls", False, True),
}


def init_token_scale(net: EViLM) -> None:
    """Frame and region embeddings drawn at the std of the projected region features they are
    added to (0.02 * sqrt(C), unit-variance features through a 0.02-std linear) instead of 0.02."""
    std = 0.02 * net.video.backbone.num_features ** 0.5
    for p in (net.video.frame_embed, net.video.region_embed):
        nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)


def supervised(cfg, train: dict, test: dict, classes: int, epochs: int, row: str) -> float:
    """A readout + linear, end to end from random init (AdamW 5e-4, batch 16) -> test top-1.
    cls: the video-only [CLS]; tokens: the flattened video tokens e^V (the decoder unused).
    Token scale: frame and region embeddings drawn at the std of the projected region features
    (0.02 * sqrt(C)) instead of 0.02."""
    readout, frozen, token_scale = SUPERVISED[row]
    torch.manual_seed(0)
    net = EViLM(cfg)
    tokens = train["pixels"].shape[1] * cfg.grid * cfg.grid  # T * g * g
    head = nn.Linear(cfg.fusion_dim * (tokens if readout == "tokens" else 1), classes)
    if token_scale:
        init_token_scale(net)
    net.video.backbone.requires_grad_(not frozen)
    modules = [net.video] + ([net.fusion] if readout == "cls" else []) + [head]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)

    def logits(px: torch.Tensor) -> torch.Tensor:
        return head(net.video_cls(px) if readout == "cls" else net.video(px).flatten(1))

    x, y = train["pixels"], train["labels"]
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(y)).split(16):
            loss = F.cross_entropy(logits(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([logits(p).argmax(-1) for p in test["pixels"].split(32)])
    return 100 * float((pred == test["labels"]).float().mean())


def frozen_features(starts: dict, train: dict, test: dict, classes: int) -> None:
    """Linear probes on each frozen feature of each start -> a markdown table on stdout."""
    print(f"| feature | start | test top-1 (chance {100 / classes:.1f}) | one-shape clips |\n|---|---|---|---|")
    for start, net in starts.items():
        tr, te = features(net, train["pixels"]), features(net, test["pixels"])
        for name in FEATURES:
            acc, one = probe_accuracy(tr[name], train["labels"], te[name], test["labels"], test["one_shape"], classes)
            print(f"| {name} ({tr[name].shape[1]}) | {start} | {acc:.1f} | {one:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/synthetic/pretrain"))
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "synthetic" / "probe.yaml")
    parser.add_argument("--supervised", type=int, default=0, help="epochs of the end-to-end check (0: skip)")
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(len(SUPERVISED))),
                        choices=range(len(SUPERVISED)), metavar="ROW",
                        help="which end-to-end rows to train (0-based, in the table's order)")
    parser.add_argument("--skip-frozen", action="store_true", help="only the end-to-end check")
    args = parser.parse_args()
    data = load_recipe(args.recipe).data
    labels = label_vocab([r.label for r in open_clips(data.train).records])
    train, test = (load_split(data, Path(m), labels) for m in (data.train, data.test))
    pretrained = load_checkpoint(args.checkpoint).model
    torch.manual_seed(0)
    starts = {"random init": EViLM(pretrained.cfg), "pre-trained": pretrained}
    if not args.skip_frozen:
        frozen_features(starts, train, test, len(labels))
    if args.supervised:
        print(f"\n| end to end, {args.supervised} epochs, random init | test top-1 |\n|---|---|")
        for row in [list(SUPERVISED)[i] for i in args.rows]:
            acc = supervised(pretrained.cfg, train, test, len(labels), args.supervised, row)
            print(f"| {row} | {acc:.1f} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except EvilmError as err:  # a missing checkpoint or manifest: the message, not a traceback
        raise SystemExit(f"probe_features: {err}") from None
