"""A reduced quickstart (`--size quickstart-tiny`) through the console script: every stage runs, the JSON
has the documented keys, every artefact is on disk, and a re-run resumes instead of redoing."""

from __future__ import annotations

import importlib.util
import json

from tests.helpers.cli import last_json, run_evilm

STAGES = ("data", "shards", "tokenizer", "label", "pretrain", "retrieval", "qa", "index", "evaluate", "profile")


def test_tiny_quickstart_end_to_end_and_resume(tmp_path):
    out = tmp_path / "qs"
    first = last_json(run_evilm("quickstart", "--out", out, "--size", "quickstart-tiny", "--json").stdout)
    assert {"retrieval", "qa", "codebook_usage", "params", "gflops", "seconds"} <= set(first)
    assert {"t2v_R@1", "t2v_R@5", "t2v_R@10", "chance_R@1"} <= set(first["retrieval"])
    assert {"accuracy", "majority_baseline"} <= set(first["qa"])
    assert first["retrieval"]["chance_R@1"] == 100.0 / first["retrieval"]["num_videos"]
    assert 0 < first["codebook_usage"] <= 1 and first["params"] > 0 and first["gflops"] > 0
    assert set(first["stage_seconds"]) == set(STAGES)
    for path in ("shards/train/index.json", "shards/test/shard-000000.tar", "tokenizer/final/model.safetensors", "labels/meta.json", "pretrain/final/model.safetensors",
                 "pretrain/metrics.jsonl", "retrieval/final/model.safetensors", "qa/final/answers.txt",
                 "index/embeddings.safetensors", "recipes/pretrain.yaml", "recipes/retrieval.yaml"):
        assert (out / path).exists(), path
    if importlib.util.find_spec("matplotlib"):  # evilm[plot], in the dev extra: the pre-training curves too
        assert (out / "pretrain" / "curves.png").stat().st_size > 10_000
        assert first["artefacts"]["pretrain curves"] == str(out / "pretrain" / "curves.png")
    # the recipes it wrote are ordinary recipes, reading the shard sets it made
    run_evilm("validate", out / "recipes" / "pretrain.yaml")
    assert (out / "recipes" / "pretrain.yaml").read_text().count(str(out / "shards" / "train")) == 1

    markers = {s: (out / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}
    again = run_evilm("quickstart", "--out", out, "--size", "quickstart-tiny", "--json")
    second = last_json(again.stdout)
    assert "already done" in again.stderr
    assert {s: (out / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES} == markers  # nothing redone
    assert second["retrieval"] == first["retrieval"] and second["qa"] == first["qa"]
    assert second["stage_seconds"] == first["stage_seconds"]

    other = run_evilm("quickstart", "--out", out, "--size", "quickstart-tiny", "--seed", "1", check=False)
    assert other.returncode == 2 and "another --out" in other.stderr
    assert json.loads((out / "quickstart.json").read_text()) == {"size": "quickstart-tiny", "seed": 0}


def test_the_quickstart_runs_the_bundled_synthetic_recipes(tmp_path):
    """One source per recipe: the quickstart's stages are recipes/synthetic/*.yaml with only its
    paths set over them (and, for a smaller size, that size's values)."""
    from evilm_core.config.loader import to_dict
    from evilm_core.quickstart.recipes import stage_recipe
    from evilm_core.recipes import load_recipe

    paths = {"data": ("train", "val", "test"), "output": ("dir",), "mvm": ("labels", "tokenizer"), "init": ("checkpoint",)}

    def without_paths(recipe) -> dict:
        raw = to_dict(recipe)
        for section, keys in paths.items():
            for key in keys:
                raw.get(section, {}).pop(key, None)
        return raw

    for name in ("tokenizer", "pretrain", "retrieval", "qa"):
        mine = stage_recipe(name, tmp_path, "quickstart", 0, {})
        assert without_paths(mine) == without_paths(load_recipe(f"synthetic/{name}")), name
        assert mine.output.dir == str(tmp_path / name) and mine.data.train == str(tmp_path / "shards" / "train")
    tiny = stage_recipe("pretrain", tmp_path, "quickstart-tiny", 0, {})
    assert tiny.model.video_encoder == "edgenext_xx_small" and tiny.data.image_size == tiny.model.image_size == 64
    assert tiny.mvm.candidates == 2 * tiny.data.num_frames and tiny.data.val is None  # as the bundled recipe
    assert (tmp_path / "recipes" / "pretrain.yaml").is_file()  # written for the individual commands
