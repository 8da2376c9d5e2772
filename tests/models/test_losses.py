"""The losses more than one stage uses (models/losses.py): symmetric InfoNCE with the learned,
capped temperature; rows sharing a key as positives; cross-entropy over selected positions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.models.losses import MAX_LOGIT_SCALE, contrastive_loss, masked_ce, same_key


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_contrastive_loss_is_symmetric_and_matches_clip_formula():
    video, text, scale = _unit(6, 16, 0), _unit(6, 16, 1), torch.tensor(2.0)
    loss = contrastive_loss(video, text, scale)
    assert loss == pytest.approx(float(contrastive_loss(text, video, scale)), rel=1e-6)
    logits = scale.exp() * text @ video.T
    target = torch.arange(6)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert loss == pytest.approx(float(clip), rel=1e-5)


def test_contrastive_loss_treats_captions_of_one_clip_as_positives():
    video, text = _unit(3, 16, 0), _unit(3, 16, 1)
    video = torch.cat([video[:1], video])  # rows 0 and 1 show the same clip
    text = torch.cat([text[:1] * -1, text])
    pos = same_key(["v0", "v0", "v1", "v2"])
    assert pos.sum() == 6 and pos[0, 1] and pos[1, 0]
    scale = torch.tensor(2.0)
    assert contrastive_loss(video, text, scale, pos) < contrastive_loss(video, text, scale)
    swapped = contrastive_loss(text, video, scale, pos.T)
    assert contrastive_loss(video, text, scale, pos) == pytest.approx(float(swapped), rel=1e-6)


def test_temperature_is_learned_and_capped_at_100():
    video, text = _unit(5, 16, 0), _unit(5, 16, 1)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.SGD([scale], lr=0.5)
    contrastive_loss(video, text, scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    before = scale.item()
    opt.step()
    assert scale.item() != before
    capped = torch.nn.Parameter(torch.tensor(MAX_LOGIT_SCALE + 1.0))
    loss = contrastive_loss(video, text, capped)
    loss.backward()
    assert capped.grad.item() == 0.0  # beyond the cap the scale is exactly 100 and gets no gradient
    at_cap = contrastive_loss(video, text, torch.tensor(MAX_LOGIT_SCALE))
    assert float(loss.detach()) == pytest.approx(float(at_cap), rel=1e-6)


def test_same_key_marks_equal_captions_as_positives():
    pos = same_key(["a", "b", "a"], torch.device("cpu"))
    assert pos.tolist() == [[True, False, True], [False, True, False], [True, False, True]]


def test_masked_ce_is_cross_entropy_over_the_selected_positions_only():
    torch.manual_seed(0)
    head = nn.Linear(8, 5)
    feats, labels = torch.randn(2, 3, 8), torch.randint(0, 5, (2, 3))
    sel = torch.tensor([[True, False, True], [False, False, True]])
    with torch.no_grad():
        loss, acc = masked_ce(head, feats, labels, sel)
        logits = head(feats[sel])
        assert float(loss) == pytest.approx(float(F.cross_entropy(logits, labels[sel])), rel=1e-6)
        assert float(acc) == pytest.approx(float((logits.argmax(-1) == labels[sel]).float().mean()))
        labels_elsewhere = labels.clone()
        labels_elsewhere[~sel] = (labels[~sel] + 1) % 5  # what is not selected never counts
        assert float(masked_ce(head, feats, labels_elsewhere, sel)[0]) == pytest.approx(float(loss), rel=1e-6)


def test_masked_ce_with_nothing_selected_is_an_exact_zero_that_reaches_the_head():
    head = nn.Linear(8, 5)
    loss, acc = masked_ce(head, torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.long),
                          torch.zeros(2, 3, dtype=torch.bool))
    assert float(loss.detach()) == 0.0 and float(acc) == 0.0
    loss.backward()  # every rank's backward touches the same parameters (DDP)
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) == 0.0
