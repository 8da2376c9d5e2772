"""The quickstart's recipes: the bundled `recipes/synthetic/*.yaml` (one source for each stage's
settings, the same files the README's step-by-step pipeline runs), with the quickstart's paths,
seed and, for a smaller size, its sizes set over them.

Each is written into the quickstart directory as an ordinary YAML recipe (`DIR/recipes/`), so
every stage can be re-run, changed and continued with the individual commands. The typed recipe
is built here with the stage's own recipe class (the registry, evilm_core/recipes.py, sits on
the same floor as the quickstart: docs/design.md, "Layers").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evilm_core.bundled import bundled_path
from evilm_core.config.loader import from_dict, read_yaml, save_yaml, set_key
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.models.config import MODEL_SIZES
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.tokenizer.config import TokenizerRecipe

KINDS = {"tokenizer": TokenizerRecipe, "pretrain": PretrainRecipe, "finetune": FinetuneRecipe}


@dataclass(frozen=True)
class QuickstartSize:
    """How much the quickstart does at one of the model registry's sizes (MODEL_SIZES)."""

    videos: int  # synthetic clips in all (70% train, 10% val, 20% test)
    frames: int  # frames rendered per clip
    num_frames: int  # T frames sampled per clip by every stage
    batch_size: int  # clips per step
    tokenizer_depth: int  # ViT/32 blocks of the tokenizer
    tokenizer_epochs: int  # stage 1 passes over the training clips
    pretrain_epochs: int  # stage 2 passes
    retrieval_epochs: int  # fine-tuning passes, text-to-video retrieval
    qa_epochs: int  # fine-tuning passes, open-ended QA


SIZES = {
    # The bundled synthetic recipes' own values: the whole run in a few minutes on this
    # project's 2-core CPU reference machine.
    "quickstart": QuickstartSize(videos=800, frames=8, num_frames=4, batch_size=16, tokenizer_depth=2,
                                 tokenizer_epochs=4, pretrain_epochs=8, retrieval_epochs=8,
                                 qa_epochs=5),
    # For tests: every stage runs, nothing is expected to learn much.
    "quickstart-tiny": QuickstartSize(videos=40, frames=8, num_frames=2, batch_size=8, tokenizer_depth=1,
                                      tokenizer_epochs=1, pretrain_epochs=1, retrieval_epochs=1,
                                      qa_epochs=1),
}


def image_size(size: str) -> int:
    """The frame size of a registry size, in pixels (a multiple of 32: regions are 32 x 32)."""
    return MODEL_SIZES[size]["image_size"]


def codebook_size(size: str) -> int:
    """The tokenizer's codes at a registry size (= the model's MVM classes)."""
    return MODEL_SIZES[size]["codebook_size"]


def _sizes(size: str, s: QuickstartSize, kind: str, epochs: int | None) -> dict[str, Any]:
    """What a size changes in a bundled synthetic recipe (nothing at the bundled size)."""
    if size == "quickstart":
        return {}
    values = {"data.num_frames": s.num_frames, "data.image_size": image_size(size), "data.batch_size": s.batch_size,
              **({"train.epochs": epochs} if epochs is not None else {})}
    if kind == "tokenizer":
        return {**values, "model.encoder_args.depth": s.tokenizer_depth, "model.codebook_size": codebook_size(size)}
    values["model.size"] = size
    return {**values, "mvm.candidates": 2 * s.num_frames} if kind == "pretrain" else values


def stage_recipe(name: str, out: Path, size: str, seed: int, values: dict[str, Any], written: Path | None = None):
    """The bundled `synthetic/<name>` recipe with the quickstart's paths under `out` and `values`
    (dotted keys) set, written to `written` (default out/recipes/<name>.yaml) and returned typed."""
    raw = copy.deepcopy(read_yaml(bundled_path(f"synthetic/{name}")))
    kind = raw["kind"]
    s = SIZES[size]
    epochs = {"tokenizer": s.tokenizer_epochs, "pretrain": s.pretrain_epochs, "retrieval": s.retrieval_epochs,
              "qa": s.qa_epochs}.get(name)
    shards = out / "shards"  # every stage reads the frames `evilm data shards` decoded once
    paths = {f"data.{split}": str(shards / split) for split in ("train", "val", "test") if raw["data"].get(split)}
    paths["output.dir"] = str(out / name)
    for key, value in {"seed": seed, **paths, **_sizes(size, s, kind, epochs), **values}.items():
        set_key(raw, key.split("."), value)
    save_yaml(raw, written or out / "recipes" / f"{name}.yaml")
    return from_dict(KINDS[kind], raw)
