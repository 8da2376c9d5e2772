"""E-ViLM checkpoints in and out, each in one call (docs/design.md, "Checkpoints").

In: a checkpoint argument may be the checkpoint directory itself or a run directory (its
`final/`, else its newest complete `step_*`). The model config comes from the checkpoint's
config.yaml (pre-training `final/` and fine-tuned exports write {format, model, ...}; the
trainer's `step_*` directories hold the whole recipe, which has a `model` section too) and the
vocabulary from its vocab.txt. Task heads (`heads.qa`, `heads.probe`) are rebuilt from the
shapes of the saved weights, so any checkpoint loads strictly without its recipe.

Out: `export_model` writes a `final/`: the weights, {format, model[, task, ...]}, vocab.txt and,
for a task head, answers.txt (qa) / labels.txt (probe) listing its classes in head order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch.nn as nn
from safetensors import SafetensorError, safe_open

from evilm_core import checkpoint as ckpt
from evilm_core.config.loader import from_dict
from evilm_core.errors import EvilmError, RecipeError
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.models.heads import CLASS_FILES, HEAD_OUT, attach_head, class_file_text, read_class_file

log = logging.getLogger("evilm.models")
FORMAT = "evilm-finetune/1"  # a fine-tuned final/ (task head included)
PRETRAINED_FORMAT = "evilm-model/1"  # a pre-trained final/
SAFE_MODEL_KEYS = ("dropout",)  # recipe values that may differ from the checkpoint's
TEXT_PREFIXES = ("text.", "fusion.", "retrieval.", "logit_scale")  # what EViLM.text_side holds


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir's final/, else its newest complete step_*."""
    found = ckpt.find_checkpoint(path)
    if found is not None:
        return found
    path = Path(path)
    if not path.exists():
        raise EvilmError(f"checkpoint {path} does not exist: it is made by the run whose output.dir it is, `evilm "
                         "pretrain RECIPE` (a pre-trained model: recipes/webvid.yaml writes runs/webvid_pretrain, "
                         "docs/pretraining.md) or `evilm finetune RECIPE`; or name an existing checkpoint directory")
    raise EvilmError(f"{path} is not a checkpoint: expected {ckpt.WEIGHTS} and {ckpt.CONFIG} in it, in "
                     f"{path / 'final'}, or in a step_XXXXXXXX directory (a run directory of `evilm pretrain` / "
                     "`evilm finetune`)")


def checkpoint_model_config(directory: Path, raw: dict | None = None) -> EViLMConfig:
    """The E-ViLM config a checkpoint was trained with; weights are loaded, so never ImageNet's."""
    raw = ckpt.read_yaml_config(directory) if raw is None else raw
    section = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise EvilmError(f"{directory}/{ckpt.CONFIG} has no 'model' section: not an E-ViLM checkpoint")
    try:
        cfg = from_dict(EViLMConfig, section, "model")
    except RecipeError as err:
        raise EvilmError(f"{directory} is not an E-ViLM checkpoint ({err})") from None
    cfg.pretrained = False
    return cfg


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
    config: dict  # the checkpoint's config.yaml
    classes: dict[str, list[str]]  # task -> answers / labels, for the heads the checkpoint has

    @property
    def task(self) -> str | None:
        return self.config.get("task") if self.config.get("format") == FORMAT else None


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild any E-ViLM checkpoint (pre-trained or fine-tuned) and load it strictly."""
    directory = resolve_checkpoint(path)
    raw = ckpt.read_yaml_config(directory)
    cfg = checkpoint_model_config(directory, raw)
    vocab = ckpt.read_checkpoint_vocab(directory)
    if len(vocab) != cfg.vocab_size:
        raise EvilmError(f"{directory}: vocab.txt has {len(vocab)} entries but the model was built for "
                         f"{cfg.vocab_size}")
    weights = ckpt.read_weights(directory)
    net = EViLM(cfg)
    classes = {}
    for task, key in HEAD_OUT.items():
        if key in weights:
            attach_head(net, task, weights[key].shape[0], in_dim=weights[key].shape[1])
            names = read_class_file(directory, task)
            if names is None or len(names) != weights[key].shape[0]:
                raise EvilmError(f"{directory}: the {task} head has {weights[key].shape[0]} classes but "
                                 f"{CLASS_FILES[task]} is missing or lists {len(names or [])}")
            classes[task] = names
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise EvilmError(f"{directory}: weights do not fit the model its config.yaml describes "
                         f"({str(err)[:300]})") from None
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


def export_model(net: EViLM, directory: Path, vocab: list[str], task: str | None = None, extra: dict | None = None,
                 classes: list[str] | None = None) -> Path:
    """Write the model as a final/ checkpoint: weights, config (its model section rebuilds it without
    the recipe), vocab and, for a fine-tuned task head, its class file. No task: pre-trained."""
    if task is None:
        config = {"format": PRETRAINED_FORMAT, "model": net.cfg}
    else:
        config = {"format": FORMAT, "task": task, "model": net.cfg, **(extra or {})}
    files = {CLASS_FILES[task]: class_file_text(classes)} if classes is not None else None
    return ckpt.write_checkpoint(directory, net.state_dict(), config, vocab, extra_files=files)


def load_text_side(checkpoint: str | Path) -> tuple[EViLM, Path]:
    """EViLM.text_side of a checkpoint, reading only its tensors (the video encoder stays on disk)."""
    directory = resolve_checkpoint(checkpoint)
    model = EViLM.text_side(checkpoint_model_config(directory))
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


