"""l2-normalised vector quantiser with the codebook-health remedies the field uses.

Codes and codebook entries live on the unit sphere (paper 4.1: "the embedding before/after
look-up have all been l2-normalized"), so the nearest entry in Euclidean distance is the one
with the largest cosine. The paper says nothing about dead codes; with a 9,420-entry codebook
they are the known failure (BEiT v2 #936, #1724), so three switchable remedies are provided:
k-means initialisation from the first batch of encoder outputs, EMA codebook updates (BEiT v2
style, replacing the codebook term of eq. 7) and restarting codes unused for N steps.
Under DDP, counts and sums are all-reduced and restarts/k-means are decided on rank 0 and
broadcast, so every rank keeps the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cosine_kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """k unit-norm centroids of unit vectors x [N, D] (spherical k-means; empty clusters keep
    their previous centroid). With N < k, centroids are drawn with replacement."""
    n = x.shape[0]
    pick = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(n, (k,), generator=generator)
    centroids = x[pick].clone()
    for _ in range(iters):
        assign = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centroids = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centroids)
    return centroids


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int, ema: bool = True, decay: float = 0.99,
                 kmeans_init: bool = True, restart_unused: int = 0):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.ema, self.decay = ema, decay
        self.kmeans_init, self.restart_unused = kmeans_init, restart_unused
        weight = F.normalize(torch.randn(num_codes, dim), dim=1)
        # With EMA the codebook is not trained by gradients, so it is a buffer (saved, not optimised).
        if ema:
            self.register_buffer("codebook", weight)
        else:
            self.codebook = nn.Parameter(weight)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("last_used", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1)

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code index for unit vectors z [..., D] -> [...] long. Always in fp32, even under
        bf16 autocast: bf16 keeps ~3 significant digits, which ties near codes (measured: half the
        codes of a bf16 lookup differed from fp32; docs/performance.md, "Precision")."""
        flat = z.reshape(-1, self.dim).float()
        with torch.autocast(flat.device.type, enabled=False):
            return (flat @ self.normalized_codebook().float().T).argmax(dim=1).view(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z [..., D] (any scale) -> (straight-through quantised [..., D], codes [...], vq losses).

        Losses (eq. 7, squared l2 distance averaged over vectors): `codebook` = ||sg[z] - c||^2
        (zero with EMA, which moves the codebook instead), `commitment` = ||z - sg[c]||^2.
        """
        z = F.normalize(z.float(), dim=-1)
        flat = z.reshape(-1, self.dim)
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        codes = self.lookup(flat)
        zq = self.normalized_codebook()[codes]
        commitment = (flat - zq.detach()).pow(2).sum(1).mean()
        codebook = (flat.detach() - zq).pow(2).sum(1).mean() if not self.ema else flat.new_zeros(())
        if self.training:
            self._update(flat.detach(), codes)
        zq_st = flat + (zq - flat).detach()  # straight-through: forward zq, gradient to z
        shape = z.shape[:-1]
        return zq_st.view(*shape, self.dim), codes.view(shape), {"codebook": codebook, "commitment": commitment}

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        if _dist():  # k-means on every rank's vectors, decided on rank 0
            gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, flat.contiguous())
            flat = torch.cat(gathered)
        self.codebook.data.copy_(cosine_kmeans(flat, self.num_codes))
        if _dist():
            dist.broadcast(self.codebook.data, 0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        self.steps += 1
        counts = torch.bincount(codes, minlength=self.num_codes).float()
        sums = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, codes, flat)
        if _dist():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        used = counts > 0
        self.last_used[used] = self.steps
        if self.ema:  # move each used entry toward the mean of its vectors, stay on the sphere
            means = F.normalize(sums, dim=1)
            moved = F.normalize(self.decay * self.codebook + (1 - self.decay) * means, dim=1)
            self.codebook.data.copy_(torch.where(used[:, None], moved, self.codebook))
        if self.restart_unused > 0:
            self._restart_dead(flat, codes)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        dead = (self.steps - self.last_used) > self.restart_unused
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # Re-seed dead entries on this batch's encoder outputs, drawn in proportion to their
        # quantisation error: uniform draws land on the dense, already well-served clusters (a
        # plain background) and die again; the badly served vectors are where codes are missing.
        error = (flat - self.normalized_codebook()[codes]).pow(2).sum(1) + 1e-6
        pick = torch.multinomial(error, n_dead, replacement=n_dead > flat.shape[0])
        fresh = F.normalize(flat[pick] + 0.01 * torch.randn_like(flat[pick]), dim=1)
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        if _dist():
            dist.broadcast(self.codebook.data, 0)
        self.last_used[dead] = self.steps


def code_usage(codes: torch.Tensor, num_codes: int) -> dict[str, float]:
    """Utilisation (share of codes used at least once, the paper's VOC. RATE) and perplexity."""
    counts = torch.bincount(codes.reshape(-1).long(), minlength=num_codes).double()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"codebook_usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}
