"""Multi-label word losses for the tokenizer (paper eq. 6 and the Table 6 BCE row).

Eq. 6 as printed reads, per word k with predicted probability p_k:
    y_k = 1:  log(p_k)            y_k = 0:  p_k * log(1 - p_k)
averaged over the K words. As printed it is a log-likelihood (to be maximised) and its
negative term is the focal form with gamma = 1 on negatives and no focusing on positives. We
implement the loss to minimise, generalised by two exponents:

    L = -(1/K) sum_k [ y_k (1 - p_k)^gamma_pos log p_k + (1 - y_k) p_k^gamma_neg log(1 - p_k) ]

averaged over the batch. gamma_pos = 0, gamma_neg = 1 (the defaults) is exactly eq. 6;
gamma_pos = gamma_neg = 0 is plain binary cross-entropy (the `bce` option).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_word_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float = 0.0,
                    gamma_neg: float = 1.0) -> torch.Tensor:
    """logits, targets [B, K] -> scalar. log-sigmoid forms keep it finite for large logits."""
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    pos = targets * (1 - p).pow(gamma_pos) * log_p
    neg = (1 - targets) * p.pow(gamma_neg) * log_not_p
    return -(pos + neg).mean()


def bce_word_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def _column_ap(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(scores, descending=True)
    scores, targets = scores[order], targets[order]
    _, sizes = torch.unique_consecutive(scores, return_counts=True)
    ends = torch.cumsum(sizes, 0)  # a tie group's rank is the rank of its last member
    rank = torch.repeat_interleave(ends, sizes).float()
    hits = torch.repeat_interleave(torch.cumsum(targets, 0)[ends - 1], sizes)
    return (hits / rank * targets).sum() / targets.sum()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-column AP for scores, targets [N, K]; NaN for columns without positives.

    AP = mean over positives of precision at that positive's rank; tied scores are ranked
    pessimistically (every member of a tie group gets the group's last rank), so a constant
    predictor scores exactly the positive rate: the frequency baseline's AP.
    """
    targets = targets.float()
    ap = torch.full((scores.shape[1],), float("nan"))
    for k in (targets.sum(0) > 0).nonzero().flatten().tolist():
        ap[k] = _column_ap(scores[:, k].float(), targets[:, k])
    return ap


def word_metrics(logits: torch.Tensor, targets: torch.Tensor, train_freq: torch.Tensor) -> dict[str, float]:
    """mAP over words present in the eval set, micro-F1 at p > 0.5, and the frequency baseline's
    mAP (each word scored by its training frequency, the same for every clip)."""
    ap = average_precision(logits.float(), targets)
    base = average_precision(train_freq.expand_as(targets).float(), targets)
    pred = torch.sigmoid(logits.float()) > 0.5
    tp = (pred & (targets > 0)).sum().item()
    fp = (pred & (targets == 0)).sum().item()
    fn = ((~pred) & (targets > 0)).sum().item()
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"word_mAP": float(ap.nanmean()), "word_mAP_freq_baseline": float(base.nanmean()), "word_F1": f1}
