"""`evilm retrieve index` / `evilm retrieve query` as a user runs them: console script, files on
disk. A tiny random-weight model is enough: the tests check that the index and the queries give
exactly the rankings `evaluate` computes, not that the model is good."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from evilm_core.checkpoints import files as ckpt
from evilm_core.data.records.manifest import read_manifest
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.text.vocab import build_vocab
from tests.helpers.cli import run_evilm

TINY = dict(video_encoder="edgenext_xx_small", image_size=64, text_layers=1, fusion_layers=1, fusion_dim=96,
            fusion_heads=2, codebook_size=16, max_text_len=24, embed_dim=32)


def write_model(directory: Path, synth: Path, seed: int) -> Path:
    captions = [r.caption for r in read_manifest(synth / "train.jsonl")]
    vocab = build_vocab(captions)
    torch.manual_seed(seed)
    net = EViLM(EViLMConfig(vocab_size=len(vocab), **TINY))
    return ckpt.write_checkpoint(directory, net.state_dict(), {"format": "evilm-model/1", "model": net.cfg}, vocab)


@pytest.fixture(scope="module")
def model(synth_dir, tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("ret") / "model", synth_dir, seed=0)


@pytest.fixture(scope="module")
def index(model, synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ret_index") / "index"
    run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", synth_dir / "test.jsonl", "--out", out,
              "--workers", "0", "--batch-size", "3", "--part-size", "4", "--precision", "fp32", "--json")
    return out


def query_lines(index: Path, *args, stdin: str | None = None) -> list[str]:
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("evilm")
    proc = subprocess.run([str(exe), "retrieve", "query", "--index", str(index), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_index_layout_and_contents(index, synth_dir):
    keys = (index / "keys.txt").read_text().split("\n")[:-1]
    assert keys == list(dict.fromkeys(r.video for r in read_manifest(synth_dir / "test.jsonl")))
    emb = load_file(str(index / "embeddings.safetensors"))["embeddings"]
    assert emb.shape == (len(keys), 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(keys)), atol=1e-5)
    assert not list((index / "parts").glob("*.safetensors"))  # folded in once complete


def test_query_ranks_equal_evaluate(index, model, synth_dir):
    """R@K from `retrieve query` output == evaluate's retrieval metrics on the same clips."""
    from evilm_core.config.sections import DataConfig
    from evilm_core.data.clips import open_clips
    from evilm_core.finetune.tasks import evaluate_retrieval
    from evilm_core.models.loading import load_checkpoint
    from evilm_core.settings import RunSettings
    from evilm_core.text.tokens import TextTokens

    source = open_clips(synth_dir / "test.jsonl")
    records = source.records
    lines = query_lines(index, "-k", len(records), "--json", stdin="".join(r.caption + "\n" for r in records))
    hits = [json.loads(line) for line in lines]
    assert all(set(h) == {"query", "rank", "key", "score"} for h in hits)
    assert len(hits) == len(records) ** 2
    rank = {h["query"]: h["rank"] for h in hits if h["key"] == next(r.video for r in records if r.caption == h["query"])}
    loaded = load_checkpoint(model)
    metrics = evaluate_retrieval(loaded.model.eval(), records, source,
                                 DataConfig(image_size=64, batch_size=4, num_workers=0), TextTokens(model, 24),
                                 RunSettings())
    for k in (1, 5, 10):
        mine = 100.0 * np.mean([rank[r.caption] <= k for r in records])
        assert mine == pytest.approx(metrics[f"t2v_R@{k}"]), k


def test_query_tsv_from_arguments_and_contact_sheet(index, tmp_path):
    from PIL import Image

    sheet = tmp_path / "sheet.png"
    lines = query_lines(index, "-k", 3, "a red circle moves left on a black background", "a blue star grows",
                        "--contact-sheet", sheet)
    rows = [line.split("\t") for line in lines]
    assert len(rows) == 6 and all(len(r) == 4 for r in rows)
    assert [r[1] for r in rows] == ["1", "2", "3"] * 2
    assert rows[0][0] == "a red circle moves left on a black background" and rows[3][0] == "a blue star grows"
    scores = [float(r[3]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)
    image = Image.open(sheet)
    assert image.size[0] >= 3 * 160 and image.size[1] >= 2 * 160


def test_sharded_and_extended_index_equal_one_run(model, synth_dir, index, tmp_path):
    out = tmp_path / "sharded"
    common = ["--checkpoint", model, "--manifest", synth_dir / "test.jsonl", "--out", out, "--workers", "0",
              "--precision", "fp32"]
    first = json.loads(run_evilm("retrieve", "index", *common, "--shard", "0/2", "--json").stdout.splitlines()[-1])
    assert first["complete"] is False and first["embedded"] == 4
    second = json.loads(run_evilm("retrieve", "index", *common, "--shard", "1/2", "--json").stdout.splitlines()[-1])
    assert second["complete"] is True and second["embedded"] == 4
    again = json.loads(run_evilm("retrieve", "index", *common, "--json").stdout.splitlines()[-1])
    assert again["embedded"] == 0 and again["already"] == 8  # re-running resumes: nothing left to do

    def table(d):
        keys = (d / "keys.txt").read_text().split("\n")[:-1]
        return dict(zip(keys, load_file(str(d / "embeddings.safetensors"))["embeddings"]))

    a, b = table(out), table(index)
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    added = json.loads(run_evilm("retrieve", "index", *common[:3], synth_dir / "val.jsonl", *common[4:],
                                 "--json").stdout.splitlines()[-1])
    assert added["embedded"] == 4 and added["complete"]
    assert len(table(out)) == 12


def test_index_over_a_video_directory_counts_corrupt_files(model, synth_dir, tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for name in ("00000.mp4", "00001.mp4"):
        (videos / "sub" / name).write_bytes((synth_dir / "videos" / name).read_bytes())
    (videos / "broken.mp4").write_text("not a video")
    result = json.loads(run_evilm("retrieve", "index", "--checkpoint", model, "--videos", videos, "--out",
                                  tmp_path / "idx", "--workers", "0", "--json").stdout.splitlines()[-1])
    assert result["embedded"] == 2 and result["skipped"] == 1 and result["complete"]
    assert (tmp_path / "idx" / "keys.txt").read_text() == "sub/00000.mp4\nsub/00001.mp4\n"
    assert (tmp_path / "idx" / "skipped.tsv").read_text().startswith("broken.mp4\tcorrupt")


def test_cpu_workers_embed_and_give_the_one_process_index(index, model, synth_dir, tmp_path):
    """--workers 2 on the CPU: each worker decodes and embeds its own batches (engine/workers.py ComputeInWorker,
    docs/performance.md); the index holds the same keys in the same order and the same
    embeddings (up to float sums over other thread counts) as the one-process index."""
    out = tmp_path / "idx"
    result = json.loads(run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", synth_dir / "test.jsonl",
                                  "--out", out, "--workers", "2", "--threads", "2", "--batch-size", "3",
                                  "--precision", "fp32", "--json").stdout.splitlines()[-1])
    keys = (index / "keys.txt").read_text()
    assert result["complete"] and result["embedded"] == len(keys.splitlines()) and result["skipped"] == 0
    assert (out / "keys.txt").read_text() == keys
    mine, one = (load_file(str(d / "embeddings.safetensors"))["embeddings"] for d in (out, index))
    assert torch.allclose(mine, one, atol=1e-5)


def test_damaged_weights_fail_before_the_index_records_them(model, synth_dir, tmp_path):
    """Workers load the model themselves, so the main process checks the weights file first: an
    index never records the hash of a file that cannot be loaded."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = run_evilm("retrieve", "index", "--checkpoint", broken, "--manifest", synth_dir / "test.jsonl", "--out",
                     tmp_path / "idx", "--workers", "1", check=False)
    assert proc.returncode == 2 and "damaged or truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "idx").exists()
    # weights that read but do not fit the config: refused from the weights' header, before any
    # index directory exists (models/pretrained.py, check_against_weights)
    other = EViLM(EViLMConfig(vocab_size=len(ckpt.read_checkpoint_vocab(model)), **{**TINY, "fusion_dim": 64}))
    ckpt.save_weights(other.state_dict(), weights)
    proc = run_evilm("retrieve", "index", "--checkpoint", broken, "--manifest", synth_dir / "test.jsonl", "--out",
                     tmp_path / "idx", "--workers", "1", check=False)
    assert proc.returncode == 2 and "does not belong to these weights" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "idx").exists()


def test_bad_input_gives_clear_errors(model, index, synth_dir, tmp_path):
    other = write_model(tmp_path / "other", synth_dir, seed=1)
    wrong = run_evilm("retrieve", "query", "--index", index, "--checkpoint", other, "a red circle", check=False)
    assert wrong.returncode == 2 and "built by another model" in wrong.stderr and "Traceback" not in wrong.stderr
    empty = run_evilm("retrieve", "query", "--index", index, "  ", check=False)
    assert empty.returncode == 2 and "query is empty" in empty.stderr
    not_index = run_evilm("retrieve", "query", "--index", synth_dir, "a red circle", check=False)
    assert not_index.returncode == 2 and "is not an index directory" in not_index.stderr
    assert str(synth_dir) in not_index.stderr
    extend = run_evilm("retrieve", "index", "--checkpoint", other, "--manifest", synth_dir / "val.jsonl", "--out",
                       index, "--workers", "0", check=False)
    assert extend.returncode == 2 and "built with another model" in extend.stderr
    frames = run_evilm("retrieve", "index", "--checkpoint", other, "--manifest", synth_dir / "val.jsonl", "--out",
                       tmp_path / "frames", "--frames", "64", "--workers", "0", check=False)
    assert frames.returncode == 2 and "--frames 64: the model of" in frames.stderr and "takes 1 to" in frames.stderr
    assert not (tmp_path / "frames" / "index.yaml").exists()  # nothing written that would fix 64 frames
