"""Pre-training masks (docs/design.md, "Region grid"): BEiT block masking on the region grid,
pixel zeroing, BERT word masking and VTM mismatched pairs. Every draw comes from an explicit
torch.Generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evilm_core.pretrain.masking import block_mask, mask_pixels, mlm_mask, video_mask, vtm_pairs

RATIOS = [0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6]
PAD, UNK, CLS, SEP, MASK = range(5)  # SPECIAL_TOKENS order of evilm_core.text.vocab


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def components(mask: torch.Tensor) -> int:
    """4-connected components of the True cells."""
    m = mask.numpy().copy()
    h, w = m.shape
    count = 0
    for y in range(h):
        for x in range(w):
            if not m[y, x]:
                continue
            count += 1
            stack = [(y, x)]
            m[y, x] = False
            while stack:
                cy, cx = stack.pop()
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and m[ny, nx]:
                        m[ny, nx] = False
                        stack.append((ny, nx))
    return count


@pytest.mark.parametrize("grid", range(2, 9))
@pytest.mark.parametrize("ratio", RATIOS)
def test_block_mask_exact_count(grid, ratio):
    for seed in range(20):
        for min_cells in (1, 4):
            m = block_mask(grid, ratio, gen(seed), min_cells)
            assert m.shape == (grid, grid) and m.dtype == torch.bool
            assert int(m.sum()) == round(ratio * grid * grid), (grid, ratio, seed, min_cells)


def test_block_mask_is_deterministic_per_generator():
    for seed in range(10):
        assert torch.equal(block_mask(8, 0.4, gen(seed)), block_mask(8, 0.4, gen(seed)))
    draws = {tuple(block_mask(8, 0.4, gen(seed)).flatten().tolist()) for seed in range(10)}
    assert len(draws) > 5  # different seeds, different masks
    g1, g2 = gen(3), gen(3)  # a generator continues deterministically across calls
    assert all(torch.equal(block_mask(8, 0.4, g1), block_mask(8, 0.4, g2)) for _ in range(5))


def test_block_mask_forms_contiguous_blocks():
    """For g=8, ratio 0.4 (26 cells) block masking gives far fewer connected pieces than as many
    cells scattered at random."""
    blocks, scattered = [], []
    for seed in range(40):
        m = block_mask(8, 0.4, gen(seed))
        blocks.append(components(m))
        rand = torch.zeros(64, dtype=torch.bool)
        rand[torch.randperm(64, generator=gen(1000 + seed))[: int(m.sum())]] = True
        scattered.append(components(rand.view(8, 8)))
    assert np.mean(blocks) < 0.5 * np.mean(scattered), (np.mean(blocks), np.mean(scattered))
    assert np.mean(blocks) <= 4


def test_video_mask_shape_and_independent_frames():
    m = video_mask(3, 4, 8, 0.4, gen(0))
    assert m.shape == (3, 4, 8, 8) and m.dtype == torch.bool
    assert (m.flatten(2).sum(-1) == round(0.4 * 64)).all()
    frames = m.flatten(0, 1).flatten(1)
    assert len({tuple(f.tolist()) for f in frames}) == 12  # every frame of every clip its own mask
    assert torch.equal(m, video_mask(3, 4, 8, 0.4, gen(0)))


@pytest.mark.parametrize("grid", [2, 4])
def test_mask_pixels_zeroes_exactly_the_masked_cells(grid):
    b, t, size = 2, 3, 32 * grid
    pixels = torch.rand(b, t, 3, size, size) + 0.5  # nowhere zero
    regions = video_mask(b, t, grid, 0.5, gen(1), min_cells=1)
    out = mask_pixels(pixels, regions)
    assert out.shape == pixels.shape
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for bi in range(b):
        for ti in range(t):
            expect_zero = regions[bi, ti][ys // 32, xs // 32]  # [H, W]: pixel (y, x) is in cell (y//32, x//32)
            zero = (out[bi, ti] == 0).all(0)
            assert torch.equal(zero, expect_zero)
            keep = ~expect_zero
            assert torch.equal(out[bi, ti][:, keep], pixels[bi, ti][:, keep])


def _texts(b: int = 6, length: int = 24, vocab: int = 1000, seed: int = 0):
    """[CLS] w ... w [SEP] [PAD] ... with varying lengths (1..length-2 words)."""
    rng = np.random.default_rng(seed)
    ids = torch.full((b, length), PAD)
    attn = torch.zeros(b, length, dtype=torch.long)
    lengths = [1, 2, 6, 13, length - 2] + list(rng.integers(1, length - 1, max(0, b - 5)))
    for i, n in enumerate(lengths[:b]):
        ids[i, 0], ids[i, n + 1] = CLS, SEP
        ids[i, 1:n + 1] = torch.as_tensor(rng.integers(5, vocab, n))
        attn[i, : n + 2] = 1
    return ids, attn


def test_mlm_mask_counts_and_specials():
    ids, attn = _texts()
    words = attn.bool() & (ids >= 5)
    for seed in range(20):
        new, labels = mlm_mask(ids, attn, 0.15, MASK, 1000, list(range(5)), gen(seed))
        chosen = labels != -100
        n_words = words.sum(1)
        want = torch.clamp((n_words.float() * 0.15).round().long(), min=1)
        assert torch.equal(chosen.sum(1), want)  # ~15% of the real words, at least one per text
        assert not (chosen & ~words).any()  # never [CLS], [SEP] or [PAD]
        assert torch.equal(labels[chosen], ids[chosen])  # labels are the original words
        assert torch.equal(new[~chosen], ids[~chosen])  # nothing else is touched
        assert (new[chosen] != PAD).all() and (new[chosen] != CLS).all() and (new[chosen] != SEP).all()


def test_mlm_mask_80_10_10():
    ids, attn = _texts(b=8, length=40, vocab=5000)
    mask_n = rand_n = keep_n = 0
    for seed in range(400):
        new, labels = mlm_mask(ids, attn, 0.15, MASK, 5000, list(range(5)), gen(seed))
        chosen = labels != -100
        got, orig = new[chosen], ids[chosen]
        mask_n += int((got == MASK).sum())
        keep_n += int((got == orig).sum())
        rand_n += int(((got != MASK) & (got != orig)).sum())
        assert ((got == MASK) | (got >= 5)).all()  # random replacements are words, never specials
    total = mask_n + rand_n + keep_n
    assert total > 3000
    assert abs(mask_n / total - 0.8) < 0.03 and abs(rand_n / total - 0.1) < 0.03 and abs(keep_n / total - 0.1) < 0.03


def test_mlm_mask_deterministic_per_generator():
    ids, attn = _texts()
    a = mlm_mask(ids, attn, 0.15, MASK, 1000, list(range(5)), gen(7))
    b = mlm_mask(ids, attn, 0.15, MASK, 1000, list(range(5)), gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = [mlm_mask(ids, attn, 0.15, MASK, 1000, list(range(5)), gen(s))[1] for s in range(8)]
    assert len({tuple(x.flatten().tolist()) for x in c}) > 1
    empty = torch.tensor([[CLS, SEP, PAD, PAD]]), torch.tensor([[1, 1, 0, 0]])  # no word: nothing chosen
    new, labels = mlm_mask(*empty, 0.15, MASK, 1000, list(range(5)), gen(0))
    assert (labels == -100).all() and torch.equal(new, empty[0])


def test_vtm_pairs_share_and_labels():
    captions = [f"caption {i}" for i in range(10)]
    for seed in range(20):
        source, label = vtm_pairs(captions, gen(seed), 0.5)
        assert source.shape == label.shape == (10,)
        moved = source != torch.arange(10)
        assert int(moved.sum()) == 5  # half of the rows take another row's caption
        assert torch.equal(label, (~moved).long())  # all captions distinct: label 0 exactly where moved
    source, label = vtm_pairs(captions, gen(0), 0.3)
    assert int((source != torch.arange(10)).sum()) == 3
    assert torch.equal(vtm_pairs(captions, gen(4))[0], vtm_pairs(captions, gen(4))[0])


def test_vtm_pairs_identical_captions_stay_matches():
    captions = ["a dog", "a dog", "a cat", "a dog", "a bird", "a cat"]
    seen_dup = False
    for seed in range(50):
        source, label = vtm_pairs(captions, gen(seed), 0.5)
        want = torch.tensor([int(captions[i] == captions[int(source[i])]) for i in range(6)])
        assert torch.equal(label, want)
        seen_dup |= bool(((source != torch.arange(6)) & (label == 1)).any())
    assert seen_dup  # some borrowed caption equalled the row's own and stayed labelled a match


def test_vtm_pairs_batch_of_one():
    source, label = vtm_pairs(["only"], gen(0), 0.5)
    assert source.tolist() == [0] and label.tolist() == [1]
