"""`evilm finetune` and `evilm evaluate` end to end on the tiny synthetic fixture: every task
from scratch and from a tiny pre-trained checkpoint, evaluation of the results (JSON keys),
zero-shot mc and retrieval on the pre-trained checkpoint (paper Table 4), and bad input.

Commands run in-process through the Typer app (one torch import for the module, one intra-op
thread), except the exit-code test, which runs the real console script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evilm_core.errors import EvilmError
from tests.helpers.cli import REPO, in_process, last_json, run_evilm
from tests.helpers.predict import read_lines, recomputed_metrics

TASKS = ("qa", "mc", "retrieval", "probe")
TINY_MODEL = {"model.video_encoder": "edgenext_xx_small", "model.image_size": 64, "model.text_layers": 1,
              "model.fusion_layers": 1, "model.fusion_dim": 96, "model.fusion_heads": 2, "model.codebook_size": 16,
              "model.max_text_len": 24}
EXPECTED = {
    "qa": {"accuracy", "majority_baseline", "oov_answers", "num_examples", "skipped"},
    "mc": {"accuracy", "chance", "num_examples", "skipped"},
    "retrieval": {f"{d}_{m}" for d in ("t2v", "v2t") for m in ("R@1", "R@5", "R@10", "MdR", "MnR")}
    | {"num_examples", "num_videos", "skipped"},
    "probe": {"accuracy", "chance", "oov_labels", "num_examples", "skipped"},
}


def recipe(task: str) -> str:
    return str(REPO / "recipes/synthetic" / f"{task}.yaml")


def sets(values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


def data_sets(task: str, synth: Path, **extra) -> list[str]:
    prefix = "mc_" if task == "mc" else ""
    return sets({f"data.{s}": synth / f"{prefix}{s}.jsonl" for s in ("train", "val", "test")}
                | {"data.image_size": 64, "data.batch_size": 4, "data.num_workers": 0, **extra})


@pytest.fixture(scope="module")
def evilm():
    """Run a command in-process; returns its --json object (the command must succeed)."""
    with in_process() as invoke:

        def run(*args, ok: bool = True):
            result = invoke(*args)
            if not ok:
                return result
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            assert result.exit_code == 0, result.output
            return last_json(result.stdout)

        yield run


@pytest.fixture(scope="module")
def pretrained(evilm, synth_dir, tmp_path_factory) -> Path:
    """A tiny pre-trained run (MLM + VTM; MVM off, so no tokenizer or label cache is needed)."""
    out = tmp_path_factory.mktemp("ft_cli") / "pretrain"
    evilm("pretrain", REPO / "recipes/synthetic/pretrain.yaml", *sets({
        **TINY_MODEL, "data.train": synth_dir / "train.jsonl", "data.val": "null", "data.image_size": 64,
        "data.batch_size": 4, "data.num_workers": 0, "loss.mvm": 0, "mvm.tokenizer": "null", "mvm.labels": "null",
        "train.max_steps": 2, "output.dir": out}), "--json")
    return out


@pytest.mark.parametrize("task", TASKS)
def test_finetune_from_pretrained_then_evaluate(task, evilm, pretrained, synth_dir, tmp_path):
    out = tmp_path / task
    result = evilm("finetune", recipe(task), *data_sets(task, synth_dir), *sets({
        **TINY_MODEL, "init.checkpoint": pretrained, "train.max_steps": 2, "probe.epochs": 10, "output.dir": out}),
        "--json")
    assert result["task"] == task and result["checkpoint"] == str(out / "final")
    assert result["step"] == (10 if task == "probe" else 2)  # probe: 28 cached features, one batch an epoch
    assert set(result["metrics"]) == {f"val_{k}" for k in EXPECTED[task]}
    final = out / "final"
    for name in ("model.safetensors", "config.json", "vocab.txt", "README.md"):  # the Hub layout (docs/hub.md)
        assert (final / name).is_file(), name
    config = json.loads((final / "config.json").read_text())
    assert config["format"] == "evilm-finetune/1" and config["task"] == task
    assert config["model"]["fusion_dim"] == 96  # the pre-trained checkpoint's model
    assert (final / "vocab.txt").read_text() == (pretrained / "final" / "vocab.txt").read_text()
    if task == "qa":
        answers = (final / "answers.txt").read_text().split()
        assert answers and len(answers) == len(set(answers))
    if task == "probe":
        assert (out / "features" / "train.safetensors").is_file() and (final / "labels.txt").is_file()

    evaluation = evilm("evaluate", recipe(task), "--checkpoint", out, *data_sets(task, synth_dir), "--json",
                       "--predictions", tmp_path / "predictions.jsonl")
    assert set(evaluation) == {"task", "metrics", "precision", "environment", "predictions"}
    assert evaluation["task"] == task
    rows = read_lines(tmp_path / "predictions.jsonl")  # one per item, and the metrics follow from them
    assert recomputed_metrics(task, rows) == pytest.approx({k: evaluation["metrics"][k]
                                                            for k in recomputed_metrics(task, rows)})
    assert all(r["key"].startswith("videos/") for r in rows)
    assert evaluation["environment"]["torch_threads"] == 1 and evaluation["environment"]["versions"]["torch"]
    assert set(evaluation["metrics"]) == EXPECTED[task]
    assert evaluation["metrics"]["num_examples"] == 8 and evaluation["metrics"]["skipped"] == 0
    if task == "qa":
        assert 0 <= evaluation["metrics"]["oov_answers"] <= 8


@pytest.mark.parametrize("task", TASKS)
def test_finetune_from_scratch(task, evilm, synth_dir, tmp_path):
    out = tmp_path / task
    result = evilm("finetune", recipe(task), *data_sets(task, synth_dir, **{"data.val": "null"}), *sets({
        **TINY_MODEL, "init.checkpoint": "null", "train.max_steps": 1, "probe.epochs": 2, "output.dir": out}),
        "--json")
    assert result["task"] == task and result["metrics"] == {}
    vocab = (out / "final" / "vocab.txt").read_text().split("\n")
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "shrinks" in vocab  # from the text


@pytest.mark.parametrize("task", ["mc", "retrieval"])
def test_zero_shot_evaluation_of_a_pretrained_checkpoint(task, evilm, pretrained, synth_dir):
    evaluation = evilm("evaluate", recipe(task), "--checkpoint", pretrained, "--split", "val",
                       *data_sets(task, synth_dir), "--json")
    assert evaluation["task"] == task and set(evaluation["metrics"]) == EXPECTED[task]
    assert evaluation["metrics"]["num_examples"] == 4
    if task == "mc":
        assert evaluation["metrics"]["chance"] == 20.0


def test_qa_needs_a_finetuned_checkpoint(evilm, pretrained, synth_dir):
    result = evilm("evaluate", recipe("qa"), "--checkpoint", pretrained, *data_sets("qa", synth_dir), ok=False)
    assert isinstance(result.exception, EvilmError)
    assert "no qa head" in str(result.exception) and str(pretrained) in str(result.exception)


def test_evaluate_with_a_directory_that_is_not_a_checkpoint_exits_2(synth_dir, tmp_path):
    proc = run_evilm("evaluate", recipe("mc"), "--checkpoint", str(synth_dir), *data_sets("mc", synth_dir), "--json",
                     check=False, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{synth_dir} is not a checkpoint" in " ".join(proc.stderr.split())
