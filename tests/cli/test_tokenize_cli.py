"""`evilm tokenize-train` end to end on tiny synthetic data: learning, artefacts, resume."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers.cli import REPO, last_json, run_evilm

RECIPE = str(REPO / "recipes/synthetic/tokenizer.yaml")


def tiny(synth_dir, out, epochs=4) -> list[str]:
    sets = {
        "data.train": synth_dir / "train.jsonl", "data.val": synth_dir / "val.jsonl",
        "data.test": "null", "data.image_size": 64,
        "data.batch_size": 7, "data.num_workers": 0, "model.encoder_args": "{embed_dim: 32, depth: 1, num_heads: 2}",
        "model.codebook_size": 16, "model.decoder_depth": 1, "model.decoder_dim": 32, "model.decoder_heads": 2,
        "train.epochs": epochs, "train.log_every": 1, "optim.lr": "3e-3", "optim.warmup_steps": 2,
        "output.dir": out,
    }
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "run"
    result = last_json(run_evilm("tokenize-train", RECIPE, *tiny(synth_dir, out), "--json").stdout)
    return out, result


def test_tokenizer_learns_and_reports(trained):
    out, result = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "word_loss" in r]
    first, last = train_rows[0]["word_loss"], sum(r["word_loss"] for r in train_rows[-3:]) / 3
    assert last < first, (first, last)
    m = result["metrics"]
    for key in ("word_mAP", "word_mAP_freq_baseline", "word_F1", "codebook_usage", "perplexity"):
        assert key in m
    assert 0 < m["codebook_usage"] <= 1 and result["step"] == 16
    assert all("clips_per_s" in r for r in train_rows)


def test_run_directory_and_final_tokenizer(trained):
    out, result = trained
    assert result["checkpoint"] == str(out / "final")
    assert (out / "config.yaml").is_file() and yaml.safe_load((out / "config.yaml").read_text())["kind"] == "tokenizer"
    step = sorted(out.glob("step_*"))[-1]
    assert {p.name for p in step.iterdir()} == {"model.safetensors", "config.yaml", "vocab.txt", "trainer_state.pt"}
    from safetensors.torch import load_file

    keys = load_file(str(out / "final" / "model.safetensors")).keys()
    assert all(k.startswith(("encoder.", "proj.", "quantizer.codebook")) for k in keys)
    assert any(k == "quantizer.codebook" for k in keys)
    from evilm_core.models.tokenizer import load_tokenizer

    model, info = load_tokenizer(out)
    assert model.decoder is None and info["codebook_size"] == 16 and info["grid"] == 2


def test_existing_run_needs_resume(trained, synth_dir):
    out, _ = trained
    proc = run_evilm("tokenize-train", RECIPE, *tiny(synth_dir, out), check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_resume_continues_to_more_epochs(trained, synth_dir):
    out, _ = trained
    refused = run_evilm("tokenize-train", RECIPE, *tiny(synth_dir, out, epochs=5), "--resume", check=False)
    assert refused.returncode == 2 and "recipe hash: checkpoint" in refused.stderr and "--replan" in refused.stderr
    result = last_json(run_evilm("tokenize-train", RECIPE, *tiny(synth_dir, out, epochs=5), "--resume", "--replan",
                                 "--json").stdout)
    assert result["step"] == 20 and any("recipe hash" in d for d in result["replanned"])
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s, r in zip(steps, (out / "metrics.jsonl").read_text().splitlines()) if '"lr"' in r]
    assert train_steps == sorted(set(train_steps))  # no duplicated rows after resume


def test_wrong_recipe_kind_and_missing_manifest(tmp_path, synth_dir):
    proc = run_evilm("tokenize-train", RECIPE, *tiny(synth_dir, tmp_path / "r"), "--set",
                     f"data.train={tmp_path / 'none.jsonl'}", check=False)
    assert proc.returncode == 2 and "none.jsonl" in proc.stderr and "Traceback" not in proc.stderr
