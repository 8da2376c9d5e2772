"""Hub ids and `evilm push` (checkpoints/hub.py, resolve.py, push.py; docs/hub.md): `hf-hub:` ids
resolve from a local cache (offline) or fail with a clear error, every loader goes through the
one resolver, and `push_checkpoint` uploads the Hub files (HfApi mocked: no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints import hub
from evilm_core.checkpoints import push as publish
from evilm_core.errors import EvilmError
from evilm_core.models.evilm import EViLM
from evilm_core.models.loading import load_checkpoint
from evilm_core.models.pretrained import export_model
from tests.helpers.models import VOCAB, tiny_model
from tests.models.test_pretrained import _run_dir, _same


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


_RESOLVE = ("import sys; from evilm_core.checkpoints.hub import resolve_hub_checkpoint; from evilm_core.errors import EvilmError\n"
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


def test_push_refuses_a_checkpoint_that_is_not_a_hub_layout_export(tmp_path, fake_hub):
    """A trainer step_* (config.yaml: the whole recipe and training state) is not what a Hub repo holds."""
    net = tiny_model(seed=12)
    step = ckpt.write_checkpoint(tmp_path / "run" / "step_00000010", net.state_dict(),
                                 {"format": "evilm-model/1", "model": net.cfg}, VOCAB)
    with pytest.raises(EvilmError, match="is not a model export.*push the run's final/"):
        publish.push_checkpoint(step, "hf-hub:me/old", token="t")
    assert fake_hub.last is None  # nothing was uploaded


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
