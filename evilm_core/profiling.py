"""`evilm profile`: parameter and FLOP count of an E-ViLM model per component (docs/design.md,
"Model"; paper 4.1). A command body, so it sits beside the stages and resolves its run settings.

The paper's efficiency claims are "16M parameters without task heads" and "12.2 GFLOPs for a
4-frame clip and its caption", with EdgeNeXt-S at "1.26 GFLOPs and 5.59M parameters" per 256 px
frame. To check them we count with fvcore, which is also how EdgeNeXt's own figures are made:
one multiply-add is one FLOP, and element-wise ops (add, GELU, softmax, ...) are not counted.

Each component runs as its own module on the inputs it sees in the real forward pass (the
fusion decoder on the encoders' outputs, MLM on the L text tokens, MVM on all T*g*g video
tokens, VTM and retrieval on a CLS), so per-component numbers are exact rather than read off a
module-name breakdown of one trace; a whole-trunk trace of `forward_features` checks the sum.

Two things fvcore 0.1.5 does not know, handled here:
- `aten::scaled_dot_product_attention` (timm's Block and transformers' BERT "sdpa" attention)
  would count as zero; `sdpa_flop_jit` counts QK^T and attention x V. (EdgeNeXt's XCA attention
  uses plain matmuls, which fvcore counts.)
- It traces with torch.jit, so the model must be eager (never torch.compile'd); we build a
  fresh one on CPU with `pretrained` forced off, so profiling never downloads anything.

Parameters: timm's edgenext_small built with num_classes=0 (as the video encoder is) has 5.28M
parameters; the paper's 5.59M includes the 1000-class ImageNet head (304*1000 + 1000 = 305k).
The FLOP figure is unaffected within rounding (the head is 0.3 MFLOPs).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections import Counter
from typing import Any

import torch
import torch.nn as nn

from evilm_core.errors import EvilmError
from evilm_core.models.config import EViLMConfig
from evilm_core.settings import RunSettings, resolve_settings

log = logging.getLogger("evilm.profiling")

COUNTING = "fvcore: one multiply-add = one FLOP"
PAPER_VOCAB_SIZE = 9420  # the paper's vocabulary: used when a recipe leaves model.vocab_size at 0
PAPER = {"params_without_heads_M": 16, "gflops_total": 12.2, "edgenext_small_per_frame_gflops": 1.26,
         "edgenext_small_per_frame_params_M": 5.59}
IMAGENET_HEAD_NOTE = ("the paper's 5.59M for EdgeNeXt-S includes its 1000-class ImageNet head "
                      "(304*1000+1000 = 305k params); timm's edgenext_small with num_classes=0 has 5.28M")
HEADS = ("mlm", "vtm", "mvm", "retrieval")
TRUNK = ("video_encoder", "text_encoder", "fusion")


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: batch*heads*(Lq*Lk*d + Lq*Lk*d_v).

    Q [..., Lq, d], K [..., Lk, d], V [..., Lk, d_v]: QK^T is Lq*Lk*d multiply-adds and the
    weighted sum of values Lq*Lk*d_v, per batch and head. Softmax, scaling and the mask are
    element-wise and left uncounted, like fvcore does for every other op of that kind.
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch_heads = math.prod(q[:-2])  # query heads: with grouped K/V the keys are broadcast
    lq, d, lk, dv = q[-2], q[-1], k[-2], v[-1]
    return batch_heads * lq * lk * (d + dv)


def count_flops(module: nn.Module, inputs: tuple) -> tuple[int, Counter]:
    """(FLOPs, uncounted ops) of one call, with fvcore's warnings and tracer chatter silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings, torch.jit deprecation notices
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(module, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = int(analysis.total())
        return total, Counter(analysis.unsupported_ops())


def count_params(module: nn.Module) -> int:
    from fvcore.nn import parameter_count

    return int(parameter_count(module)[""])


class _Apply(nn.Module):
    """Runs the given modules on one input each and returns all outputs: the retrieval
    projections (video CLS, text CLS) counted as one component."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, *xs: torch.Tensor) -> tuple:
        return tuple(m(x) for m, x in zip(self.parts, xs))


class _Trunk(nn.Module):
    """`forward_features` with a tuple output (fvcore's tracer does not take dicts)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels, input_ids, attention_mask):
        out = self.model.forward_features(pixels, input_ids, attention_mask)
        return out["cls"], out["text"], out["video"]


def build_profile_model(cfg: EViLMConfig) -> nn.Module:
    """EViLM(cfg) in eval mode on CPU, never downloading weights (the count needs no trained values)."""
    from evilm_core.models.evilm import EViLM

    cfg = dataclasses.replace(cfg, pretrained=False)
    torch.manual_seed(0)
    return EViLM(cfg).eval()


def example_inputs(cfg: EViLMConfig, frames: int, text_len: int) -> tuple[torch.Tensor, ...]:
    """One clip [1, T, 3, S, S] and one caption of L tokens with no padding."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, frames, 3, cfg.image_size, cfg.image_size, generator=gen)
    input_ids = torch.randint(1, cfg.vocab_size, (1, text_len), generator=gen)
    return pixels, input_ids, torch.ones(1, text_len, dtype=torch.long)


def _components(model: nn.Module, pixels, input_ids, mask) -> dict[str, tuple[nn.Module, tuple]]:
    """Each component with the exact inputs the forward pass gives it."""
    with torch.no_grad():
        video, text = model.video(pixels), model.text(input_ids, mask)
        cls = model.fusion(text, mask, video)[:, 0]
    return {
        "video_encoder": (model.video, (pixels,)),
        "text_encoder": (model.text, (input_ids, mask)),
        "fusion": (model.fusion, (text, mask, video)),
        "mlm": (model.heads["mlm"], (text,)),
        "vtm": (model.heads["vtm"], (cls,)),
        "mvm": (model.heads["mvm"], (video,)),
        "retrieval": (_Apply(model.retrieval["video"], model.retrieval["text"]), (cls, cls)),
    }


def _shape(values: dict[str, float]) -> dict[str, Any]:
    """Flat per-component values -> {total, video_encoder, ..., heads: {...}, total_without_heads}."""
    trunk = sum(values[k] for k in TRUNK)
    heads = {k: values[k] for k in HEADS}
    return {"total": trunk + sum(heads.values()), **{k: values[k] for k in TRUNK}, "heads": heads,
            "total_without_heads": trunk}


def profile_model(cfg: EViLMConfig, frames: int, text_len: int = 40) -> dict[str, Any]:
    """Params and GFLOPs per component for one clip of `frames` frames and a `text_len`-token caption.

    The retrieval head's parameters include the learned temperature (`logit_scale`, one scalar) so
    the components add up to every parameter of the model.
    """
    _check_sizes(cfg, frames, text_len)
    model = build_profile_model(cfg)
    pixels, input_ids, mask = example_inputs(cfg, frames, text_len)
    params, flops, uncounted = {}, {}, Counter()
    for name, (module, inputs) in _components(model, pixels, input_ids, mask).items():
        flops[name], ops = count_flops(module, inputs)
        params[name] = count_params(module)
        uncounted.update(ops)
        log.debug("profile %s: %d params, %d FLOPs", name, params[name], flops[name])
    params["retrieval"] += model.logit_scale.numel()
    trunk_flops, _ = count_flops(_Trunk(model), (pixels, input_ids, mask))
    parts = sum(flops[k] for k in TRUNK)
    if abs(trunk_flops - parts) > 1e-6 * max(trunk_flops, 1):  # the same ops, so equal up to rounding
        raise RuntimeError(f"per-component FLOPs ({parts}) differ from the whole trunk's ({trunk_flops})")
    backbone, _ = count_flops(model.video.backbone, (pixels[0, :1],))  # one frame: the paper's unit
    gflops = _shape({k: v / 1e9 for k, v in flops.items()})
    gflops["video_encoder_per_frame"] = flops["video_encoder"] / frames / 1e9
    return {
        "params": _shape(params), "gflops": gflops,
        "backbone": {"name": cfg.video_encoder, "params": count_params(model.video.backbone),
                     "gflops_per_frame": backbone / 1e9},
        "uncounted_ops": dict(uncounted.most_common()),
        "frames": frames, "image_size": cfg.image_size, "text_len": text_len, "vocab_size": cfg.vocab_size,
        "counting": COUNTING, "paper": dict(PAPER),
    }


def _check_sizes(cfg: EViLMConfig, frames: int, text_len: int) -> None:
    """Sizes the model cannot take would fail deep in a trace; say which value is wrong instead."""
    if not 1 <= frames <= cfg.max_frames:
        raise EvilmError(f"--frames {frames}: the model takes 1 to model.max_frames ({cfg.max_frames}) frames")
    max_len = max(64, cfg.max_text_len)  # BERT's position table (text_encoder.bert_config)
    if not 1 <= text_len <= max_len:
        raise EvilmError(f"--text-len {text_len}: the text encoder takes 1 to {max_len} tokens")


def profile_recipe(recipe: Any, frames: int | None = None, text_len: int = 40, vocab_size: int | None = None,
                   settings: RunSettings | None = None) -> dict[str, Any]:
    """Profile the `model:` of any loaded recipe whose model is an E-ViLM (pretrain, fine-tune).

    Frames default to the recipe's data.num_frames. A recipe's model.vocab_size is usually 0
    (training sets it from vocab.txt), so the paper's 9,420 words stand in unless `vocab_size`
    is given; `vocab_source` in the result says which was used. Counting runs on the CPU, on the
    threads of `settings` (resolved here from train.threads unless a caller gives them).
    """
    threads = getattr(getattr(recipe, "train", None), "threads", 0)
    (settings or resolve_settings("cpu", "fp32", threads, decoder=None)).apply()
    cfg = getattr(recipe, "model", None)
    if not isinstance(cfg, EViLMConfig):
        kind = getattr(recipe, "kind", type(recipe).__name__)
        raise EvilmError(f"profile needs a recipe whose model: section is an E-ViLM model (kind 'pretrain' "
                         f"or a fine-tune recipe); this recipe is kind '{kind}'")
    if vocab_size is not None:
        if vocab_size < 6:
            raise EvilmError(f"--vocab-size {vocab_size}: the text vocabulary needs at least 6 entries")
        cfg, source = dataclasses.replace(cfg, vocab_size=vocab_size), "--vocab-size"
    elif cfg.vocab_size > 0:
        source = "recipe"
    else:
        cfg, source = dataclasses.replace(cfg, vocab_size=PAPER_VOCAB_SIZE), "paper default; the recipe has 0"
    data = getattr(recipe, "data", None)
    if frames is None:
        frames = getattr(data, "num_frames", None) or 4
    result = profile_model(cfg, frames, text_len)
    result["vocab_source"] = source
    return result
