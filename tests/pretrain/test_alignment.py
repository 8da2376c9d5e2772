"""MVM region alignment (docs/design.md, "Region grid"; PEERS: VIOLET #4, targets off by one from
a video [CLS]).

Region (t, i, j) must be the same region everywhere: the 32x32 pixel square of frame t, the mask
cell, the target (a tokenizer code, cached or online) and the MVM logits row t*g*g + i*g + j.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evilm_core.config.loader import from_dict
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.pretrain import objectives
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.pretrain.objectives import PretrainTask
from tests.helpers.pretrain import TINY, VOCAB, text_batch


def tiny_model(image_size: int = 64, seed: int = 0) -> EViLM:
    torch.manual_seed(seed)
    return EViLM(EViLMConfig(**{**TINY, "image_size": image_size})).eval()


def cell(size: int, t: int, i: int, j: int) -> tuple:
    """Index of the pixels of region (t, i, j) in a [B, T, 3, H, W] tensor (all clips)."""
    return (slice(None), t, slice(None), slice(32 * i, 32 * i + 32), slice(32 * j, 32 * j + 32))


def local_backbone(model: EViLM) -> None:
    """Replace the EdgeNeXt map by a strictly local one (channel c of cell (i, j) = a fixed mix
    of the mean colour of that 32x32 square): a change of region (t, i, j) can then only move
    what the pipeline believes is region (t, i, j)."""
    c = model.video.backbone.num_features
    mix = torch.randn(c, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    model.video.backbone.forward_features = lambda x: F.conv2d(F.avg_pool2d(x, 32), mix)


def identity_fusion(model: EViLM) -> None:
    """No attention, no norm: h = [cls, text + t^L, video + t^V] exactly."""
    model.fusion.blocks = nn.ModuleList()
    model.fusion.norm = nn.Identity()


@pytest.mark.parametrize("image_size", [64, 96])
def test_video_encoder_flattening_is_row_major(image_size):
    """forward_features: token i*g + j of frame t == backbone map [:, :, i, j] of frame t (real EdgeNeXt)."""
    model = tiny_model(image_size)
    g = image_size // 32
    backbone, seen = model.video.backbone, []
    original = backbone.forward_features
    backbone.forward_features = lambda x: seen.append(original(x)) or seen[-1]
    b, t = 2, 3
    pixels = torch.randn(b, t, 3, image_size, image_size)
    with torch.no_grad():
        feats = model.video.forward_features(pixels)
    fmap = seen[0]  # [B*T, C, g, g]
    # EdgeNeXt's head LayerNorm2d (channels, per location) may be applied to the map before flattening
    head_norm = getattr(getattr(backbone, "head", None), "norm", None)
    post = (lambda m: head_norm(m)) if isinstance(head_norm, nn.Module) else (lambda m: m)
    with torch.no_grad():
        fmap = post(fmap)
    assert fmap.shape == (b * t, backbone.num_features, g, g) and feats.shape == (b, t, g * g, fmap.shape[1])
    for bi in range(b):
        for ti in range(t):
            with torch.no_grad():
                frame_map = post(original(pixels[bi, ti][None]))[0]  # the frame alone: the map is per frame
            for i in range(g):
                for j in range(g):
                    assert torch.equal(feats[bi, ti, i * g + j], fmap[bi * t + ti, :, i, j])
                    torch.testing.assert_close(feats[bi, ti, i * g + j], frame_map[:, i, j], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("image_size", [64, 96])
def test_video_tokens_are_t_major(image_size):
    """forward: token t*g*g + i*g + j = proj(feature (t, i, j)) + frame_embed[t] + region_embed[i*g + j]."""
    model = tiny_model(image_size)
    g, b, t = image_size // 32, 2, 3
    pixels = torch.randn(b, t, 3, image_size, image_size)
    with torch.no_grad():
        feats = model.video.forward_features(pixels)
        tokens = model.video(pixels)
        proj = model.video.proj(feats)
    assert tokens.shape == (b, t * g * g, TINY["fusion_dim"])
    v = model.video
    for ti in range(t):
        for k in range(g * g):
            want = proj[:, ti, k] + v.frame_embed[0, ti, 0] + v.region_embed[0, 0, k]
            torch.testing.assert_close(tokens[:, ti * g * g + k], want)


def test_fusion_output_slices_have_no_offset():
    """out["video"] starts right after [CLS] + L text tokens: compare with a manual fusion call,
    and with an identity fusion check token by token that video token n is output n."""
    model = tiny_model()
    b, t, g = 2, 2, 2
    pixels = torch.randn(b, t, 3, 64, 64)
    ids, attn = text_batch(b)
    with torch.no_grad():
        out = model.forward_features(pixels, ids, attn)
        video, text = model.video(pixels), model.text(ids, attn)
        h = model.fusion(text, attn, video)
    assert h.shape[1] == 1 + ids.shape[1] + t * g * g
    assert out["video"].shape == (b, t * g * g, TINY["fusion_dim"]) and out["text"].shape[1] == ids.shape[1]
    assert torch.equal(out["video"], h[:, 1 + ids.shape[1]:]) and torch.equal(out["cls"], h[:, 0])
    identity_fusion(model)
    with torch.no_grad():
        out = model.forward_features(pixels, ids, attn)
    f = model.fusion
    torch.testing.assert_close(out["video"], video + f.type_video, rtol=0, atol=0)
    torch.testing.assert_close(out["text"], text + f.type_text, rtol=0, atol=0)
    torch.testing.assert_close(out["cls"], f.cls_token[0].expand(b, -1), rtol=0, atol=0)


def test_pixel_region_moves_only_its_own_logits_row():
    """With a local backbone and identity fusion, changing (or masking) the pixels of region
    (t, i, j) changes the MVM logits of row t*g*g + i*g + j and of no other row."""
    from evilm_core.pretrain.masking import mask_pixels

    model = tiny_model()
    local_backbone(model)
    identity_fusion(model)
    b, t, g = 2, 2, 2
    pixels = torch.rand(b, t, 3, 64, 64) + 0.5
    ids, attn = text_batch(b)

    def logits(p):
        with torch.no_grad():
            return model.heads["mvm"](model.forward_features(p, ids, attn)["video"])

    base = logits(pixels)
    for ti in range(t):
        for i in range(g):
            for j in range(g):
                moved = pixels.clone()
                moved[cell(64, ti, i, j)] += 1.0
                region = torch.zeros(b, t, g, g, dtype=torch.bool)
                region[:, ti, i, j] = True
                for changed in (logits(moved), logits(mask_pixels(pixels, region))):
                    rows = (changed - base).abs().amax(-1) > 1e-6  # [B, T*g*g]
                    want = torch.zeros(b, t * g * g, dtype=torch.bool)
                    want[:, ti * g * g + i * g + j] = True
                    assert torch.equal(rows, want), (ti, i, j)


def _recipe(**masking) -> PretrainRecipe:
    return from_dict(PretrainRecipe, {
        "kind": "pretrain", "model": {**TINY}, "data": {"image_size": 64, "num_frames": 2},
        "masking": {"video_ratio": 0.5, "min_block": 1, **masking}})


class _Recorder(nn.Module):
    """What DDP looks like to PretrainTask (`.module`), recording the pixels the model is fed."""

    def __init__(self, model):
        super().__init__()
        self.module, self.seen = model, {}

    def forward(self, pixels, ids, attn):
        out = self.module(pixels, ids, attn)
        self.seen.update(pixels=pixels, out=out)
        return out


def test_loss_selects_masked_regions_with_their_targets(monkeypatch):
    """PretrainTask.loss: the region zeroed in the pixels, the selected MVM position and its
    target are the same (t, i, j); only matched rows count."""
    torch.manual_seed(0)
    task = PretrainTask(_recipe(), VOCAB, None)
    model = task.model.eval()
    local_backbone(model)
    identity_fusion(model)
    calls = []
    real_ce = objectives.masked_ce
    monkeypatch.setattr(objectives, "masked_ce", lambda head, f, y, sel: calls.append((head, f, y, sel))
                        or real_ce(head, f, y, sel))
    b, t, g = 6, 2, 2
    ids, attn = text_batch(b)
    targets = torch.randint(0, 8, (b, t, g, g), generator=torch.Generator().manual_seed(1))
    batch = {"pixels": torch.rand(b, t, 3, 64, 64) + 0.5, "input_ids": ids, "attention_mask": attn,
             "caption": [f"clip {k}" for k in range(b)], "mvm_targets": targets}
    wrapped = _Recorder(model)
    loss, parts = task.loss(wrapped, batch, torch.Generator().manual_seed(3))
    assert {"mvm_loss", "mvm_acc", "mlm_loss", "vtm_loss"} <= set(parts) and torch.isfinite(loss)
    (head, feats, labels, sel), = [c for c in calls if c[0] is model.heads["mvm"]]
    assert feats is wrapped.seen["out"]["video"]
    fed = wrapped.seen["pixels"]
    matched = torch.ones(b, dtype=torch.bool)
    # rows given another clip's caption (VTM negatives) select nothing; the rest select their masked cells
    for bi in range(b):
        zeroed = torch.zeros(t, g, g, dtype=torch.bool)
        for ti in range(t):
            for i in range(g):
                for j in range(g):
                    sq = fed[bi, ti, :, 32 * i:32 * i + 32, 32 * j:32 * j + 32]
                    assert bool((sq == 0).all()) or bool((sq != 0).all())  # a cell is masked whole or not at all
                    zeroed[ti, i, j] = bool((sq == 0).all())
                    k = ti * g * g + i * g + j
                    assert labels[bi, k] == targets[bi, ti, i, j]  # target of row k is the code of (t, i, j)
        assert int(zeroed.sum()) == t * round(0.5 * g * g)
        if sel[bi].any():
            assert torch.equal(sel[bi], zeroed.flatten())
        else:
            matched[bi] = False
    assert 0 < int(matched.sum()) < b  # some rows matched, some were VTM negatives
    # The logits row of a selected position is computed from the zeroed pixels of that region.
    with torch.no_grad():  # the (local) feature of an all-zero region, the same in every cell
        zero_video = model.video.proj(model.video.forward_features(torch.zeros(1, 1, 3, 64, 64))[0, 0, 0])
    for bi, k in sel.nonzero().tolist():
        ti, ij = divmod(k, g * g)
        v = model.video
        want = zero_video + v.frame_embed[0, ti, 0] + v.region_embed[0, 0, ij] + model.fusion.type_video[0, 0]
        torch.testing.assert_close(feats[bi, k], want.flatten(), atol=1e-5, rtol=1e-5)


def tokenizer_depth0(seed: int = 0, image_size: int = 64, codebook_size: int = 32):
    """A ViT/32 tokenizer without attention blocks: patch token (i, j) sees only patch (i, j)."""
    from evilm_core.models.tokenizer import CodebookConfig, SemanticTokenizer, TokenizerModelConfig

    torch.manual_seed(seed)
    cfg = TokenizerModelConfig(encoder_args=dict(embed_dim=64, depth=0, num_heads=2), image_size=image_size,
                               codebook_size=codebook_size, num_words=5)
    return SemanticTokenizer(cfg, CodebookConfig(kmeans_init=False), with_decoder=False).eval()


def test_tokenizer_code_ij_is_patch_ij():
    """The ViT patch order is row-major and forward_encoder/encode keep it: perturbing patch (i, j)
    of frame t changes the encoder output (and only can change the code) at [b, t, i, j]."""
    tok = tokenizer_depth0(image_size=96)
    b, t, g = 2, 2, 3
    pixels = torch.randn(b, t, 3, 96, 96)
    with torch.no_grad():
        base = tok.forward_encoder(pixels)
    assert base.shape == (b, t, g, g, 32)
    for ti in range(t):
        for i in range(g):
            for j in range(g):
                moved = pixels.clone()
                moved[cell(96, ti, i, j)] = torch.randn_like(moved[cell(96, ti, i, j)])
                with torch.no_grad():
                    diff = (tok.forward_encoder(moved) - base).abs().amax(-1) > 1e-6
                want = torch.zeros(b, t, g, g, dtype=torch.bool)
                want[:, ti, i, j] = True
                assert torch.equal(diff, want), (ti, i, j)
                codes_diff = tok.encode(moved) != tok.encode(pixels)
                assert not (codes_diff & ~want).any()


def test_label_cache_code_tij_is_the_code_of_patch_ij_of_frame_t(tmp_path):
    """Codes cached for (t, i, j) are the tokenizer's code of the 32x32 patch (i, j) of candidate
    frame t (and of the mirrored frame for the flip variant), computed with every other patch
    of the frame replaced by noise."""
    from evilm_core.data.label_cache import LabelCache
    from evilm_core.data.transforms import normalize
    from evilm_core.data.video.read import read_frames
    from evilm_core.label.labeler import run_label
    from evilm_core.models.tokenizer import export_tokenizer
    from evilm_core.prepare.synth import generate
    from tests.helpers.label import VOCAB as TOK_VOCAB

    size, g = 96, 3
    tok = tokenizer_depth0(image_size=size)
    tok_dir = export_tokenizer(tok, TOK_VOCAB, tmp_path / "tok")
    data = tmp_path / "synth"
    generate(data, num_videos=4, frames=8, size=size, workers=1)
    manifest = data / "all.jsonl"
    videos = sorted(p.relative_to(data).as_posix() for p in (data / "videos").glob("*.mp4"))
    manifest.write_text("".join(json.dumps({"video": v, "caption": "a"}) + "\n" for v in videos))
    run_label(manifest=manifest, tokenizer=tok_dir, out=tmp_path / "labels", num_candidates=4, flips=True,
              num_workers=0, device="cpu", batch_size=2)
    cache = LabelCache.open(tmp_path / "labels")
    book = tok.quantizer.normalized_codebook()
    checked = asymmetric = 0
    noise = torch.Generator().manual_seed(0)
    for key in videos:
        codes, frames, _ = cache.entry(key)  # [V, F, g, g], [F]
        clip = read_frames(data / key, lambda n: [int(f) for f in frames], size)
        pixels = normalize(clip.frames)  # [F, 3, H, W]
        for variant, frame_pixels in enumerate((pixels, pixels.flip(-1))):
            asymmetric += int((codes[variant] != codes[variant].transpose(0, 2, 1)).any())
            places = [(c, i, j) for c in range(len(frames)) for i in range(g) for j in range(g)]
            alone = torch.randn(len(places), 1, 3, size, size, generator=noise) * 3
            for n, (c, i, j) in enumerate(places):
                alone[n, :, :, 32 * i:32 * i + 32, 32 * j:32 * j + 32] = frame_pixels[c, :, 32 * i:32 * i + 32,
                                                                                       32 * j:32 * j + 32]
            with torch.no_grad():
                z = F.normalize(tok.forward_encoder(alone)[:, 0], dim=-1)  # [N, g, g, D]
            for n, (c, i, j) in enumerate(places):
                sims = book @ z[n, i, j]
                top2 = sims.topk(2).values
                if top2[0] - top2[1] < 1e-4:  # a near tie could flip with float noise
                    continue
                assert int(codes[variant, c, i, j]) == int(sims.argmax()), (key, variant, c, i, j)
                checked += 1
    assert checked > 0.9 * len(videos) * 2 * 4 * g * g
    assert asymmetric > 0  # a transposed grid would have been caught
