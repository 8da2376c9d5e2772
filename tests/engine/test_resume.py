"""--resume is exact or refused (engine/resume.py): another batch size, recipe or data is named
and refused, --replan continues with the new plan, damaged checkpoints and trainer states are
errors naming the file, a run with no complete checkpoint left is not restarted from step 0, and
what a killed writer left behind is cleaned (or moved back)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from evilm_core.checkpoints import files as ckpt
from evilm_core.engine.resume import recipe_hash, replanned_batch
from evilm_core.errors import EvilmError
from evilm_core.fs import clean_stale_temps, temp_sibling
from tests.engine.test_trainer import ToyData, ToyTask, fit, recipe, rows


def _half_run(run, **train):
    """A 2-epoch toy run cut after 3 of its 10 steps, as a SIGTERM would leave it."""
    with pytest.raises(EvilmError):
        fit(run, ToyTask(stop_at=3), **train)
    assert [p.name for p in ckpt.step_checkpoints(run)] == ["step_00000003"]


def test_resume_with_another_batch_size_is_refused_naming_both_values(tmp_path):
    run = tmp_path / "run"
    _half_run(run)
    with pytest.raises(EvilmError, match=r"refused.*global batch \(clips per step\): checkpoint 4, this run 2.*--replan"):
        fit(run, resume=True, batch_size=2)
    with pytest.raises(EvilmError, match=r"recipe hash: checkpoint \w+, this run \w+"):
        fit(run, resume=True, epochs=3)
    with pytest.raises(EvilmError, match=r"training data fingerprint: .*training clips: checkpoint 20, this run 24"):
        fit(run, data=ToyData(n=24), resume=True)
    _, _, result = fit(run, resume=True, log_every=5, keep_checkpoints=3)  # keys that change nothing are free
    assert result["step"] == 10 and "replanned" not in result


def test_replan_converts_the_epoch_position_through_the_clips_consumed(tmp_path):
    run = tmp_path / "run"
    _half_run(run)  # 3 batches of 4 clips consumed in epoch 0
    trainer, _, result = fit(run, resume="replan", batch_size=2)
    assert any("global batch" in d for d in result["replanned"])
    assert trainer.total_steps == 20 and result["step"] == 20  # 10 steps an epoch now
    train_rows, _ = rows(run)
    assert [r["step"] for r in train_rows] == list(range(1, 21))
    assert replanned_batch({"world": 1, "batch_size": 4}, 3, 2, 1) == (6, True)
    assert replanned_batch({"world": 2, "batch_size": 4}, 3, 8, 1) == (3, True)  # 24 clips at 8 a batch
    assert replanned_batch({"world": 1, "batch_size": 4}, 3, 5, 1) == (2, False)  # 12 clips, batch 5: 2 + 2 seen again


def test_recipe_hash_ignores_keys_that_change_nothing(tmp_path):
    base = recipe_hash(recipe(tmp_path / "a"))
    assert recipe_hash(recipe(tmp_path / "b", log_every=7, save_every=2, keep_checkpoints=9)) == base
    assert recipe_hash(recipe(tmp_path / "a", epochs=3)) != base


def test_damaged_weights_and_trainer_state_name_the_file_and_the_older_checkpoint(tmp_path):
    run = tmp_path / "run"
    fit(run, epochs=2, save_every=2, keep_checkpoints=5)
    last = ckpt.latest_checkpoint(run)
    (last / ckpt.WEIGHTS).write_bytes((last / ckpt.WEIGHTS).read_bytes()[:50])  # truncated
    with pytest.raises(EvilmError, match=rf"{last / ckpt.WEIGHTS} is damaged or truncated .*mv .*--resume to continue "
                                         r"from step_00000008"):
        ckpt.read_weights(last)
    state = last / ckpt.STATE
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(EvilmError, match=rf"{state} is damaged or truncated"):
        ckpt.read_trainer_state(last)
    (last / ckpt.CONFIG).write_text("model: [unclosed\n")
    with pytest.raises(EvilmError, match=rf"{last / ckpt.CONFIG} is damaged or truncated \(not valid YAML"):
        ckpt.read_yaml_config(last)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/nonexistent"


def test_a_malicious_trainer_state_is_refused_and_never_runs(tmp_path, monkeypatch):
    global MARKER
    MARKER = str(tmp_path / "ran")
    d = tmp_path / "step_00000001"
    ckpt.write_checkpoint(d, {"w": torch.zeros(1)}, {"model": {}})
    torch.save({"step": 1, "optimizer": {}, "evil": _Payload()}, d / ckpt.STATE)
    with pytest.raises(EvilmError, match="objects other than tensors.*could run code, and it was refused") as err:
        ckpt.read_trainer_state(d)
    assert "weights_only=False" not in str(err.value) and not os.path.exists(MARKER)


def test_a_run_without_a_complete_checkpoint_is_not_restarted_from_zero(tmp_path):
    run = tmp_path / "run"
    _half_run(run)
    assert json.loads((run / "checkpoint.json").read_text()) == {"last": "step_00000003", "step": 3}
    shutil.rmtree(run / "step_00000003")  # what a careless `rm` leaves
    with pytest.raises(EvilmError, match=r"checkpoint.json records a complete checkpoint .*step_00000003.* but .* "
                                         "holds none any more"):
        fit(run, resume=True)
    _, _, result = fit(tmp_path / "fresh", resume=True)  # nothing there yet: --resume starts the run
    assert result["step"] == 10
    early = tmp_path / "early"  # killed before its first checkpoint: metrics rows, no checkpoint ever completed
    with pytest.raises(EvilmError):
        fit(early, ToyTask(stop_at=2), save_every=5)  # the stop's own checkpoint is then removed
    shutil.rmtree(early / "step_00000002")
    (early / "checkpoint.json").unlink()
    _, _, result = fit(early, resume=True)  # nothing was lost: it starts again, and rows are not doubled
    assert result["step"] == 10 and [r["step"] for r in rows(early)[0]] == list(range(1, 11))


def test_stale_temporaries_are_removed_and_a_moved_aside_checkpoint_comes_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    ckpt.write_checkpoint(tmp_path / "step_00000004", {"w": torch.ones(1)}, {"model": {}})
    host = temp_sibling(tmp_path / "x").name.split(".")[-3]
    os.replace(tmp_path / "step_00000004", tmp_path / f".step_00000004.{host}.{pid}.old")  # killed mid-replace
    (tmp_path / f".step_00000005.{host}.{pid}.tmp").mkdir()  # killed mid-write
    (tmp_path / f".keys.txt.{host}.{pid}.tmp").write_text("half")
    live = temp_sibling(tmp_path / "mine.txt")  # this process's own: left alone
    live.write_text("in progress")
    (tmp_path / f".other.txt.otherhost.{pid}.tmp").write_text("another node's")
    done = clean_stale_temps(tmp_path)
    assert len(done) == 3 and ckpt.is_checkpoint(tmp_path / "step_00000004")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, f".other.txt.otherhost.{pid}.tmp",
                                                                 "step_00000004"])
    assert pickle.dumps(done)  # plain strings, for the log
