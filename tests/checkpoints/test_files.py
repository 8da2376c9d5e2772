"""Checkpoint directories (evilm_core/checkpoints/files.py): the atomic layout, which checkpoint a path
names, pruning, and the RNG state a resumed run restores."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from evilm_core.checkpoints import files as ckpt
from evilm_core.engine.seed import rng_state, set_rng_state
from evilm_core.errors import EvilmError
from evilm_core.fs import temp_sibling
from tests.helpers.models import VOCAB

WEIGHTS = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2, 3])}


def _fake(directory, weights=None):
    """A complete (tiny) checkpoint directory."""
    return ckpt.write_checkpoint(directory, weights or WEIGHTS, {"model": {"x": 1}})


def test_write_checkpoint_layout_and_round_trip(tmp_path):
    state = {"step": 7, "optimizer": {"lr": torch.tensor(0.5)}, "rng": rng_state()}
    shared = torch.zeros(4)
    weights = {"w": shared[:2], "v": shared[2:], "t": torch.ones(3, 2).T}  # views and non-contiguous: saved apart
    d = ckpt.write_checkpoint(tmp_path / "step_00000007", weights, {"model": {"x": 1}, "seed": 3}, VOCAB, state,
                              extra_files={"answers.txt": "yes\nno\n"})
    assert d == tmp_path / "step_00000007"
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "config.yaml", "vocab.txt", "trainer_state.pt",
                                              "answers.txt"}
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000007"]  # no temporary directory left behind
    assert ckpt.is_checkpoint(d)
    read = ckpt.read_weights(d)
    assert set(read) == {"w", "v", "t"} and torch.equal(read["t"], torch.ones(2, 3))
    assert ckpt.read_yaml_config(d) == {"model": {"x": 1}, "seed": 3}
    assert ckpt.read_checkpoint_vocab(d) == VOCAB
    back = ckpt.read_trainer_state(d)  # weights_only: tensors and plain values only
    assert back["step"] == 7 and torch.equal(back["optimizer"]["lr"], torch.tensor(0.5))
    assert (d / "answers.txt").read_text() == "yes\nno\n"


def test_write_checkpoint_replaces_a_checkpoint_only_once_the_new_one_is_complete(tmp_path, monkeypatch):
    target = _fake(tmp_path / "final")
    debris = temp_sibling(tmp_path / "final")  # debris of an earlier crash of this process
    debris.mkdir()
    (debris / "junk").write_text("x")

    def crash(obj, path):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_yaml", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.write_checkpoint(target, {"new": torch.zeros(1)}, {"model": {}})
    assert set(ckpt.read_weights(target)) == set(WEIGHTS)  # the old checkpoint is untouched
    monkeypatch.undo()
    ckpt.write_checkpoint(target, {"new": torch.zeros(1)}, {"model": {}})
    assert set(ckpt.read_weights(target)) == {"new"} and not (target / "vocab.txt").exists()
    assert not debris.exists()


def test_read_errors_name_the_directory(tmp_path):
    with pytest.raises(EvilmError, match=f"{tmp_path} is not a checkpoint directory"):
        ckpt.read_weights(tmp_path)
    _fake(tmp_path / "final")
    with pytest.raises(EvilmError, match="has no trainer_state.pt; it cannot be resumed from"):
        ckpt.read_trainer_state(tmp_path / "final")
    with pytest.raises(EvilmError, match="has no config.yaml"):
        ckpt.read_yaml_config(tmp_path)


def test_find_checkpoint_precedence_directory_then_final_then_newest_step(tmp_path):
    run = tmp_path / "run"
    assert ckpt.find_checkpoint(run) is None and ckpt.latest_checkpoint(run) is None
    for step in (2, 10, 9):
        _fake(run / f"step_{step:08d}")
    (run / "step_00000011").mkdir()  # incomplete (no weights): never chosen
    (run / "step_00000011" / "config.yaml").write_text("{}")
    temp_sibling(run / "step_00000012").mkdir()  # a write in progress
    (run / "step_12").mkdir()  # not a step_XXXXXXXX name
    assert [p.name for p in ckpt.step_checkpoints(run)] == ["step_00000002", "step_00000009", "step_00000010"]
    assert ckpt.find_checkpoint(run) == run / "step_00000010"
    assert ckpt.find_checkpoint(run, steps=False) is None
    _fake(run / "final")
    assert ckpt.find_checkpoint(run) == run / "final" and ckpt.find_checkpoint(run, steps=False) == run / "final"
    assert ckpt.find_checkpoint(run / "step_00000002") == run / "step_00000002"
    assert ckpt.latest_checkpoint(run) == run / "step_00000010"  # --resume looks at step_* only
    both = _fake(tmp_path / "both")  # a checkpoint directory that also holds a final/ and a step: itself wins
    _fake(both / "final")
    _fake(both / "step_00000001")
    assert ckpt.find_checkpoint(both) == both


def test_prune_keeps_the_newest_complete_steps(tmp_path):
    for step in (1, 5, 3, 20):
        _fake(tmp_path / f"step_{step:08d}")
    _fake(tmp_path / "final")
    ckpt.prune_checkpoints(tmp_path, keep=0)  # 0: keep everything
    assert len(ckpt.step_checkpoints(tmp_path)) == 4
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step_00000005", "step_00000020"]
    assert ckpt.is_checkpoint(tmp_path / "final")
    ckpt.prune_checkpoints(tmp_path, keep=5)
    assert len(ckpt.step_checkpoints(tmp_path)) == 2


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    _draws()
    state = rng_state()
    torch.save(state, tmp_path / "state.pt")
    first = _draws()
    assert _draws() != first  # the streams moved on
    set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert _draws() == first


def test_file_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert ckpt.file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert ckpt.file_sha256(tmp_path / "f", chunk=1) == ckpt.file_sha256(tmp_path / "f")
