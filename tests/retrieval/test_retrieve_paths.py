"""The other ways through `evilm retrieve`: from an `evilm export` directory (onnxruntime, and
OpenVINO where installed), in bf16, with an ANN index, and the warnings and errors that go with them. Console script, files
on disk, the tiny random model of test_retrieve_cli.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evilm_core.data.records.manifest import read_manifest
from tests.helpers.cli import last_json, run_evilm
from tests.retrieval.test_retrieve_cli import write_model


@pytest.fixture(scope="module")
def setup(synth_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("paths")
    model = write_model(base / "model", synth_dir, seed=0)
    common = ["--manifest", synth_dir / "test.jsonl", "--workers", "0", "--json"]
    run_evilm("retrieve", "index", "--checkpoint", model, "--out", base / "torch", "--precision", "fp32", *common)
    return base, model, common


def hits(index: Path, captions: list[str], *extra) -> list[dict]:
    out = run_evilm("retrieve", "query", "--index", index, "-k", "10", "--json", *extra,
                    input="".join(c + "\n" for c in captions)).stdout
    return [json.loads(line) for line in out.splitlines()]


def by_query(rows: list[dict]) -> dict[str, list[tuple[str, float]]]:
    table: dict[str, list] = {}
    for row in rows:
        table.setdefault(row["query"], []).append((row["key"], row["score"]))
    return table


@pytest.fixture(scope="module")
def onnx_index(setup):
    """The setup model exported to ONNX, and an index built from the export."""
    pytest.importorskip("onnxruntime")
    base, model, common = setup
    export = base / "export"
    run_evilm("export", model, "--out", export, "--format", "onnx")
    run_evilm("retrieve", "index", "--checkpoint", export, "--out", base / "onnx", "--runtime", "onnxruntime", *common)
    return export, base / "onnx"


def test_export_gives_the_same_top10_as_pytorch(setup, onnx_index, synth_dir):
    base, model, common = setup
    export, _ = onnx_index
    captions = list(dict.fromkeys(r.caption for r in read_manifest(synth_dir / "test.jsonl")))
    ref = by_query(hits(base / "torch", captions))
    for name, index, extra in (("onnx index, onnx text", base / "onnx", ()),
                               ("torch index, onnx text", base / "torch", ("--checkpoint", export))):
        got = by_query(hits(index, captions, *extra))
        assert set(got) == set(ref), name
        for query, want in ref.items():
            assert [k for k, _ in got[query]] == [k for k, _ in want], (name, query)
            assert max(abs(a - b) for (_, a), (_, b) in zip(got[query], want)) <= 1e-4, (name, query)


def test_query_over_an_onnx_export_never_imports_torch(onnx_index):
    """The serving path starts in about a second: no torch, timm or transformers (issue 17)."""
    _, index = onnx_index
    code = ("import sys; sys.argv = ['evilm', 'retrieve', 'query', '--index', sys.argv[1], '-k', '3', 'a red circle']\n"
            "from evilm_cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('LOADED', sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(index)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "LOADED []" and len(lines) == 4 and lines[0].startswith("a red circle\t1\t")


def test_export_of_another_model_is_refused_by_the_index(setup, synth_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    base, _, _ = setup
    other = write_model(tmp_path / "other", synth_dir, seed=1)
    run_evilm("export", other, "--out", tmp_path / "export", "--format", "torch")
    wrong = run_evilm("retrieve", "query", "--index", base / "torch", "--checkpoint", tmp_path / "export", "a red circle",
                      check=False)
    assert wrong.returncode == 2 and "built by another model" in wrong.stderr and "export" in wrong.stderr


def test_bf16_index_is_recorded_close_and_never_mixed(setup, synth_dir):
    base, model, common = setup
    summary = last_json(run_evilm("retrieve", "index", "--checkpoint", model, "--out", base / "bf16",
                                  "--precision", "bf16", *common).stdout)
    assert summary["precision"] == "bf16" and summary["runtime"] == "torch"  # bf16 weights (models/loading.py)
    recorded = (base / "bf16" / "index.yaml").read_text()  # `source` sits between the two keys
    assert "\nprecision: bf16\n" in recorded and "\nruntime: torch\n" in recorded
    from safetensors.torch import load_file

    a = load_file(str(base / "torch" / "embeddings.safetensors"))["embeddings"]
    b = load_file(str(base / "bf16" / "embeddings.safetensors"))["embeddings"]
    assert (a * b).sum(1).min() > 0.99  # unit vectors: cosine of bf16 to fp32
    mixed = run_evilm("retrieve", "index", "--checkpoint", model, "--out", base / "bf16", "--precision", "fp32",
                      "--manifest", synth_dir / "val.jsonl", "--workers", "0", check=False)
    assert mixed.returncode == 2 and "holds bf16 embeddings" in mixed.stderr and "--precision bf16" in mixed.stderr


def test_words_outside_the_vocabulary_are_named(setup):
    base, _, _ = setup
    proc = run_evilm("retrieve", "query", "--index", base / "torch", "a dog playing frisbee")
    assert "'dog', 'playing', 'frisbee' not in the model's vocabulary" in proc.stderr
    quiet = run_evilm("retrieve", "query", "--index", base / "torch", "a red circle moves left")
    assert "vocabulary" not in quiet.stderr


def test_ann_index_is_used_and_exact_can_be_forced(setup, synth_dir):
    pytest.importorskip("faiss")
    base, model, common = setup
    summary = last_json(run_evilm("retrieve", "index", "--checkpoint", model, "--out", base / "ann",
                                  "--precision", "fp32", "--ann", "faiss-hnsw", *common).stdout)
    assert summary["ann"]["kind"] == "faiss-hnsw" and (base / "ann" / "ann.faiss").is_file()
    captions = list(dict.fromkeys(r.caption for r in read_manifest(synth_dir / "test.jsonl")))[:4]
    exact = by_query(hits(base / "ann", captions, "--exact"))
    approx = by_query(hits(base / "ann", captions))
    for query in captions:  # 8 clips: HNSW visits them all, so the ranking is exact here
        assert [k for k, _ in approx[query]] == [k for k, _ in exact[query]]
    added = last_json(run_evilm("retrieve", "index", "--checkpoint", model, "--out", base / "ann", "--precision",
                                "fp32", "--manifest", synth_dir / "val.jsonl", "--workers", "0", "--json").stdout)
    assert added["ann"]["count"] == added["total"] + summary["total"]  # rebuilt over every row


def test_ann_without_faiss_says_what_to_install(setup, synth_dir, tmp_path):
    _, model, _ = setup
    code = ("import sys; sys.modules['faiss'] = None; sys.argv = ['evilm'] + sys.argv[1:]; "
            "from evilm_cli.main import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "retrieve", "index", "--checkpoint", str(model), "--manifest",
                           str(synth_dir / "test.jsonl"), "--out", str(tmp_path / "idx"), "--ann", "faiss-ivf"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "pip install 'evilm[faiss]'" in proc.stderr
    assert not (tmp_path / "idx").exists()  # refused before any work


def test_window_index_from_an_export_and_its_query_without_torch(setup, onnx_index, long_dir):
    """An export holds the video tower whole: each window runs it on its own frames (no per-frame
    sharing), and the rows equal the checkpoint's window index; moments over it need no torch."""
    from safetensors.numpy import load_file

    base, model, _ = setup
    export, _ = onnx_index
    windows = ["--manifest", long_dir / "moments.jsonl", "--window", "2", "--stride", "1", "--workers", "0",
               "--runtime", "onnxruntime"]
    run_evilm("retrieve", "index", "--checkpoint", export, "--out", base / "onnx-windows", *windows)
    from evilm_core.retrieval.build import IndexRequest, build_index

    build_index(IndexRequest(str(model), str(base / "torch-windows"), manifest=str(long_dir / "moments.jsonl"),
                             window=2.0, stride=1.0, num_workers=0, precision="fp32", device="cpu", threads=1))
    got, want = (load_file(str(base / d / "embeddings.safetensors")) for d in ("onnx-windows", "torch-windows"))
    assert (got["windows"] == want["windows"]).all()
    assert abs(got["embeddings"] - want["embeddings"]).max() <= 1e-4
    code = ("import sys; sys.argv = ['evilm', 'retrieve', 'query', '--index', sys.argv[1], '-k', '2', 'a red circle']\n"
            "from evilm_cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('LOADED', sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(base / "onnx-windows")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "LOADED []" and len(lines[0].split("\t")) == 6  # query, rank, key, score, start, end


def test_serve_over_an_onnx_export_never_imports_torch(onnx_index):
    """`evilm serve` over an index built from an export: the server answers searches without
    torch, timm or transformers in the process (docs/serving.md)."""
    pytest.importorskip("fastapi")
    _, index = onnx_index
    code = ("import sys, time\nfrom fastapi.testclient import TestClient\n"
            "from evilm_core.serve.app import create_app\nfrom evilm_core.serve.service import ServeConfig, Service\n"
            "from evilm_core.settings import RunSettings\n"
            "with TestClient(create_app(Service(ServeConfig({'x': sys.argv[1]}, RunSettings(threads=1))))) as c:\n"
            "    while c.get('/readyz').status_code != 200:\n        time.sleep(0.1)\n"
            "    print(len(c.get('/api/search', params={'q': 'a red circle', 'k': 3}).json()['results']))\n"
            "print('LOADED', sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(index)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["3", "LOADED []"]


# ---------------------------------------------------------------- runtimes (issue 33)
# `--runtime openvino` and `--text-int8` on the same tiny export (one export for the module: an
# export costs most of this file's time): OpenVINO in fp32 ranks as PyTorch fp32 does, in bf16 it is
# recorded and close, an index never mixes runtimes, compiled models and the int8 tower are cached.


@pytest.fixture(scope="module")
def ov_setup(setup, onnx_index, synth_dir):
    """(base with export/ and the PyTorch fp32 index torch/, the index options, the test captions)."""
    pytest.importorskip("openvino")
    base, _, common = setup
    return base, common, list(dict.fromkeys(r.caption for r in read_manifest(synth_dir / "test.jsonl")))


def _index(ov_setup, name: str, *options) -> dict:
    base, common, _ = ov_setup
    return last_json(run_evilm("retrieve", "index", "--checkpoint", base / "export", "--out", base / name, *common,
                               *options).stdout)


def test_openvino_fp32_ranks_as_pytorch_fp32(ov_setup):
    base, _, captions = ov_setup
    summary = _index(ov_setup, "ov32", "--runtime", "openvino", "--precision", "fp32")
    assert summary["runtime"] == "openvino" and summary["precision"] == "fp32"
    ref = by_query(hits(base / "torch", captions))
    got = by_query(hits(base / "ov32", captions, "--runtime", "openvino"))
    for query, want in ref.items():
        assert [k for k, _ in got[query]] == [k for k, _ in want], query
        assert max(abs(a - b) for (_, a), (_, b) in zip(got[query], want)) <= 1e-4, query
    assert list((base / "export" / ".runtime-cache" / "openvino").glob("*.blob"))  # the next start reads these


def test_openvino_bf16_is_recorded_close_and_never_mixed(ov_setup, synth_dir):
    from safetensors.numpy import load_file

    base, _, captions = ov_setup
    summary = _index(ov_setup, "ovbf16", "--runtime", "openvino", "--precision", "bf16")
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


def test_int8_text_tower_is_made_once_and_ranks_close(ov_setup):
    base, _, captions = ov_setup
    ref = by_query(hits(base / "torch", captions))
    got = by_query(hits(base / "torch", captions, "--checkpoint", base / "export", "--text-int8"))
    assert (base / "export" / ".runtime-cache" / "text.int8.onnx").is_file()
    for query, want in ref.items():  # cosine 0.999 to fp32: scores within 0.02, most of the top 3 the same
        assert max(abs(a - b) for (_, a), (_, b) in zip(got[query], want)) <= 0.02, query
    refused = run_evilm("retrieve", "query", "--index", base / "torch", "--text-int8", "a red circle", check=False)
    assert refused.returncode == 2 and "--text-int8 runs the text tower of an ONNX export" in refused.stderr
