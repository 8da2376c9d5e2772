"""Shared fixtures: a tiny synthetic dataset on disk and a helper to run `evilm` as a user does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests use tiny models: one torch thread each is fastest, and on a busy 2-core machine several
# threads per process make tiny ops up to 100x slower. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


def run_evilm(*args: str, cwd: Path | str | None = None, check: bool = True, timeout: int = 600,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `evilm` console script (falls back to `python -m evilm_cli.main`)."""
    exe = Path(sys.executable).with_name("evilm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "evilm_cli.main"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"evilm {' '.join(map(str, args))} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """40 clips, 8 frames of 64 px: small enough for every CLI test to reuse."""
    from evilm_core.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, num_videos=40, seed=0, frames=8, size=64, workers=1)
    return out
