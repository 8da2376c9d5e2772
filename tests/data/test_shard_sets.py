"""Shard sets (evilm_core/data/shards/): what `evilm data shards` writes, read back; byte-identical
output however it ran (workers, --shard i/n + merge, a lost part); refusals and damaged files;
video2dataset tars in; label codes over shards equal the online tokenizer's codes."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evilm_core.data.records.manifest import read_manifest
from evilm_core.data.shards.layout import ShardSet
from evilm_core.data.shards.writer import ShardSettings
from evilm_core.data.video.read import read_frames, segment_indices
from evilm_core.errors import EvilmError, VideoDecodeError
from evilm_core.prepare.shards import ShardRequest, build_shards
from tests.helpers.webdataset import write_video2dataset_tar

SETTINGS = ShardSettings(candidates=4, size=64)


def build(synth: Path, out: Path, **kw) -> dict:
    args = {"input": str(synth / "train.jsonl"), "out": str(out), "settings": SETTINGS, "samples_per_shard": 8,
            **kw}
    return build_shards(ShardRequest(**args))


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "ref"
    result = build(synth_dir, out)
    assert result["complete"] and result["written"] == 28 and result["shards"] == 4 and result["skipped"] == 0
    return out


def test_samples_hold_the_candidate_frames_and_the_records(reference, synth_dir):
    shards, records = ShardSet.open(reference), read_manifest(synth_dir / "train.jsonl")
    assert len(shards) == 28 and [r.to_json() for r in shards.records] == [r.to_json() for r in records]
    errors = []
    for record in shards.records:
        sample = shards.read(record.sample)
        assert sample.info["video"] == record.video and sample.frames.shape == (4, 64, 64, 3)
        decoded = read_frames(synth_dir / record.video, lambda n: segment_indices(n, 4, "eval"), 64)
        assert sample.info["frames"] == decoded.indices == segment_indices(decoded.num_video_frames, 4, "eval")
        errors.append(np.abs(sample.frames.astype(int) - decoded.frames.astype(int)).mean())
    print(f"JPEG q95 mean abs error: {np.mean(errors):.2f} levels")
    assert np.mean(errors) < 3
    assert shards.read(3, [2]).frames.shape == (1, 64, 64, 3)  # only the frames asked for are decoded


def test_a_video_with_several_records_is_one_sample(synth_dir, tmp_path):
    lines = [{"video": "videos/00000.mp4", "caption": "one"}, {"video": "videos/00000.mp4", "caption": "two"},
             {"video": "videos/00001.mp4", "caption": "three"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    build_shards(ShardRequest(input=str(tmp_path / "m.jsonl"), out=str(tmp_path / "s"), settings=SETTINGS,
                              root=str(synth_dir)))
    shards = ShardSet.open(tmp_path / "s")
    assert len(shards) == 2 and [(r.caption, r.sample) for r in shards.records] == [("one", 0), ("two", 0),
                                                                                     ("three", 1)]


def test_the_shards_are_plain_webdataset(reference):
    import webdataset as wds

    first = next(iter(wds.WebDataset(str(reference / "shard-000000.tar"), shardshuffle=False).decode("rgb")))
    assert first["__key__"] == "000000_000000" and first["f03.jpg"].shape == (64, 64, 3)
    assert first["json"]["video"] == "videos/00000.mp4"


def test_output_is_the_same_bytes_whatever_the_workers_and_node_shards(reference, synth_dir, tmp_path):
    want = files(reference)
    build(synth_dir, tmp_path / "w2", workers=2)
    assert files(tmp_path / "w2") == want
    split = tmp_path / "split"
    first = build(synth_dir, split, shard=(0, 2))
    assert not first["complete"] and not (split / "index.json").exists()
    build(synth_dir, split, shard=(1, 2))  # the last one to finish merges
    assert files(split) == want
    (split / "parts" / "shard-000002.json").unlink()  # a kill between the tar and its part
    again = build(synth_dir, split)
    assert again["written_this_run"] == 8 and files(split) == want  # only that shard redone


def test_other_settings_into_the_same_directory_are_refused(reference, synth_dir, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(reference, out)
    with pytest.raises(EvilmError, match="another input or settings.*settings"):
        build(synth_dir, out, settings=ShardSettings(candidates=4, size=96))


def test_damaged_and_unfinished_sets_say_what_to_do(reference, synth_dir, tmp_path):
    with pytest.raises(EvilmError, match="not a shard set.*evilm data shards"):
        ShardSet.open(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(reference, broken)
    (broken / "shard-000001.tar").unlink()
    with pytest.raises(EvilmError, match="shard-000001.tar is missing"):
        ShardSet.open(broken)
    unfinished = tmp_path / "unfinished"
    build(synth_dir, unfinished, shard=(0, 2))
    with pytest.raises(EvilmError, match="unfinished.*--merge"):
        ShardSet.open(unfinished)
    truncated = tmp_path / "truncated"
    shutil.copytree(reference, truncated)
    tar = truncated / "shard-000003.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    shards = ShardSet.open(truncated)
    with pytest.raises(VideoDecodeError, match="truncated"):
        shards.read(len(shards) - 1)
    from evilm_core.data.clips import open_clips

    with pytest.raises(EvilmError, match="stores 64 px frames but data.image_size is 96"):
        open_clips(reference).frames(2, 96)


def test_video2dataset_tars_with_a_corrupt_clip_and_a_truncated_tar(synth_dir, tmp_path):
    from evilm_core.prepare.check import check_manifest

    records = read_manifest(synth_dir / "test.jsonl")
    clips = [(synth_dir / r.video, r.caption) for r in records]
    write_video2dataset_tar(tmp_path / "tars" / "00000.tar", clips[:4], corrupt=(1,))
    whole = write_video2dataset_tar(tmp_path / "whole.tar", clips[4:8])
    data = whole.read_bytes()
    (tmp_path / "tars" / "00001.tar").write_bytes(data[:len(data) // 2 + 100])  # cut inside a member
    result = build_shards(ShardRequest(input=str(tmp_path / "tars"), out=str(tmp_path / "s"), settings=SETTINGS))
    shards = ShardSet.open(tmp_path / "s")
    skipped = [line.split("\t") for line in (tmp_path / "s" / "skipped.tsv").read_text().splitlines()]
    assert skipped[0][1:3] == ["00000.tar/000000001.mp4", "corrupt"]
    assert skipped[-1][1:3] == ["00001.tar", "corrupt"] and "tar damaged after" in skipped[-1][3]
    assert result["skipped"] == len(skipped) == 2 and result["written"] == len(shards) >= 4
    assert shards.records[0].video == "00000.tar/000000000.mp4" and shards.records[0].caption == records[0].caption
    report = check_manifest(str(tmp_path / "tars"), num_frames=2, image_size=64, workers=1)
    assert report.format == "webdataset" and report.corrupt == 2 and report.ok == len(shards)
    assert check_manifest(str(tmp_path / "s"), workers=1).to_json()["ok"] == len(shards)


def test_record_tables_pickle_small_and_refuse_truncation(reference, tmp_path):
    from evilm_core.data.records.table import RecordTable

    table = ShardSet.open(reference).records
    blob = pickle.dumps(table)
    assert len(blob) < 2000 and [r.to_json() for r in pickle.loads(blob)] == [r.to_json() for r in table]
    copy = tmp_path / "t"
    shutil.copytree(reference, copy)
    text = copy / "records.jsonl"
    text.write_bytes(text.read_bytes()[:-50])
    with pytest.raises(EvilmError, match="truncated"):
        RecordTable(copy)


def test_label_codes_over_shards_equal_the_online_codes(reference, tmp_path):
    from evilm_core.data.label_cache import LabelCache
    from evilm_core.data.transforms import normalize
    from evilm_core.label.labeler import run_label
    from evilm_core.models.tokenizer import load_tokenizer
    from tests.helpers.label import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok", image_size=64)
    run_label(manifest=reference, tokenizer=tok, out=tmp_path / "labels", num_candidates=4, flips=True,
              num_workers=0, device="cpu", batch_size=5)
    cache, shards = LabelCache.open(tmp_path / "labels"), ShardSet.open(reference)
    model, _ = load_tokenizer(tok)
    for s in (0, 13, 27):
        sample = shards.read(s)
        codes, frames, _ = cache.entry(sample.info["video"])
        pixels = normalize(sample.frames)[None]  # [1, F, 3, H, W]
        with torch.inference_mode():
            for variant, x in enumerate((pixels, pixels.flip(-1))):
                assert np.array_equal(codes[variant], model.encode(x)[0].numpy().astype(np.uint16)), (s, variant)
        assert frames.tolist() == sample.info["frames"]


def test_missing_inputs_name_the_key_and_what_makes_them(tmp_path):
    from evilm_core.checkpoints.resolve import resolve_checkpoint
    from evilm_core.data.clips import open_clips

    with pytest.raises(EvilmError, match=r"data.val: .*nope.jsonl does not exist.*docs/data.md.*evilm data shards"):
        open_clips(tmp_path / "nope.jsonl", key="data.val")
    with pytest.raises(EvilmError, match=r"checkpoint .*runs/x does not exist.*evilm pretrain RECIPE"):
        resolve_checkpoint(tmp_path / "runs" / "x")


def test_another_samples_per_shard_is_refused(reference, synth_dir, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(reference, out)
    with pytest.raises(EvilmError, match="samples_per_shard"):
        build(synth_dir, out, samples_per_shard=5)  # another partition: clips would be duplicated and lost


def test_a_tar_cut_inside_a_member_keeps_every_whole_sample(synth_dir, tmp_path):
    from tests.helpers.webdataset import video2dataset_inputs

    tars = video2dataset_inputs(synth_dir, tmp_path / "tars")  # 00001.tar cut inside its 3rd clip's mp4
    result = build_shards(ShardRequest(input=str(tars), out=str(tmp_path / "s"), settings=SETTINGS))
    videos = [r.video for r in ShardSet.open(tmp_path / "s").records]
    assert videos == ["00000.tar/000000000.mp4", "00000.tar/000000002.mp4", "00000.tar/000000003.mp4",
                      "00001.tar/000000000.mp4", "00001.tar/000000001.mp4"]  # both whole clips before the cut
    assert result["skipped"] == 2 and result["clips"] == 7


def test_a_brace_pattern_over_two_folders_keeps_the_videos_apart(synth_dir, tmp_path):
    clips = [(synth_dir / r.video, r.caption) for r in read_manifest(synth_dir / "train.jsonl")[:4]]
    write_video2dataset_tar(tmp_path / "a" / "00000.tar", clips[:2])
    write_video2dataset_tar(tmp_path / "b" / "00000.tar", clips[2:])
    build_shards(ShardRequest(input=str(tmp_path / "{a,b}/00000.tar"), out=str(tmp_path / "s"), settings=SETTINGS))
    videos = [r.video for r in ShardSet.open(tmp_path / "s").records]
    assert videos == ["a/00000.tar/000000000.mp4", "a/00000.tar/000000001.mp4", "b/00000.tar/000000000.mp4",
                      "b/00000.tar/000000001.mp4"]
