"""E-ViLM checkpoints in, each in one call, for training and retrieval (docs/design.md,
"Checkpoints"; docs/hub.md). The checkpoint argument is resolved by checkpoints/resolve.py; the
model is rebuilt by models/pretrained.py (`build_from_directory`, also behind
`EViLM.from_pretrained`), which writes models out too (`export_model`).

The model config comes from the checkpoint's config.json (a model export in the Hub layout),
else its config.yaml (the trainer's `step_*` directories hold the whole recipe, which has a
`model` section too), and the vocabulary from its vocab.txt. Task heads (`heads.qa`,
`heads.probe`) are rebuilt from the shapes of the saved weights, so any checkpoint loads strictly
without its recipe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.errors import EvilmError
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.models.pretrained import FORMAT, build_from_directory, checkpoint_model_config

log = logging.getLogger("evilm.models")
BF16_TRUNK = ("video", "text", "fusion")  # what the CPU's bf16 path stores in bf16 (heads, projections: fp32)
SAFE_MODEL_KEYS = ("dropout",)  # recipe values that may differ from the checkpoint's
TEXT_PREFIXES = ("text.", "fusion.", "retrieval.", "logit_scale")  # what EViLM.text_side holds


def merge_model_config(recipe: EViLMConfig, saved: EViLMConfig, where: Path) -> EViLMConfig:
    """The checkpoint's config, with the recipe's value for keys that are safe to change
    (dropout; max_text_len while BERT's position table keeps its size). Any other key the
    recipe sets to a value other than both its default and the checkpoint's is an error."""
    default, merged = EViLMConfig(), EViLMConfig(**{f.name: getattr(saved, f.name) for f in fields(saved)})
    for f in fields(EViLMConfig):
        mine, theirs = getattr(recipe, f.name), getattr(saved, f.name)
        if f.name in ("vocab_size", "pretrained") or mine == theirs:
            continue
        if f.name in SAFE_MODEL_KEYS or (f.name == "max_text_len" and max(64, mine) == max(64, theirs)):
            setattr(merged, f.name, mine)
        elif mine != getattr(default, f.name):
            raise EvilmError(f"recipe key model.{f.name} is {mine!r} but checkpoint {where} has {theirs!r}; drop "
                             "the key (the checkpoint's value is used) or set init.checkpoint to null to start "
                             "from scratch")
    return merged


@dataclass
class LoadedCheckpoint:
    directory: Path
    model: EViLM
    vocab: list[str]
    config: dict  # the checkpoint's config.json (or, older, config.yaml)
    classes: dict[str, list[str]]  # task -> answers / labels, for the heads the checkpoint has

    @property
    def task(self) -> str | None:
        return self.config.get("task") if self.config.get("format") == FORMAT else None


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild any E-ViLM checkpoint (pre-trained or fine-tuned) and load it strictly."""
    directory = resolve_checkpoint(path)
    net, vocab, raw, classes = build_from_directory(EViLM, directory)
    return LoadedCheckpoint(directory, net, vocab, raw, classes)


def load_init_weights(net: nn.Module, directory: Path) -> None:
    """Start from a checkpoint's weights. Task heads (qa, probe) always start fresh: the classes
    of another run's head are not this run's (continue a run with --resume instead)."""
    heads = ("heads.qa.", "heads.probe.")
    weights = {k: v for k, v in ckpt.read_weights(directory).items() if not k.startswith(heads)}
    try:
        missing, unexpected = net.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise EvilmError(f"{directory}: weights do not fit this model ({str(err)[:300]})") from None
    trunk_missing = [k for k in missing if not k.startswith(heads)]
    if trunk_missing:
        raise EvilmError(f"{directory}: not an E-ViLM checkpoint for this model ({len(trunk_missing)} missing "
                         f"weights, e.g. {trunk_missing[0]})")
    log.info("initialised from %s (new: %s; unused: %s)", directory, _prefixes(missing) or "none",
             _prefixes(unexpected) or "none")


def _prefixes(keys: list[str]) -> str:
    return ", ".join(sorted({".".join(k.split(".")[:2]) for k in keys}))


def load_text_side(checkpoint: str | Path) -> tuple[EViLM, Path]:
    """EViLM.text_side of a checkpoint, reading only its tensors (the video encoder stays on disk)."""
    directory = resolve_checkpoint(checkpoint)
    cfg = checkpoint_model_config(directory)
    model = ckpt.build_checked(lambda: EViLM.text_side(cfg), directory, "text side")
    try:
        with safe_open(str(directory / ckpt.WEIGHTS), framework="pt") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(TEXT_PREFIXES)}
    except (SafetensorError, OSError, ValueError) as err:
        raise ckpt.damaged(directory / ckpt.WEIGHTS, err) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise EvilmError(f"{directory}: text-side weights do not fit its config ({str(err)[:300]})") from None
    return model.eval(), directory




def for_precision(model: EViLM, precision: str, device: str = "cpu") -> EViLM:
    """The model as a run computes with it. On the CPU in bf16 the encoders and the fusion
    decoder are stored in bf16 and still run under the run's autocast: autocast alone converts
    every weight on every forward pass, and bf16 weights take 0.87x (one clip) to 0.95x (four)
    of its time at the same cosine to fp32 (docs/benchmarks.md, "Runtimes"). The retrieval
    projections, the heads and the logit scale stay fp32: scores and embeddings are computed in
    fp32 as under autocast (EViLM._project, models/scoring.py). Elsewhere: unchanged."""
    if precision == "bf16" and str(device).split(":")[0] == "cpu":
        for name in BF16_TRUNK:
            part = getattr(model, name, None)
            if part is not None:
                part.to(torch.bfloat16)
    return model
