"""`label_videos`: exactness against the online tokenizer, crash/resume, shards + merge,
undecodable clips, tokenizer mismatch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from evilm_core.data.label_cache import LabelCache, choose_candidates
from evilm_core.data.transforms import normalize
from evilm_core.data.video.read import read_clip
from evilm_core.errors import EvilmError
from evilm_core.label.labeler import run_label
from evilm_core.label.writer import merge_shards
from evilm_core.models.tokenizer import load_tokenizer
from evilm_core.prepare.synth import generate
from tests.helpers.label import assets, read_bytes

RUN = dict(num_candidates=8, num_workers=0, device="cpu")


@pytest.fixture(scope="module")
def a(tmp_path_factory):
    return assets(tmp_path_factory)


@pytest.fixture(scope="module")
def mixed_ref(a, tmp_path_factory):
    """The mixed manifest (12 clips + empty, garbage, short, missing), labelled with flips in one run."""
    out = tmp_path_factory.mktemp("ref") / "labels"
    summary = run_label(manifest=a["mixed"], tokenizer=a["tok"], out=out, flips=True, batch_size=3, **RUN)
    return out, summary


def _online(model, path, flipped):
    clip = read_clip(path, 8, 64, mode="eval")  # segment centres: the cache's candidates
    frames = np.ascontiguousarray(clip.frames[:, :, ::-1]) if flipped else clip.frames
    return model.encode(normalize(frames)[None])[0], clip


def test_cached_codes_equal_online_tokenizer(a, mixed_ref):
    out, _ = mixed_ref
    cache = LabelCache.open(out)
    model, info = load_tokenizer(a["tok"])
    cache.validate(tokenizer_sha256=info["sha256"], codebook_size=32, image_size=64, grid=2, num_candidates=8,
                   need_flips=True)
    for key in a["clean_videos"] + ["videos/short.mp4"]:
        codes, frames, nframes = cache.entry(key)
        for variant, flipped in ((0, False), (1, True)):
            online, clip = _online(model, a["data"] / key, flipped)  # one clip per call: batch-independent
            assert np.array_equal(codes[variant], online.numpy().astype(np.uint16)), (key, flipped)
        assert frames.tolist() == clip.indices and nframes == clip.num_video_frames
    assert cache.entry("videos/short.mp4")[2] == 3  # fewer frames than candidates: indices repeat
    assert cache.entry("videos/short.mp4")[1].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def test_targets_follow_candidates_and_flip(a, mixed_ref):
    cache = LabelCache.open(mixed_ref[0])
    model, _ = load_tokenizer(a["tok"])
    key = a["clean_videos"][4]
    ids = choose_candidates(8, 4, "train", np.random.default_rng(1))
    for flipped in (False, True):
        online, _ = _online(model, a["data"] / key, flipped)
        assert torch.equal(cache.targets(key, ids, flipped), online[ids])


def test_undecodable_clips_are_recorded_and_counted(a, mixed_ref):
    out, summary = mixed_ref
    cache = LabelCache.open(out)
    assert len(cache) == 16  # the duplicate manifest line is one key
    assert [cache.status(k) for k in a["broken"]] == ["corrupt", "corrupt", "ok", "missing"]
    assert summary["videos"] == 16 and summary["labelled"] == 13 and summary["newly_labelled"] == 13
    assert summary["skipped"] == 3 and summary["missing"] == 1 and summary["corrupt"] == 2
    assert 0 < summary["codebook_usage"] <= 1 and summary["codebook_usage"] == round(cache.usage(), 6)
    with pytest.raises(EvilmError, match="nope.mp4.*missing"):
        cache.entry("videos/nope.mp4")
    again = run_label(manifest=a["mixed"], tokenizer=a["tok"], out=out, flips=True, batch_size=3, **RUN)
    assert again["newly_labelled"] == 0 and again["labelled"] == 13  # nothing left: a no-op resume


def test_shards_merge_to_the_unsharded_cache(a, mixed_ref, tmp_path):
    out = tmp_path / "labels"
    for i in (0, 1):
        s = run_label(manifest=a["mixed"], tokenizer=a["tok"], out=out, flips=True, batch_size=2, split=f"{i}/2", **RUN)
        assert s["out"] == str(out / f"shard-{i}-of-2") and s["videos"] == 8 and s["shard"] == f"{i}/2"
    with pytest.raises(EvilmError, match="evilm label --merge --out"):
        LabelCache.open(out)
    shutil.copytree(out, tmp_path / "spare")
    merged = merge_shards(out)
    assert merged["videos"] == 16 and merged["labelled"] == 13 and merged["skipped"] == 3
    assert read_bytes(out) == read_bytes(mixed_ref[0])
    assert LabelCache.open(out).meta["shard"] is None

    spare = tmp_path / "spare"
    status = spare / "shard-1-of-2" / "status.u8"
    raw = bytearray(status.read_bytes())
    raw[5] = 0  # row 5 belongs to shard 1: make it pending again
    status.write_bytes(bytes(raw))
    with pytest.raises(EvilmError, match=r"shard 1/2 .*shard-1-of-2\) is incomplete: 1 of 8"):
        merge_shards(spare)
    shutil.rmtree(spare / "shard-1-of-2")
    with pytest.raises(EvilmError, match=r"shard 1/2 .*missing"):
        merge_shards(spare)


def test_other_tokenizer_is_rejected(a, mixed_ref):
    out = mixed_ref[0]
    cache = LabelCache.open(out)
    _, info_a = load_tokenizer(a["tok"])
    _, info_b = load_tokenizer(a["tok_b"])
    _, info_big = load_tokenizer(a["tok_big"])
    assert info_a["sha256"] != info_b["sha256"]
    with pytest.raises(EvilmError) as err:
        cache.validate(tokenizer_sha256=info_b["sha256"])
    assert info_a["sha256"] in str(err.value) and info_b["sha256"] in str(err.value)
    with pytest.raises(EvilmError) as err:
        cache.validate(tokenizer_sha256=info_big["sha256"], image_size=info_big["image_size"],
                       codebook_size=info_big["codebook_size"], grid=info_big["grid"])
    msg = str(err.value)
    assert "image_size: cache has 64, expected 96" in msg and "codebook_size: cache has 32, expected 48" in msg
    assert "grid: cache has 2, expected 3" in msg
    with pytest.raises(EvilmError, match=f"tokenizer_sha256: cache has '{info_a['sha256']}', "
                                         f"this run has '{info_b['sha256']}'"):
        run_label(manifest=a["mixed"], tokenizer=a["tok_b"], out=out, flips=True, **RUN)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    generate(root, num_videos=36, frames=8, size=64, workers=1)
    return root / "videos"


def _kill_midway(cmd: list[str], out, attempts: int = 3) -> np.ndarray:
    """Start `cmd`, SIGKILL it once status.u8 shows some rows done but not all; the status seen after."""
    for _ in range(attempts):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "meta.json").exists():
                done = np.count_nonzero(np.fromfile(out / "status.u8", np.uint8))
                if 0 < done < 36:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.0005)
        proc.wait()
        status = np.fromfile(out / "status.u8", np.uint8) if (out / "status.u8").exists() else None
        if proc.returncode == -signal.SIGKILL and status is not None and 0 < np.count_nonzero(status) < 36:
            return status
    pytest.fail("the labelling run always finished before it could be killed")


def test_sigkill_then_resume_is_byte_identical(a, many, tmp_path):
    ref = tmp_path / "ref"
    run_label(videos=many, tokenizer=a["tok"], out=ref, flips=True, batch_size=16, **RUN)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "evilm_cli.main", "label", "--videos", str(many), "--tokenizer", str(a["tok"]),
           "--out", str(out), "--flips", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    status = _kill_midway(cmd, out)
    done = np.flatnonzero(status)
    # every row marked done is complete; the others are pending
    for name, dtype, shape in (("codes.u16", "<u2", (36, 2, 8, 2, 2)), ("frames.i32", "<i4", (36, 8))):
        got, want = (np.fromfile(d / name, dtype).reshape(shape) for d in (out, ref))
        assert np.array_equal(got[done], want[done])
    resumed = run_label(videos=many, tokenizer=a["tok"], out=out, flips=True, batch_size=5, **RUN)
    assert resumed["newly_labelled"] == 36 - len(done) and resumed["labelled"] == 36
    assert read_bytes(out) == read_bytes(ref)


def test_a_tokenizer_with_nan_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from evilm_core.errors import EvilmError
    from evilm_core.models.tokenizer import load_tokenizer
    from tests.helpers.label import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok", codebook_size=16)
    weights = load_file(str(tok / "model.safetensors"))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))  # what a diverged tokenizer run exports
    save_file(weights, str(tok / "model.safetensors"))
    with pytest.raises(EvilmError, match="tokenizer weight tensors are NaN or infinite .*Retrain it"):
        load_tokenizer(tok)
