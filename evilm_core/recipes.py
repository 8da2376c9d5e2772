"""The recipe registry: each `kind:` a recipe may name, and the dataclass it maps onto
(docs/design.md, "Recipes"). Explicit, so reading this file tells every recipe kind there is."""

from __future__ import annotations

from pathlib import Path

from evilm_core.bundled import resolve_recipe
from evilm_core.config.loader import apply_overrides, blame_override, from_dict, read_yaml
from evilm_core.errors import RecipeError
from evilm_core.finetune.config import FinetuneRecipe
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.tokenizer.config import TokenizerRecipe

RECIPES: dict[str, type] = {"tokenizer": TokenizerRecipe, "pretrain": PretrainRecipe, "finetune": FinetuneRecipe}


def build_recipe(raw: dict, where: str | Path = "recipe", expect: str | None = None, overrides: list[str] = ()):
    """Map a raw recipe mapping onto the dataclass its `kind` names; `expect` is the kind a
    command needs (a recipe of another kind is an error naming both). An error about a key one
    of `overrides` set names that `--set`, not the file."""
    kind = raw.get("kind")
    if kind not in RECIPES:
        raise RecipeError(f"{where}: top-level 'kind' is {kind!r}; expected one of {', '.join(sorted(RECIPES))}")
    if expect is not None and kind != expect:
        raise RecipeError(f"{where}: this command needs a '{expect}' recipe, the file is kind '{kind}'")
    try:
        return from_dict(RECIPES[kind], raw)
    except RecipeError as err:
        blamed = blame_override(err, list(overrides))
        raise RecipeError(f"--set {blamed}: {err}" if blamed else f"{where}: {err}", key=err.key) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None, expect: str | None = None):
    """Read a recipe file, apply `--set` overrides and map it onto its registered dataclass, so
    `evilm pretrain tokenizer.yaml` fails before any work starts. `path` may also name a bundled
    recipe (`webvid`, `synthetic/pretrain`; a file that exists wins): the one place a recipe
    argument is resolved (evilm_core/bundled.py)."""
    overrides = list(overrides or [])
    path = resolve_recipe(path)
    return build_recipe(apply_overrides(read_yaml(path), overrides), path, expect, overrides)
