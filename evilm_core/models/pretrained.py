"""Checkpoints in, models out, and back: the Hugging Face Hub conventions for E-ViLM models
(docs/hub.md). `PretrainedMixin` gives the model class `from_pretrained` / `save_pretrained`
(transformers' names) without this module importing the model: it builds `cls`. The one place
a checkpoint directory becomes a model (`build_from_directory`) and a model becomes a
checkpoint (`export_model`); models/loading.py adds what training and retrieval need on top.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.card import card_text, previous_inputs, run_inputs
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.config.loader import from_dict, section_error
from evilm_core.errors import EvilmError, RecipeError
from evilm_core.models.config import EViLMConfig
from evilm_core.models.heads import CLASS_FILES, HEAD_OUT, attach_head, class_file_text, read_class_file

FORMAT = "evilm-finetune/1"  # a fine-tuned final/ (task head included)
PRETRAINED_FORMAT = "evilm-model/1"  # a pre-trained final/
HUB_KEYS = ("format", "task", "model", "model_type", "evilm_version", "vocab_file")  # not an export's extras


def checkpoint_model_config(directory: Path, raw: dict | None = None) -> EViLMConfig:
    """The E-ViLM config a checkpoint was trained with; weights are loaded, so never ImageNet's."""
    raw = ckpt.read_config(directory) if raw is None else raw
    section = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise EvilmError(f"{ckpt.config_file(directory)} has no 'model' section: not an E-ViLM checkpoint")
    try:
        cfg = from_dict(EViLMConfig, section, "model")
    except RecipeError as err:
        raise EvilmError(f"{ckpt.config_file(directory)}: not a model this evilm builds "
                         f"({section_error(err)})") from None
    cfg.pretrained = False
    check_against_weights(cfg, directory)
    return cfg


# size fields the weights tell directly: field -> (tensor, dimension)
SIZES_IN_WEIGHTS = {"vocab_size": ("text.bert.embeddings.word_embeddings.weight", 0),
                    "text_hidden": ("text.bert.embeddings.word_embeddings.weight", 1),
                    "max_frames": ("video.frame_embed", 1), "fusion_dim": ("fusion.cls_token", 2),
                    "codebook_size": ("heads.mvm.3.weight", 0), "embed_dim": ("retrieval.video.weight", 0)}
LAYERS_IN_WEIGHTS = {"text_layers": "text.bert.encoder.layer.", "fusion_layers": "fusion.blocks."}


def check_against_weights(cfg: EViLMConfig, directory: Path) -> None:
    """The config's sizes against what the weights' header says (nothing is loaded): the error
    names the field and both values."""
    shapes = ckpt.weight_shapes(directory)
    found = {f: (shapes[t][d], f"{t} has shape {shapes[t]}") for f, (t, d) in SIZES_IN_WEIGHTS.items()
             if t in shapes and len(shapes[t]) > d}
    for field, prefix in LAYERS_IN_WEIGHTS.items():
        layers = {k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)}
        if layers:
            found[field] = (len(layers), f"{len(layers)} {prefix}N blocks")
    for field, (value, where) in found.items():
        if getattr(cfg, field) != value:
            raise EvilmError(f"{ckpt.config_file(directory)}: model.{field} is {getattr(cfg, field)} but "
                             f"{directory / ckpt.WEIGHTS} holds {value} ({where}); the config does not belong to "
                             "these weights: get the model directory again")


def build_from_directory(cls, directory: Path) -> tuple[nn.Module, list[str], dict, dict[str, list[str]]]:
    """A resolved checkpoint directory -> (model of class `cls`, task head attached, loaded
    strictly; vocab; its config; the classes of each head it has)."""
    raw = ckpt.read_config(directory)
    cfg = checkpoint_model_config(directory, raw)
    vocab = ckpt.read_checkpoint_vocab(directory)
    if len(vocab) != cfg.vocab_size:
        raise EvilmError(f"{directory}: vocab.txt has {len(vocab)} entries but the model was built for "
                         f"{cfg.vocab_size}")
    net = ckpt.build_checked(lambda: cls(cfg), directory)  # shapes checked on the meta device first
    weights = ckpt.read_weights(directory)
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
        raise EvilmError(f"{directory}: weights do not fit the model its {ckpt.config_file(directory).name} describes "
                         f"({str(err)[:300]})") from None
    return net, vocab, raw, classes


def export_model(net: nn.Module, directory: Path, vocab: list[str], task: str | None = None, extra: dict | None = None,
                 classes: list[str] | None = None, card: tuple[dict | None, dict | None] | None = None,
                 repo: str | None = None, license: str | None = None) -> Path:
    """Write the model as a final/ checkpoint in the Hub layout: weights, config.json (its model
    section rebuilds it without the recipe), vocab, the model card and, for a fine-tuned task head,
    its class file. No task: pre-trained. `card`: (recipe, final metrics row) for the card; by
    default those of the run directory `directory` is written into (model_card.run_inputs)."""
    if task is None:
        config = {"format": PRETRAINED_FORMAT, "model": net.cfg}
    else:
        config = {"format": FORMAT, "task": task, "model": net.cfg, **(extra or {})}
    recipe, final = card if card is not None else run_inputs(Path(directory))
    files = {ckpt.CARD: card_text(ckpt.hub_config(config), recipe, final, repo, license)}
    if classes is not None:
        files[CLASS_FILES[task]] = class_file_text(classes)
    return ckpt.write_checkpoint(directory, net.state_dict(), config, vocab, extra_files=files, hub=True)


class PretrainedMixin:
    """from_pretrained / save_pretrained for a model class built as `cls(EViLMConfig)`."""

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path):
        """The model of a checkpoint directory, a run directory (its final/) or a Hub id
        `hf-hub:ORG/NAME[@REVISION]` (docs/hub.md), task head included, loaded strictly; it keeps
        what saving it again needs: `vocab`, `task`, `classes`, `checkpoint_config`."""
        directory = resolve_checkpoint(checkpoint)
        net, vocab, raw, classes = build_from_directory(cls, directory)
        net.vocab, net.classes, net.checkpoint_config, net.checkpoint_dir = vocab, classes, raw, directory
        net.task = raw.get("task") if raw.get("format") == FORMAT else None
        return net

    def save_pretrained(self, directory: str | Path, vocab: list[str] | None = None, repo: str | None = None,
                        license: str | None = None, card: tuple[dict | None, dict | None] | None = None) -> Path:
        """Write the model as a checkpoint in the Hub layout (model.safetensors, config.json,
        vocab.txt, README.md; export_model). The vocabulary, task, classes and the card's recipe and
        metrics default to those of the checkpoint the model came from (from_pretrained)."""
        net = self
        vocab = vocab if vocab is not None else getattr(net, "vocab", None)
        if vocab is None or len(vocab) != net.cfg.vocab_size:
            raise EvilmError(f"saving to {directory} needs the model's vocabulary ({net.cfg.vocab_size} entries): "
                             "pass vocab=[...] (a model loaded with from_pretrained keeps its own)")
        classes, task = getattr(net, "classes", {}) or {}, getattr(net, "task", None)
        heads = [t for t in HEAD_OUT if t in getattr(net, "heads", {})]
        if heads and (task not in heads or task not in classes):
            raise EvilmError(f"saving to {directory}: the model has a {heads[0]} head but no task and classes to "
                             "write for it (load it with from_pretrained, or use models.loading.export_model)")
        config = getattr(net, "checkpoint_config", None) or {}
        extra = {k: v for k, v in config.items() if k not in HUB_KEYS} if config.get("format") == FORMAT else {}
        source = getattr(net, "checkpoint_dir", None)
        if card is None and source is not None:  # the card of the checkpoint it came from goes with it
            recipe, final = run_inputs(source)
            old_recipe, old_final, old_license = previous_inputs(source)
            card, license = (recipe or old_recipe, final or old_final), license or old_license
        return export_model(net, Path(directory), vocab, task, extra, classes.get(task) if heads else None, card,
                            repo, license)
