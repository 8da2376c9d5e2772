"""Hugging Face Hub conventions for checkpoints (docs/hub.md): save_pretrained / from_pretrained
round-trip bit for bit, an old config.yaml-only export still loads, the model card carries the
recipe and the final metrics, `hf-hub:` ids resolve from a local cache (offline) or fail with a
clear error, and `push_checkpoint` uploads the Hub files (HfApi mocked: no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from evilm_core import checkpoint as ckpt
from evilm_core import hub, publish
from evilm_core.errors import EvilmError
from evilm_core.model_card import previous_inputs
from evilm_core.models.evilm import EViLM
from evilm_core.models.heads import attach_head
from evilm_core.models.loading import FORMAT, export_model, load_checkpoint, resolve_checkpoint
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


@pytest.mark.parametrize("spec", ["hf-hub:org", "hf-hub:org/name@", "hf-hub:a/b/c", "hf-hub:../x"])
def test_bad_hub_ids_are_refused(spec):
    with pytest.raises(EvilmError, match="not a Hub model id"):
        hub.parse_hub_id(spec)


def test_hub_id_parsing():
    assert hub.parse_hub_id("hf-hub:org/name") == ("org/name", None)
    assert hub.parse_hub_id("hf-hub:org/my.model-1@v1.0") == ("org/my.model-1", "v1.0")
    assert hub.is_hub_id(Path("hf-hub:org/name")) and not hub.is_hub_id("runs/x")


def test_hub_id_loads_through_snapshot_download(tmp_path, monkeypatch):
    """Every loader goes through resolve_checkpoint: an id is handed to snapshot_download once."""
    import huggingface_hub

    net = tiny_model(seed=9).eval()
    snapshot = net.save_pretrained(tmp_path / "snap", vocab=VOCAB)
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: calls.append((repo, kw["revision"])) or str(snapshot))
    _same(net, EViLM.from_pretrained("hf-hub:org/tiny@v2"))
    assert calls == [("org/tiny", "v2")]
    assert load_checkpoint(Path("hf-hub:org/tiny")).directory == snapshot  # a CLI option is a Path


def _fake_cache(home: Path, repo: str, net: EViLM) -> Path:
    """A Hugging Face cache (HF_HOME) holding one snapshot of `repo` on main, as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = net.save_pretrained(base / "snapshots" / commit, vocab=VOCAB)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return snap


_RESOLVE = ("import sys; from evilm_core.hub import resolve_hub_checkpoint; from evilm_core.errors import EvilmError\n"
            "try:\n    print(resolve_hub_checkpoint(sys.argv[1]))\n"
            "except EvilmError as err:\n    print('ERROR', err); sys.exit(2)\n")


def _offline(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_cached_snapshot_resolves_offline_and_a_missing_one_says_what_to_do(tmp_path):
    home = tmp_path / "hf"
    snap = _fake_cache(home, "org/tiny", tiny_model(seed=10))
    run = lambda spec: subprocess.run([sys.executable, "-c", _RESOLVE, spec], env=_offline(home),  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    found = run("hf-hub:org/tiny")
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == snap.resolve()
    missing = run("hf-hub:org/absent@v3")
    assert missing.returncode == 2
    out = missing.stdout
    assert "hf-hub:org/absent@v3" in out and "HF_HUB_OFFLINE" in out and "not in the local" in out
    assert "pass the checkpoint directory" in out and "hf download org/absent" in out


class _FakeApi:
    def __init__(self, token=None):
        self.token, self.calls = token, []
        _FakeApi.last = self

    def create_repo(self, repo, **kw):
        self.calls.append(("create_repo", repo, kw))

    def create_branch(self, repo, **kw):
        self.calls.append(("create_branch", repo, kw))

    def upload_folder(self, **kw):
        folder = Path(kw["folder_path"])
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir() if p.name in kw["allow_patterns"]}
        self.calls.append(("upload_folder", kw["repo_id"], kw))
        return type("Commit", (), {"oid": "f" * 40})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    monkeypatch.setattr(_FakeApi, "last", None, raising=False)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    return _FakeApi


def test_push_refreshes_the_card_and_uploads_the_hub_files(tmp_path, fake_hub):
    run = _run_dir(tmp_path)
    net = tiny_model(seed=11)
    export_model(net, run / "final", VOCAB, "retrieval")
    (run / "step_00000012").mkdir()  # a run directory resolves to its final/
    result = publish.push_checkpoint(run, "me/evilm-ret", private=True, revision="dev", license="mit", token="t0k")
    api = fake_hub.last
    assert api.token == "t0k" and api.calls[0] == ("create_repo", "me/evilm-ret", {"private": True, "exist_ok": True})
    assert api.calls[1][0] == "create_branch" and api.calls[2][2]["revision"] == "dev"
    assert set(api.uploaded) == {"model.safetensors", "config.json", "vocab.txt", "README.md"}
    card = api.uploaded["README.md"].decode()
    assert 'from_pretrained("hf-hub:me/evilm-ret")' in card and "license: mit" in card and "| val_r1 | 37.5 |" in card
    assert (run / "final" / "README.md").read_text() == card  # refreshed in place before the upload
    assert result["commit"] == "f" * 40 and result["url"] == "https://huggingface.co/me/evilm-ret"


def test_push_converts_an_old_export_without_touching_it(tmp_path, fake_hub):
    net = tiny_model(seed=12)
    old = ckpt.write_checkpoint(tmp_path / "old", net.state_dict(), {"format": "evilm-model/1", "model": net.cfg},
                                VOCAB)
    before = sorted(p.name for p in old.iterdir())
    publish.push_checkpoint(old, "hf-hub:me/old", token="t")
    assert sorted(p.name for p in old.iterdir()) == before
    up = fake_hub.last.uploaded
    assert {"config.json", "README.md"} <= set(up) and json.loads(up["config.json"])["format"] == "evilm-model/1"
    assert up["model.safetensors"] == (old / "model.safetensors").read_bytes()


def test_push_without_a_token_is_an_error(tmp_path, fake_hub):
    final = tiny_model().save_pretrained(tmp_path / "m", vocab=VOCAB)
    with pytest.raises(EvilmError, match="needs a Hugging Face token"):
        publish.push_checkpoint(final, "me/x")
    assert fake_hub.last is None  # refused before any Hub call


def test_a_recipe_keeps_a_hub_id_as_written():
    """init.checkpoint is a path field (made absolute on load), but a Hub id is not a path."""
    from evilm_core.config.loader import from_dict
    from evilm_core.config.sections import InitConfig

    assert from_dict(InitConfig, {"checkpoint": "hf-hub:org/name@v1"}, "init").checkpoint == "hf-hub:org/name@v1"
    assert Path(from_dict(InitConfig, {"checkpoint": "runs/x"}, "init").checkpoint).is_absolute()
