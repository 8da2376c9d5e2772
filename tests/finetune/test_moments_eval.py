"""`evilm evaluate` of a `task: moments` recipe, as a user runs it: the metrics and baselines,
agreement with the moments `retrieve query` gives on a window index of the same videos, and the
moments that do not fit their video (skipped or clipped, and counted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evilm_core.evaluation.moments import IOUS, RANKS, temporal_iou
from evilm_core.retrieval.build import IndexRequest, build_index
from tests.helpers.cli import REPO, last_json, run_evilm
from tests.retrieval.test_retrieve_cli import query_lines, write_model

RECIPE = REPO / "recipes/synthetic/moments.yaml"


def evaluate(model: Path, manifest: Path) -> dict:
    return last_json(run_evilm("evaluate", RECIPE, "--checkpoint", model, "--set", f"data.test={manifest}",
                               "--set", "data.image_size=64", "--json").stdout)["metrics"]


@pytest.fixture(scope="module")
def model(synth_dir, tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("moments_eval") / "model", synth_dir, seed=0)


def test_metrics_baselines_and_the_query_agree(model, long_dir, tmp_path):
    metrics = evaluate(model, long_dir / "moments.jsonl")
    records = [json.loads(line) for line in (long_dir / "moments.jsonl").open()]
    assert metrics["num_queries"] == len(records) and metrics["num_videos"] == 3 and metrics["skipped"] == 0
    for prefix in ("", "fixed_", "random_"):
        for k in RANKS:
            for t in IOUS:
                assert 0 <= metrics[f"{prefix}R@{k}_IoU{t}"] <= 100
        assert 0 <= metrics[f"{prefix}mIoU"] <= 100
    # the same videos through `retrieve index --window` and `retrieve query --per-video 5`: each
    # caption's moments in its own video are the ones the evaluation ranked
    index = tmp_path / "index"  # built here: the command is tested in tests/retrieval/test_moments_cli.py
    build_index(IndexRequest(str(model), str(index), manifest=str(long_dir / "moments.jsonl"), window=2.0, stride=1.0,
                             num_workers=0, precision="fp32", device="cpu", threads=1))
    hits = [json.loads(line) for line in query_lines(index, "-k", 15, "--per-video", 5, "--json", stdin="".join(
        r["caption"] + "\n" for r in records))]
    mine = {k: [] for k in (*(f"R@{k}_IoU{t}" for k in RANKS for t in IOUS), "mIoU")}
    for r in records:
        moments = [h for h in hits if h["query"] == r["caption"] and h["key"] == r["video"]][:5]
        ious = [float(temporal_iou(h["start"], h["end"], np.array([[r["start"], r["end"]]]))) for h in moments]
        for k in RANKS:
            for t in IOUS:
                mine[f"R@{k}_IoU{t}"].append(any(i >= t for i in ious[:k]))
        mine["mIoU"].append(ious[0])
    for key, values in mine.items():
        assert 100 * np.mean(values) == pytest.approx(metrics[key], abs=1e-3), key


def test_moments_outside_their_video_are_skipped_or_clipped(model, long_dir, tmp_path):
    records = [json.loads(line) for line in (long_dir / "moments.jsonl").open()][:2]
    duration = json.loads((long_dir / "long.json").read_text())["videos"][0]["duration"]
    records[0].update(start=duration + 1.0, end=duration + 2.0)  # after the video's end
    records[1].update(end=duration + 5.0)  # ends after it: clipped to it
    manifest = tmp_path / "moments.jsonl"
    manifest.write_text("".join(json.dumps({**r, "video": str(long_dir / r["video"])}) + "\n" for r in records))
    metrics = evaluate(model, manifest)
    assert metrics["skipped_moments"] == 1 and metrics["clipped_moments"] == 1 and metrics["num_queries"] == 1


def test_finetuning_the_moments_task_says_what_to_do(long_dir):
    proc = run_evilm("finetune", RECIPE, "--set", f"data.train={long_dir / 'moments.jsonl'}", check=False)
    assert proc.returncode == 2 and "is evaluated, not trained" in proc.stderr and "Traceback" not in proc.stderr


def test_predictions_list_each_query_with_its_moments(tmp_path, long_dir, synth_dir):
    """`evaluate --predictions` of a moments recipe: one line per (video, caption) with the true
    windows and the top moments, whose best IoU agrees with the R@1 the metrics report."""
    import json

    from tests.helpers.cli import last_json, run_evilm
    from tests.retrieval.test_retrieve_cli import write_model

    model = write_model(tmp_path / "model", synth_dir, seed=0)
    out = tmp_path / "moments.jsonl"
    result = last_json(run_evilm("evaluate", "synthetic/moments", "--checkpoint", model, "--set",
                                 f"data.test={long_dir / 'moments.jsonl'}", "--set", "data.image_size=64",
                                 "--predictions", out, "--json").stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == result["metrics"]["num_queries"]
    assert all(r["moments"] and r["gold"] and r["moments"][0]["end"] > r["moments"][0]["start"] for r in rows)
    hit = 100 * sum(r["moments"][0]["iou"] >= 0.5 for r in rows) / len(rows)
    assert hit == pytest.approx(result["metrics"]["R@1_IoU0.5"], rel=1e-6)  # --json keeps 7 digits
