"""Session fixtures of the fault suite: the fork server that runs every model command
(forkserver.py), the tiny inputs (synthetic clips from tests/conftest.py, a tiny tokenizer, a
random-weight retrieval model) and each command's uninterrupted baseline run, built once and
shared by test_sigkill.py and test_bad_files.py (which damages copies of them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.commands import Command, Outcome, build, run_timed
from tests.faults.forkserver import ForkServer
from tests.helpers.cli import REPO
from tests.helpers.label import make_tokenizer
from tests.retrieval.test_retrieve_cli import write_model


@pytest.fixture(scope="session")
def evilm_server():
    server = ForkServer(REPO, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    yield server
    server.close()


@pytest.fixture(scope="session")
def faults_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def tokenizer_dir(faults_dir) -> Path:
    return make_tokenizer(faults_dir / "tok", codebook_size=16)


@pytest.fixture(scope="session")
def commands(synth_dir, faults_dir, tokenizer_dir) -> dict[str, Command]:
    from evilm_core.prepare.synth_long import generate_long

    model = write_model(faults_dir / "model", synth_dir, seed=0)
    long = faults_dir / "long"  # 2 videos of 64-120 s: 3 or 4 spans of 32 windows each (2 s at a 1 s stride)
    generate_long(long, 2, seed=0, size=64, fps=8, scenes=(16, 20), seconds=(4.0, 6.0), workers=1)
    return build(synth_dir, tokenizer_dir, faults_dir / "baseline" / "label", model, long)


@pytest.fixture(scope="session")
def baseline(commands, faults_dir, evilm_server):
    """baseline(name) -> (its output directory, its Outcome): the command run once, uninterrupted."""
    done: dict[str, tuple[Path, Outcome]] = {}

    def get(name: str) -> tuple[Path, Outcome]:
        if name not in done:
            if name in ("pretrain", "pretrain shards"):
                get("label")  # its MVM targets are the label baseline's cache
            if name == "pretrain shards":
                get("data shards")  # its frames
            out = faults_dir / "baseline" / name.replace(" ", "-")
            done[name] = out, run_timed(evilm_server, commands[name], out)
        return done[name]

    return get
