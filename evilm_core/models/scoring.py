"""What each head answers for a clip, from the clip's video tokens e^V: the one implementation
that `evilm evaluate` (finetune/) and `evilm predict` (predict/) both call, so a prediction and
an evaluation of the same clip are the same numbers (docs/predict.md).

A clip's video side runs once (`video_tokens`); every text paired with it (QA questions,
multiple-choice options) reuses its tokens for the joint pass (`joint_cls`), as
`EViLM.forward_options` and the re-ranking of finetune/rerank.py do. On the CPU the video
encoder takes the pixels in chunks of `CPU_FORWARD_PIXELS`: clips are independent, so chunking
changes no result, and small forward passes keep the activations in the caches.

| head      | scores                                             | from                     |
|-----------|----------------------------------------------------|--------------------------|
| qa        | softmax over the answer vocabulary (`heads.qa`)     | joint [CLS] of (clip, question) |
| mc / VTM  | log-odds of "match", logit[1] - logit[0] (`heads.vtm`) | joint [CLS] of (clip, option) |
| probe     | softmax over the labels (`heads.probe`)             | unimodal video [CLS] or embedding |
| texts     | cosine similarity of the l2-normalised embeddings   | unimodal video and text passes |
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Pixels per forward pass of the video encoder on the CPU: the paper model embeds 16 frames of
# 256 px (4 clips of 4 frames) 1.2x faster per clip than 64 at once, whose activations spill the
# caches (docs/performance.md, "Indexing on the CPU"); GPUs take the whole batch.
CPU_FORWARD_PIXELS = 16 * 256 * 256


def in_chunks(fn, pixels: torch.Tensor) -> torch.Tensor:
    """fn(pixels) for clips [B, T, 3, H, W], CPU pixels in chunks of CPU_FORWARD_PIXELS, concatenated."""
    if pixels.device.type != "cpu" or not len(pixels):
        return fn(pixels)
    per_clip = pixels[0].numel() // 3  # T * H * W
    chunk = max(1, CPU_FORWARD_PIXELS // per_clip)
    return torch.cat([fn(part) for part in pixels.split(chunk)])


def video_tokens(net: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, T, 3, H, W] -> the video tokens e^V [B, N, D], encoded once per clip."""
    return in_chunks(net.video, pixels)


def joint_cls(net: nn.Module, tokens: torch.Tensor, counts: list[int], ids: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """The joint [CLS] [sum(counts), D] of each clip's texts with the clip: clip i's tokens
    (tokens [B, N, D]) go with its counts[i] texts, the rows of ids / mask [sum(counts), L] in order."""
    video = tokens.repeat_interleave(torch.tensor(counts, device=tokens.device), dim=0)
    return net._joint(video, ids, mask)["cls"]


def head_fp32(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A task head on features, in float32 even under bf16 autocast: bf16 scores keep about 3
    significant digits, which ties near answers and options (as EViLM._project does for the
    embeddings). The heads are small: no cost."""
    with torch.autocast(features.device.type, enabled=False):
        return head(features.float())


def match_log_odds(net: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    """joint [CLS] [..., D] -> the VTM head's log-odds of "match" [...] (float32; class 1 = match)."""
    logits = head_fp32(net.heads["vtm"], cls)
    return logits[..., 1] - logits[..., 0]


def answer_logits(net: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    """joint [CLS] [Q, D] -> the QA head's scores [Q, A] over the answer vocabulary (float32)."""
    return head_fp32(net.heads["qa"], cls)


def features_of_tokens(net: nn.Module, tokens: torch.Tensor, feature: str) -> torch.Tensor:
    """The linear probe's input from e^V: the unimodal video [CLS] (`cls`) or the retrieval embedding (`embed`)."""
    return net._video_cls(tokens) if feature == "cls" else net._video_embedding(tokens)


def feature_dim(net: nn.Module, feature: str) -> int:
    return net.cfg.fusion_dim if feature == "cls" else net.cfg.embed_dim


def label_logits(net: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Probe features [B, F] -> the probe head's scores [B, C] (float32)."""
    head = net.heads["probe"]
    return head_fp32(head, features.to(head.weight.device))


def similarities(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """l2-normalised embeddings [R, E] and [C, E] (videos, texts) -> cosine similarities [R, C], in
    float32 even under bf16 autocast (3 significant digits would tie near scores, as in EViLM._project)."""
    with torch.autocast(rows.device.type, enabled=False):
        return rows.float() @ columns.float().T


@torch.no_grad()
def embed_texts(net: nn.Module, tokens, texts: list[str], batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texts -> (l2-normalised embeddings [T, E] float32 on `device`, ids [T, L], mask [T, L] on the CPU)."""
    embs, all_ids, all_mask = [], [], []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokens.batch(texts[start:start + batch_size])
        embs.append(net.embed_text(ids.to(device), mask.to(device)).float())
        all_ids.append(ids)
        all_mask.append(mask)
    if not texts:
        return torch.zeros(0, net.cfg.embed_dim, device=device), torch.zeros(0, 0, dtype=torch.long), \
            torch.zeros(0, 0, dtype=torch.long)
    return torch.cat(embs), torch.cat(all_ids), torch.cat(all_mask)
