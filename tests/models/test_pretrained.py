"""Models in and out in the Hugging Face Hub layout (docs/hub.md): save_pretrained /
from_pretrained round-trip bit for bit, a trainer step_* (config.yaml) loads too, and the model
card carries the recipe and the final metrics. Hub ids and push: tests/checkpoints/test_hub.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.card import previous_inputs
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.errors import EvilmError
from evilm_core.models.evilm import EViLM
from evilm_core.models.heads import attach_head
from evilm_core.models.loading import load_checkpoint
from evilm_core.models.pretrained import FORMAT, export_model
from tests.helpers.models import VOCAB, clips, texts, tiny_model

RECIPE = {"kind": "finetune", "task": "retrieval", "seed": 3, "train": {"epochs": 2}, "output": {"dir": "runs/x"}}
FINAL_ROW = {"step": 12, "epoch": 2, "split": "val", "val_r1": 37.5, "val_r5": 80.0, "val_loss": 1.25}


def _run_dir(tmp_path: Path) -> Path:
    """A run directory as training leaves it before its export: config.yaml and metrics.jsonl."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    rows = [{"step": 6, "split": "val", "val_r1": 10.0}, {"step": 12, "loss": 2.0}, FINAL_ROW]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    return run


def _embeddings(net: EViLM) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = texts(3)
    with torch.no_grad():
        return net.embed_video(clips(3)), net.embed_text(ids, mask)


def _same(a: EViLM, b: EViLM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    for x, y in zip(_embeddings(a.eval()), _embeddings(b.eval())):
        assert torch.equal(x, y)


def test_save_pretrained_then_from_pretrained_is_identical(tmp_path):
    net = tiny_model(seed=5).eval()
    out = net.save_pretrained(tmp_path / "model", vocab=VOCAB)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "vocab.txt", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "evilm" and config["format"] == "evilm-model/1" and config["task"] is None
    assert config["vocab_file"] == "vocab.txt" and config["evilm_version"] and config["model"]["fusion_dim"] == 96
    back = EViLM.from_pretrained(out)
    assert back.cfg == net.cfg and back.vocab == VOCAB and back.task is None
    _same(net, back)
    again = back.save_pretrained(tmp_path / "again")  # keeps its vocabulary
    assert (again / "vocab.txt").read_text() == (out / "vocab.txt").read_text()
    _same(net, EViLM.from_pretrained(again))


def test_finetuned_head_task_and_classes_round_trip(tmp_path):
    net = tiny_model(seed=6).eval()
    attach_head(net, "qa", 3)
    final = export_model(net, tmp_path / "run" / "final", VOCAB, "qa", extra={"note": "x"}, classes=["a", "b", "c"])
    back = EViLM.from_pretrained(tmp_path / "run")
    assert back.task == "qa" and back.classes == {"qa": ["a", "b", "c"]}
    copy = back.save_pretrained(tmp_path / "copy")
    loaded = load_checkpoint(copy)
    assert loaded.task == "qa" and loaded.config["note"] == "x" and (copy / "answers.txt").read_text() == "a\nb\nc\n"
    _same(net, loaded.model)
    ids, mask = texts(2)
    with torch.no_grad():
        want = net.heads["qa"](net.forward_features(clips(2), ids, mask)["cls"])
        assert torch.equal(loaded.model.heads["qa"](loaded.model.forward_features(clips(2), ids, mask)["cls"]), want)
    assert json.loads((final / "config.json").read_text())["format"] == FORMAT


def test_save_pretrained_without_vocab_is_an_error(tmp_path):
    with pytest.raises(EvilmError, match="needs the model's vocabulary"):
        tiny_model().save_pretrained(tmp_path / "m")


def test_old_config_yaml_checkpoint_still_loads(tmp_path):
    """A final/ written before the Hub layout: model.safetensors, config.yaml, vocab.txt."""
    net = tiny_model(seed=7).eval()
    old = ckpt.write_checkpoint(tmp_path / "old" / "final", net.state_dict(),
                                {"format": "evilm-model/1", "model": net.cfg}, VOCAB)
    assert {p.name for p in old.iterdir()} == {"model.safetensors", "config.yaml", "vocab.txt"}
    assert resolve_checkpoint(tmp_path / "old") == old
    _same(net, EViLM.from_pretrained(tmp_path / "old"))
    converted = EViLM.from_pretrained(old).save_pretrained(tmp_path / "new")  # re-saved in the Hub layout
    assert (converted / "config.json").is_file() and not (converted / "config.yaml").exists()
    _same(net, EViLM.from_pretrained(converted))


def test_model_card_has_the_recipe_and_final_metrics(tmp_path):
    run = _run_dir(tmp_path)
    final = export_model(tiny_model(seed=8), run / "final", VOCAB, "retrieval")
    card = (final / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "evilm" and "video-text-retrieval" in front["tags"]
    assert front["evilm"]["final"] == {"step": 12, "split": "val",
                                       "metrics": {"val_r1": 37.5, "val_r5": 80.0, "val_loss": 1.25}}
    assert "license" not in front
    recipe = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert recipe == RECIPE
    assert "| val_r1 | 37.5 |" in card and "step 12" in card
    assert 'EViLM.from_pretrained("hf-hub:ORG/NAME")' in card
    # away from its run, a copy keeps what the card records; push's refresh fills in the repo id
    moved = EViLM.from_pretrained(final).save_pretrained(tmp_path / "elsewhere" / "m", repo="me/ret",
                                                         license="apache-2.0")
    text = (moved / "README.md").read_text()
    assert 'from_pretrained("hf-hub:me/ret")' in text and "license: apache-2.0" in text and "| val_r5 | 80 |" in text
    assert previous_inputs(moved)[:2] == (RECIPE, {"step": 12, "split": "val", "val_r1": 37.5, "val_r5": 80.0,
                                                   "val_loss": 1.25})


def test_a_directory_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    with pytest.raises(EvilmError, match=f"{tmp_path / 'junk'} is not a checkpoint"):
        EViLM.from_pretrained(tmp_path / "junk")
    with pytest.raises(EvilmError, match="does not exist"):
        EViLM.from_pretrained(tmp_path / "nothing")


def test_a_damaged_config_json_is_named(tmp_path):
    final = tiny_model().save_pretrained(tmp_path / "m", vocab=VOCAB)
    (final / "config.json").write_text("{not json")
    with pytest.raises(EvilmError, match=f"{final / 'config.json'} is damaged"):
        EViLM.from_pretrained(final)
