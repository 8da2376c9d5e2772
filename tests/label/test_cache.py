"""Label cache format: writer/reader round trip, crash-safe layout, resume checks, validation,
candidate choice. Synthetic codes; the tokenizer runs are in test_labeler.py."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from evilm_core.errors import EvilmError
from evilm_core.data.collect import parse_shard
from evilm_core.data.label_cache import CORRUPT, MISSING, OK, CacheKeyError, LabelCache, choose_candidates
from evilm_core.label.writer import CacheWriter, make_meta

INFO = {"sha256": "a" * 64, "dir": "/tok", "codebook_size": 50, "image_size": 64, "grid": 2}
KEYS = ["v/0.mp4", "v/1.mp4", "v/2.mp4", "v/3.mp4"]


def _codes(rng, n, v=2, f=8, g=2):
    return rng.integers(0, 50, (n, v, f, g, g)).astype(np.uint16)


def _write_cache(directory, flips=True, keys=KEYS):
    """Rows 0, 2 ok; row 1 missing; row 3 corrupt. Returns the ok codes written."""
    rng = np.random.default_rng(0)
    w = CacheWriter(directory, make_meta(INFO, 8, flips, len(keys), None, {"videos": "v"}), keys)
    codes = _codes(rng, 2, v=2 if flips else 1)
    frames = np.tile(np.arange(8, dtype=np.int32) * 2, (2, 1))
    w.write([2, 0], codes, frames, np.array([16, 16], np.int32), np.array([OK, OK], np.uint8))
    zeros = np.zeros((2, *codes.shape[1:]), np.uint16)
    w.write([1, 3], zeros, np.zeros((2, 8), np.int32), np.zeros(2, np.int32), np.array([MISSING, CORRUPT], np.uint8))
    w.close()
    return {2: codes[0], 0: codes[1]}


def test_layout_and_meta(tmp_path):
    _write_cache(tmp_path / "c")
    d = tmp_path / "c"
    meta = json.loads((d / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["variants"] == ["orig", "hflip"] and meta["dtype"] == "uint16"
    assert meta["num_candidates"] == 8 and meta["grid"] == 2 and meta["shard"] is None
    assert meta["candidate_rule"] == "segment-centres" and meta["tokenizer_sha256"] == "a" * 64
    assert (d / "keys.txt").read_text().splitlines() == KEYS
    assert (d / "codes.u16").stat().st_size == 4 * 2 * 8 * 2 * 2 * 2
    assert (d / "frames.i32").stat().st_size == 4 * 8 * 4 and (d / "nframes.i32").stat().st_size == 16
    assert list((d / "status.u8").read_bytes()) == [OK, MISSING, OK, CORRUPT]
    mm = np.memmap(d / "codes.u16", dtype="<u2", mode="r", shape=(4, 2, 8, 2, 2))
    assert mm[1].max() == 0  # skipped rows are zero-filled


def test_reader_round_trip(tmp_path):
    written = _write_cache(tmp_path / "c")
    cache = LabelCache.open(tmp_path / "c")
    assert len(cache) == 4 and cache.keys == KEYS and "v/9.mp4" not in cache
    assert [cache.status(k) for k in KEYS] == ["ok", "missing", "ok", "corrupt"]
    codes, frames, n = cache.entry("v/2.mp4")
    assert codes.dtype == np.uint16 and codes.shape == (2, 8, 2, 2) and np.array_equal(codes, written[2])
    assert frames.dtype == np.int32 and frames.tolist() == list(range(0, 16, 2)) and n == 16
    assert cache.counts() == {"pending": 0, "ok": 2, "missing": 1, "corrupt": 1}
    seen = np.unique(np.concatenate([written[0][0].ravel(), written[2][0].ravel()]))
    assert cache.usage() == pytest.approx(len(seen) / 50)
    with pytest.raises(CacheKeyError, match="v/1.mp4.*missing"):
        cache.entry("v/1.mp4")
    with pytest.raises(KeyError, match="v/9.mp4"):
        cache.status("v/9.mp4")


def test_targets_and_flips(tmp_path):
    written = _write_cache(tmp_path / "c")
    cache = LabelCache.open(tmp_path / "c")
    t = cache.targets("v/0.mp4", [1, 3, 5, 7], flipped=False)
    assert t.dtype == torch.long and t.shape == (4, 2, 2)
    assert torch.equal(t, torch.from_numpy(written[0][0, [1, 3, 5, 7]].astype(np.int64)))
    tf = cache.targets("v/0.mp4", [0, 2, 4, 6], flipped=True)
    assert torch.equal(tf, torch.from_numpy(written[0][1, [0, 2, 4, 6]].astype(np.int64)))
    with pytest.raises(EvilmError, match="out of range"):
        cache.targets("v/0.mp4", [8], flipped=False)
    _write_cache(tmp_path / "noflip", flips=False)
    plain = LabelCache.open(tmp_path / "noflip")
    assert plain.targets("v/0.mp4", [0], flipped=False).shape == (1, 2, 2)
    with pytest.raises(EvilmError, match="--flips"):
        plain.targets("v/0.mp4", [0], flipped=True)
    with pytest.raises(EvilmError, match="--flips"):
        plain.validate(need_flips=True)


def test_choose_candidates():
    assert choose_candidates(8, 4, "eval") == [1, 3, 5, 7]
    assert choose_candidates(8, 8, "eval") == list(range(8))
    assert choose_candidates(8, 1, "eval") == [4]
    rng = np.random.default_rng(0)
    draws = [choose_candidates(8, 4, "train", rng) for _ in range(200)]
    for d in draws:
        assert [c // 2 for c in d] == [0, 1, 2, 3]  # one candidate per group of F/T = 2
    assert {tuple(d) for d in draws} == {(a, b, c, e) for a in (0, 1) for b in (2, 3) for c in (4, 5) for e in (6, 7)}
    with pytest.raises(EvilmError, match="8 candidate frames.*3 equal groups"):
        choose_candidates(8, 3, "train")


def test_validate_names_both_values(tmp_path):
    _write_cache(tmp_path / "c")
    cache = LabelCache.open(tmp_path / "c")
    cache.validate(tokenizer_sha256="a" * 64, codebook_size=50, image_size=64, grid=2, num_candidates=8,
                   need_flips=True)
    with pytest.raises(EvilmError) as err:
        cache.validate(tokenizer_sha256="b" * 64, codebook_size=9420, image_size=256, grid=8, num_candidates=16)
    msg = str(err.value)
    for cached, wanted in [("a" * 64, "b" * 64), ("50", "9420"), ("64", "256"), ("2", "8"), ("8", "16")]:
        assert cached in msg and wanted in msg
    assert "tokenizer_sha256" in msg and "codebook_size" in msg and "image_size" in msg


def test_open_errors(tmp_path):
    with pytest.raises(EvilmError, match="does not exist"):
        LabelCache.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvilmError, match="not a label cache"):
        LabelCache.open(tmp_path / "empty")
    _write_cache(tmp_path / "sharded" / "shard-0-of-2")
    with pytest.raises(EvilmError, match=r"evilm label --merge --out .*sharded"):
        LabelCache.open(tmp_path / "sharded")
    _write_cache(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(EvilmError, match="format version 99"):
        LabelCache.open(tmp_path / "c")
    _write_cache(tmp_path / "t")
    with open(tmp_path / "t" / "codes.u16", "r+b") as f:
        f.truncate(10)
    with pytest.raises(EvilmError, match="codes.u16: 10 bytes, expected"):
        LabelCache.open(tmp_path / "t")


def test_resume_checks_meta_and_keys(tmp_path):
    _write_cache(tmp_path / "c")
    other = {**INFO, "sha256": "f" * 64}
    with pytest.raises(EvilmError, match=f"tokenizer_sha256: cache has '{'a' * 64}', this run has '{'f' * 64}'"):
        CacheWriter(tmp_path / "c", make_meta(other, 8, True, 4, None, None), KEYS)
    with pytest.raises(EvilmError, match="num_candidates: cache has 8, this run has 4"):
        CacheWriter(tmp_path / "c", make_meta(INFO, 4, True, 4, None, None), KEYS)
    with pytest.raises(EvilmError, match="row 2 is 'v/2.mp4' in the cache but 'x.mp4'"):
        CacheWriter(tmp_path / "c", make_meta(INFO, 8, True, 4, None, None), KEYS[:2] + ["x.mp4"] + KEYS[3:])
    w = CacheWriter(tmp_path / "c", make_meta(INFO, 8, True, 4, None, None), KEYS)  # same inputs: resumes
    assert w.resumed and list(w.status) == [OK, MISSING, OK, CORRUPT]
    w.close()


def test_pickled_cache_reopens_maps(tmp_path):
    written = _write_cache(tmp_path / "c")
    cache = LabelCache.open(tmp_path / "c")
    blob = pickle.dumps(cache)
    assert len(blob) < 2000  # the memory maps are not copied into the pickle
    assert np.array_equal(pickle.loads(blob).entry("v/0.mp4")[0], written[0])


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4) and parse_shard(None) is None
    for bad in ("4/4", "1/0", "a/b", "2", "-1/3"):
        with pytest.raises(EvilmError, match="--shard must be i/n"):
            parse_shard(bad)
