"""Shared fixtures: a tiny synthetic dataset on disk. Helpers to import are in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests use tiny models: one torch thread each is fastest, and on a busy 2-core machine several
# threads per process make tiny ops up to 100x slower. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """40 clips, 8 frames of 64 px: small enough for every CLI test to reuse."""
    from evilm_core.prepare.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, num_videos=40, seed=0, frames=8, size=64, workers=1)
    return out


@pytest.fixture(scope="session")
def long_dir(tmp_path_factory) -> Path:
    """3 long videos of 3-4 scenes (1-3 s each, 64 px, 8 fps) and their moments.jsonl."""
    from evilm_core.prepare.synth_long import generate_long

    out = tmp_path_factory.mktemp("synth_long")
    generate_long(out, 3, seed=0, size=64, fps=8, scenes=(3, 4), seconds=(1.0, 3.0), workers=1)
    return out
