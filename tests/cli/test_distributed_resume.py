"""Pre-training as users run it at scale: under torchrun (2 ranks, gloo) and across a
SIGUSR1 (SLURM's warning signal) + --resume, on tiny synthetic data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evilm_core.errors import REQUEUE_EXIT
from tests.helpers.cli import REPO, last_json, run_evilm
from tests.helpers.label import make_tokenizer

RECIPE = str(REPO / "recipes/synthetic/pretrain.yaml")


@pytest.fixture(scope="module")
def sources(synth_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("pt_sources")
    tok = make_tokenizer(base / "tok", codebook_size=16)
    run_evilm("label", "--manifest", str(synth_dir / "train.jsonl"), "--tokenizer", str(tok), "--out",
              str(base / "labels"), "--workers", "0")
    return tok, base / "labels"


def tiny_pretrain(synth_dir, sources, out, **extra) -> list[str]:
    tok, labels = sources
    sets = {
        "data.train": synth_dir / "train.jsonl", "data.val": synth_dir / "val.jsonl",
        "data.test": "null", "data.image_size": 64,
        "data.batch_size": 4, "data.num_workers": 0, "model.video_encoder": "edgenext_xx_small",
        "model.image_size": 64, "model.text_layers": 1, "model.fusion_layers": 1, "model.fusion_dim": 96,
        "model.fusion_heads": 2, "model.codebook_size": 16, "masking.min_block": 1, "mvm.tokenizer": tok,
        "mvm.labels": labels, "train.log_every": 1, "optim.warmup_steps": 2, "output.dir": out, **extra,
    }
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def test_torchrun_two_ranks_end_with_equal_weights(synth_dir, sources, tmp_path):
    """The documented multi-GPU form, `torchrun --no-python evilm pretrain NAME` (the console
    script found on PATH, the recipe given by its bundled name), with 2 gloo ranks on CPU."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "evilm").exists() or not (bin_dir / "torchrun").exists():
        pytest.skip("needs the `evilm` and `torchrun` console scripts beside the interpreter (an installed evilm)")
    out = tmp_path / "ddp"
    cmd = ["torchrun", "--nproc_per_node=2", "--master_port=29533", "--no-python",
           "evilm", "pretrain", "synthetic/pretrain", *tiny_pretrain(synth_dir, sources, out, **{"train.epochs": 1}),
           "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["world_size"] == 2 and result["replicas_in_sync"] is True
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 prints
    # 28 training clips over 2 ranks of batch 4: ceil(14 / 4) = 4 steps in the epoch
    assert result["step"] == 4 and (out / "final" / "model.safetensors").is_file()


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "lr" in r}


def test_sigterm_then_resume_matches_uninterrupted(synth_dir, sources, tmp_path):
    extra = {"train.epochs": 2, "data.batch_size": 2}  # 14 steps an epoch, 28 in all
    ref = tmp_path / "ref"
    run_evilm("pretrain", RECIPE, *tiny_pretrain(synth_dir, sources, ref, **extra))
    reference = _losses(ref)
    assert len(reference) == 28

    out = tmp_path / "cut"
    exe = Path(sys.executable).with_name("evilm")
    proc = subprocess.Popen([str(exe), "pretrain", RECIPE, *tiny_pretrain(synth_dir, sources, out, **extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # stop mid-epoch, a few steps in
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            proc.send_signal(signal.SIGUSR1)  # what SLURM sends before the time limit (--signal=USR1@120)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == REQUEUE_EXIT, err[-2000:]
    assert "checkpoint" in err and "--resume" in err
    stopped_at = max(_losses(out))
    assert 4 <= stopped_at < 28

    run_evilm("pretrain", RECIPE, *tiny_pretrain(synth_dir, sources, out, **extra), "--resume")
    resumed = _losses(out)
    assert sorted(resumed) == list(range(1, 29))
    for step in range(stopped_at + 1, 29):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
