"""The label cache reader (data/label_cache.py): round trip, MVM targets and flips, candidate
choice, validation against a run, open errors, pickling. The cache is hand-written (synthetic
codes); the tokenizer runs are in tests/label/test_labeler.py."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from evilm_core.data.label_cache import CacheKeyError, LabelCache, choose_candidates
from evilm_core.errors import EvilmError
from tests.helpers.label import KEYS, write_cache


def test_reader_round_trip(tmp_path):
    written = write_cache(tmp_path / "c")
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
    written = write_cache(tmp_path / "c")
    cache = LabelCache.open(tmp_path / "c")
    t = cache.targets("v/0.mp4", [1, 3, 5, 7], flipped=False)
    assert t.dtype == torch.long and t.shape == (4, 2, 2)
    assert torch.equal(t, torch.from_numpy(written[0][0, [1, 3, 5, 7]].astype(np.int64)))
    tf = cache.targets("v/0.mp4", [0, 2, 4, 6], flipped=True)
    assert torch.equal(tf, torch.from_numpy(written[0][1, [0, 2, 4, 6]].astype(np.int64)))
    with pytest.raises(EvilmError, match="out of range"):
        cache.targets("v/0.mp4", [8], flipped=False)
    write_cache(tmp_path / "noflip", flips=False)
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
    write_cache(tmp_path / "c")
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
    write_cache(tmp_path / "sharded" / "shard-0-of-2")
    with pytest.raises(EvilmError, match=r"evilm label --merge --out .*sharded"):
        LabelCache.open(tmp_path / "sharded")
    write_cache(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(EvilmError, match="format version 99"):
        LabelCache.open(tmp_path / "c")
    write_cache(tmp_path / "t")
    with open(tmp_path / "t" / "codes.u16", "r+b") as f:
        f.truncate(10)
    with pytest.raises(EvilmError, match="codes.u16: 10 bytes, expected"):
        LabelCache.open(tmp_path / "t")

def test_pickled_cache_reopens_maps(tmp_path):
    written = write_cache(tmp_path / "c")
    cache = LabelCache.open(tmp_path / "c")
    blob = pickle.dumps(cache)
    assert len(blob) < 2000  # the memory maps are not copied into the pickle
    assert np.array_equal(pickle.loads(blob).entry("v/0.mp4")[0], written[0])


def test_pickled_cache_carries_key_hashes_not_the_key_list(tmp_path):
    """Workers get 16 bytes per key (sorted 64-bit hashes and rows), and find the same rows."""
    write_cache(tmp_path / "c")
    cache = LabelCache.open(tmp_path / "c")
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.keys is None and copy._index is None  # no Python object per key in a worker
    assert [copy.row(k) for k in KEYS] == [cache.row(k) for k in KEYS] == list(range(len(KEYS)))
    assert "v/0.mp4" in copy and "not/a/key.mp4" not in copy and len(copy) == len(KEYS)
    with pytest.raises(CacheKeyError, match="not in the label cache"):
        copy.row("not/a/key.mp4")
