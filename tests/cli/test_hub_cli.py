"""`evilm push` and `hf-hub:` checkpoint ids from the command line (docs/hub.md), never on the
network: no token -> a clear error before any Hub call; an id that is not in the (empty, offline)
Hugging Face cache -> a clear error naming it; a cached snapshot is evaluated like a directory."""

from __future__ import annotations

import os
from pathlib import Path

from tests.checkpoints.test_hub import _fake_cache
from tests.helpers.cli import last_json, run_evilm
from tests.helpers.models import VOCAB, tiny_model


def _offline(home: Path) -> dict:
    """HF_HOME in tmp (no stored token, an empty cache), HF_HUB_OFFLINE=1, no HF_TOKEN."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(*args, home: Path, cwd: Path):
    # run_evilm merges os.environ first: drop the HF_* variables of this process for the child
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("HF_")}
    try:
        return run_evilm(*args, cwd=cwd, check=False, env={**_offline(home), "HF_TOKEN": ""}, timeout=300)
    finally:
        os.environ.update(saved)


def test_push_without_a_token_is_a_clear_error(tmp_path):
    final = tiny_model().save_pretrained(tmp_path / "run" / "final", vocab=VOCAB)
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    proc = _run("push", tmp_path / "run", "me/tiny", "--private", home=tmp_path / "hf", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "needs a Hugging Face token" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before  # nothing written before the refusal


def test_push_help_names_the_options(tmp_path):
    proc = _run("push", "--help", home=tmp_path / "hf", cwd=tmp_path)
    assert proc.returncode == 0 and "--private" in proc.stdout and "--revision" in proc.stdout


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path):
    proc = _run("export", "hf-hub:me/absent@v1", "--out", tmp_path / "exp", "--format", "torch",
                home=tmp_path / "hf", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "hf-hub:me/absent@v1" in err and "HF_HUB_OFFLINE is set" in err and "not in the local" in err
    assert "pass the checkpoint directory instead" in err and "Traceback" not in err


def test_cached_hub_id_works_offline(tmp_path):
    """`export hf-hub:...` loads the snapshot from the offline cache: the export is of its weights."""
    from evilm_core.checkpoints import files as ckpt

    home = tmp_path / "hf"
    snap = _fake_cache(home, "me/tiny", tiny_model(seed=4))
    proc = _run("export", "hf-hub:me/tiny", "--out", tmp_path / "exp", "--format", "torch", "--json", home=home,
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = last_json(proc.stdout)
    assert Path(result["checkpoint"]).resolve() == snap.resolve()
    assert result["model_hash"] == ckpt.file_sha256(snap / "model.safetensors")
