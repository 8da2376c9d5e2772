"""Masks for pre-training: BEiT block-wise masking on the region grid (MVM), BERT's 15% word
masking (MLM), and mismatched pairs for VTM. Every function takes an explicit
`torch.Generator`, so a step's masks depend only on (seed, epoch, batch) and a resumed run
draws exactly the masks the interrupted one would have."""

from __future__ import annotations

import math

import torch


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=g).item())


def _place_block(mask: torch.Tensor, max_new: int, min_cells: int, g: torch.Generator) -> int:
    """Try (10 times) to mask one random block adding 1..max_new new cells; returns cells added."""
    h, w = mask.shape
    for _ in range(10):
        area = _uniform(g, min(min_cells, max_new), max_new)
        aspect = math.exp(_uniform(g, math.log(0.3), math.log(1 / 0.3)))
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < bh <= h and 0 < bw <= w):
            continue
        top, left = _randint(g, 0, h - bh), _randint(g, 0, w - bw)
        block = mask[top:top + bh, left:left + bw]
        new = int((~block).sum())
        if 0 < new <= max_new:
            block.fill_(True)
            return new
    return 0


def block_mask(grid: int, ratio: float, g: torch.Generator, min_cells: int = 4) -> torch.Tensor:
    """One frame's BEiT block-wise mask on a grid x grid region map: exactly round(ratio * cells)
    cells, grown as rectangular blocks (aspect 0.3-3.3); topped up cell by cell if blocks stall."""
    target = round(ratio * grid * grid)
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    count = 0
    while count < target:
        added = _place_block(mask, target - count, min_cells, g)
        if added == 0:
            break
        count += added
    if count < target:
        free = (~mask).flatten().nonzero().flatten()
        pick = free[torch.randperm(free.numel(), generator=g)[: target - count]]
        mask.view(-1)[pick] = True
    return mask


def video_mask(batch: int, frames: int, grid: int, ratio: float, g: torch.Generator, min_cells: int = 4) -> torch.Tensor:
    """[B, T, g, g] bool: a block mask drawn independently for every frame (docs/design.md, "Region grid")."""
    return torch.stack([torch.stack([block_mask(grid, ratio, g, min_cells) for _ in range(frames)])
                        for _ in range(batch)])


def mask_pixels(pixels: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
    """Zero the masked 32x32 regions of normalised frames [B, T, 3, H, W] (paper 3.2: masked
    patches are replaced by zero-value pixels; zero in normalised space is the mean colour)."""
    cell = pixels.shape[-1] // region_mask.shape[-1]
    keep = (~region_mask).to(pixels.dtype)
    keep = keep.repeat_interleave(cell, -1).repeat_interleave(cell, -2)  # [B, T, H, W]
    return pixels * keep.unsqueeze(2)


def mlm_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, ratio: float, mask_id: int,
             vocab_size: int, special_ids: list[int], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: `ratio` of the real words (at least one per text) become targets; of those
    80% -> [MASK], 10% -> a random word, 10% unchanged. Returns (input ids, labels with -100)."""
    ids = input_ids.clone()
    candidates = attention_mask.bool() & ~torch.isin(ids, torch.tensor(special_ids, device=ids.device))
    score = torch.rand(ids.shape, generator=g).to(ids.device).masked_fill(~candidates, 2.0)
    n_words = candidates.sum(1)
    n_mask = torch.clamp((n_words.float() * ratio).round().long(), min=1) * (n_words > 0)
    rank = score.argsort(1).argsort(1)  # 0 = smallest score
    chosen = (rank < n_mask[:, None]) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=g).to(ids.device)
    ids[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    first_word = len(special_ids)
    ids[swap] = torch.randint(first_word, vocab_size, (int(swap.sum()),), generator=g).to(ids.device)
    return ids, labels


def vtm_pairs(captions: list[str], g: torch.Generator, neg_share: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mismatched pairs for VTM: `neg_share` of the rows take the text of another row of the
    batch (a random non-zero shift). Returns (text source row per row [B], match label [B]);
    a borrowed text that happens to equal the row's own caption stays labelled a match."""
    b = len(captions)
    source = torch.arange(b)
    if b < 2:
        return source, torch.ones(b, dtype=torch.long)
    neg_rows = torch.randperm(b, generator=g)[: int(round(b * neg_share))]
    shifts = torch.randint(1, b, (neg_rows.numel(),), generator=g)
    source[neg_rows] = (neg_rows + shifts) % b
    label = torch.tensor([int(captions[i] == captions[int(source[i])]) for i in range(b)])
    return source, label
