"""The model's losses that more than one stage uses.

- `contrastive_loss`: symmetric InfoNCE over unimodal l2-normalised embeddings with the learned
  temperature (logit scale capped at 100, CLIP's rule); rows that share a key (the same video:
  MSR-VTT has 20 captions per clip; the same caption in pre-training) are all positives, never
  each other's negatives (`same_key`). Retrieval fine-tuning and the optional pre-training
  contrastive term use it. Under DDP the engine calls `contrastive_rows` with this rank's rows
  against every rank's columns (engine/distributed.py::global_contrastive_loss, CLIP's global
  batch).
- `masked_ce`: cross-entropy of a head over selected positions only (MLM words, MVM regions).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)


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


def contrastive_rows(video: torch.Tensor, text: torch.Tensor, video_all: torch.Tensor, text_all: torch.Tensor,
                     logit_scale: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of some rows of a larger batch: video, text [B, E] are the rows, video_all,
    text_all [N, E] every column (the rows among them), positives [B, N] bool (row i with column j;
    symmetric keys, so the same mask serves text->video and video->text). Mean over the B rows;
    with B = N and the rows as the columns it is `contrastive_loss` with the same positives."""
    scale = logit_scale_value(logit_scale)
    t2v = scale * text.float() @ video_all.float().T  # [B, N]
    v2t = scale * video.float() @ text_all.float().T  # [B, N]
    return 0.5 * (_nce(t2v, positives) + _nce(v2t, positives))


def same_key(keys: list[str], device: torch.device | None = None) -> torch.Tensor:
    """[B, B] bool: rows i and j carry the same key (video path, caption)."""
    ids = {v: i for i, v in enumerate(dict.fromkeys(keys))}
    key = torch.tensor([ids[v] for v in keys], device=device)
    return key[:, None] == key[None, :]


def masked_ce(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, sel: torch.Tensor):
    """(loss, accuracy) of `head` over the selected positions only (eq. 3: mean over masked items).
    The head runs on the selected features alone (an MVM head over every region would be
    [B, T*g*g, 9420]); with nothing selected the loss is an exact zero that still reaches the
    head, so every rank's backward touches the same parameters."""
    if not bool(sel.any()):
        zero = head(feats[:, :1]).sum() * 0.0
        return zero, zero.detach()
    logits = head(feats[sel]).float()  # [n_selected, classes]
    target = labels[sel]
    return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()
