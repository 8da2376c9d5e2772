"""Linear probe for action recognition (paper Table 3): only a linear classifier trains.

The backbone is frozen and run once per clip (evaluation transform: segment-centre frames, no
flip): the feature is the unimodal video [CLS] (`probe.feature: cls`, fusion width, before the
retrieval projection; `embed`: the l2-normalised retrieval embedding after it). Features are
kept in memory and, with `probe.cache`, in `output.dir/features/{split}.safetensors` keyed by
the weights, manifest, records and frame settings, so a re-run with another learning rate
decodes nothing. The classifier trains on standardised features (train mean/std) with AdamW;
the standardisation is folded into the exported Linear, which therefore reads raw features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.checkpoints import files as ckpt
from evilm_core.config.loader import save_yaml
from evilm_core.config.sections import DataConfig
from evilm_core.data.clips import ClipSource, open_clips
from evilm_core.data.dataset import ClipDataset, clip_dataset
from evilm_core.engine.runtime import eval_batches
from evilm_core.engine.tracking import RunLog
from evilm_core.errors import EvilmError
from evilm_core.evaluation import predictions
from evilm_core.evaluation.metrics import accuracy, require_finite
from evilm_core.evaluation.predictions import PredictionRows
from evilm_core.finetune.config import ProbeConfig
from evilm_core.finetune.data import LabelFields, label_vocab
from evilm_core.finetune.tasks import FinetuneTask, head_classes
from evilm_core.fs import atomic_path, escape_key
from evilm_core.models.evilm import EViLM
from evilm_core.models.heads import attach_head
from evilm_core.models.pretrained import export_model
from evilm_core.models.scoring import feature_dim, features_of_tokens, label_logits, video_tokens

log = logging.getLogger("evilm.finetune")


@torch.no_grad()
def extract_features(net: EViLM, dataset: ClipDataset, feature: str, data: DataConfig, device: torch.device,
                     amp=None) -> dict:
    """-> {features [N, F] float32 cpu, labels [N] (-1: not a training class), skipped, and the
    clips' `videos` and `label_texts` (not cached)}."""
    net.eval()
    counts: dict = {"skipped": 0}
    feats, labels, videos, texts = [], [], [], []
    for batch in eval_batches(dataset, data.batch_size, data.num_workers, device, counts):
        with amp or nullcontext():
            feats.append(features_of_tokens(net, video_tokens(net, batch["pixels"]), feature).float().cpu())
        labels.append(batch["label"].cpu())
        videos += batch["video"]
        texts += batch["label_text"]
    dim = feature_dim(net, feature)
    return {"features": torch.cat(feats) if feats else torch.zeros(0, dim),
            "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long), "skipped": counts["skipped"],
            "videos": videos, "label_texts": texts}


def records_digest(dataset: ClipDataset, labels: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(labels).encode())
    for r in dataset.records:
        digest.update(f"{r.video}\t{r.label}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def cached_features(path: Path | None, key: dict[str, str], compute: Callable[[], dict]) -> dict:
    """Load features saved under the same key, else compute and save them (temp name, rename)."""
    from safetensors.torch import save_file

    saved = _saved_features(path, key) if path is not None and path.is_file() else None
    if saved is not None:
        return saved
    out = compute()
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({"features": out["features"].contiguous(), "labels": out["labels"].contiguous()}, str(tmp),
                      metadata={**key, "skipped": str(out["skipped"])})
    return out


def _saved_features(path: Path, key: dict[str, str]) -> dict | None:
    """The features cached under `key`; None (recompute) when the key differs or the file is damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            if {k: v for k, v in meta.items() if k != "skipped"} != key:
                return None
            out = {"features": fh.get_tensor("features"), "labels": fh.get_tensor("labels"),
                   "skipped": int(meta["skipped"])}
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        log.warning("probe: feature cache %s is damaged (%s); computing the features again", path, err)
        return None
    log.info("probe: features from %s", path)
    return out


def fit_linear(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, cfg: ProbeConfig, seed: int = 0,
               on_epoch: Callable[[int, float], None] | None = None) -> int:
    """Train `head` on features of known labels; fold the standardisation into it. -> steps."""
    keep = labels >= 0
    x, y = features[keep].float(), labels[keep]
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen, steps = torch.Generator().manual_seed(seed), 0
    for epoch in range(cfg.epochs):
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, total = steps + 1, total + float(loss.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch + 1, total / max(1, len(x)))
    with torch.no_grad():  # W((x - m) / s) + b == (W / s) x + (b - (W / s) m)
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return steps


def probe_metrics(logits: torch.Tensor, labels: torch.Tensor, skipped: int) -> dict[str, float]:
    """Top-1 accuracy; clips whose label is not a training class count as wrong (oov_labels)."""
    require_finite(logits, "class scores")
    num_classes = logits.shape[1]
    preds = logits.argmax(-1).tolist() if len(logits) else []
    return {"accuracy": accuracy(preds, labels.tolist()), "chance": 100.0 / num_classes,
            "oov_labels": int((labels < 0).sum()), "num_examples": len(labels), "skipped": skipped}


@torch.no_grad()
def evaluate_probe(net: EViLM, dataset: ClipDataset, feature: str, data: DataConfig, device: torch.device,
                   amp=None, feats: dict | None = None, out: PredictionRows | None = None,
                   classes: list[str] | None = None) -> dict[str, float]:
    """Top-1 accuracy of the probe head; `out` collects a row per clip (`classes`: the head's labels)."""
    feats = feats or extract_features(net, dataset, feature, data, device, amp)
    logits = label_logits(net, feats["features"]).cpu()
    metrics = probe_metrics(logits, feats["labels"], feats["skipped"])
    if out is not None:
        names = classes or []
        for video, probs, gold in zip(feats["videos"], logits.softmax(-1), feats["label_texts"]):
            said = predictions.labels(probs, names, out.k)
            out.rows.append({"key": escape_key(video), "gold": gold, **said,
                             "correct": said["labels"][0]["label"] == gold})
    return metrics


def probe_dataset(records, source: ClipSource, data: DataConfig, labels: list[str], seed: int,
                  decoder: str | None) -> ClipDataset:
    """The clips of `records`, read from `source` (a shard set's stored frames, or videos `decoder` decodes)."""
    frames = source.frames(data.num_frames, data.image_size, decoder=decoder, max_bytes=data.max_video_bytes)
    return clip_dataset(records, source.root, data.num_frames, data.image_size, seed=seed, extras=LabelFields(labels),
                        frames=frames)


class ProbeTask(FinetuneTask):
    """Linear probe for action recognition: the trunk frozen, a linear classifier on cached
    features (`run_probe`) instead of the shared Trainer."""

    name, needs = "probe", ("label",)

    @classmethod
    def select(cls, recipe, records):
        labels = label_vocab([r.label for r in records])
        if len(labels) < 2:
            raise EvilmError(f"{recipe.data.train}: the probe needs at least 2 classes, found {labels}")
        return records, labels

    @classmethod
    def head_classes(cls, loaded):
        return head_classes(loaded, "probe")

    @classmethod
    def fit(cls, recipe, net, vocab, classes, records, run, init_dir, progress, resume):
        return run_probe(recipe, net, vocab, classes, records, init_dir, run, progress, resume)

    @classmethod
    def evaluate_split(cls, recipe, net, records, source, tokens, classes, settings, saved=None, out=None):
        feature = (saved or {}).get("feature", recipe.probe.feature)
        dataset = probe_dataset(records, source, recipe.data, classes, recipe.seed, settings.decoder)
        return evaluate_probe(net, dataset, feature, recipe.data, settings.torch_device, out=out, classes=classes)


def run_probe(recipe, net: EViLM, vocab: list[str], labels: list[str], records, init_dir: Path | None, run,
              progress: Callable | None = None, resume: bool = False) -> dict:
    """Features once (cached), a linear classifier, val metrics, final/. Runs on rank 0 only
    (the other ranks of a torchrun job return at once)."""
    d, cfg, run_dir, settings = recipe.data, recipe.probe, Path(recipe.output.dir), run.settings
    if not run.info.is_main:
        return {"checkpoint": str(run_dir / "final"), "step": 0, "metrics": {}, "skipped": 0}
    if (run_dir / "final").exists() and not resume:
        raise EvilmError(f"{run_dir} already holds a finished probe (final/); pass --resume to run it again "
                         "(features are reused) or set output.dir to a new directory")
    save_yaml(recipe, run_dir / "config.yaml")
    metrics_log, device = RunLog(run_dir, recipe.logging, True), run.info.device  # metrics.jsonl + logging:
    metrics_log.open(None, recipe)  # features are cached; the classifier always trains from its start
    net.to(device).requires_grad_(False)
    weights = ckpt.file_sha256(init_dir / ckpt.WEIGHTS) if init_dir else f"scratch:seed={recipe.seed}"

    def features(split: str, clips: ClipSource, recs) -> tuple[ClipDataset, dict]:
        ds = probe_dataset(recs, clips, d, labels, recipe.seed, settings.decoder)
        key = {"source": weights, "feature": cfg.feature, "num_frames": str(d.num_frames),
               "image_size": str(d.image_size), "root": str(ds.root), "records": records_digest(ds, labels)}
        path = run_dir / "features" / f"{split}.safetensors" if cfg.cache else None
        amp = settings.autocast()
        return ds, cached_features(path, key, lambda: extract_features(net, ds, cfg.feature, d, device, amp))

    _, train = features("train", run.source, records)
    if not bool((train["labels"] >= 0).any()):
        raise EvilmError(f"{d.train}: no training clip could be decoded ({train['skipped']} skipped)")
    head = attach_head(net, "probe", len(labels), feature_dim(net, cfg.feature)).to(device)
    every = max(1, cfg.epochs // 20)

    def on_epoch(epoch: int, loss: float) -> None:
        if epoch % every == 0 or epoch == cfg.epochs:
            metrics_log.write({"step": epoch, "epoch": epoch, "loss": loss})
        if progress is not None:
            progress(epoch, cfg.epochs, loss=loss)

    log.info("probe: %d train clips (%d skipped), %d classes, %s features of %d dims", len(train["labels"]),
             train["skipped"], len(labels), cfg.feature, train["features"].shape[1])
    steps = fit_linear(head, train["features"].to(device), train["labels"].to(device), cfg, recipe.seed, on_epoch)
    metrics = {}
    if d.val:
        val_source = open_clips(d.val, d.format, d.root, "data.val")
        val_ds, val = features("val", val_source, val_source.records)
        metrics = {f"val_{k}": v for k, v in evaluate_probe(net, val_ds, cfg.feature, d, device, feats=val).items()}
        metrics_log.write({"step": cfg.epochs, "split": "val", **metrics})
    metrics_log.close()
    final = export_model(net, run_dir / "final", vocab, "probe", extra={"feature": cfg.feature}, classes=labels)
    return {"checkpoint": str(final), "step": steps, "metrics": metrics, "skipped": train["skipped"]}
