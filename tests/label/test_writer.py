"""The label cache writer (label/writer.py): the crash-safe preallocated layout and meta.json,
and the checks before a resumed run writes into an existing cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evilm_core.data.label_cache import CORRUPT, MISSING, OK
from evilm_core.errors import EvilmError
from evilm_core.label.writer import CacheWriter, make_meta
from tests.helpers.cli import hold_lock
from tests.helpers.label import INFO, KEYS, random_codes, read_bytes, write_cache


def test_layout_and_meta(tmp_path):
    write_cache(tmp_path / "c")
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

def test_resume_checks_meta_and_keys(tmp_path):
    write_cache(tmp_path / "c")
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


def test_write_batch_gives_the_bytes_of_row_writes_and_pending_shrinks(tmp_path):
    """write_batch (ok rows plus zero-filled skipped rows in one crash-safe write) leaves the same
    files as the row-by-row writes of write_cache; pending() lists what a resumed run still has to do."""
    write_cache(tmp_path / "ref")
    codes = random_codes(np.random.default_rng(0), 2)  # what write_cache wrote for rows 2 and 0
    frames = np.tile(np.arange(8, dtype=np.int32) * 2, (2, 1))
    w = CacheWriter(tmp_path / "c", make_meta(INFO, 8, True, 4, None, {"videos": "v"}), KEYS)
    rows = np.arange(4)
    assert not w.resumed and w.pending(rows) == [0, 1, 2, 3]
    w.write_batch([], None, None, None, [(1, MISSING)])  # a batch with no usable clip
    assert w.pending(rows) == [0, 2, 3]
    w.write_batch([2, 0], codes, frames, np.array([16, 16], np.int32), [(3, CORRUPT)])
    assert w.pending(rows) == [] and w.pending(np.array([1, 3])) == []
    counts, usage = w.summary(np.array([0, 1]))
    assert counts == {"pending": 0, "ok": 1, "missing": 1, "corrupt": 0}
    assert usage == pytest.approx(len(np.unique(codes[1, 0])) / 50)  # row 0's unflipped codes only
    w.close()
    assert read_bytes(tmp_path / "c") == read_bytes(tmp_path / "ref")


def test_a_second_writer_of_the_same_cache_is_refused_while_the_first_lives(tmp_path):
    write_cache(tmp_path / "c")
    holder = hold_lock(tmp_path / "c" / ".label.lock")
    meta = make_meta(INFO, 8, True, 4, None, None)
    with pytest.raises(EvilmError, match="another `evilm label` is writing .* right now"):
        CacheWriter(tmp_path / "c", meta, KEYS)
    holder.kill()
    holder.wait()
    CacheWriter(tmp_path / "c", meta, KEYS).close()  # the lock died with its process
