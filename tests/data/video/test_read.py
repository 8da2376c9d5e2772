"""Clip sampling indices in both modes, decoding, and the typed errors for broken files."""

from __future__ import annotations

import numpy as np
import pytest

from evilm_core.data.video.read import read_clip, segment_indices
from evilm_core.data.video.write import write_mp4
from evilm_core.errors import VideoDecodeError


def test_eval_indices_are_segment_centres():
    assert segment_indices(16, 4, "eval") == [2, 6, 10, 14]
    assert segment_indices(10, 4, "eval") == [1, 3, 6, 8]  # centres 1.25, 3.75, 6.25, 8.75
    assert segment_indices(8, 8, "eval") == list(range(8))


def test_train_indices_stay_inside_their_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = segment_indices(16, 4, "train", rng)
        for k, i in enumerate(idx):
            assert 4 * k <= i < 4 * (k + 1)
        seen.add(tuple(idx))
    assert len(seen) > 50  # really random


def test_short_video_repeats_frames():
    assert segment_indices(1, 4, "eval") == [0, 0, 0, 0]
    assert segment_indices(2, 4, "eval") == [0, 0, 1, 1]
    rng = np.random.default_rng(1)
    for _ in range(20):
        idx = segment_indices(2, 4, "train", rng)
        assert all(0 <= i <= 1 for i in idx) and idx == sorted(idx)


def test_bad_arguments():
    with pytest.raises(ValueError):
        segment_indices(0, 4)
    with pytest.raises(ValueError):
        segment_indices(4, 4, "test")


def _ramp_video(path, frames=12, size=64):
    # frame k is uniformly grey level 20 * k, so decoded pixels tell which frame was read
    data = np.stack([np.full((size, size, 3), 20 * k, np.uint8) for k in range(frames)])
    write_mp4(path, data, fps=8)


def test_read_clip_returns_the_chosen_frames(tmp_path):
    path = tmp_path / "ramp.mp4"
    _ramp_video(path)
    clip = read_clip(path, 4, size=32, mode="eval")
    assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.indices == [1, 4, 7, 10] and clip.num_video_frames == 12
    levels = clip.frames.reshape(4, -1).mean(1)
    assert np.allclose(levels, [20 * i for i in clip.indices], atol=6)


def test_read_clip_short_video_repeats(tmp_path):
    path = tmp_path / "one.mp4"
    _ramp_video(path, frames=1)
    clip = read_clip(path, 4, size=32)
    assert clip.indices == [0, 0, 0, 0] and clip.frames.shape[0] == 4


def test_read_clip_resizes_any_aspect(tmp_path):
    path = tmp_path / "portrait.mp4"
    write_mp4(path, np.zeros((3, 96, 48, 3), np.uint8), fps=8)
    assert read_clip(path, 2, size=64).frames.shape == (2, 64, 64, 3)


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "missing"),
    (lambda p: p.write_bytes(b""), "corrupt"),
    (lambda p: p.write_text("this is not a video\n" * 20), "corrupt"),
])
def test_broken_files_raise_typed_error(tmp_path, make, reason):
    path = tmp_path / "clip.mp4"
    make(path)
    with pytest.raises(VideoDecodeError) as err:
        read_clip(path, 4, size=32)
    assert err.value.reason == reason and err.value.path == str(path)
