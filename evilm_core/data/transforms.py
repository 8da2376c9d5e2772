"""Clip augmentation that keeps the region grid aligned.

No crops or rescaling happen after decoding: frame pixel (y, x) stays in grid cell
(y // 32, x // 32), so cached tokenizer codes keep describing the regions the student sees.
The only geometric augmentation is a horizontal flip of the whole clip, reported back so MVM
targets can be mirrored the same way (`flip_codes`). Colour jitter is photometric only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_unit(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] in [0, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [0, 1] -> ImageNet mean/std normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def normalize(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W], ImageNet normalised (no augmentation)."""
    return standardize(to_unit(frames))


def flip_codes(codes: torch.Tensor | np.ndarray):
    """Mirror a code grid [..., H', W'] left-right, matching a horizontal flip of the pixels."""
    if isinstance(codes, np.ndarray):
        return np.ascontiguousarray(codes[..., ::-1])
    return codes.flip(-1)


def _jitter(x: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors in [1-s, 1+s], one draw per clip. x in [0, 1]."""
    b, c, s = 1.0 + strength * (2 * rng.random(3) - 1)
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * s + gray
    return x.clamp_(0.0, 1.0)


@dataclass
class ClipTransform:
    train: bool = False  # augment (flip, jitter) only when training
    hflip: bool = True  # allow a random horizontal flip of the whole clip
    color_jitter: float = 0.0  # jitter strength s (0 disables)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
        """uint8 [T, H, W, 3] -> (normalised float [T, 3, H, W], flipped)."""
        x = to_unit(frames)
        flipped = bool(self.train and self.hflip and rng.random() < 0.5)
        if flipped:
            x = x.flip(-1)
        if self.train and self.color_jitter > 0:
            x = _jitter(x, self.color_jitter, rng)
        return standardize(x), flipped
