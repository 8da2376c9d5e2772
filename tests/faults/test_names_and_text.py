"""File names and text as they come (docs/reliability.md, "Names and text"): video files whose
names hold a tab, a line break, non-UTF-8 bytes or 200 characters go through `label` and
`retrieve index` as one escaped line each; `retrieve query` reports a stdin line that is not
UTF-8 and answers the rest; a recipe that is not UTF-8 or is empty is a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evilm_core.fs import escape_key
from tests.helpers.cli import REPO, run_evilm
from tests.helpers.label import make_tokenizer
from tests.retrieval.test_retrieve_cli import write_model

NAMES = [b"plain.mp4", b"tab\there.mp4", b"line\nbreak.mp4", b"latin1-\xe9t\xe9.mp4", b"x" * 196 + b".mp4"]


@pytest.fixture(scope="module")
def odd_videos(synth_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("odd") / "videos"
    d.mkdir()
    for i, name in enumerate(NAMES):
        shutil.copy(synth_dir / "videos" / f"{i:05d}.mp4", os.path.join(os.fsencode(d), name))
    return d


def test_label_and_index_store_odd_names_as_one_line_each(odd_videos, synth_dir, tmp_path):
    tok = make_tokenizer(tmp_path / "tok", codebook_size=16)
    run_evilm("label", "--videos", odd_videos, "--tokenizer", tok, "--out", tmp_path / "labels", "--workers", "0")
    want = sorted(escape_key(os.fsdecode(n)) for n in NAMES)
    keys = (tmp_path / "labels" / "keys.txt").read_bytes().decode("utf-8").splitlines()
    assert sorted(keys) == want
    model = write_model(tmp_path / "model", synth_dir, seed=0)
    index = tmp_path / "index"
    run_evilm("retrieve", "index", "--checkpoint", model, "--videos", odd_videos, "--out", index, "--workers", "0")
    assert sorted((index / "keys.txt").read_bytes().decode("utf-8").splitlines()) == want
    proc = subprocess.run([str(Path(sys.executable).with_name("evilm")), "retrieve", "query", "--index", str(index),
                           "-k", "5", "--json"], input=b"a red circle\n\xff\xfe broken line\n\nblue\tsquare\n",
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    rows = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert [r["query"] for r in rows[::5]] == ["a red circle", "blue\tsquare"]  # the bad line is skipped, not fatal
    assert sorted(r["key"] for r in rows[:5]) == want
    assert b"stdin line 2 is not UTF-8" in proc.stderr
    tsv = run_evilm("retrieve", "query", "--index", index, "-k", "5", "blue\tsquare").stdout.splitlines()
    assert all(len(line.split("\t")) == 4 for line in tsv) and tsv[0].startswith("blue\\tsquare\t1\t")


def test_a_recipe_that_is_not_utf8_or_is_empty_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes((REPO / "recipes/synthetic/pretrain.yaml").read_bytes() + b"# caf\xe9\n")
    proc = run_evilm("validate", bad, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.yaml: the recipe is not UTF-8 text" in " ".join(proc.stderr.split())
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    proc = run_evilm("validate", empty, check=False)
    assert proc.returncode == 2 and "the recipe is empty" in proc.stderr
