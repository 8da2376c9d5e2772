"""`--runtime openvino` and `--text-int8` through `evilm retrieve` on a tiny export (console
script, files on disk): OpenVINO in fp32 ranks as PyTorch fp32 does, in bf16 it is recorded and
close, an index never mixes runtimes, and the compiled models and the int8 tower are cached in
the export. Skipped where openvino (or onnxruntime, which the export needs) is not installed."""

from __future__ import annotations

import pytest

from evilm_core.data.records.manifest import read_manifest
from tests.helpers.cli import last_json, run_evilm
from tests.retrieval.test_retrieve_cli import write_model
from tests.retrieval.test_retrieve_paths import by_query, hits

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def setup(synth_dir, tmp_path_factory):
    """A tiny model, its ONNX export, and its PyTorch fp32 index (the reference)."""
    base = tmp_path_factory.mktemp("runtimes")
    model = write_model(base / "model", synth_dir, seed=0)
    run_evilm("export", model, "--out", base / "export", "--format", "onnx")
    common = ["--manifest", synth_dir / "test.jsonl", "--workers", "0", "--json"]
    run_evilm("retrieve", "index", "--checkpoint", model, "--out", base / "torch", "--precision", "fp32", *common)
    captions = list(dict.fromkeys(r.caption for r in read_manifest(synth_dir / "test.jsonl")))
    return base, common, captions


def _index(setup, name: str, *options) -> dict:
    base, common, _ = setup
    return last_json(run_evilm("retrieve", "index", "--checkpoint", base / "export", "--out", base / name, *common,
                               *options).stdout)


def test_openvino_fp32_ranks_as_pytorch_fp32(setup):
    base, _, captions = setup
    summary = _index(setup, "ov32", "--runtime", "openvino", "--precision", "fp32")
    assert summary["runtime"] == "openvino" and summary["precision"] == "fp32"
    ref = by_query(hits(base / "torch", captions))
    got = by_query(hits(base / "ov32", captions, "--runtime", "openvino"))
    for query, want in ref.items():
        assert [k for k, _ in got[query]] == [k for k, _ in want], query
        assert max(abs(a - b) for (_, a), (_, b) in zip(got[query], want)) <= 1e-4, query
    assert list((base / "export" / ".runtime-cache" / "openvino").glob("*.blob"))  # the next start reads these


def test_openvino_bf16_is_recorded_close_and_never_mixed(setup, synth_dir):
    from safetensors.numpy import load_file

    base, _, captions = setup
    summary = _index(setup, "ovbf16", "--runtime", "openvino", "--precision", "bf16")
    assert summary["runtime"] == "openvino" and summary["precision"] == "bf16"
    recorded = (base / "ovbf16" / "index.yaml").read_text()  # `source` sits between the two keys
    assert "\nprecision: bf16\n" in recorded and "\nruntime: openvino\n" in recorded
    a, b = (load_file(str(base / d / "embeddings.safetensors"))["embeddings"] for d in ("torch", "ovbf16"))
    assert (a * b).sum(1).min() > 0.99  # unit vectors: cosine of OpenVINO bf16 to PyTorch fp32
    rows = hits(base / "ovbf16", captions[:2], "--runtime", "openvino", "--precision", "bf16")
    assert len(rows) == 2 * min(10, len(a))
    mixed = run_evilm("retrieve", "index", "--checkpoint", base / "export", "--out", base / "ovbf16", "--runtime",
                      "onnxruntime", "--manifest", synth_dir / "val.jsonl", "--workers", "0", check=False)
    assert mixed.returncode == 2 and "computed by openvino in bf16" in mixed.stderr
    assert "--runtime openvino --precision bf16" in mixed.stderr and "Traceback" not in mixed.stderr


def test_int8_text_tower_is_made_once_and_ranks_close(setup):
    base, _, captions = setup
    ref = by_query(hits(base / "torch", captions))
    got = by_query(hits(base / "torch", captions, "--checkpoint", base / "export", "--text-int8"))
    assert (base / "export" / ".runtime-cache" / "text.int8.onnx").is_file()
    for query, want in ref.items():  # cosine 0.999 to fp32: scores within 0.02, most of the top 3 the same
        assert max(abs(a - b) for (_, a), (_, b) in zip(got[query], want)) <= 0.02, query
    refused = run_evilm("retrieve", "query", "--index", base / "torch", "--text-int8", "a red circle", check=False)
    assert refused.returncode == 2 and "--text-int8 runs the text tower of an ONNX export" in refused.stderr
