"""`evilm label` on the command line: --json summary, shards + --merge, argument errors."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from evilm_cli.main import app
from evilm_core.errors import EvilmError
from tests.helpers.label import assets, read_bytes

SUMMARY_KEYS = {"videos", "labelled", "skipped", "codebook_usage", "seconds", "out", "newly_labelled"}


@pytest.fixture(scope="module")
def a(tmp_path_factory):
    return assets(tmp_path_factory)


def _label(*args: str):
    return CliRunner().invoke(app, ["label", *args])


def _json(result) -> dict:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_json_summary_with_workers(a, tmp_path):
    run_dir = tmp_path / "tokrun"  # a tokenize-train run dir: the checkpoint is in final/
    shutil.copytree(a["tok"], run_dir / "final")
    out = tmp_path / "labels"
    summary = _json(_label("--manifest", str(a["mixed"]), "--tokenizer", str(run_dir), "--out", str(out),
                           "--workers", "2", "--batch-size", "4", "--device", "cpu", "--json"))
    assert SUMMARY_KEYS <= set(summary)
    assert summary["videos"] == 16 and summary["labelled"] == 13 and summary["skipped"] == 3
    assert summary["newly_labelled"] == 13 and summary["out"] == str(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["variants"] == ["orig"] and meta["num_candidates"] == 8 and meta["source"]["manifest"]


def test_shards_and_merge(a, tmp_path):
    out, ref = tmp_path / "sharded", tmp_path / "ref"
    common = ["--manifest", str(a["mixed"]), "--tokenizer", str(a["tok"]), "--workers", "0", "--device", "cpu",
              "--candidates", "4", "--flips"]
    _json(_label(*common, "--out", str(ref), "--json"))
    for i in range(3):
        s = _json(_label(*common, "--out", str(out), "--shard", f"{i}/3", "--json"))
        assert s["shard"] == f"{i}/3"
    merged = _json(_label("--merge", "--out", str(out), "--json"))
    assert SUMMARY_KEYS <= set(merged) and merged["merged_shards"] == 3 and merged["labelled"] == 13
    assert read_bytes(out) == read_bytes(ref)


@pytest.mark.parametrize("args, message", [
    (["--tokenizer", "TOK", "--shard", "2/2"], "--shard must be i/n"),
    (["--tokenizer", "TOK", "--shard", "one"], "--shard must be i/n"),
    (["--merge", "--tokenizer", "TOK"], "--merge only takes --out"),
])
def test_argument_errors(a, tmp_path, args, message):
    args = [str(a["tok"]) if x == "TOK" else x for x in args]
    result = _label("--manifest", str(a["clean"]), "--out", str(tmp_path / "o"), *args)
    assert isinstance(result.exception, EvilmError) and message in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_missing_inputs_and_help(a, tmp_path):
    result = _label("--tokenizer", str(a["tok"]), "--out", str(tmp_path / "o"))
    assert isinstance(result.exception, EvilmError) and "--videos DIR or --manifest FILE" in str(result.exception)
    result = _label("--manifest", str(a["clean"]), "--out", str(tmp_path / "o"))
    assert isinstance(result.exception, EvilmError) and "--tokenizer is required" in str(result.exception)
    result = _label("--merge", "--out", str(tmp_path / "none"))
    assert isinstance(result.exception, EvilmError) and "no shard caches" in str(result.exception)
    result = CliRunner().invoke(app, ["label", "--help"])
    assert result.exit_code == 0 and "Example: evilm label" in result.output
