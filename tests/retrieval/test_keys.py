"""An index's key list read through memory maps (evilm_core/retrieval/keys.py)."""

from __future__ import annotations

import numpy as np
import pytest

from evilm_core.errors import EvilmError
from evilm_core.retrieval.keys import KeyList, Keys, offsets_path, write_keys

ODD = ["a.mp4", "dir/b c.mp4", "tab\there.mp4", "line\nbreak.mp4", "caf\u00e9.mp4", "bad\udcffbyte.mp4", "z.mp4"]


def test_lookup_decodes_one_line_and_round_trips_odd_names(tmp_path):
    path = tmp_path / "keys.txt"
    write_keys(path, ODD, offsets=True)
    keys = KeyList(path)
    assert len(keys) == len(ODD) and list(keys) == ODD
    assert keys[3] == "line\nbreak.mp4" and keys[-1] == "z.mp4" and keys[1:3] == ODD[1:3]
    with pytest.raises(IndexError):
        keys[len(ODD)]


def test_an_index_without_offsets_is_refused(tmp_path):
    path = tmp_path / "keys.txt"
    write_keys(path, ODD)
    with pytest.raises(EvilmError, match="keys.offsets is missing.*rebuild it"):
        KeyList(path)


def test_offsets_that_do_not_match_name_the_file(tmp_path):
    path = tmp_path / "keys.txt"
    write_keys(path, ODD, offsets=True)
    path.write_text(path.read_text() + "extra.mp4\n")
    with pytest.raises(EvilmError, match="keys.offsets does not match"):
        KeyList(path)


def test_empty_and_pending_keys(tmp_path):
    empty = KeyList(tmp_path / "none.txt")
    assert len(empty) == 0
    keys = Keys(empty, ["p1", "p2"])
    assert len(keys) == 2 and keys[1] == "p2" and keys[-2] == "p1"
    write_keys(tmp_path / "keys.txt", ["c0"], offsets=True)
    both = Keys(KeyList(tmp_path / "keys.txt"), ["p1"])
    assert [both[i] for i in range(len(both))] == ["c0", "p1"]


def test_a_line_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_bytes(b"ok\n\xff\xfe\n")
    np.asarray([0, 3, 6], dtype="<i8").tofile(offsets_path(path))
    keys = KeyList(path)
    assert keys[0] == "ok"
    with pytest.raises(EvilmError, match=r"keys.txt: line 2 is not UTF-8 text \(byte 3\)"):
        keys[1]
