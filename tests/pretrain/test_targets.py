"""MVM targets from the label cache equal the online tokenizer's codes of the frames the student
sees, flipped clips included (docs/design.md, "Label cache": exactness); a cache made for another
tokenizer or frame size is refused with a message naming both values."""

from __future__ import annotations

import json

import pytest
import torch

from evilm_core.config.loader import from_dict
from evilm_core.data.dataset import CachedCandidates, ClipDataset
from evilm_core.data.records.manifest import read_manifest
from evilm_core.data.transforms import ClipTransform, flip_codes
from evilm_core.errors import EvilmError
from evilm_core.label.labeler import run_label
from evilm_core.models.tokenizer import load_tokenizer
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.pretrain.data import PretrainExtras, open_label_cache
from evilm_core.text.tokens import TextTokens
from tests.helpers.label import make_tokenizer

NUM_FRAMES, CANDIDATES = 4, 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from evilm_core.prepare.synth import generate

    base = tmp_path_factory.mktemp("pt_targets")
    data = base / "synth"
    generate(data, num_videos=12, frames=8, size=64, workers=1)
    manifest = data / "all.jsonl"
    lines = [json.loads(line) for split in ("train", "val", "test") for line in (data / f"{split}.jsonl").open()]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    tok_dir = make_tokenizer(base / "tok", seed=0)
    common = dict(manifest=manifest, tokenizer=tok_dir, num_candidates=CANDIDATES, num_workers=0, device="cpu",
                  batch_size=5)
    run_label(out=base / "labels", **common)
    run_label(out=base / "labels_flip", flips=True, **common)
    tokenizer, info = load_tokenizer(tok_dir)
    return {"base": base, "data": data, "manifest": manifest, "tok_dir": tok_dir, "tokenizer": tokenizer.float().eval(),
            "info": info, "records": read_manifest(manifest)}


def dataset(s, cache_dir, transform, need_flips=False) -> ClipDataset:
    cache = open_label_cache(str(cache_dir), s["info"], 64, CANDIDATES, need_flips)
    return ClipDataset(s["records"], str(s["data"]), CachedCandidates(cache, NUM_FRAMES, 64), transform, seed=0,
                       extras=PretrainExtras(TextTokens(s["tok_dir"], 12), cache))


def online(s, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return s["tokenizer"].encode(pixels[None].float())[0]


def test_cached_targets_equal_online_codes(setup):
    s = setup
    ds = dataset(s, s["base"] / "labels", ClipTransform(train=False, hflip=False))
    assert len(ds) == 12
    for k in range(len(ds)):
        item = ds[k]
        assert "skip" not in item, item
        targets = item["mvm_targets"]
        assert targets.shape == (NUM_FRAMES, 2, 2) and targets.dtype == torch.long and not item["flipped"]
        assert torch.equal(online(s, item["pixels"]), targets), item["video"]
        # eval mode: the middle candidate of each group of F/T, so the same frames every time
        _, frames, _ = ds.frames.cache.entry(item["video"])
        assert item["frame_indices"].tolist() == [int(frames[g * 2 + 1]) for g in range(NUM_FRAMES)]
    assert torch.equal(ds[0]["mvm_targets"], ds[0]["mvm_targets"])


def test_cached_targets_equal_online_codes_of_flipped_frames(setup):
    s = setup
    ds = dataset(s, s["base"] / "labels_flip", ClipTransform(train=True, hflip=True), need_flips=True)
    flipped = plain = not_mirrored = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for k in range(len(ds)):
            item = ds[k]
            assert torch.equal(online(s, item["pixels"]), item["mvm_targets"]), (item["video"], item["flipped"])
            flipped, plain = flipped + item["flipped"], plain + (not item["flipped"])
            if item["flipped"]:
                # the tokenizer is not flip-equivariant: mirroring the unflipped codes would be wrong
                codes, frames, _ = ds.frames.cache.entry(item["video"])
                cand = [frames.tolist().index(f) for f in item["frame_indices"].tolist()]
                not_mirrored += not torch.equal(flip_codes(torch.from_numpy(codes[0, cand].astype("int64"))),
                                                item["mvm_targets"])
    assert flipped > 3 and plain > 3 and not_mirrored > 0


def test_flip_augmentation_needs_a_flip_cache(setup):
    s = setup
    with pytest.raises(EvilmError, match="--flips"):
        open_label_cache(str(s["base"] / "labels"), s["info"], 64, CANDIDATES, need_flips=True)


def test_other_tokenizer_is_refused_naming_both_hashes(setup, tmp_path):
    s = setup
    _, other = load_tokenizer(make_tokenizer(tmp_path / "tok_b", seed=1))
    assert other["sha256"] != s["info"]["sha256"]
    with pytest.raises(EvilmError) as err:
        open_label_cache(str(s["base"] / "labels"), other, 64, CANDIDATES, need_flips=False)
    msg = str(err.value)
    assert s["info"]["sha256"] in msg and other["sha256"] in msg and "tokenizer_sha256" in msg


def test_cache_for_other_frame_size_is_refused_naming_both(setup, tmp_path):
    """A recipe at 96 px with the 64 px cache (no tokenizer given, so the cache is the only check)."""
    from evilm_core.pretrain.train import mvm_sources as _mvm_sources

    s = setup
    model = dict(video_encoder="edgenext_xx_small", image_size=96, codebook_size=32, vocab_size=10)
    recipe = from_dict(PretrainRecipe, {"kind": "pretrain", "model": model,
                                        "data": {"image_size": 96, "num_frames": NUM_FRAMES, "hflip": False},
                                        "mvm": {"labels": str(s["base"] / "labels"), "candidates": CANDIDATES}})
    with pytest.raises(EvilmError) as err:
        _mvm_sources(recipe, torch.device("cpu"))
    msg = str(err.value)
    assert "image_size" in msg and "64" in msg and "96" in msg
    # the same cache fits a 64 px recipe
    ok = from_dict(PretrainRecipe, {"kind": "pretrain", "model": {**model, "image_size": 64},
                                    "data": {"image_size": 64, "num_frames": NUM_FRAMES, "hflip": False},
                                    "mvm": {"labels": str(s["base"] / "labels"), "candidates": CANDIDATES}})
    cache, tokenizer = _mvm_sources(ok, torch.device("cpu"))
    assert cache is not None and tokenizer is None and cache.meta["image_size"] == 64
