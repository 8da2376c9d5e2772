"""Recipe loader: strict keys with suggestions, typed values, overrides, path resolution."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import pytest

from evilm_core.config.loader import apply_overrides, dump_yaml, from_dict, parse_override, path_field, read_yaml
from evilm_core.errors import RecipeError


@dataclass
class Fusion:
    layers: int = 4  # blocks
    dim: int = 384  # width
    drop: float = 0.0  # dropout


@dataclass
class Model:
    name: str = "edgenext_small"  # backbone
    pretrained: bool | str = False  # false | true | file
    fusion: Fusion = field(default_factory=Fusion)
    mode: Literal["a", "b"] = "a"  # literal choice
    sizes: list[int] = field(default_factory=lambda: [1, 2])  # a list


@dataclass
class Recipe:
    kind: str = "test"  # kind
    model: Model = field(default_factory=Model)
    out: str = path_field("runs/x")  # a path


def test_defaults_and_nesting():
    cfg = from_dict(Recipe, {"model": {"fusion": {"layers": 2}}})
    assert cfg.model.fusion.layers == 2 and cfg.model.fusion.dim == 384
    assert cfg.model.name == "edgenext_small"


def test_unknown_key_names_section_and_suggestion():
    with pytest.raises(RecipeError) as err:
        from_dict(Recipe, {"model": {"fusion": {"layres": 2}}})
    msg = str(err.value)
    assert "'layres'" in msg and "model.fusion" in msg and "'layers'" in msg
    assert "Valid keys: dim, drop, layers" in msg


def test_unknown_top_level_key():
    with pytest.raises(RecipeError, match="unknown recipe key 'modle' in the top level. Did you mean 'model'"):
        from_dict(Recipe, {"modle": {}})


@pytest.mark.parametrize("raw, expected", [
    ({"model": {"fusion": {"layers": "two"}}}, "model.fusion.layers': expected int, got 'two'"),
    ({"model": {"fusion": {"layers": True}}}, "expected int, got True"),
    ({"model": {"mode": "c"}}, "expected 'a' | 'b'"),
    ({"model": {"sizes": [1, "x"]}}, "model.sizes[1]': expected int"),
    ({"model": 3}, "'model': expected Model"),
])
def test_type_errors_name_expected_type(raw, expected):
    with pytest.raises(RecipeError) as err:
        from_dict(Recipe, raw)
    assert expected in str(err.value)


def test_int_to_float_and_union():
    cfg = from_dict(Recipe, {"model": {"fusion": {"drop": 1}, "pretrained": "w.safetensors"}})
    assert cfg.model.fusion.drop == 1.0 and isinstance(cfg.model.fusion.drop, float)
    assert cfg.model.pretrained == "w.safetensors"
    assert from_dict(Recipe, {"model": {"pretrained": True}}).model.pretrained is True
    assert from_dict(Recipe, {"model": {"fusion": {"drop": "1e-4"}}}).model.fusion.drop == 1e-4


def test_overrides_typed():
    assert parse_override("model.fusion.layers=2") == (["model", "fusion", "layers"], 2)
    assert parse_override("a=1e-4")[1] in ("1e-4", 1e-4)
    assert parse_override("a.b=true")[1] is True
    raw = apply_overrides({"model": {"name": "x"}}, ["model.fusion.layers=2", "out=elsewhere"])
    cfg = from_dict(Recipe, raw)
    assert cfg.model.fusion.layers == 2
    with pytest.raises(RecipeError, match="form section.key=value"):
        parse_override("model.fusion.layers")
    with pytest.raises(RecipeError, match="'name' is a value, not a section"):
        apply_overrides({"model": {"name": "x"}}, ["model.name.x=1"])


def test_paths_resolve_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert from_dict(Recipe, {"out": "runs/a"}).out == os.path.join(str(tmp_path), "runs", "a")
    assert from_dict(Recipe, {}).out == os.path.join(str(tmp_path), "runs", "x")  # defaults too


def test_dump_round_trip():
    cfg = from_dict(Recipe, {"model": {"fusion": {"layers": 3}}})
    import yaml
    again = from_dict(Recipe, yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_read_yaml_errors(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        read_yaml(lst)
