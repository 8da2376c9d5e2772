"""`evilm_core.profiling`: exact per-component counts, the SDPA handle, and the paper's figures."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.errors import EvilmError
from evilm_core.models.config import EViLMConfig
from evilm_core.profiling import (
    HEADS,
    PAPER,
    PAPER_VOCAB_SIZE,
    build_profile_model,
    count_flops,
    example_inputs,
    profile_model,
    profile_recipe,
)
from evilm_core.recipes import load_recipe

TINY = dict(video_encoder="edgenext_xx_small", image_size=64, vocab_size=50, text_layers=1, fusion_layers=1,
            codebook_size=16)


class _Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_handle_counts_qk_and_av_exactly():
    # B=2, heads=3, Lq=5, Lk=7, d=8, d_v=4: QK^T 2*3*5*7*8 = 1680, attention x V 2*3*5*7*4 = 840
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    flops, uncounted = count_flops(_Attention(), (q, k, v))
    assert flops == 1680 + 840
    assert "aten::scaled_dot_product_attention" not in uncounted


@pytest.fixture(scope="module")
def tiny():
    cfg = EViLMConfig(**TINY)
    start = time.monotonic()
    result = profile_model(cfg, frames=2, text_len=8)
    return cfg, result, time.monotonic() - start


def test_tiny_config_profiles_quickly_and_components_add_up(tiny):
    cfg, r, seconds = tiny
    assert seconds < 30  # a few seconds on a laptop CPU; generous for loaded CI machines
    for key in ("params", "gflops"):
        part = r[key]
        trunk = part["video_encoder"] + part["text_encoder"] + part["fusion"]
        assert part["total_without_heads"] == pytest.approx(trunk)
        assert part["total"] == pytest.approx(trunk + sum(part["heads"][h] for h in HEADS))
        assert set(part["heads"]) == set(HEADS)
    model = build_profile_model(cfg)
    assert r["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert r["params"]["total_without_heads"] == model.trunk_parameters()
    assert r["gflops"]["video_encoder_per_frame"] == pytest.approx(r["gflops"]["video_encoder"] / 2)
    assert (r["frames"], r["image_size"], r["text_len"]) == (2, 64, 8)
    assert r["paper"] == PAPER


def _fusion_flops(cfg: EViLMConfig, n: int) -> tuple[int, int]:
    """(linear-only, exact) FLOPs of the fusion decoder on n tokens, by hand."""
    d, hidden = cfg.fusion_dim, int(cfg.fusion_dim * cfg.mlp_ratio)
    linear = n * (d * 3 * d + d * d + 2 * d * hidden) * cfg.fusion_layers
    norms = 5 * n * d * (2 * cfg.fusion_layers + 1)  # fvcore: layer_norm with affine = 5 per element
    attention = n * n * 2 * d * cfg.fusion_layers  # heads * (n*n*d_h + n*n*d_h)
    return linear, linear + norms + attention


def test_fusion_attention_is_counted(tiny):
    cfg, r, _ = tiny
    n = 1 + r["text_len"] + r["frames"] * cfg.grid ** 2
    linear_only, exact = _fusion_flops(cfg, n)
    assert round(r["gflops"]["fusion"] * 1e9) == exact
    assert r["gflops"]["fusion"] * 1e9 > linear_only


def _bert_flops(cfg: EViLMConfig, n: int) -> tuple[int, int]:
    h, inter = cfg.text_hidden, cfg.text_intermediate
    linear = n * (4 * h * h + 2 * h * inter) * cfg.text_layers + n * h * cfg.fusion_dim  # + projection
    norms = 5 * n * h * (2 * cfg.text_layers + 1)  # two per layer + the embeddings' LayerNorm
    return linear, linear + norms + n * n * 2 * h * cfg.text_layers


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_attention_is_counted_with_either_implementation(attn):
    cfg = EViLMConfig(**{**TINY, "text_layers": 2})
    model = build_profile_model(cfg)
    model.text.bert.set_attn_implementation(attn)
    _, ids, mask = example_inputs(cfg, frames=1, text_len=12)
    flops, _ = count_flops(model.text, (ids, mask))
    linear_only, exact = _bert_flops(cfg, 12)
    assert flops == exact > linear_only


class _Recipe:
    kind = "tokenizer"
    model = object()


def test_wrong_model_and_bad_sizes_are_user_errors():
    with pytest.raises(EvilmError, match="E-ViLM model.*kind 'tokenizer'"):
        profile_recipe(_Recipe())
    with pytest.raises(EvilmError, match="--frames 99"):
        profile_model(EViLMConfig(**TINY), frames=99)
    with pytest.raises(EvilmError, match="--text-len 0"):
        profile_model(EViLMConfig(**TINY), frames=1, text_len=0)


def test_webvid_recipe_matches_the_paper():
    """The acceptance figures: 16M +- 10% without heads, EdgeNeXt-S 1.26 GFLOPs/frame +- 2%
    (4 frames at 256 px), at most 12.2 GFLOPs in all, attention counted."""
    r = profile_recipe(load_recipe("recipes/webvid.yaml"), text_len=40)
    assert r["vocab_size"] == PAPER_VOCAB_SIZE and "paper" in r["vocab_source"]
    assert (r["frames"], r["image_size"]) == (4, 256)
    assert abs(r["params"]["total_without_heads"] / 16e6 - 1) <= 0.10
    assert abs(r["backbone"]["gflops_per_frame"] / 1.26 - 1) <= 0.02
    assert abs(r["gflops"]["video_encoder"] / (4 * 1.26) - 1) <= 0.02
    assert r["gflops"]["total"] <= 12.2
    assert not any("scaled_dot_product" in op or "matmul" in op for op in r["uncounted_ops"])
