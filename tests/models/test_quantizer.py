"""Vector quantiser: nearest look-up, eq. 7 terms, straight-through gradient, remedies, usage."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from evilm_core.models.quantizer import VectorQuantizer, code_usage, cosine_kmeans


def _vq(**kw) -> VectorQuantizer:
    kw = {"ema": False, "kmeans_init": False, "restart_unused": 0, **kw}
    vq = VectorQuantizer(2, 2, **kw)
    vq.codebook.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    return vq


def test_nearest_code_and_vq_terms_by_hand():
    vq = _vq().eval()
    z = torch.tensor([[3.0, 1.0], [0.2, 1.0]])  # scale does not matter: codes are l2-normalised
    zq, codes, terms = vq(z)
    assert codes.tolist() == [0, 1]
    unit = F.normalize(z, dim=1)
    expected = ((unit - torch.eye(2)) ** 2).sum(1).mean()
    assert torch.allclose(terms["commitment"], expected) and torch.allclose(terms["codebook"], expected)
    assert torch.allclose(zq, torch.eye(2))  # forward value is the code


def test_straight_through_gradient_is_identity_on_normalised_codes():
    vq = _vq().eval()
    z = torch.tensor([[3.0, 1.0], [0.2, 1.0]], requires_grad=True)
    w = torch.tensor([[0.5, -2.0], [1.0, 3.0]])
    zq, _, _ = vq(z)
    (zq * w).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=1) * w).sum().backward()
    assert torch.allclose(z.grad, z2.grad)


def test_codebook_term_trains_codebook_commitment_trains_encoder():
    vq = _vq().eval()
    z = torch.tensor([[3.0, 1.0]], requires_grad=True)
    _, _, terms = vq(z)
    terms["codebook"].backward()
    assert z.grad is None or torch.all(z.grad == 0)
    assert vq.codebook.grad.abs().sum() > 0
    vq.codebook.grad = None
    _, _, terms = vq(z)
    terms["commitment"].backward()
    assert vq.codebook.grad is None and z.grad.abs().sum() > 0


def test_ema_moves_used_code_toward_its_vectors_only():
    vq = _vq(ema=True, decay=0.5).train()
    before = vq.codebook.clone()
    vq(torch.tensor([[1.0, 1.0]]))  # nearest is code 0 on a tie; argmax picks index 0
    assert torch.allclose(vq.codebook[0], F.normalize(0.5 * before[0] + 0.5 * F.normalize(torch.ones(2), dim=0), dim=0))
    assert torch.allclose(vq.codebook[1], before[1])
    assert math.isclose(vq.codebook[0].norm().item(), 1.0, rel_tol=1e-6)
    assert terms_zero_with_ema(vq)


def terms_zero_with_ema(vq):
    _, _, terms = vq(torch.tensor([[1.0, 0.0]]))
    return terms["codebook"].item() == 0.0


def test_dead_codes_are_restarted():
    vq = VectorQuantizer(4, 2, ema=True, kmeans_init=False, restart_unused=2).train()
    vq.codebook.data.copy_(F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]]), dim=1))
    z = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    for _ in range(4):
        vq(z)
    # the code nearest (0, 1) was unused for > 2 steps at first; after restarts some code sits at (0, 1)
    assert (vq.normalized_codebook() @ torch.tensor([0.0, 1.0])).max() > 0.99


def test_kmeans_init_on_first_training_batch():
    torch.manual_seed(0)
    centres = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    x = F.normalize(centres.repeat(50, 1) + 0.05 * torch.randn(150, 3), dim=1)
    found = cosine_kmeans(x, 3, iters=20, generator=torch.Generator().manual_seed(1))
    sim = found @ centres.T
    assert (sim.max(0).values > 0.98).all()
    vq = VectorQuantizer(3, 3, ema=True, kmeans_init=True).train()
    assert not bool(vq.initialized)
    vq(x)
    assert bool(vq.initialized) and ((vq.codebook @ centres.T).max(0).values > 0.95).all()


def test_code_usage_and_perplexity():
    stats = code_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert stats["codebook_usage"] == 0.5 and math.isclose(stats["perplexity"], 2.0, rel_tol=1e-6)
