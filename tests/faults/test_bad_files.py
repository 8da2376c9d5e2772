"""Damaged and hostile files are user errors, never tracebacks and never code execution
(docs/reliability.md): each command exits 2 with one message naming the damaged file.

- a malicious `trainer_state.pt` (a pickle whose `__reduce__` would create a marker file) in a
  step checkpoint of a real tiny run, then `--resume`: refused, the marker never appears, and the
  message does not suggest `weights_only=False`;
- truncated and garbage `model.safetensors` (for `evaluate` and `--resume`), a truncated
  `trainer_state.pt`, a garbage `config.json` (or, older layout, a garbage or python-tagged
  `config.yaml`) of a checkpoint, a truncated or
  garbage `embeddings.safetensors` of an index for `retrieve query`;
- a recipe with a `!!python/object/apply:os.system` tag for `validate` and `pretrain`;
- a malformed manifest in every format the readers know (evilm_core/data/records/formats.py), a file
  that is not UTF-8 and a binary file, through `data check`, and a malformed JSONL through
  `label` and `pretrain`: the file named, with the line where the format has lines (JSON
  documents: the line of a syntax error, else the item).

The damaged runs and index are copies of the baselines of conftest.py. The malicious trainer
states and `data check` go through the console script itself (tests.helpers.cli.run_evilm); the
other model commands through the fork server of conftest.py (forkserver.py: the same exit codes
and stderr, without ~4 s of imports per command).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli.test_finetune_cli import data_sets, recipe, sets
from tests.faults.commands import run
from tests.helpers.cli import REPO, run_evilm


def user_error(proc, *names) -> None:
    """Exit 2, every one of `names` in stderr, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for name in names:
        assert str(name) in proc.stderr, f"{name} not named in stderr:\n{proc.stderr[-3000:]}"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(random.Random(path.name).randbytes(max(256, path.stat().st_size)))


def python_tag(path: Path, marker: Path) -> None:
    path.write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')


class Payload:
    """Unpickling it runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def run_copy(baseline, tmp_path):
    """A copy of the tokenize-train baseline's run directory (the quickest trainer to start) and
    its one step checkpoint."""
    ref, _ = baseline("tokenize-train")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    [step] = sorted(run.glob("step_*"))
    return run, step


@pytest.fixture
def evilm(evilm_server, tmp_path):
    """evilm(*args): the command's CompletedProcess, through the fork server."""
    return lambda *args: run(evilm_server, *args, cwd=tmp_path)


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_malicious_trainer_state_is_refused_and_never_runs(kind, commands, run_copy, tmp_path):
    run_dir, step = run_copy
    marker = tmp_path / "MARKER"
    state = torch.load(step / "trainer_state.pt", weights_only=True)
    state["evil"] = Payload(marker)
    if kind == "torch.save":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (step / "trainer_state.pt").write_bytes(buffer.getvalue())
    else:  # a bare pickle, not torch's zip container
        (step / "trainer_state.pt").write_bytes(pickle.dumps(state))
    proc = run_evilm(*commands["tokenize-train"].args(run_dir), "--resume", check=False)  # the console script
    assert not marker.exists(), "unpickling the trainer state ran code"
    user_error(proc, step / "trainer_state.pt")
    assert "weights_only=False" not in proc.stderr


@pytest.mark.parametrize("name,damage", [
    pytest.param("model.safetensors", truncate, id="weights-truncated"),
    pytest.param("model.safetensors", garbage, id="weights-garbage"),
    pytest.param("trainer_state.pt", truncate, id="state-truncated")])
def test_damaged_step_checkpoint_on_resume(name, damage, commands, run_copy, evilm):
    run_dir, step = run_copy
    damage(step / name)
    user_error(evilm(*commands["tokenize-train"].args(run_dir), "--resume"), step / name)


@pytest.mark.parametrize("name,damage", [
    pytest.param("model.safetensors", truncate, id="weights-truncated"),
    pytest.param("model.safetensors", garbage, id="weights-garbage"),
    pytest.param("config.json", garbage, id="config-json-garbage"),
    pytest.param("config.yaml", garbage, id="config-garbage"),
    pytest.param("config.yaml", python_tag, id="config-python-tag")])
def test_damaged_checkpoint_for_evaluate(name, damage, baseline, synth_dir, tmp_path, evilm):
    final = tmp_path / "final"
    shutil.copytree(baseline("finetune")[0] / "final", final)
    if name == "config.yaml":  # an export written before the Hub layout (config.yaml, no config.json)
        config = json.loads((final / "config.json").read_text())
        (final / "config.yaml").write_text(yaml.safe_dump(config))
        (final / "config.json").unlink()
    marker = tmp_path / "MARKER"
    if damage is python_tag:
        python_tag(final / name, marker)
    else:
        damage(final / name)
    proc = evilm("evaluate", recipe("retrieval"), "--checkpoint", final, *data_sets("retrieval", synth_dir))
    assert not marker.exists(), "loading config.yaml ran code"
    user_error(proc, final / name)


@pytest.mark.parametrize("damage", [truncate, garbage], ids=["truncated", "garbage"])
def test_damaged_index_embeddings_for_query(damage, baseline, tmp_path, evilm):
    index = tmp_path / "index"
    shutil.copytree(baseline("retrieve index")[0], index)
    damage(index / "embeddings.safetensors")
    proc = evilm("retrieve", "query", "--index", index, "a red circle")
    user_error(proc, index / "embeddings.safetensors")


@pytest.mark.parametrize("command", ["validate", "pretrain"])
def test_recipe_with_a_python_tag_never_runs(command, tmp_path, evilm):
    marker = tmp_path / "MARKER"
    bad = tmp_path / "recipe.yaml"
    text = (REPO / "recipes/synthetic/pretrain.yaml").read_text()
    bad.write_text(text.replace("seed: 0", f'seed: !!python/object/apply:os.system ["touch {marker}"]'))
    assert bad.read_text() != text
    proc = evilm(command, bad, *sets({"output.dir": tmp_path / "out"}))
    assert not marker.exists(), "loading the recipe ran code"
    user_error(proc, bad)


# --------------------------------------------------------------------------- manifests

WEBVID = "videoid,contentUrl,duration,page_dir,name\n1,u,PT00H00M10S,000001_000050,a cat\n"
MC_HEAD = "key\tvid_key\tvideo_id\ta1\ta2\ta3\ta4\ta5\tanswer\n"
TGIF_HEAD = "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\n"
QA = '[{"question": "q", "answer": "a", "video_id": 1},\n'
# id: (files {relative path: text or bytes}, the manifest, --format, where the error is: ":<line>",
# " item <i>", "" for the file alone, or another file's "<path>:<line>")
MANIFESTS = {
    "jsonl-syntax": ({"m.jsonl": '{"video": "a.mp4", "caption": "x"}\n\n{"video": "b.mp4", \n'}, "m.jsonl", "auto",
                     ":3"),
    "jsonl-not-an-object": ({"m.jsonl": '{"video": "a.mp4"}\n[1, 2]\n'}, "m.jsonl", "auto", ":2"),
    "jsonl-not-utf8": ({"m.jsonl": b'{"video": "a.mp4"}\n{"video": "\xff\xfe.mp4"}\n'}, "m.jsonl", "jsonl", ":2"),
    "webvid-short-row": ({"results_2M_train.csv": WEBVID + "2,u\n"}, "results_2M_train.csv", "auto", ":3"),
    "webvid-missing-column": ({"results_2M_val.csv": "videoid,contentUrl,duration,name\n1,u,d,a cat\n"},
                              "results_2M_val.csv", "webvid", ""),
    "msrvtt_train-syntax": ({"train_val_videodatainfo.json": '{"videos": [{"video_id": "video0"}],\n "sentences": '
                             '[{"video_id": "video0", "caption": "a"}\n'}, "train_val_videodatainfo.json", "auto",
                            ":3"),
    "msrvtt_test-short-row": ({"MSRVTT_JSFUSION_test.csv": "key,vid_key,video_id,sentence\nret0,msr7020,video7020,"
                               "a man\nret1,msr1\n"}, "MSRVTT_JSFUSION_test.csv", "auto", ":3"),
    "msrvtt_mc-bad-answer": ({"MSR_MC_test.csv": MC_HEAD + "msr0\tmsr7010\tvideo7010\ta\tb\tc\td\te\t7\n"},
                             "MSR_MC_test.csv", "auto", ":2"),
    "msrvtt_qa-syntax": ({"msrvtt/train_qa.json": QA + ' {"question": "q" "answer": "b"}]\n'}, "msrvtt/train_qa.json",
                         "msrvtt_qa", ":2"),
    "msrvtt_qa-missing-key": ({"msrvtt/val_qa.json": QA + ' {"question": "q", "video_id": 2}]\n'},
                              "msrvtt/val_qa.json", "auto", " item 1"),
    "msvd_qa-bad-mapping": ({"msvd/train_qa.json": QA + ' {"question": "q", "answer": "b", "video_id": 2}]\n',
                             "msvd/youtube_mapping.txt": "abc_1_2 vid1\nbroken line here\n"}, "msvd/train_qa.json",
                            "msvd_qa", "msvd/youtube_mapping.txt:2"),
    "tgif_qa-bad-answer": ({"Train_action_question.csv": TGIF_HEAD + "tumblr1\twhat\ta\tb\tc\td\te\tx\t1\t1\n"},
                           "Train_action_question.csv", "auto", ":2"),
    "tgif_qa-missing-column": ({"Train_frameqa_question.csv": "gif_name\tquestion\tvid_id\tkey\nt1\twhat\t1\t1\n"},
                               "Train_frameqa_question.csv", "tgif_qa", ""),
    "didemo-syntax": ({"train_data.json": '[{"video": "v.mp4", "description": "a"},\n {"video": }]\n'},
                      "train_data.json", "didemo", ":2"),
    "didemo-missing-key": ({"val_data.json": '[{"video": "v.mp4", "description": "a"},\n {"video": "w.mp4"}]\n'},
                           "val_data.json", "auto", " item 1"),
    "class_folders-a-file": ({"clips.txt": "a/b.mp4\n"}, "clips.txt", "class_folders", ""),
    "class_folders-empty": ({"hmdb/kiss/notes.txt": "no clips here\n"}, "hmdb", "class_folders", ""),
    "binary-garbage": ({"data.csv": bytes(range(256)) * 4}, "data.csv", "auto", ""),
}


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def expected_place(root: Path, manifest: str, where: str) -> str:
    return str(root / where) if where and not where.startswith((":", " ")) else f"{root / manifest}{where}"


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_malformed_manifest_names_the_file_and_line(case, tmp_path):
    files, manifest, fmt, where = MANIFESTS[case]
    write_files(tmp_path, files)
    proc = run_evilm("data", "check", tmp_path / manifest, "--format", fmt, "--workers", "1", check=False)
    user_error(proc, expected_place(tmp_path, manifest, where))


def test_malformed_manifest_through_label_and_pretrain(tokenizer_dir, tmp_path, evilm):
    files, manifest, _, where = MANIFESTS["jsonl-syntax"]
    write_files(tmp_path, files)
    place = expected_place(tmp_path, manifest, where)
    user_error(evilm("label", "--manifest", tmp_path / manifest, "--tokenizer", tokenizer_dir, "--out",
                     tmp_path / "labels", "--workers", "0"), place)
    user_error(evilm("pretrain", REPO / "recipes/synthetic/pretrain.yaml", *sets({
        "data.train": tmp_path / manifest, "loss.mvm": 0, "mvm.tokenizer": "null", "mvm.labels": "null",
        "output.dir": tmp_path / "run"})), place)
