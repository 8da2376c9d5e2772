"""The index's files as faults leave them (retrieval/index.py): consolidation killed at every
file operation is rolled forward or back to the uninterrupted result, the lock dies with its
process, damaged embeddings name the file, and keys with tabs, line breaks or non-UTF-8 bytes
round-trip as one line each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evilm_core.errors import EvilmError
from evilm_core.retrieval import index as ix
from tests.helpers.cli import hold_lock

KEYS = ["a.mp4", "tab\tname.mp4", "line\nbreak.mp4", "bad\udcffbyte.mp4", "back\\slash.mp4", "ü.mp4"]


def _build(directory: Path) -> ix.IndexMeta:
    directory.mkdir(parents=True)
    meta = ix.IndexMeta(ix.FORMAT, "0" * 64, "ckpt", 3, 4, 64, str(directory))
    ix.write_meta(directory, meta)
    g = torch.Generator().manual_seed(0)
    for p in range(3):
        ix.write_part(directory, f"p{p}", KEYS[2 * p:2 * p + 2], torch.randn(2, 3, generator=g))
    return meta


def _contents(directory: Path) -> tuple[list[str], torch.Tensor]:
    view = ix.IndexView(directory)
    return list(view.keys), torch.cat([torch.from_numpy(b.copy()) for b in view.blocks])


class Kill(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_consolidation_killed_at_any_file_operation_loses_nothing(tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    ix.consolidate(ref, _build(ref))
    want_keys, want_rows = _contents(ref)
    assert want_keys == KEYS and ix.read_meta(ref).count == 6 and not list((ref / ix.PARTS).iterdir())
    calls = {"n": 0, "kill_at": 0}
    real = {"replace": ix.os.replace, "unlink": Path.unlink, "save": ix.save_file, "text": ix.atomic_write_text}

    def counted(name):
        def op(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["kill_at"]:
                raise Kill
            return real[name](*args, **kwargs)
        return op

    kill_at = 1
    while True:
        d = tmp_path / f"cut{kill_at}"
        meta = _build(d)
        calls.update(n=0, kill_at=kill_at)
        monkeypatch.setattr(ix.os, "replace", counted("replace"))
        monkeypatch.setattr(Path, "unlink", counted("unlink"))
        monkeypatch.setattr(ix, "save_file", counted("save"))
        monkeypatch.setattr(ix, "atomic_write_text", counted("text"))
        try:
            ix.consolidate(d, meta)
            finished = True
        except Kill:
            finished = False
        monkeypatch.undo()
        keys, rows = _contents(d)  # a reader after the kill sees every row once
        assert keys == want_keys and torch.equal(rows, want_rows), kill_at
        ix.consolidate(d, ix.read_meta(d))  # and the next run finishes the job
        assert (d / ix.KEYS).read_bytes() == (ref / ix.KEYS).read_bytes(), kill_at
        assert (d / ix.EMBEDDINGS).read_bytes() == (ref / ix.EMBEDDINGS).read_bytes(), kill_at
        assert ix.read_meta(d).count == 6 and not list((d / ix.PARTS).iterdir())
        assert not (d / ix.JOURNAL).exists() and not (d / (ix.EMBEDDINGS + ix.NEXT)).exists()
        if finished:
            break
        kill_at += 1
    assert kill_at > 8  # every step of the fold was cut once


def test_the_lock_dies_with_its_process(tmp_path):
    d = tmp_path / "idx"
    meta = _build(d)
    holder = hold_lock(d / ix.LOCK)
    assert ix.consolidate(d, meta) is False  # a live holder: another shard is folding
    holder.kill()
    holder.wait()
    assert (d / ix.LOCK).exists()  # the file stays, the lock does not
    assert ix.consolidate(d, meta) is True and ix.read_meta(d).count == 6


def test_keys_and_skipped_lines_stay_one_line_each(tmp_path):
    d = tmp_path / "idx"
    ix.consolidate(d, _build(d))
    assert (d / ix.EMBEDDINGS).stat().st_mode & 0o044 and (d / ix.KEYS).stat().st_mode & 0o044  # not 0600
    lines = (d / ix.KEYS).read_bytes().decode("utf-8").split("\n")
    assert len(lines) == 7 and "tab\\tname.mp4" in lines and "bad\\xffbyte.mp4" in lines
    ix.record_skipped(d, [("x\ty\udcfe.mp4", "corrupt", "moov atom\nnot found")])
    (row,) = (d / ix.SKIPPED).read_text(encoding="utf-8").splitlines()
    assert row.split("\t") == ["x\\ty\\xfe.mp4", "corrupt", "moov atom not found"]
    assert ix.skipped_keys(d) == {"x\ty\udcfe.mp4"}


def test_damaged_embeddings_name_the_file(tmp_path):
    d = tmp_path / "idx"
    ix.consolidate(d, _build(d))
    emb = d / ix.EMBEDDINGS
    emb.write_bytes(emb.read_bytes()[:-8])  # truncated
    with pytest.raises(EvilmError, match=rf"{emb} is damaged or truncated.*shorter than its header"):
        ix.IndexView(d)
    emb.write_bytes(b"\xff" * 40)  # garbage
    with pytest.raises(EvilmError, match=rf"{emb} is damaged or truncated"):
        ix.IndexView(d)
    (d / ix.KEYS).write_bytes(b"ok\n\xff\xfe\n")  # keys.txt replaced: its offsets no longer fit
    with pytest.raises(EvilmError, match=r"keys.offsets does not match .*keys.txt.*rebuild"):
        ix.IndexView(d)
