"""The bundled recipes: `evilm recipes ls | cp`, a recipe given by name to any recipe command, the
launch line every recipe opens with, and the yaml files inside a built wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import pytest
from typer.testing import CliRunner

from evilm_cli.main import app
from evilm_core.bundled import bundled_names, bundled_path, bundled_root, resolve_recipe
from evilm_core.errors import RecipeError
from evilm_core.recipes import load_recipe
from tests.helpers.cli import REPO, run_evilm

COMMAND = {"tokenizer": "tokenize-train", "pretrain": "pretrain", "finetune": "finetune"}
REPO_RECIPES = sorted(p.relative_to(REPO / "recipes").with_suffix("").as_posix()
                      for p in (REPO / "recipes").rglob("*.yaml"))


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_every_repository_recipe_is_bundled_once():
    assert sorted(bundled_names()) == REPO_RECIPES
    assert {"webvid", "synthetic/pretrain"} <= set(REPO_RECIPES)
    assert bundled_root().resolve() == (REPO / "recipes").resolve()  # editable install: the repository's files


def test_ls_json_gives_kind_task_and_launch_line():
    rows = json.loads(_invoke("recipes", "ls", "--json").strip().splitlines()[-1])
    assert [r["name"] for r in rows] == bundled_names()
    for r in rows:
        cfg = load_recipe(r["path"])
        assert r["kind"] == cfg.kind and r["task"] == getattr(cfg, "task", None)
        # every recipe opens with its launch line, naming itself as a bundled recipe (an
        # evaluation-only task's: `evilm evaluate --checkpoint CKPT NAME`)
        if r["task"] == "moments":
            assert r["launch"].startswith("evilm evaluate --checkpoint ") and r["launch"].endswith(f" {r['name']}"), r
        else:
            assert r["launch"].endswith(f"evilm {COMMAND[r['kind']]} {r['name']}"), r
        if r["launch"].startswith("torchrun"):
            assert r["launch"].startswith("torchrun --nproc_per_node=8 --no-python evilm "), r


def test_ls_table():
    out = _invoke("recipes", "ls")
    assert out.splitlines()[0].split() == ["name", "kind", "task", "launch"]
    assert "torchrun --nproc_per_node=8 --no-python evilm pretrain webvid" in out
    assert "evilm pretrain synthetic/pretrain" in out


def test_no_launch_line_uses_the_old_module_form():
    for name in REPO_RECIPES:
        assert "-m evilm_cli.main" not in bundled_path(name).read_text(), name


def test_cp_to_dir_file_and_refuses_to_overwrite(tmp_path):
    out = _invoke("recipes", "cp", "synthetic/pretrain", str(tmp_path))
    copied = tmp_path / "pretrain.yaml"
    assert str(copied) in out and copied.read_text() == (REPO / "recipes/synthetic/pretrain.yaml").read_text()
    target = tmp_path / "mine.yaml"
    assert json.loads(_invoke("recipes", "cp", "webvid.yaml", str(target), "--json"))["path"] == str(target)
    with pytest.raises(RecipeError, match="exists; pass --force"):
        CliRunner().invoke(app, ["recipes", "cp", "webvid", str(target)], catch_exceptions=False)
    target.write_text("kind: pretrain\n")
    _invoke("recipes", "cp", "synthetic/tokenizer", str(target), "--force")
    assert load_recipe(target).kind == "tokenizer"


def test_a_bundled_name_resolves_data_paths_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("synthetic/pretrain", "synthetic/pretrain.yaml", "recipes/synthetic/pretrain.yaml"):
        assert resolve_recipe(name) == bundled_path("synthetic/pretrain")
    cfg = load_recipe("synthetic/pretrain")
    assert cfg.data.train == str(tmp_path / "data/shards/train")  # not site-packages, not recipes/
    out = _invoke("validate", "synthetic/pretrain", "--json")
    assert json.loads(out) == {"recipe": "synthetic/pretrain", "kind": "pretrain", "valid": True}


def test_an_existing_path_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(REPO / "recipes/synthetic/tokenizer.yaml", tmp_path / "webvid")
    assert load_recipe("webvid").kind == "tokenizer"


def test_unknown_name_lists_the_closest_bundled_ones(tmp_path):
    proc = run_evilm("validate", "synthetic/pretrian", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "recipe file not found: synthetic/pretrian" in proc.stderr
    assert "synthetic/pretrain" in proc.stderr and "evilm recipes ls" in proc.stderr
    proc = run_evilm("recipes", "cp", "webvd", str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "webvid" in proc.stderr


def test_the_wheel_carries_the_recipes(tmp_path):
    """`pip wheel` of a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("evilm_cli", "evilm_core", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copyfile(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("evilm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"evilm_core/bundled_recipes/{name}.yaml" for name in REPO_RECIPES}
    assert expected <= names
    assert not any(n.startswith("recipes/") for n in names)  # package data only, no top-level folder
    assert "evilm_core/bundled.py" in names and "evilm_cli/recipes_cmd.py" in names
