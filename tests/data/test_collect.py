"""Which videos a whole-collection command works on (data/collect.py): `--shard i/n` parsing and
ownership, and the keys of a video directory or a manifest."""

from __future__ import annotations

import json

import pytest

from evilm_core.data.collect import collect_videos, parse_shard, shard_of
from evilm_core.errors import EvilmError
from tests.helpers.label import assets


@pytest.fixture(scope="module")
def a(tmp_path_factory):
    return assets(tmp_path_factory)


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4) and parse_shard(None) is None
    for bad in ("4/4", "1/0", "a/b", "2", "-1/3"):
        with pytest.raises(EvilmError, match="--shard must be i/n"):
            parse_shard(bad)


def test_shard_of_takes_every_nth_item_and_the_shards_partition():
    items = list(range(10))
    assert shard_of(items, (1, 4)) == [1, 5, 9]
    shards = [shard_of(items, (i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == items and all(len(s) in (3, 4) for s in shards)


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
