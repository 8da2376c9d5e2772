"""`bash benchmarks/gpu_check.sh --cpu`: the GPU check's dry mode runs every part, tiny, on the
CPU and writes one JSON with a figure (or an error) per part. About 3.5 minutes on the project's
2-core box, so it runs only with EVILM_GPU_CHECK_DRY=1 (docs/benchmarks.md, "GPU check")."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers.cli import REPO

pytestmark = pytest.mark.skipif(not os.environ.get("EVILM_GPU_CHECK_DRY"),
                                reason="3-4 minutes: EVILM_GPU_CHECK_DRY=1 runs it")


def test_dry_run_fills_every_part(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--cpu", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    parts = result["parts"]
    assert result["mode"] == "cpu" and set(parts) == {"setup", "label", "pretrain", "resume", "index", "compile",
                                                      "bisect"}
    assert not [name for name, part in parts.items() if "error" in part], parts
    for variant in ("bf16_cache", "fp32_cache", "bf16_online"):
        assert parts["pretrain"][variant]["clips_per_s"] > 0
    assert parts["resume"]["steps_match"] and parts["resume"]["losses_close_rel_1e-5"]
    assert parts["compile"]["max_rel_loss_diff_vs_eager"] < 1e-3
    assert parts["label"]["clips_per_s"] > 0 and parts["index"]["clips_per_s"] > 0
    assert parts["bisect"]["largest_fitting"] == 4
