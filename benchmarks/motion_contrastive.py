"""Can the contrastive term alone teach the video-only [CLS] the synthetic motions? A diagnostic for
issue 30's zero-shot labels (docs/finetuning.md, "Known limitations").

    python benchmarks/motion_contrastive.py --checkpoint runs/synthetic/pretrain --steps 3000

From random initialisation (the checkpoint gives only the model config and the vocabulary; with
`--from-weights`, from the checkpoint's weights as they are), on the
probe recipe's frames decoded once, the retrieval embeddings are trained with the video-text
contrastive term alone (no MLM, VTM, MVM) on *unmasked* clips, with two changes that the
pre-training recipe does not have:

- each clip played backwards is a hard negative for its caption (text -> video columns: the
  batch's clips and their reversals). The synthetic motions are reversal pairs (left/right,
  up/down, grows/shrinks), so this asks the [CLS] for the direction of motion. The reversal is
  of the per-frame tokens (the backbone sees one frame at a time, so it is the same as reversing
  the frames);
- frame and region embeddings drawn at the scale of the projected region features they are added
  to (0.02 * sqrt(C), benchmarks/probe_features.py's "token scale").

Every `--every` steps, on train and test clips: how often a caption is closer to its clip than to
the clip reversed (chance 50%), text-to-video R@1, and zero-shot motion labels, i.e. the argmax over
the six motion phrases in two templates, "a {}" and a caption frame with a fixed shape and
background. AdamW 5e-4 constant, batch 16, seed 0. Markdown rows on stdout as it goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from probe_features import init_token_scale, load_split  # noqa: E402

from evilm_core.data.clips import open_clips  # noqa: E402
from evilm_core.finetune.data import label_vocab  # noqa: E402
from evilm_core.models.evilm import EViLM  # noqa: E402
from evilm_core.models.loading import load_checkpoint  # noqa: E402
from evilm_core.models.losses import _nce, logit_scale_value, same_key  # noqa: E402
from evilm_core.recipes import load_recipe  # noqa: E402
from evilm_core.text.tokens import TextTokens  # noqa: E402

PHRASES = {"moves left": "moving left", "moves right": "moving right", "moves up": "moving up",
           "moves down": "moving down", "grows": "growing", "shrinks": "shrinking"}  # caption words -> label
TEMPLATES = ("a {}", "a red circle {} on a black background")


def embed_both(net: EViLM, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels [B, T, 3, H, W] -> retrieval embeddings of the clips and of the clips reversed [B, E]."""
    b, t = pixels.shape[:2]
    tokens = net.video.frame_tokens(pixels.flatten(0, 1)).unflatten(0, (b, t))  # [B, T, g*g, D]
    return net.embed_frame_tokens(tokens), net.embed_frame_tokens(tokens.flip(1))


@torch.no_grad()
def measure(net: EViLM, split: dict, tok: TextTokens, labels: list[str]) -> list[float]:
    """-> [reversal %, t2v R@1 %, zero-shot % per template]."""
    net.eval()
    pairs = [embed_both(net, px) for px in split["pixels"].split(32)]
    video, reverse = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    text = torch.cat([net.embed_text(i, m) for i, m in zip(split["ids"].split(64), split["mask"].split(64))])
    out = [float(((text * video).sum(-1) > (text * reverse).sum(-1)).float().mean()),
           float(((text @ video.T).argmax(1) == torch.arange(len(text))).float().mean())]
    gold_of = torch.tensor([labels.index(label) for label in PHRASES.values()])
    for template in TEMPLATES:
        phrases = net.embed_text(*tok.batch([template.format(p) for p in PHRASES]))
        out.append(float((gold_of[(video @ phrases.T).argmax(1)] == split["labels"]).float().mean()))
    net.train()
    return [100 * v for v in out]


def train(net: EViLM, data: dict, steps: int, every: int, report) -> None:
    params = [p for name, p in net.named_parameters() if not name.startswith("heads")]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)
    x, step = data["pixels"], 0
    while step < steps:
        for idx in torch.randperm(len(x)).split(16):
            video, reverse = embed_both(net, x[idx])
            text = net.embed_text(data["ids"][idx], data["mask"][idx])
            scale, pos = logit_scale_value(net.logit_scale), same_key([data["captions"][i] for i in idx])
            t2v = scale * text @ torch.cat([video, reverse]).T  # [B, 2B]: reversed clips are negatives only
            loss = 0.5 * (_nce(t2v, torch.cat([pos, torch.zeros_like(pos)], 1)) + _nce(scale * video @ text.T, pos))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % every == 0:
                report(step)
            if step >= steps:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/synthetic/pretrain"),
                        help="a pre-trained run: its model config and vocabulary (not its weights)")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "synthetic" / "probe.yaml")
    parser.add_argument("--train", help="shard set or manifest (default: the recipe's data.train)")
    parser.add_argument("--test", help="shard set or manifest (default: the recipe's data.test)")
    parser.add_argument("--from-weights", action="store_true",
                        help="start from the checkpoint's weights (embeddings as trained) instead of random ones")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=300)
    args = parser.parse_args()
    data = load_recipe(args.recipe).data
    data = dataclasses.replace(data, train=args.train or data.train, test=args.test or data.test)
    loaded = load_checkpoint(args.checkpoint)
    tok = TextTokens(loaded.directory, loaded.model.cfg.max_text_len)
    labels = label_vocab([r.label for r in open_clips(data.train).records])
    splits = {}
    for name in ("train", "test"):
        split = load_split(data, Path(getattr(data, name)), labels)
        split["ids"], split["mask"] = tok.batch(split["captions"])
        splits[name] = split
    torch.manual_seed(0)
    if args.from_weights:
        net = loaded.model.train()
    else:
        net = EViLM(loaded.model.cfg)
        init_token_scale(net)
    start = time.perf_counter()
    head = " | ".join(f"zero-shot '{t}'" for t in TEMPLATES)
    print(f"| step | split | closer to forward than reversed | t2v R@1 | {head} |\n|---|---|---|---|---|---|")

    def report(step: int) -> None:
        for name, split in splits.items():
            cells = " | ".join(f"{v:.1f}" for v in measure(net, split, tok, labels))
            print(f"| {step} | {name} | {cells} |", flush=True)
        print(f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)

    train(net, splits["train"], args.steps, args.every, report)


if __name__ == "__main__":
    main()
