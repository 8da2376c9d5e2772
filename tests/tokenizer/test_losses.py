"""Focal / BCE word losses and AP against hand-computed values."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from evilm_core.tokenizer.losses import average_precision, bce_word_loss, focal_word_loss, word_metrics


def test_focal_matches_eq6_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p1 = 1 / (1 + math.exp(-2.0))
    # eq. 6 with the sign of a loss: -(1/K) [log p_pos + p_neg * log(1 - p_neg)]
    expected = -(math.log(0.5) + p1 * math.log(1 - p1)) / 2
    assert math.isclose(focal_word_loss(logits, targets).item(), expected, rel_tol=1e-6)
    expected_g2 = -((0.5 ** 2) * math.log(0.5) + p1 * math.log(1 - p1)) / 2
    assert math.isclose(focal_word_loss(logits, targets, gamma_pos=2.0).item(), expected_g2, rel_tol=1e-6)


def test_focal_with_zero_gammas_is_bce():
    logits, targets = torch.randn(4, 7), (torch.rand(4, 7) > 0.5).float()
    assert torch.allclose(focal_word_loss(logits, targets, 0.0, 0.0), bce_word_loss(logits, targets))
    assert torch.allclose(bce_word_loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_focal_is_finite_for_extreme_logits():
    logits = torch.tensor([[80.0, -80.0]])
    assert torch.isfinite(focal_word_loss(logits, torch.tensor([[0.0, 1.0]])))


def test_focal_down_weights_easy_negatives():
    easy, hard = torch.tensor([[-4.0]]), torch.tensor([[1.0]])
    zero = torch.zeros(1, 1)
    ratio_focal = focal_word_loss(easy, zero) / focal_word_loss(hard, zero)
    ratio_bce = bce_word_loss(easy, zero) / bce_word_loss(hard, zero)
    assert ratio_focal < ratio_bce


def test_average_precision_by_hand():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert math.isclose(average_precision(scores, targets)[0].item(), (1 + 2 / 3) / 2, rel_tol=1e-6)


def test_average_precision_ties_are_pessimistic_and_nan_without_positives():
    const = torch.full((4, 2), 0.3)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    ap = average_precision(const, targets)
    assert math.isclose(ap[0].item(), 0.5) and math.isnan(ap[1].item())


def test_word_metrics_baseline_is_prevalence():
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    perfect = targets * 10 - 5
    m = word_metrics(perfect, targets, torch.tensor([0.7, 0.2]))
    assert math.isclose(m["word_mAP"], 1.0) and math.isclose(m["word_F1"], 1.0)
    assert math.isclose(m["word_mAP_freq_baseline"], (0.75 + 0.25) / 2)
