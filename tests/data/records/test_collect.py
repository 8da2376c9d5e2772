"""Which videos a whole-collection command works on (data/records/collect.py) and which part
of them one process takes (data/work_split.py, `--shard i/n`)."""

from __future__ import annotations

import json

import pytest

from evilm_core.data.records.collect import collect_videos
from evilm_core.data.work_split import WorkSplit
from evilm_core.errors import EvilmError
from tests.helpers.label import assets


@pytest.fixture(scope="module")
def a(tmp_path_factory):
    return assets(tmp_path_factory)


def test_work_split_parses_i_of_n():
    assert WorkSplit.parse("0/4") == WorkSplit(0, 4) and WorkSplit.parse("3/4") == WorkSplit(3, 4)
    assert WorkSplit.parse(None) is None and WorkSplit.parse((1, 2)) == WorkSplit(1, 2) and str(WorkSplit(1, 2)) == "1/2"
    for bad in ("4/4", "1/0", "a/b", "2", "-1/3"):
        with pytest.raises(EvilmError, match="--shard must be i/n"):
            WorkSplit.parse(bad)


def test_work_split_takes_every_nth_item_and_the_parts_partition():
    items = list(range(10))
    assert WorkSplit(1, 4).take(items) == [1, 5, 9]
    parts = [WorkSplit(i, 3).take(items) for i in range(3)]
    assert sorted(sum(parts, [])) == items and all(len(s) in (3, 4) for s in parts)


def test_collect_videos_from_a_directory(a):
    keys, paths, source = collect_videos(videos=a["data"] / "videos")
    assert keys == sorted(keys) and "empty.mp4" in keys and "00000.mp4" in keys and len(keys) == 15
    assert paths[0] == str(a["data"] / "videos" / keys[0]) and source["videos"]
    with pytest.raises(EvilmError, match="exactly one of --videos DIR or --manifest FILE"):
        collect_videos()
    with pytest.raises(EvilmError, match="no video files"):
        collect_videos(videos=a["tok"])


def test_collect_videos_from_a_manifest_keeps_distinct_keys_in_order(a, tmp_path):
    keys, paths, source = collect_videos(manifest=a["mixed"])  # 12 clean + 4 broken, clean[0] twice
    assert keys == a["clean_videos"][:5] + a["broken"] + a["clean_videos"][5:]
    assert paths == [str(a["data"] / k) for k in keys]  # relative keys resolve against the manifest's dir
    assert source["manifest"] == str(a["mixed"].absolute()) and source["root"] == str(a["data"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "x/1.mp4"}) + "\n")
    keys, paths, _ = collect_videos(manifest=manifest, root=tmp_path / "videos")
    assert keys == ["x/1.mp4"] and paths == [str(tmp_path / "videos" / "x" / "1.mp4")]
    with pytest.raises(EvilmError, match="--root applies to --manifest only"):
        collect_videos(videos=a["data"] / "videos", root=tmp_path)
