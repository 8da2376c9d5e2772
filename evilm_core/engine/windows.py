"""Embedding the windows of a span (data/windows.py) with the model's work split in two: the
part that sees one frame at a time runs once per decoded frame, the part that sees a window
runs once per window (docs/retrieval.md, "Moments").

For a checkpoint the split is E-ViLM's own: `video.frame_tokens` (EdgeNeXt, its head norm and
the projection to the fusion width) per frame, then `embed_frame_tokens` (frame and region
embeddings, the unimodal fusion pass, the retrieval projection) per window; the two give
embed_video's numbers (tests/models). An `evilm export` holds the video tower as one program,
pixels -> embedding, so there the frames are shared but the tower runs whole for every window.
Both `retrieve index --window` and the moments evaluation embed through `embed_span`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from evilm_core.data.transforms import normalize
from evilm_core.models.evilm import EViLM
from evilm_core.models.scoring import CPU_FORWARD_PIXELS  # clips and windows alike



@dataclass
class WindowModel:
    per_frame: Callable[[torch.Tensor], torch.Tensor]  # normalised frames [N, 3, H, W] -> features [N, ...]
    per_window: Callable[[torch.Tensor], torch.Tensor]  # features [B, T, ...] -> l2-normalised embeddings [B, E]
    frame_chunk: int  # frames per call of per_frame (memory and cache size; never changes a result)
    window_chunk: int  # windows per call of per_window


def forward_chunks(device: torch.device, image_size: int, num_frames: int) -> tuple[int, int]:
    """(frames, windows) per forward pass: on the CPU 16 frames of 256 px (the paper model's
    fastest per frame; docs/performance.md, "Indexing on the CPU") and windows of as many frames
    in all; a GPU takes larger passes."""
    frames = max(1, CPU_FORWARD_PIXELS // (image_size * image_size)) if device.type == "cpu" else 512
    return frames, max(1, frames // num_frames)


def split_model(net: EViLM, device: torch.device, image_size: int, num_frames: int) -> WindowModel:
    """A checkpoint's video side, the per-frame backbone shared between windows."""
    return WindowModel(net.video.frame_tokens, net.embed_frame_tokens, *forward_chunks(device, image_size, num_frames))


def whole_model(embed_video: Callable[[torch.Tensor], torch.Tensor], device: torch.device, image_size: int,
                num_frames: int) -> WindowModel:
    """A video tower that only takes whole clips (an export): each window runs it on its frames."""
    return WindowModel(lambda frames: frames, embed_video, *forward_chunks(device, image_size, num_frames))


@torch.no_grad()
def embed_span(model: WindowModel, frames: torch.Tensor, frame_of: torch.Tensor,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """frames uint8 [F, H, W, 3] (each decoded once), frame_of [K, T] (row k: the positions in
    `frames` of window k's frames) -> float32 embeddings [K, E] on the CPU. The chunks depend on
    the span alone, so a span embeds to the same bytes whatever else runs."""
    pixels = normalize(frames).to(device)  # [F, 3, H, W]
    features = torch.cat([model.per_frame(part) for part in pixels.split(model.frame_chunk)])
    frame_of = frame_of.to(device)
    return torch.cat([model.per_window(features[rows]).float().cpu() for rows in frame_of.split(model.window_chunk)])
