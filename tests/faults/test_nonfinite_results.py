"""No short diverged run passes as a model, and no NaN passes as a result (docs/reliability.md,
"Non-finite numbers"), as a user meets them:

- `finetune` with optim.lr=1e6 for one epoch and no validation set skips 3 of 4 updates, fewer
  than train.max_nonfinite in a row: it exits 2 naming the run and what to do, and writes no
  final/; the suggested `--resume --replan --set data.val=...` lets a validation decide;
- `retrieve index` with weights that embed clips as NaN refuses, naming the checkpoint, and
  leaves no index; `retrieve query` on an index holding NaN embeddings refuses, naming it;
- every JSON line `retrieve query --json` prints is valid JSON (no NaN token), a 1 MB query is
  not echoed on each of its k lines, and a NUL byte never reaches the TSV raw;
- `label` with a tokenizer that `tokenize-train` published at lr=10 (6% of its codes in use)
  says so in a warning and in its JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_finetune_cli import TINY_MODEL, recipe, sets
from tests.cli.test_tokenize_cli import tiny as tiny_tokenizer
from tests.faults.commands import run
from tests.helpers.cli import REPO


def strict_json(line: str):
    """json.loads that refuses NaN / Infinity tokens (not JSON, though Python writes them)."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture
def evilm(evilm_server, tmp_path):
    return lambda *args: run(evilm_server, *args, cwd=tmp_path)


def test_a_short_diverged_run_without_validation_publishes_no_model(synth_dir, tmp_path, evilm):
    args = ["finetune", recipe("retrieval"), *sets({
        **TINY_MODEL, "init.checkpoint": "null", "data.train": synth_dir / "train.jsonl", "data.val": "null",
        "data.test": "null", "data.image_size": 64, "data.batch_size": 8, "data.num_workers": 0,
        "optim.lr": "1e6", "train.epochs": 1, "train.log_every": 1, "output.dir": tmp_path / "run"})]
    proc = evilm(*args)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"run {tmp_path / 'run'}: 3 of 4 optimizer steps were skipped" in err and "final/ was not written" in err
    assert "--resume --replan --set data.val=FILE" in err
    assert not (tmp_path / "run" / "final").exists() and (tmp_path / "run" / "step_00000004").is_dir()
    again = evilm(*args, "--set", f"data.val={synth_dir / 'val.jsonl'}", "--resume", "--replan")
    assert again.returncode in (0, 2) and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert (tmp_path / "run" / "final").exists() == (again.returncode == 0)
    if again.returncode == 2:  # these weights embed as NaN: the validation refuses them too
        assert "NaN or infinite" in again.stderr


@pytest.fixture(scope="module")
def nan_model(commands, tmp_path_factory) -> Path:
    """The fault suite's tiny retrieval model with its video projection scaled by 1e30: finite weights
    (they load) whose video embeddings overflow to NaN."""
    from safetensors.torch import load_file, save_file

    source = Path(commands["retrieve index"].args(Path("."))[3])
    model = tmp_path_factory.mktemp("nan_model") / "model"
    shutil.copytree(source, model)
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v * 1e30 if k.startswith("video.proj") else v for k, v in weights.items()},
              str(model / "model.safetensors"))
    return model


def test_nan_embeddings_are_never_written_or_searched(nan_model, baseline, synth_dir, tmp_path, evilm):
    proc = evilm("retrieve", "index", "--checkpoint", nan_model, "--manifest", synth_dir / "test.jsonl", "--out",
                 tmp_path / "index", "--workers", "0")
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"the model {nan_model} embeds" in err and "as NaN or infinity" in err
    assert not (tmp_path / "index").exists()
    windows = evilm("retrieve", "index", "--checkpoint", nan_model, "--manifest", synth_dir / "test.jsonl", "--out",
                    tmp_path / "windows", "--workers", "0", "--window", "2")  # a window index: its own writer
    assert windows.returncode == 2 and "as NaN or infinity" in " ".join(windows.stderr.split()), windows.stderr[-3000:]
    assert not list((tmp_path / "windows").glob("parts/*.safetensors"))
    # an index that holds NaN rows anyway (written before this check, or damaged): queries refuse it
    from safetensors.numpy import load_file, save_file

    index = tmp_path / "old"
    shutil.copytree(baseline("retrieve index")[0], index)
    rows = load_file(str(index / "embeddings.safetensors"))["embeddings"]
    rows[1] = np.nan
    save_file({"embeddings": rows}, str(index / "embeddings.safetensors"))
    query = evilm("retrieve", "query", "--index", index, "--json", "a red circle")
    assert query.returncode == 2 and f"index {index} holds NaN or infinite embeddings" in " ".join(
        query.stderr.split()) and "NaN" not in query.stdout, query.stderr[-3000:]


def test_query_output_is_valid_json_bounded_and_escaped(baseline, tmp_path, evilm):
    index = baseline("retrieve index")[0]
    long_query = "a red circle " * 80_000  # ~1 MB
    proc = evilm("retrieve", "query", "--index", index, "-k", "3", "--json", long_query, "a blue\x00square")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [strict_json(line) for line in lines]
    assert len(rows) == 6 and max(len(line) for line in lines) < 1000 and len(proc.stderr) < 5000
    assert rows[0]["query"].endswith(f"... ({len(long_query.strip())} characters)")
    assert rows[3]["query"] == "a blue\x00square"  # JSON escapes it
    tsv = evilm("retrieve", "query", "--index", index, "-k", "2", "a blue\x00square")
    assert tsv.returncode == 0 and "\x00" not in tsv.stdout, tsv.stderr
    assert all(line.split("\t")[0] == "a blue\\u0000square" for line in tsv.stdout.splitlines())


def test_label_warns_about_a_tokenizer_that_uses_few_codes(synth_dir, tmp_path, evilm):
    train = evilm("tokenize-train", REPO / "recipes/synthetic/tokenizer.yaml",
                  *tiny_tokenizer(synth_dir, tmp_path / "tok", epochs=3), "--set", "optim.lr=10", "--json")
    assert train.returncode == 0, train.stderr[-3000:]
    usage = strict_json(train.stdout.splitlines()[-1])["metrics"]["codebook_usage"]
    label = evilm("label", "--manifest", synth_dir / "train.jsonl", "--tokenizer", tmp_path / "tok", "--out",
                  tmp_path / "labels", "--workers", "0", "--json")
    assert label.returncode == 0, label.stderr[-3000:]
    summary = strict_json(label.stdout.splitlines()[-1])
    assert summary["codebook_usage"] < 0.1 and summary["low_codebook_usage"] is True, (usage, summary)
    assert "below --min-codebook-usage 10%" in " ".join(label.stderr.split())
    quiet = evilm("label", "--manifest", synth_dir / "train.jsonl", "--tokenizer", tmp_path / "tok", "--out",
                  tmp_path / "labels2", "--workers", "0", "--min-codebook-usage", "0", "--json")
    assert "min-codebook-usage" not in quiet.stderr and strict_json(quiet.stdout.splitlines()[-1])[
        "low_codebook_usage"] is False
