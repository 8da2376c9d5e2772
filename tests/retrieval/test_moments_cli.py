"""`evilm retrieve index --window` and moments in `evilm retrieve query`, as a user runs them,
on the synthetic long videos (tests/conftest.py `long_dir`) with a tiny random-weight model:
the rows and their times, the embeddings against embed_video on the same frames, workers,
shards, ANN, the moment output and contact sheet, and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from evilm_core.data.video.read import read_frames
from evilm_core.data.windows import WindowSpec, plan_windows, probe
from tests.helpers.cli import last_json, run_evilm
from tests.retrieval.test_retrieve_cli import query_lines, write_model

WINDOW = ["--window", "2", "--stride", "1"]


def build(model: Path, manifest: Path, out: Path, *extra) -> dict:
    return last_json(run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", manifest, "--out", out,
                               "--workers", "0", "--precision", "fp32", "--part-size", "8", *extra, "--json").stdout)


def rows(index: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    tensors = load_file(str(index / "embeddings.safetensors"))
    return (index / "keys.txt").read_text().split("\n")[:-1], tensors["embeddings"], tensors["windows"]


@pytest.fixture(scope="module")
def model(synth_dir, tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("moments") / "model", synth_dir, seed=0)


@pytest.fixture(scope="module")
def windows(model, long_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("moments_index") / "index"
    return out, build(model, long_dir / "moments.jsonl", out, *WINDOW)


def test_rows_are_the_windows_of_each_video_with_their_times(windows, long_dir):
    index, summary = windows
    keys, emb, times = rows(index)
    videos = list(dict.fromkeys(json.loads(line)["video"] for line in (long_dir / "moments.jsonl").open()))
    assert summary["complete"] and summary["embedded"] == len(keys) == summary["windows"]
    assert list(dict.fromkeys(keys)) == videos  # each video's rows together, in collection order
    meta = (index / "index.yaml").read_text()
    assert "format: evilm-index/2" in meta and "window: 2.0" in meta and "stride: 1.0" in meta
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    for video in videos:
        mine = times[[k == video for k in keys]]
        plan = plan_windows(*probe(str(long_dir / video), "pyav"), WindowSpec(2, 1, 4))
        assert np.array_equal(mine, plan.times)  # [start, end, duration] in time order
        assert mine[0, 0] == 0 and mine[-1, 1] == mine[-1, 2]  # the whole video is covered


def test_window_embeddings_equal_embed_video_on_the_windows_frames(windows, model, long_dir):
    """The per-frame backbone is shared between windows, yet each row is what embed_video gives
    for the window's own frames (the segment centres within it)."""
    from evilm_core.models.loading import load_checkpoint

    index, _ = windows
    keys, emb, _ = rows(index)
    net = load_checkpoint(model).model.eval()
    video = keys[0]
    plan = plan_windows(*probe(str(long_dir / video), "pyav"), WindowSpec(2, 1, 4))
    from evilm_core.data.transforms import normalize

    for k in (0, 3, len(plan) - 1):
        clip = read_frames(long_dir / video, lambda n, k=k: plan.frames[k].tolist(), 64)
        with torch.no_grad():
            want = net.embed_video(normalize(clip.frames)[None]).numpy()[0]
        assert np.allclose(emb[k], want, atol=1e-5), k


def build_here(model: Path, manifest: Path, out: Path, **extra) -> dict:
    """build_index in this process: for the inputs a test needs, not the command under test."""
    from evilm_core.retrieval.build import IndexRequest, build_index

    return build_index(IndexRequest(str(model), str(out), manifest=str(manifest), num_workers=0, precision="fp32",
                                    device="cpu", threads=1, **extra))


def test_shorter_video_is_one_row_equal_to_the_plain_index(model, synth_dir, tmp_path):
    """A 1 s clip under 2 s windows is one row [0, 1], with the frames a plain index takes."""
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"video": str(synth_dir / "videos" / "00000.mp4")}) + "\n")
    summary = build(model, manifest, tmp_path / "w", *WINDOW)
    assert summary["short"] == 1 and summary["embedded"] == 1
    build_here(model, manifest, tmp_path / "plain")
    _, emb, times = rows(tmp_path / "w")
    assert times.tolist() == [[0.0, 1.0, 1.0]]
    assert np.array_equal(emb, load_file(str(tmp_path / "plain" / "embeddings.safetensors"))["embeddings"])


def test_workers_shards_ann_and_resume_give_the_same_rows(windows, model, long_dir, tmp_path):
    """Shard 1/2 embedded by two CPU workers (each decodes and embeds its spans), shard 0/2 in
    one process with --ann: the folded-in index holds the one-process rows, each video's rows
    together and in time order; the ANN index answers as the exact scan; a re-run does nothing."""
    from evilm_core.retrieval.query import Searcher

    index, _ = windows
    keys, emb, times = rows(index)
    out = tmp_path / "sharded"
    first = last_json(run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", long_dir / "moments.jsonl",
                                "--out", out, *WINDOW, "--shard", "1/2", "--workers", "2", "--threads", "2",
                                "--precision", "fp32", "--json").stdout)
    assert not first["complete"] and (out / "parts").is_dir()
    second = build(model, long_dir / "moments.jsonl", out, *WINDOW, "--shard", "0/2", "--ann", "faiss-hnsw")
    assert second["complete"] and first["embedded"] + second["embedded"] == len(keys)
    got, got_emb, got_times = rows(out)
    assert sorted(zip(got, got_times[:, 0])) == sorted(zip(keys, times[:, 0]))
    for video in set(got):  # each video's rows are one run, in time order, whichever shard wrote them
        at = [i for i, k in enumerate(got) if k == video]
        assert at == list(range(at[0], at[-1] + 1)) and list(got_times[at, 0]) == sorted(got_times[at, 0])
        mine = [i for i, k in enumerate(keys) if k == video]
        assert np.allclose(got_emb[at], emb[mine], atol=1e-5) and np.array_equal(got_times[at], times[mine])
    assert second["ann"]["kind"] == "faiss-hnsw"
    query = ["a blue star grows on a gray background"]
    exact, ann = Searcher(out, exact=True, threads=1), Searcher(out, threads=1)
    assert ann.ann is not None and ann.search(query, 3) == exact.search(query, 3)  # HNSW finds a few dozen rows
    again = build(model, long_dir / "moments.jsonl", out, *WINDOW)
    assert again["embedded"] == 0 and again["already"] == 3  # nothing left to do


def test_query_gives_moments_with_times_and_a_contact_sheet(windows, tmp_path):
    from PIL import Image

    index, _ = windows
    sheet = tmp_path / "sheet.png"
    lines = query_lines(index, "-k", 4, "--per-video", 2, "a red circle moves left on a black background",
                        "--contact-sheet", sheet)
    fields = [line.split("\t") for line in lines]
    assert len(fields) == 4 and all(len(f) == 6 for f in fields)
    keys, _, times = rows(index)
    for f in fields:
        start, end = float(f[4]), float(f[5])
        video = times[[k == f[2] for k in keys]]
        assert start in video[:, 0] and end in video[:, 1] and start < end
    assert max(sum(f[2] == key for f in fields) for key in keys) <= 2  # --per-video 2
    scores = [float(f[3]) for f in fields]
    assert scores == sorted(scores, reverse=True)
    assert Image.open(sheet).size[0] >= 4 * 3 * 160  # three frames from inside each moment
    hits = [json.loads(line) for line in query_lines(index, "-k", 2, "--json", "a blue star grows")]
    assert all(set(h) == {"query", "rank", "key", "score", "start", "end"} for h in hits)


def test_moments_merge_neighbouring_windows(windows):
    """--merge 1 merges down to each video's median window, --merge 0 only windows scoring the
    peak exactly (windows of the same frames): merged moments are longer; the best moment of
    each video peaks at its best window whatever the merge."""
    from evilm_core.retrieval.query import Searcher

    index, _ = windows
    query = ["a blue star grows"]
    single = Searcher(index, merge=0.0, per_video=3, threads=1).search(query, 9)[0]
    merged = Searcher(index, merge=1.0, per_video=3, threads=1).search(query, 9)[0]
    assert sum(h.end - h.start for h in merged) > sum(h.end - h.start for h in single)
    assert max(h.end - h.start for h in merged) > 2.0
    for key in {h.key for h in single}:
        assert max(h.score for h in merged if h.key == key) == pytest.approx(max(h.score for h in single
                                                                                 if h.key == key))


def test_bad_windows_give_clear_errors(windows, model, long_dir, synth_dir, tmp_path):
    from evilm_core.errors import EvilmError
    from evilm_core.retrieval.build import IndexRequest
    from evilm_core.retrieval.query import check_moment_options

    index, _ = windows
    manifest = long_dir / "moments.jsonl"
    proc = run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", manifest, "--out", tmp_path / "bad",
                     "--window", "2", "--stride", "0", check=False)
    assert proc.returncode == 2 and "--stride 0.0: the stride must be more than 0 and at most the window" in \
        proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()
    for window, stride, message in ((2, 3, "at most the window"), (0, None, "a positive number of seconds"),
                                    (None, 1, "--stride applies to a window index")):
        with pytest.raises(EvilmError, match=message):
            IndexRequest(str(model), str(tmp_path / "bad"), window=window, stride=stride).window_spec()
    plain = tmp_path / "plain"
    build_here(model, synth_dir / "test.jsonl", plain)
    proc = run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", manifest, "--out", plain, *WINDOW,
                     check=False)
    assert proc.returncode == 2 and "was built without --window" in proc.stderr
    proc = run_evilm("retrieve", "index", "--checkpoint", model, "--manifest", manifest, "--out", index, check=False)
    assert proc.returncode == 2 and "holds 2 s windows at a 1 s stride" in proc.stderr
    proc = run_evilm("retrieve", "query", "--index", plain, "--per-video", "2", "a blue star", check=False)
    assert proc.returncode == 2 and "moments need a window index" in proc.stderr
    with pytest.raises(EvilmError, match="must be in"):
        check_moment_options(index, 2.0, None, 1.5)
