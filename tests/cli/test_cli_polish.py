"""What a new user meets first (issue 18, item 7): help text, --debug anywhere, --set errors that
name the override, results on stdout, rounded JSON."""

from __future__ import annotations

import pytest

from evilm_cli.common import round_floats
from evilm_cli.help_style import classic_type
from evilm_core.config.loader import closest_keys
from tests.helpers.cli import REPO, run_evilm

RECIPE = "recipes/synthetic/pretrain.yaml"


def test_help_has_classic_types_and_no_braces():
    text = run_evilm("pretrain", "--help", cwd=REPO, env={"COLUMNS": "120"}).stdout
    assert "Usage: evilm pretrain [OPTIONS] RECIPE" in text
    assert "<bool>" not in text and "{recipe}" not in text and "<list[str]>" not in text
    assert "--set TEXT" in text and "--threads INTEGER" in text
    assert "[default: the recipe's train.threads]" in " ".join(text.split())  # brackets print as written (no rich markup)


@pytest.mark.parametrize("label, classic", [("<bool>", None), ("<int range>", "INTEGER"), ("<list[str]>", "TEXT"),
                                            ("<path>", "PATH"), ("<fp32|bf16>", "[fp32|bf16]"), (None, None)])
def test_classic_type_names(label, classic):
    assert classic_type(label) == classic


def test_debug_after_the_subcommand_shows_the_traceback():
    plain = run_evilm("validate", RECIPE, "--set", "optim.lr=abc", cwd=REPO, check=False)
    debug = run_evilm("validate", RECIPE, "--set", "optim.lr=abc", "--debug", cwd=REPO, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "RecipeError" in debug.stderr


def test_set_errors_name_the_override_and_suggest_the_key():
    proc = run_evilm("validate", RECIPE, "--set", "optim.learning_rate=1e-3", cwd=REPO, check=False)
    assert proc.returncode == 2
    assert "--set optim.learning_rate=1e-3: unknown recipe key 'learning_rate'" in proc.stderr
    assert "Did you mean 'lr'?" in proc.stderr and RECIPE not in proc.stderr
    typed = run_evilm("validate", RECIPE, "--set", "optim.lr=-1", cwd=REPO, check=False)
    assert "--set optim.lr=-1:" in typed.stderr and "must be > 0" in typed.stderr


def test_closest_keys_prefers_an_alias():
    assert closest_keys("learning_rate", ["lr", "weight_decay"]) == ["lr"]
    assert closest_keys("batchsize", ["batch_size", "num_workers"]) == ["batch_size"]
    assert closest_keys("learning_rate", ["betas"]) == []  # an alias only where its target exists


def test_results_go_to_stdout_and_json_keeps_stdout_clean():
    proc = run_evilm("validate", RECIPE, cwd=REPO)
    assert "valid 'pretrain' recipe" in proc.stdout and "valid" not in proc.stderr
    as_json = run_evilm("validate", RECIPE, "--json", cwd=REPO)
    assert as_json.stdout.strip().startswith("{") and len(as_json.stdout.strip().splitlines()) == 1


def test_round_floats_removes_float32_noise():
    assert round_floats({"a": 7.118750095367432, "b": [0.30000000000000004, 2], "c": "x"}) == \
        {"a": 7.11875, "b": [0.3, 2], "c": "x"}
    assert round_floats({"nan": float("nan"), "inf": [float("-inf")]}) == {"nan": None, "inf": [None]}  # JSON null


def test_decoder_log_lines_only_with_debug(tmp_path):
    pytest.importorskip("decord")
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 200)
    (tmp_path / "m.jsonl").write_text('{"video": "junk.mp4", "caption": "a"}\n')
    args = ("data", "check", tmp_path / "m.jsonl", "--root", tmp_path, "--decoder", "decord")
    quiet = run_evilm(*args, cwd=REPO)
    loud = run_evilm(*args, "--debug", cwd=REPO)
    assert "1 corrupt" in quiet.stdout and "1 corrupt" in loud.stdout
    assert "moov atom" not in quiet.stderr and "ERROR opening" not in quiet.stderr
    assert "moov atom" in loud.stderr  # FFmpeg's own words, for whoever debugs the file

