"""SIGKILL at a random point, then the same command again, ends where an uninterrupted run ends
(docs/reliability.md): for `tokenize-train`, `label`, `pretrain` (from videos and from shards),
`finetune` (retrieval), `data shards`, `retrieve index` (per video and `--window`), `predict --out`
and `quickstart --size quickstart-tiny`.

Each command runs once uninterrupted (the baseline, shared with test_bad_files.py), then again in
a fresh directory, killed with SIGKILL (no handler runs: what a lost node or the OOM killer
does) a seeded random fraction of the baseline's remaining time after it visibly started
working (its first complete checkpoint, its cache, index or output file), then run once more
(with --resume where the command has it; label, retrieve index, predict and quickstart resume by
re-running). The result must equal the baseline's: byte for byte for the label cache, the index,
predict's lines and the final weights (training on one CPU thread is deterministic), and the
same train losses in metrics.jsonl. Should the kill land after the command finished, the re-run
is a no-op (label, index, predict, quickstart: nothing left to do) or the resume of a finished run (training: the last
checkpoint is at the last step, so it only evaluates and exports final/ again) and the same
comparisons hold; `killed` only tells the two apart in the failure messages (`-s` prints it).

Commands run through the fork server (forkserver.py). The default run kills each command once;
EVILM_LONG_FAULTS=1 adds three more kill points per command.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.faults.commands import (
    INDEX_FILES,
    LABEL_FILES,
    PREDICTIONS,
    SHARD_FILES,
    file_bytes,
    run,
    run_killed,
    train_losses,
)
from tests.helpers.cli import last_json

LONG = pytest.mark.skipif(not os.environ.get("EVILM_LONG_FAULTS"), reason="more kill points: EVILM_LONG_FAULTS=1")
ATTEMPTS = [0, *(pytest.param(k, marks=LONG) for k in (1, 2, 3))]
TRAINING = ("tokenize-train", "pretrain", "pretrain shards", "finetune")


@pytest.fixture
def kill_and_rerun(commands, baseline, evilm_server, tmp_path):
    """kill_and_rerun(name, attempt) -> (baseline dir, killed run's dir, the killed Outcome, the re-run)."""

    def go(name: str, attempt: int):
        ref, first = baseline(name)
        command, out = commands[name], tmp_path / "run"
        killed = run_killed(evilm_server, command, out, first.remaining, attempt)
        steps = sorted(p.name for p in out.glob("step_*"))
        parts = len(list(out.glob("parts/*.safetensors")))
        print(f"{name} #{attempt}: worked {first.remaining:.2f} s after starting; killed mid-run: {killed.killed}"
              + (f"; complete checkpoints at the kill: {steps}" if steps else "")
              + (f"; parts at the kill: {parts}" if parts else ""))
        rerun = run(evilm_server, *command.args(out), *(["--resume"] if command.resume else []), cwd=tmp_path)
        assert rerun.returncode == 0, f"the re-run of {name} exited {rerun.returncode}\n{rerun.stderr[-3000:]}"
        return ref, out, killed, rerun

    return go


@pytest.mark.parametrize("attempt", ATTEMPTS)
@pytest.mark.parametrize("name", TRAINING)
def test_training_killed_then_resumed_matches_the_uninterrupted_run(name, attempt, kill_and_rerun):
    ref, out, killed, _ = kill_and_rerun(name, attempt)
    why = f"{name} (killed mid-run: {killed.killed})"
    reference = train_losses(ref)
    assert reference and sorted(reference) == list(range(1, max(reference) + 1))
    assert train_losses(out) == reference, why  # every step once, with the uninterrupted loss
    assert (out / "final" / "model.safetensors").read_bytes() == (ref / "final" / "model.safetensors").read_bytes(), why
    assert sorted(p.name for p in out.glob("step_*")) == sorted(p.name for p in ref.glob("step_*")), why
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], why  # the kill's temporaries are gone


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_label_killed_then_rerun_is_byte_identical(attempt, kill_and_rerun):
    ref, out, killed, rerun = kill_and_rerun("label", attempt)
    assert file_bytes(out, LABEL_FILES) == file_bytes(ref, LABEL_FILES), f"killed mid-run: {killed.killed}"
    if not killed.killed:
        assert re.search(r"\b0 newly labelled", rerun.stdout + rerun.stderr)  # it had finished: a no-op re-run


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_data_shards_killed_then_rerun_is_byte_identical(attempt, kill_and_rerun):
    ref, out, killed, _ = kill_and_rerun("data shards", attempt)
    assert file_bytes(out, SHARD_FILES) == file_bytes(ref, SHARD_FILES), f"killed mid-run: {killed.killed}"
    assert sorted(p.name for p in (out / "parts").iterdir()) == sorted(p.name for p in (ref / "parts").iterdir())
    assert not [p.name for p in out.rglob(".*")], "the kill's temporaries are left"


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_index_killed_then_rerun_is_byte_identical(attempt, kill_and_rerun):
    ref, out, killed, rerun = kill_and_rerun("retrieve index", attempt)
    assert file_bytes(out, INDEX_FILES) == file_bytes(ref, INDEX_FILES), f"killed mid-run: {killed.killed}"
    assert not list(out.glob("parts/*")), "parts left after the index was complete"
    if not killed.killed:
        assert re.search(r"\b0 embedded now", rerun.stdout + rerun.stderr)  # it had finished: a no-op re-run


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_window_index_killed_mid_video_then_rerun_is_byte_identical(attempt, kill_and_rerun):
    """Parts hold whole spans (32 windows), a video has 2-3: the kill lands between the spans of
    one video or inside one, and the re-run embeds the spans no part holds."""
    ref, out, killed, rerun = kill_and_rerun("retrieve index --window", attempt)
    assert file_bytes(out, INDEX_FILES) == file_bytes(ref, INDEX_FILES), f"killed mid-run: {killed.killed}"
    assert not list(out.glob("parts/*")), "parts left after the index was complete"
    if not killed.killed:
        assert re.search(r"\b0 windows embedded now", rerun.stdout + rerun.stderr)


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_predict_killed_then_rerun_ends_with_the_same_lines(attempt, kill_and_rerun):
    ref, out, killed, rerun = kill_and_rerun("predict", attempt)
    lines = (ref / PREDICTIONS).read_text().splitlines()
    assert len(lines) == 28 and all(json.loads(line)["labels"] for line in lines)  # every training clip, in order
    assert (out / PREDICTIONS).read_bytes() == (ref / PREDICTIONS).read_bytes(), f"killed mid-run: {killed.killed}"
    if not killed.killed:
        assert re.search(r"\b0 clips answered", rerun.stderr)  # it had finished: a no-op re-run


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_quickstart_killed_then_rerun_ends_with_the_same_results(attempt, kill_and_rerun, baseline):
    ref, out, killed, rerun = kill_and_rerun("quickstart", attempt)
    why = f"killed mid-run: {killed.killed}; stages done before the kill: " + \
          ", ".join(sorted(p.stem for p in (out / "stages").glob("*.json")))
    want, got = last_json(baseline("quickstart")[1].stdout), last_json(rerun.stdout)
    for key in ("retrieval", "qa", "codebook_usage", "params"):
        assert got[key] == want[key], (key, why)
    assert file_bytes(out / "labels", LABEL_FILES) == file_bytes(ref / "labels", LABEL_FILES), why
    assert file_bytes(out / "index", INDEX_FILES) == file_bytes(ref / "index", INDEX_FILES), why
    for stage in ("tokenizer", "pretrain", "retrieval", "qa"):
        assert train_losses(out / stage) == train_losses(ref / stage), (stage, why)
        assert (out / stage / "final" / "model.safetensors").read_bytes() == \
               (ref / stage / "final" / "model.safetensors").read_bytes(), (stage, why)
