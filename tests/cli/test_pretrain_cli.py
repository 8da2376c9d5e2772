"""`evilm pretrain` end to end on tiny synthetic data: tokenizer -> label cache -> pretraining
(MLM + VTM + MVM), its metrics and a final checkpoint that rebuilds without the recipe; the MVM
switch (loss.mvm=0, no cache needed) and online targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evilm_cli.common import round_floats
from tests.helpers.cli import REPO, last_json, run_evilm

TOK_RECIPE = str(REPO / "recipes/synthetic/tokenizer.yaml")
RECIPE = str(REPO / "recipes/synthetic/pretrain.yaml")


def sets(values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def sources(synth_dir, tmp_path_factory) -> dict:
    """A 1-epoch tiny tokenizer (64 px, 16 codes) and the label cache of the training clips."""
    base = tmp_path_factory.mktemp("pretrain_cli")
    tok = base / "tok"
    run_evilm("tokenize-train", TOK_RECIPE, *sets({
        "data.train": synth_dir / "train.jsonl", "data.val": "null", "data.image_size": 64, "data.batch_size": 14,
        "data.num_workers": 0, "model.encoder_args": "{embed_dim: 32, depth: 1, num_heads: 2}",
        "model.codebook_size": 16, "model.decoder_depth": 1, "model.decoder_dim": 32, "model.decoder_heads": 2,
        "train.epochs": 1, "output.dir": tok}))
    labels = base / "labels"
    summary = last_json(run_evilm("label", "--manifest", str(synth_dir / "train.jsonl"), "--tokenizer", str(tok),
                                  "--out", str(labels), "--workers", "0", "--device", "cpu", "--json").stdout)
    assert summary["labelled"] == summary["videos"] > 0
    return {"base": base, "tok": tok, "labels": labels}


def pretrain_args(synth_dir, sources, out: Path, **extra) -> list[str]:
    values = {
        "model.video_encoder": "edgenext_xx_small", "model.image_size": 64, "data.image_size": 64,
        "model.text_layers": 1, "model.fusion_layers": 1, "model.fusion_dim": 96, "model.fusion_heads": 2,
        "model.codebook_size": 16, "masking.min_block": 1, "data.num_workers": 0, "data.batch_size": 8,
        "train.epochs": 3, "train.log_every": 1, "mvm.labels": sources["labels"], "mvm.tokenizer": sources["tok"],
        "data.train": synth_dir / "train.jsonl", "data.val": synth_dir / "val.jsonl", "output.dir": out,
        **extra}
    return ["pretrain", RECIPE, *sets(values), "--json"]


def rows(out: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("split") != "val"], [r for r in lines if r.get("split") == "val"]


@pytest.fixture(scope="module")
def run(synth_dir, sources) -> tuple[Path, dict]:
    out = sources["base"] / "pretrain"
    return out, last_json(run_evilm(*pretrain_args(synth_dir, sources, out)).stdout)


def test_pretrain_reports_all_three_tasks(run):
    out, result = run
    assert result["checkpoint"] == str(out / "final") and result["step"] == 12  # 28 clips / 8 -> 4 steps x 3
    assert result["skipped"] == 0
    for key in ("val_mlm_acc", "val_mvm_acc", "val_vtm_acc", "val_mlm_loss", "val_mvm_loss", "val_vtm_loss"):
        assert key in result["metrics"], key
    train, val = rows(out)
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [r["step"] for r in val] == [4, 8, 12]  # one eval per epoch, the last of the final weights
    # --json rounds floats to 7 significant digits (float32's precision); metrics.jsonl keeps them whole
    assert round_floats({k: v for k, v in val[-1].items() if k.startswith("val_")}) == result["metrics"]
    for r in train:
        for key in ("mlm_loss", "vtm_loss", "mvm_loss", "mlm_acc", "vtm_acc", "mvm_acc", "loss", "clips_per_s", "lr"):
            assert key in r, (key, r)
        assert all(v == v for v in r.values() if isinstance(v, float))  # no NaN
        assert 0 <= r["mvm_acc"] <= 1 and r["clips_per_s"] > 0


def test_final_checkpoint_rebuilds_and_embeds(run, synth_dir):
    from evilm_core.checkpoints import files as ckpt
    from evilm_core.config.loader import from_dict
    from evilm_core.data.dataset import clip_dataset, collate_clips
    from evilm_core.data.records.manifest import read_manifest
    from evilm_core.models.config import EViLMConfig
    from evilm_core.models.evilm import EViLM
    from evilm_core.pretrain.data import PretrainExtras
    from evilm_core.text.tokens import TextTokens

    out, result = run
    final = Path(result["checkpoint"])
    assert {"model.safetensors", "config.json", "vocab.txt", "README.md"} <= {p.name for p in final.iterdir()}
    cfg = ckpt.read_config(final)
    model_cfg = from_dict(EViLMConfig, cfg["model"], "model")
    vocab = ckpt.read_checkpoint_vocab(final)
    assert model_cfg.vocab_size == len(vocab) and model_cfg.image_size == 64 and model_cfg.codebook_size == 16
    model = EViLM(model_cfg)
    model.load_state_dict(ckpt.read_weights(final))  # strict: every key present, none extra
    model.eval()
    ds = clip_dataset(read_manifest(synth_dir / "val.jsonl"), str(synth_dir), 4, 64,
                      extras=PretrainExtras(TextTokens(final, model_cfg.max_text_len)))
    batch = collate_clips([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        v = model.embed_video(batch["pixels"])
        t = model.embed_text(batch["input_ids"], batch["attention_mask"])
        out_feats = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])
    n = batch["size"]
    assert v.shape == t.shape == (n, model_cfg.embed_dim)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(n))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(n))
    assert out_feats["video"].shape == (n, 4 * 2 * 2, model_cfg.fusion_dim)
    assert torch.isfinite(model.heads["mvm"](out_feats["video"])).all()


def test_mvm_off_needs_no_label_cache(synth_dir, sources):
    out = sources["base"] / "no_mvm"
    result = last_json(run_evilm(*pretrain_args(synth_dir, sources, out, **{
        "loss.mvm": 0, "mvm.labels": "null", "mvm.tokenizer": "null", "train.epochs": 1})).stdout)
    assert result["step"] == 4
    assert "val_mlm_acc" in result["metrics"] and not any("mvm" in k for k in result["metrics"])
    train, _ = rows(out)
    assert train and all("mlm_loss" in r and "vtm_loss" in r and "mvm_loss" not in r for r in train)


def test_online_targets(synth_dir, sources):
    out = sources["base"] / "online"
    result = last_json(run_evilm(*pretrain_args(synth_dir, sources, out, **{
        "mvm.targets": "online", "mvm.labels": "null", "train.epochs": 1})).stdout)
    assert result["step"] == 4 and "val_mvm_acc" in result["metrics"]
    train, _ = rows(out)
    assert train and all("mvm_loss" in r for r in train)


@pytest.mark.parametrize("layout", ["run dir", "hub dir"])
def test_init_checkpoint_takes_a_run_dir_and_a_hub_layout_dir(run, synth_dir, sources, tmp_path, layout):
    """init.checkpoint goes through the one checkpoint resolver (checkpoints/resolve.py): a run
    directory (its final/) and a plain Hub-layout directory (save_pretrained's) both start the
    model from the trained weights, whose first-step losses beat a model from scratch."""
    from evilm_core.models.evilm import EViLM

    trained, _ = run
    init = trained if layout == "run dir" else EViLM.from_pretrained(trained / "final").save_pretrained(tmp_path / "m")
    first = {}
    for name, value in (("init", init), ("scratch", "null")):
        out = tmp_path / name
        proc = run_evilm(*pretrain_args(synth_dir, sources, out, **{"init.checkpoint": value, "train.max_steps": 1,
                                                                     "data.val": "null", "train.epochs": 1}))
        assert (f"initialised from {trained / 'final' if layout == 'run dir' else init}" in proc.stderr) == (name == "init")
        first[name] = rows(out)[0][0]
    assert first["init"]["mlm_loss"] < first["scratch"]["mlm_loss"]
    assert first["init"]["mvm_loss"] < first["scratch"]["mvm_loss"]
