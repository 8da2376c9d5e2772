"""Grid-aligned augmentation: flips are whole-clip and reported; normalisation is ImageNet's."""

from __future__ import annotations

import numpy as np
import torch

from evilm_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, flip_codes, normalize


def _clip():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def test_normalize_shape_and_values():
    x = normalize(np.full((1, 4, 4, 3), 255, np.uint8))
    assert x.shape == (1, 3, 4, 4)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0, :, 0, 0], expected)


def test_eval_transform_never_augments():
    frames = _clip()
    t = ClipTransform(train=False, hflip=True, color_jitter=0.4)
    for seed in range(10):
        x, flipped = t(frames, np.random.default_rng(seed))
        assert not flipped and torch.allclose(x, normalize(frames))


def test_flip_is_whole_clip_and_matches_code_flip():
    frames = _clip()
    t = ClipTransform(train=True, hflip=True)
    flips = []
    for seed in range(20):
        x, flipped = t(frames, np.random.default_rng(seed))
        flips.append(flipped)
        ref = normalize(frames)
        assert torch.allclose(x, ref.flip(-1) if flipped else ref)
    assert any(flips) and not all(flips)
    # region (i, j) of the flipped frame is region (i, W'-1-j) of the original: codes mirror the same way
    codes = torch.arange(2 * 2 * 2).view(2, 2, 2)
    assert flip_codes(codes)[0, 0, 0] == codes[0, 0, 1]
    assert (flip_codes(codes.numpy()) == flip_codes(codes).numpy()).all()


def test_color_jitter_changes_pixels_but_not_geometry():
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    frames[:, :32] = 200  # top half bright
    t = ClipTransform(train=True, hflip=False, color_jitter=0.4)
    x, _ = t(frames, np.random.default_rng(3))
    assert not torch.allclose(x, normalize(frames))
    assert (x[0, :, :32].mean() > x[0, :, 32:].mean())  # the bright half is still the top half
