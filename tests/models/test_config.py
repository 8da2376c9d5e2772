"""Named model sizes: recipes and code refer to them instead of repeating numbers."""

from __future__ import annotations

import pytest

from evilm_core.config.loader import from_dict
from evilm_core.errors import RecipeError
from evilm_core.models.config import MODEL_SIZES, EViLMConfig
from evilm_core.recipes import load_recipe
from tests.helpers.cli import REPO


def test_paper_size_is_the_config_default():
    assert EViLMConfig.sized("paper") == EViLMConfig()


def test_size_values_and_overrides():
    cfg = EViLMConfig.sized("quickstart", fusion_layers=3)
    assert cfg.fusion_layers == 3 and cfg.fusion_dim == MODEL_SIZES["quickstart"]["fusion_dim"] == 192
    assert cfg.video_encoder == "edgenext_xx_small" and cfg.image_size == 96 and cfg.codebook_size == 32


def test_recipe_size_key_expands_and_other_keys_win():
    cfg = from_dict(EViLMConfig, {"size": "quickstart-tiny", "embed_dim": 64}, "model")
    assert cfg.image_size == 64 and cfg.fusion_dim == 64 and cfg.embed_dim == 64


def test_unknown_size_names_the_valid_ones():
    with pytest.raises(RecipeError, match=r"model.size.*'huge'.*paper, quickstart, quickstart-tiny"):
        from_dict(EViLMConfig, {"size": "huge"}, "model")


def test_webvid_recipe_is_the_paper_size_with_imagenet_weights():
    recipe = load_recipe(REPO / "recipes" / "webvid.yaml")
    assert recipe.model.pretrained is True
    assert {k: getattr(recipe.model, k) for k in MODEL_SIZES["paper"]} == MODEL_SIZES["paper"]
