"""`evilm data synth|check` and `evilm validate`, run as a user runs them."""

from __future__ import annotations

import json

import numpy as np

from evilm_core.data.video.write import write_mp4
from tests.helpers.cli import REPO, last_json, run_evilm


def test_help_lists_commands():
    out = run_evilm("--help").stdout
    for command in ("data", "validate", "tokenize-train"):
        assert command in out


def test_synth_then_check_reports_every_clip_ok(tmp_path):
    run_evilm("data", "synth", str(tmp_path / "synth"), "--videos", "24", "--frames", "8", "--size", "64")
    report = last_json(run_evilm("data", "check", str(tmp_path / "synth" / "train.jsonl"), "--json",
                                 "--image-size", "64").stdout)
    assert report["total"] == report["ok"] > 0
    assert report["missing"] == report["corrupt"] == report["short"] == 0 and report["problems"] == []


def test_check_counts_each_kind_of_problem(tmp_path):
    rng = np.random.default_rng(0)
    write_mp4(tmp_path / "good1.mp4", rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8))
    write_mp4(tmp_path / "good2.mp4", rng.integers(0, 255, (8, 48, 80, 3), dtype=np.uint8))
    write_mp4(tmp_path / "portrait.mp4", rng.integers(0, 255, (4, 1920, 1080, 3), dtype=np.uint8))
    write_mp4(tmp_path / "one_frame.mp4", rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 50)
    names = ["good1", "good2", "portrait", "one_frame", "empty", "text", "missing"]
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("".join(json.dumps({"video": f"{n}.mp4", "caption": n}) + "\n" for n in names))
    proc = run_evilm("data", "check", str(manifest), "--json")
    assert "Traceback" not in proc.stderr
    report = last_json(proc.stdout)
    assert (report["total"], report["ok"], report["missing"], report["corrupt"], report["short"]) == (7, 3, 1, 2, 1)
    reasons = {p["video"]: p["reason"] for p in report["problems"]}
    assert reasons == {"missing.mp4": "missing", "empty.mp4": "corrupt", "text.mp4": "corrupt",
                       "one_frame.mp4": "short"}
    assert all(p["detail"] for p in report["problems"])
    human = run_evilm("data", "check", str(manifest))
    assert "3 ok" in human.stdout and "empty.mp4" in human.stdout  # the report is the result: stdout


def test_check_unreadable_manifest_is_a_clean_error(tmp_path):
    proc = run_evilm("data", "check", str(tmp_path / "nope.jsonl"), check=False)
    assert proc.returncode == 2 and "nope.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_misspelled_key_suggests_the_right_one(tmp_path):
    recipe = tmp_path / "r.yaml"
    text = (REPO / "recipes/synthetic/tokenizer.yaml").read_text().replace("codebook_size:", "codebok_size:")
    recipe.write_text(text)
    proc = run_evilm("validate", str(recipe), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "codebok_size" in proc.stderr and "codebook_size" in proc.stderr and "model" in proc.stderr


def test_validate_set_and_print_config():
    recipe = str(REPO / "recipes/synthetic/tokenizer.yaml")
    out = run_evilm("validate", recipe, "--set", "model.decoder_depth=3", "--set", "optim.lr=1e-3",
                    "--print-config").stdout
    import yaml
    cfg = yaml.safe_load(out)
    assert cfg["model"]["decoder_depth"] == 3 and cfg["optim"]["lr"] == 1e-3 and cfg["kind"] == "tokenizer"
    bad = run_evilm("validate", recipe, "--set", "train.epochs=many", check=False)
    assert bad.returncode == 2 and "expected int" in bad.stderr
    ok = last_json(run_evilm("validate", recipe, "--json").stdout)
    assert ok == {"recipe": recipe, "kind": "tokenizer", "valid": True}


def test_every_recipe_validates():
    for recipe in sorted(REPO.glob("recipes/**/*.yaml")):
        run_evilm("validate", str(recipe))
