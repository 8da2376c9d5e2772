"""`evilm profile` as a user runs it."""

from __future__ import annotations

from tests.helpers.cli import REPO, last_json, run_evilm


def test_profile_json_keys():
    proc = run_evilm("profile", "recipes/synthetic/pretrain.yaml", "--json", "--frames", "2", cwd=REPO)
    out = last_json(proc.stdout)
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) == 1  # one object, nothing else
    keys = {"total", "video_encoder", "text_encoder", "fusion", "heads", "total_without_heads"}
    assert keys <= set(out["params"]) and keys <= set(out["gflops"])
    assert set(out["params"]["heads"]) == {"mlm", "vtm", "mvm", "retrieval"}
    assert "video_encoder_per_frame" in out["gflops"]
    assert (out["frames"], out["image_size"], out["text_len"]) == (2, 96, 40)
    assert out["counting"] == "fvcore: one multiply-add = one FLOP"
    assert out["paper"]["gflops_total"] == 12.2
    assert isinstance(out["uncounted_ops"], dict)
    assert out["vocab_size"] == 9420


def test_profile_table_on_stdout():
    """The table is the command's result: `evilm profile r.yaml > profile.txt` keeps it (issue 18)."""
    proc = run_evilm("profile", "recipes/synthetic/pretrain.yaml", "--frames", "1", "--text-len", "8",
                     "--vocab-size", "100", cwd=REPO)
    for text in ("video encoder", "fusion decoder", "total without heads", "head: mvm", "one multiply-add",
                 "5.59M", "vocab_size 100"):
        assert text in proc.stdout and text not in proc.stderr


def test_profile_wrong_kind_exits_2():
    proc = run_evilm("profile", "recipes/synthetic/tokenizer.yaml", "--json", cwd=REPO, check=False)
    assert proc.returncode == 2
    assert "E-ViLM model" in proc.stderr and "tokenizer" in proc.stderr
    assert "Traceback" not in proc.stderr
