"""`evilm predict` as a user runs it, on the tiny synthetic fixture with tiny random-weight
checkpoints of every kind: the same answers as `evaluate --predictions` on the same clips, a
folder of videos with a corrupt file and a non-UTF-8 name, resuming --out, zero-shot labels,
and bad input. Most commands run in-process through the Typer app (tests/helpers/cli.py,
in_process); the folder test and the exit code run the real console script. The SIGKILL test is
in tests/faults/test_sigkill.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evilm_core.data.records.manifest import read_manifest
from evilm_core.errors import EvilmError
from tests.cli.test_finetune_cli import data_sets, recipe
from tests.helpers.cli import in_process, run_evilm
from tests.helpers.predict import read_lines, recomputed_metrics, write_checkpoints


@pytest.fixture(scope="module")
def models(synth_dir, tmp_path_factory) -> dict[str, Path]:
    return write_checkpoints(tmp_path_factory.mktemp("predict_models"), synth_dir)


@pytest.fixture(scope="module")
def evilm():
    with in_process() as run:
        yield run


def ok(result) -> str:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def captions_file(synth: Path, tmp: Path) -> Path:
    path = tmp / "captions.txt"
    path.write_text("".join(r.caption + "\n" for r in read_manifest(synth / "test.jsonl")))
    return path


@pytest.mark.parametrize("task", ["qa", "mc", "probe", "retrieval"])
def test_predict_gives_the_answers_of_evaluate_predictions(task, evilm, models, synth_dir, tmp_path):
    """Over the test manifest, each line of `predict` is the line `evaluate --predictions` wrote for
    the same clip, less the gold answer (retrieval: video-to-text over the test captions)."""
    manifest = synth_dir / ("mc_test.jsonl" if task == "mc" else "test.jsonl")
    ev = ok(evilm("evaluate", recipe(task), "--checkpoint", models[task], *data_sets(task, synth_dir), "--json",
                  "--predictions", tmp_path / "ev.jsonl", "-k", "3"))
    gold = read_lines(tmp_path / "ev.jsonl")
    assert recomputed_metrics(task, gold) == pytest.approx({k: json.loads(ev)["metrics"][k]
                                                            for k in recomputed_metrics(task, gold)})
    extra = ["--texts", captions_file(synth_dir, tmp_path)] if task == "retrieval" else []
    rows = json_lines(ok(evilm("predict", "--checkpoint", models[task], "--manifest", manifest, "--json", "-k", "3",
                               "--precision", "fp32", "--workers", "0", "--batch-size", "4", *extra)))
    if task == "retrieval":
        gold = [r for r in gold if r["direction"] == "v2t"]
        assert [r["key"] for r in rows] == [r["key"] for r in gold]
        for mine, theirs in zip(rows, gold):  # texts embedded in other batches: scores equal to rounding
            assert [t["text"] for t in mine["texts"]] == [t["text"] for t in theirs["texts"]]
            assert [t["score"] for t in mine["texts"]] == pytest.approx([t["score"] for t in theirs["texts"]],
                                                                        abs=2e-6)
        return
    assert rows == [{k: v for k, v in r.items() if k not in ("gold", "correct")} for r in gold]
    assert len(rows) == 8 and all(r["key"].startswith("videos/") for r in rows)


def test_a_folder_of_videos_with_a_corrupt_file_and_a_non_utf8_name(models, synth_dir, tmp_path):
    """--videos DIR and one --question, the real console script, CPU workers that decode and
    compute: every readable clip answered in order, the corrupt one a line with its error."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("00000.mp4", "00001.mp4", "00002.mp4"):
        shutil.copy(synth_dir / "videos" / name, folder / name)
    (folder / "broken.mp4").write_bytes((synth_dir / "videos" / "00003.mp4").read_bytes()[:2000])
    shutil.copy(synth_dir / "videos" / "00004.mp4", bytes(folder) + b"/caf\xe9.mp4")  # not UTF-8
    proc = run_evilm("predict", "--checkpoint", models["qa"], "--videos", folder, "--question",
                     "how many shapes are there?", "-k", "2", "--workers", "2", "--batch-size", "2",
                     env={"OMP_NUM_THREADS": "1"})
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [line[0] for line in lines] == ["00000.mp4"] * 2 + ["00001.mp4"] * 2 + ["00002.mp4"] * 2 + \
        ["broken.mp4"] + ["caf\\xe9.mp4"] * 2  # sorted keys, 2 answers each, escaped as keys.txt stores them
    assert lines[6][1:4] == ["", "error", "corrupt"]
    answers = set((models["qa"] / "answers.txt").read_text().split("\n")[:-1])
    for line in lines[:6] + lines[7:]:
        assert line[1] == "how many shapes are there?" and line[2] in ("1", "2") and line[3] in answers
        assert 0.0 <= float(line[4]) <= 1.0
    summary = " ".join(proc.stderr.split())
    assert "4 clips answered, 1 skipped (unreadable)" in summary and "clips/s" in summary


def test_out_resumes_after_a_torn_tail(evilm, models, synth_dir, tmp_path):
    """--out: a re-run keeps the complete clips, cuts what an interruption left and ends with the
    file of an uninterrupted run; a finished file makes the re-run a no-op."""
    out = tmp_path / "answers.jsonl"
    args = ["predict", "--checkpoint", models["qa"], "--manifest", synth_dir / "test.jsonl", "--out", out,
            "--workers", "0", "--batch-size", "3"]
    assert ok(evilm(*args)) == ""  # lines go to the file
    whole = out.read_bytes()
    assert len(whole.splitlines()) == 8 and json.loads(whole.splitlines()[0])["question"]
    cut = whole.index(b"\n", len(whole) // 2) + 20  # mid-line, in the second batch
    out.write_bytes(whole[:cut])
    ok(evilm(*args))
    assert out.read_bytes() == whole
    ok(evilm(*args))
    assert out.read_bytes() == whole


def test_zero_shot_labels_rank_the_templated_texts(evilm, models, synth_dir, tmp_path):
    """--labels with --template ranks exactly what --texts of the templated labels ranks."""
    labels = ["moves left", "moves right", "grows", "shrinks"]
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a red star {label}\n" for label in labels))
    common = ["predict", "--checkpoint", models["pretrained"], "--manifest", synth_dir / "test.jsonl", "--json",
              "--workers", "0", "-k", "4"]
    by_label = json_lines(ok(evilm(*common, "--labels", "|".join(labels), "--template", "a red star {}")))
    by_text = json_lines(ok(evilm(*common, "--texts", texts)))
    assert len(by_label) == 8
    for mine, theirs in zip(by_label, by_text):
        assert [e["label"] for e in mine["labels"]] == [t["text"].removeprefix("a red star ") for t in theirs["texts"]]
        assert [e["score"] for e in mine["labels"]] == [t["score"] for t in theirs["texts"]]
        assert [e["score"] for e in mine["labels"]] == sorted((e["score"] for e in mine["labels"]), reverse=True)


def test_options_on_a_pretrained_checkpoint_answer_zero_shot(evilm, models, synth_dir):
    rows = json_lines(ok(evilm("predict", "--checkpoint", models["pretrained"], synth_dir / "videos" / "00000.mp4",
                               "--options", "a red star grows|a blue circle shrinks", "--json", "--workers", "0")))
    assert len(rows) == 1 and rows[0]["options"] == ["a red star grows", "a blue circle shrinks"]
    assert rows[0]["answer"] == rows[0]["options"][rows[0]["chosen"]] and len(rows[0]["scores"]) == 2


@pytest.mark.parametrize("kind, args, expected", [
    ("retrieval", ["--question", "what moves?"], ["--question does not apply", "a retrieval checkpoint",
                                                  "--texts FILE"]),
    ("qa", ["--question", "what moves?", "--options", "a|b"], ["--options does not apply", "a qa checkpoint (",
                                                               "--question TEXT"]),
    ("pretrained", ["--labels", ""], ["--labels is empty", "a pre-trained checkpoint", "--options 'a|b|c'"]),
    ("probe", ["--labels", "a|b"], ["--labels does not apply", "a linear-probe checkpoint (6 labels)",
                                    "the videos alone"]),
])
def test_bad_input_names_the_checkpoints_task_and_what_it_takes(kind, args, expected, evilm, models, synth_dir):
    result = evilm("predict", "--checkpoint", models[kind], synth_dir / "videos" / "00000.mp4", *args)
    assert isinstance(result.exception, EvilmError), result.output
    message = str(result.exception)
    assert all(part in message for part in expected), message
    assert str(models[kind]) in message and "\n" not in message


def test_a_missing_video_exits_2_with_one_paragraph(models, tmp_path):
    proc = run_evilm("predict", "--checkpoint", models["qa"], tmp_path / "nothere.mp4", "--question", "what?",
                     check=False, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert f"video {tmp_path / 'nothere.mp4'} does not exist" in message and "a qa checkpoint (" in message
