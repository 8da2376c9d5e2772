"""`evilm export` as a user runs it (console script, files on disk) and ExportedTowers as a
server uses it: the exported towers must give PyTorch's embeddings for any batch size, and the
export must record the checkpoint's model_hash so retrieval indexes stay interchangeable.

Both exports run at once in two subprocesses (each is one thread; the ONNX one dominates)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evilm_core.checkpoints import files as ckpt
from evilm_core.errors import EvilmError
from evilm_core.export import towers as towers_mod
from evilm_core.export.runtime import ExportedTowers, is_export_dir, length_groups, trim_text
from evilm_core.export.towers import example_inputs, export_towers
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.models.loading import load_checkpoint
from evilm_core.models.pretrained import export_model
from evilm_core.models.tokenizer import EXPORT_FORMAT as TOKENIZER_FORMAT
from tests.helpers.cli import last_json
from tests.helpers.models import VOCAB


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A random quickstart-tiny E-ViLM written as a pre-trained final/."""
    torch.manual_seed(0)
    net = EViLM(EViLMConfig.sized("quickstart-tiny", vocab_size=len(VOCAB)))
    return export_model(net, tmp_path_factory.mktemp("export") / "final", VOCAB)


def _evilm(*args: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("evilm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "evilm_cli.main"]
    return subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """{"onnx" | "torch": (export dir, the --json summary)}, made by `evilm export` in parallel."""
    base = tmp_path_factory.mktemp("exports")
    kinds = ["torch"] + (["onnx"] if _has_onnxruntime() else [])
    procs = {k: _evilm("export", str(model), "--out", str(base / k), "--format", k, "--json") for k in kinds}
    done = {}
    for kind, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"evilm export --format {kind} exited {proc.returncode}:\n{err}"
        assert f"exported {kind} towers of" in err
        done[kind] = (base / kind, last_json(out))
    return done


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _export(exports, kind: str) -> tuple[Path, dict]:
    if kind == "onnx":
        pytest.importorskip("onnxruntime")
    return exports[kind]


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_export_directory_and_metadata(exports, model, kind):
    out, summary = _export(exports, kind)
    meta = json.loads((out / "export.json").read_text())
    files = {"onnx": ["text.onnx", "video.onnx"], "torch": ["text.pt2", "video.pt2"]}[kind]
    assert sorted(p.name for p in out.iterdir()) == sorted(files + ["export.json", "vocab.txt"])
    assert meta["format"] == "evilm-export/1" and meta["format_kind"] == kind
    assert meta["model_hash"] == ckpt.file_sha256(model / ckpt.WEIGHTS) == summary["model_hash"]
    assert meta["checkpoint"] == str(model.absolute())
    assert (meta["num_frames"], meta["image_size"], meta["max_text_len"], meta["embed_dim"]) == (4, 64, 24, 128)
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["inputs"]["video"][0]["shape"] == ["batch", 4, 3, 64, 64]
    assert meta["inputs"]["text"][0]["shape"] == ["batch", "length"]
    assert (meta["text_length"], meta["min_text_len"]) == ("dynamic", 2)
    assert meta["check"]["text_lengths"][-1] == 24 and max(meta["check"]["text_lengths"][:-1]) < 24  # trimmed too
    assert [i["name"] for i in meta["inputs"]["text"]] == ["input_ids", "attention_mask"]
    assert meta["model"]["vocab_size"] == len(VOCAB) and meta["torch_version"] == torch.__version__
    assert meta["check"]["video_max_abs_diff"] <= 1e-4 and meta["check"]["text_max_abs_diff"] <= 1e-4
    assert (out / "vocab.txt").read_text() == (model / "vocab.txt").read_text()
    assert is_export_dir(out) and not is_export_dir(model)


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_exported_towers_match_pytorch_for_any_batch(exports, model, kind):
    out, _ = _export(exports, kind)
    net = load_checkpoint(model).model.eval()
    towers = ExportedTowers.open(out)
    assert (towers.model_hash, towers.num_frames, towers.embed_dim) == (ckpt.file_sha256(model / ckpt.WEIGHTS),
                                                                        4, 128)
    for batch in (1, 3):
        inputs = example_inputs(net, 4, batch, seed=batch)
        with torch.inference_mode():
            want_t, want_v = net.embed_text(*inputs["text"]), net.embed_video(*inputs["video"])
        got_t = towers.embed_text(*inputs["text"])
        assert towers.loaded == ["text"] or batch > 1  # a query process never loads the video tower
        got_v = towers.embed_video(*inputs["video"])
        assert got_t.dtype == got_v.dtype == torch.float32
        assert got_t.shape == got_v.shape == (batch, 128)
        assert (got_t - want_t).abs().max() <= 1e-4 and (got_v - want_v).abs().max() <= 1e-4
    with pytest.raises(EvilmError, match=r"takes pixels \[B, 4, 3, 64, 64\]"):
        towers.embed_video(torch.zeros(1, 2, 3, 64, 64))


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_text_tower_runs_trimmed_and_an_old_fixed_length_export_padded(exports, model, kind):
    """A dynamic-length text tower runs on the batch's longest real length and gives the padded
    pass's embeddings; export.json without "text_length" (an export from before) is run padded."""
    out, _ = _export(exports, kind)
    net = load_checkpoint(model).model.eval()
    ids, mask = example_inputs(net, 4, 3, seed=5)["text"]  # [3, 24], padded tails
    real = int(mask.sum(1).max())
    with torch.inference_mode():
        want = net.embed_text(ids, mask)
    new = ExportedTowers.open(out)
    old_meta = {k: v for k, v in new.meta.items() if k not in ("text_length", "min_text_len")}
    old = ExportedTowers(out, {**old_meta, "inputs": {**new.meta["inputs"], "text": [
        {**i, "shape": ["batch", 24]} for i in new.meta["inputs"]["text"]]}})
    runs = []
    for towers in (new, old):
        run = towers._runner("text")
        towers._runners["text"] = lambda *a, run=run: runs.append(a[0].shape[1]) or run(*a)
    padded = new._runner("text")(ids.numpy(), mask.numpy())
    got_new, got_short, got_old = new.embed_text(ids, mask), new.embed_text(ids[:, :real], mask[:, :real]), \
        old.embed_text(ids, mask)
    groups = [int(mask[g].sum(1).max()) for g in length_groups(mask.sum(1).numpy())]  # each call at its longest
    assert max(groups) == real and runs == [24] + groups + groups + [24]
    for got in (got_new, got_short, got_old):
        assert (got - torch.from_numpy(padded)).abs().max() <= 1e-5 and (got - want).abs().max() <= 1e-4
    with pytest.raises(EvilmError, match=r"takes ids and mask \[B, L\] with L 24, got \[3, 5\]"):
        old.embed_text(ids[:, :5], mask[:, :5])
    with pytest.raises(EvilmError, match=r"with L at most 24, got \[3, 25\]"):
        new.embed_text(torch.zeros(3, 25, dtype=torch.long), torch.zeros(3, 25, dtype=torch.long))


def test_length_groups_split_a_batch_into_runs_of_similar_length():
    """Rows sorted by length, cut where the padding saved outweighs one more call (hand-computed:
    [3, 3, 9] at call cost 2 costs 3 x 9 + 2 = 29 as one call, 2 x 3 + 2 + 9 + 2 = 19 as two)."""
    assert [g.tolist() for g in length_groups(np.array([9, 3, 3]), call_cost=2)] == [[1, 2], [0]]
    assert [g.tolist() for g in length_groups(np.array([9, 3, 3]), call_cost=20)] == [[1, 2, 0]]
    lengths = np.array([10, 17, 11, 16, 10, 11, 15, 11, 11, 10, 16, 11, 11, 16, 11, 10])
    groups = length_groups(lengths, call_cost=6)
    assert sorted(np.concatenate(groups).tolist()) == list(range(16))  # every row once
    assert [lengths[g].max() for g in groups] == [11, 17]  # 11 x 11 + 5 x 17 + 2 x 6 = 218 < 16 x 17 + 6
    assert [g.tolist() for g in length_groups(np.array([7]))] == [[0]]


def test_trim_text_keeps_the_longest_real_length_and_the_minimum():
    ids, mask = np.arange(12).reshape(2, 6), np.array([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0]])
    assert [a.tolist() for a in trim_text(ids, mask)] == [ids[:, :4].tolist(), mask[:, :4].tolist()]
    short = trim_text(ids[:, :1], mask[:, :1], min_len=2)  # shorter than the minimum: zero-padded up to it
    assert short[0].tolist() == [[0, 0], [6, 0]] and short[1].tolist() == [[1, 0], [1, 0]]
    assert trim_text(ids, np.zeros_like(mask))[0].shape == (2, 2)


def test_a_tokenizer_checkpoint_is_refused(tmp_path):
    tok = ckpt.write_checkpoint(tmp_path / "tok" / "final", {"w": torch.zeros(1)},
                                {"format": TOKENIZER_FORMAT, "model": {}}, VOCAB)
    for path in (tok, tok.parent):  # the checkpoint itself and its run directory
        with pytest.raises(EvilmError, match="is a tokenizer checkpoint; export an E-ViLM checkpoint"):
            export_towers(path, tmp_path / "out", fmt="torch")
    assert not (tmp_path / "out").exists()


def test_a_directory_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EvilmError, match="is not a checkpoint: expected model.safetensors"):
        export_towers(tmp_path, tmp_path / "out", fmt="torch")
    with pytest.raises(EvilmError, match="does not exist"):
        export_towers(tmp_path / "nope", tmp_path / "out", fmt="torch")


def test_a_non_empty_out_that_is_not_an_export_is_refused(model, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(EvilmError, match="exists and is not an evilm export"):
        export_towers(model, tmp_path / "out", fmt="torch")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(EvilmError, match="--format 'tflite'"):
        export_towers(model, tmp_path / "other", fmt="tflite")


def test_missing_onnx_packages_name_the_extra(model, tmp_path, monkeypatch):
    real = towers_mod.importlib.util.find_spec
    monkeypatch.setattr(towers_mod.importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n))
    with pytest.raises(EvilmError, match=r"needs the onnx extra: pip install 'evilm\[onnx\]' \(missing: onnxscript"):
        export_towers(model, tmp_path / "out", fmt="onnx")


def test_open_refuses_what_is_not_an_export(model, tmp_path):
    with pytest.raises(EvilmError, match=r"is not an evilm export \(no export.json\); make one with `evilm export"):
        ExportedTowers.open(model)
    (tmp_path / "export.json").write_text(json.dumps({"format": "evilm-index/1"}))
    with pytest.raises(EvilmError, match="format is 'evilm-index/1', expected 'evilm-export/1'"):
        ExportedTowers.open(tmp_path)
    (tmp_path / "export.json").write_text("{not json")
    with pytest.raises(EvilmError, match="not readable JSON"):
        ExportedTowers.open(tmp_path)
    assert not is_export_dir(tmp_path) and not is_export_dir(tmp_path / "nope")
