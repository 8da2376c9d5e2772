"""`evilm plot`'s core (engine/plot.py): which logged term lands in which panel, non-finite values
as counted gaps, and the errors for runs that cannot be drawn."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evilm_core.engine import plot
from evilm_core.errors import EvilmError

TRAIN = {"step": 1, "epoch": 0, "lr": 1e-4, "vtc_loss": 2.9, "vtm_loss": 0.69, "vtm_acc": 0.6, "mlm_loss": 3.4,
         "mlm_acc": 0.05, "mvm_loss": 3.3, "mvm_acc": 0.09, "loss": 10.4, "clips_per_s": 30.0, "step_s": 0.5,
         "data_wait_s": 0.04, "data_wait_share": 0.07, "max_memory_mib": 512.0, "skipped": 0, "skipped_nonfinite": 0}
VAL = {"step": 1, "epoch": 0, "split": "val", "val_mlm_loss": 3.0, "val_mlm_acc": 0.1, "val_num_examples": 80,
       "val_t2v_R@1": 6.25, "val_t2v_MdR": 7.5, "word_mAP": 0.5, "codebook_usage": 0.7, "perplexity": 9.2,
       "val_accuracy": 12.5, "val_majority_baseline": 6.25, "temperature": 0.07, "my_new_term": 1.0}


def test_terms_are_grouped_into_panels():
    panels = plot.group_panels([TRAIN, VAL, {**TRAIN, "step": 2}])
    layout = {title: [(s.key, s.split) for s in series] for title, series in panels.items()}
    assert list(layout) == ["total loss", "MLM loss", "VTM loss", "MVM loss", "VTC loss", "accuracy (share)",
                            "accuracy (%)", "recall@K (%)", "rank (median, mean)", "word prediction",
                            "codebook usage (share of entries)", "codebook perplexity", "temperature",
                            "learning rate", "throughput (clips/s)", "time per step (s)",
                            "data-wait share (of step time)", "peak GPU memory (MiB)", "skipped (running count)",
                            "my_new_term"]
    assert layout["MLM loss"] == [("mlm_loss", "train"), ("mlm_loss", "val")]  # train and val of a term together
    assert layout["accuracy (share)"] == [("vtm_acc", "train"), ("mlm_acc", "train"), ("mvm_acc", "train"),
                                          ("mlm_acc", "val")]
    assert layout["accuracy (%)"] == [("accuracy", "val"), ("majority_baseline", "val")]
    assert layout["time per step (s)"] == [("step_s", "train"), ("data_wait_s", "train")]
    assert layout["skipped (running count)"] == [("skipped", "train"), ("skipped_nonfinite", "train")]
    assert not any(key in ("epoch", "step", "num_examples") for series in layout.values() for key, _ in series)
    assert panels["MLM loss"][0].steps == [1, 2] and panels["MLM loss"][1].steps == [1]


def test_tokenizer_terms():
    rows = [{"step": 5, "epoch": 0, "loss": 0.6, "word_loss": 0.46, "codebook_loss": 0.0, "commitment": 0.14,
             "batch_codes_used": 0.66}, {"step": 5, "split": "val", "val_word_loss": 0.33, "word_F1": 0.6}]
    layout = {t: [s.key for s in series] for t, series in plot.group_panels(rows).items()}
    assert layout["VQ losses (codebook, commitment)"] == ["codebook_loss", "commitment"]
    assert layout["word loss"] == ["word_loss", "word_loss"]
    assert layout["codebook usage (share of entries)"] == ["batch_codes_used"]


def write_rows(run: Path, rows: list, tail: str = "") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return run


def test_nonfinite_values_are_counted_gaps(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"step": s, "loss": 10.0 ** -s, "lr": 1e-3} for s in range(1, 6)]
    rows[2]["loss"], rows[3]["loss"] = math.nan, math.inf  # json writes NaN / Infinity, as metrics.jsonl does
    run = write_rows(tmp_path / "run", rows, tail='{"step": 6, "lo')  # a torn last line: left out
    result = plot.plot_run(run)
    assert result["nonfinite"] == {"loss (train)": 2} and result["rows"] == 5 and result["steps"] == [1, 5]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    panels = plot.group_panels(plot.read_rows(run / "metrics.jsonl"))
    assert plot.log_scale("total loss", panels["total loss"])  # 1e-1 .. 1e-5: decades apart
    assert not plot.log_scale("learning rate", panels["learning rate"])
    svg = plot.plot_run(run / "metrics.jsonl", tmp_path / "c.svg")  # the file itself, and another format
    assert Path(svg["out"]).read_text().lstrip().startswith("<?xml")


def test_runs_that_cannot_be_drawn(tmp_path):
    with pytest.raises(EvilmError, match="no such run directory"):
        plot.plot_run(tmp_path / "nope")
    write_rows(tmp_path / "top" / "tokenizer", [{"step": 1, "loss": 1.0}])
    with pytest.raises(EvilmError, match=r"top holds no metrics.jsonl.*below it have one: tokenizer"):
        plot.plot_run(tmp_path / "top")
    bad = write_rows(tmp_path / "bad", [{"step": 1, "loss": 1.0}], tail="garbage\n{\"step\": 3, \"loss\": 2.0}\n")
    with pytest.raises(EvilmError, match=r"metrics.jsonl:2: not a JSON row"):
        plot.plot_run(bad)
    nostep = write_rows(tmp_path / "nostep", [{"loss": 1.0}])
    with pytest.raises(EvilmError, match=r"metrics.jsonl:1: a metrics row must be a JSON object with an integer"):
        plot.plot_run(nostep)
    empty = write_rows(tmp_path / "empty", [], tail="\n\n")
    with pytest.raises(EvilmError, match="metrics.jsonl is empty"):
        plot.plot_run(empty)
    terms = write_rows(tmp_path / "terms", [{"step": 1, "split": "val"}])
    with pytest.raises(EvilmError, match="holds no numeric terms"):
        plot.plot_run(terms)
    with pytest.raises(EvilmError, match=r"--out .*x.gif: the picture's name must end in .png"):
        plot.plot_run(terms, tmp_path / "x.gif")


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "available", lambda: False)
    run = write_rows(tmp_path / "run", [{"step": 1, "loss": 1.0}])
    with pytest.raises(EvilmError, match=r"pip install 'evilm\[plot\]'"):
        plot.plot_run(run)
