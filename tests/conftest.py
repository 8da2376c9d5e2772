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
    from evilm_core.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, num_videos=40, seed=0, frames=8, size=64, workers=1)
    return out


# The longest files first. `-n 2 --dist loadfile` (the README's test command) hands whole files
# to the two workers in collection order; a long file collected last (tests/retrieval sorts
# late) left one worker idle for minutes while the other finished it. Longest-first shortens
# that tail. Order: the slowest tests of a `--durations=25` run, summed per file.
LONG_FILES_FIRST = (
    "tests/retrieval/test_retrieve_paths.py",
    "tests/faults/test_disk_full.py",
    "tests/retrieval/test_retrieve_cli.py",
    "tests/cli/test_distributed_resume.py",
    "tests/cli/test_shards_cli.py",
    "tests/faults/test_names_and_text.py",
    "tests/export/test_export.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: order within a file kept
