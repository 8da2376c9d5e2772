"""How each task turns model outputs into scores: the pieces training and evaluation share.

- Multiple choice: each (clip, option) pair is scored by the VTM head on the joint [CLS] as
  the log-odds of "match" (logit[match] - logit[mismatch], monotone in P(match)); the clip is
  encoded once and its tokens reused for every option (`EViLM.forward_options`).
- Retrieval: unimodal l2-normalised embeddings, similarity = dot product; symmetric InfoNCE
  with the learned temperature (logit scale capped at 100, CLIP's rule). Rows of the same video
  in a batch (MSR-VTT has 20 captions per clip) are all positives, never each other's negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

MAX_LOGIT_SCALE = math.log(100.0)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def option_scores(model: nn.Module, pixels: torch.Tensor, option_ids: torch.Tensor,
                  option_mask: torch.Tensor) -> torch.Tensor:
    """pixels [B, T, 3, H, W], options [B, K, L] -> match log-odds [B, K] (float32)."""
    out = model(pixels, option_ids, option_mask, mode="options")
    logits = unwrap(model).heads["vtm"](out["cls"]).float()  # [B, K, 2]; class 1 = match (pre-training)
    return logits[..., 1] - logits[..., 0]


def logit_scale_value(logit_scale: torch.Tensor) -> torch.Tensor:
    """exp of the learned log-scale, capped at 100 (no gradient beyond the cap)."""
    return logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def _nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(sum of softmax mass on the row's positives)."""
    pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch: video [B, E], text [B, E] (l2-normalised), positives
    [B, B] (text i, video j) bool, default the diagonal. Swapping video and text (and
    transposing positives) gives the same loss."""
    logits = logit_scale_value(logit_scale) * text.float() @ video.float().T  # [texts, videos]
    if positives is None:
        positives = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return 0.5 * (_nce(logits, positives) + _nce(logits.T, positives.T))


def same_video(videos: list[str], device: torch.device | None = None) -> torch.Tensor:
    """[B, B] bool: rows i and j show the same clip."""
    ids = {v: i for i, v in enumerate(dict.fromkeys(videos))}
    key = torch.tensor([ids[v] for v in videos], device=device)
    return key[:, None] == key[None, :]
