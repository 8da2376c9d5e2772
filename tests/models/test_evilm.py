"""The E-ViLM trunk on a tiny config (models/evilm.py): the shape of every pass, the forward
modes the training tasks call, and the text side a query loads alone."""

from __future__ import annotations

import pytest
import torch

from evilm_core.models.evilm import EViLM
from tests.helpers.models import clips, texts, tiny_config, tiny_model

B, T, L = 3, 2, 12
D, E, N = 96, 32, T * 2 * 2  # fusion width, retrieval embedding size, video tokens (64 px: a 2 x 2 grid)


@pytest.fixture(scope="module")
def net() -> EViLM:
    return tiny_model().eval()


def test_forward_features_splits_the_fused_sequence_by_modality(net):
    pixels, (ids, mask) = clips(B, T), texts(B, length=L)
    with torch.no_grad():
        out = net.forward_features(pixels, ids, mask)
        assert set(out) == {"cls", "text", "video"}
        assert out["cls"].shape == (B, D) and out["text"].shape == (B, L, D) and out["video"].shape == (B, N, D)
        assert torch.equal(net(pixels, ids, mask)["cls"], out["cls"])  # mode="joint" is forward_features
        assert net.video(pixels).shape == (B, N, D) and net.text(ids, mask).shape == (B, L, D)


def test_unimodal_embeddings_are_unit_vectors_of_the_retrieval_size(net):
    pixels, (ids, mask) = clips(B, T), texts(B, length=L)
    with torch.no_grad():
        video, text = net.embed_video(pixels), net.embed_text(ids, mask)
        both = net(pixels, ids, mask, mode="unimodal")
    assert video.shape == text.shape == (B, E)
    torch.testing.assert_close(video.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(both["video"], video)
    torch.testing.assert_close(both["text"], text)
    assert net.video_cls(pixels).shape == (B, D)  # the unimodal [CLS] before the projection


def test_the_cls_only_last_block_gives_the_full_pass_at_cls(net):
    """At inference the fusion's last block is computed for [CLS] alone (fusion.cls_block); its
    output equals the full block's at [CLS] for text, video and joint inputs, padded keys included;
    in training the full pass runs (the published runs stay bit-identical)."""
    pixels, (ids, mask) = clips(B, T), texts(B, length=L)
    mask[0, 5:] = 0  # a padded caption: its masked keys must stay unattended
    video, text = net.video(pixels), net.text(ids, mask)
    with torch.no_grad():
        for args in ((text, mask, None), (None, None, video), (text, mask, video)):
            full, alone = net.fusion(*args), net.fusion(*args, cls_only=True)
            assert alone.shape == (B, 1, D)
            torch.testing.assert_close(alone[:, 0], full[:, 0], atol=2e-6, rtol=0)
        full = net._project("text", net.fusion(text, mask, None)[:, 0])
        torch.testing.assert_close(net.embed_text(ids, mask), full, atol=2e-6, rtol=0)
    assert net._cls_only and not net.train()._cls_only
    net.eval()


def test_inference_passes_do_not_depend_on_the_thread_count(net):
    """`predict` runs one thread per worker and `evaluate` several: their scores must agree to
    the bit. PyTorch's CPU attention with a single query splits the keys across threads (its
    result moved by ~1e-7 with the count), so cls_block writes that attention out."""
    pixels, (ids, mask) = clips(B, T), texts(B, length=L)
    mask[0, 5:] = 0
    before = torch.get_num_threads()

    def passes(threads: int) -> list[torch.Tensor]:
        torch.set_num_threads(threads)
        with torch.no_grad():
            video = net.video(pixels)
            return [net.embed_text(ids, mask), net.embed_video(pixels),
                    net.fusion(net.text(ids, mask), mask, video, cls_only=True)]

    try:
        for one, two in zip(passes(1), passes(2)):
            assert torch.equal(one, two)
    finally:
        torch.set_num_threads(before)


def test_per_frame_tokens_shared_between_windows_give_embed_video(net):
    """Windows that share a frame share its `video.frame_tokens` (docs/retrieval.md, "Moments"):
    frames encoded once, in any batch, then gathered per window, embed as embed_video does."""
    frames = clips(1, 5)[0]  # [5, 3, H, W]: windows (0, 1), (1, 2), (3, 4)
    windows = torch.tensor([[0, 1], [1, 2], [3, 4]])
    with torch.no_grad():
        tokens = torch.cat([net.video.frame_tokens(part) for part in frames.split(2)])  # [5, g*g, D]
        shared = net.embed_frame_tokens(tokens[windows])
        alone = net.embed_video(frames[windows])  # [3, 2, 3, H, W]
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)


def test_forward_options_is_the_joint_pass_of_each_clip_with_each_option(net):
    k = 4
    pixels, (ids, mask) = clips(B, T), texts(B, k, length=L)
    with torch.no_grad():
        out = net.forward_options(pixels, ids, mask)
        assert set(out) == {"cls"} and out["cls"].shape == (B, k, D)
        for j in range(k):
            ref = net.forward_features(pixels, ids[:, j], mask[:, j])["cls"]
            torch.testing.assert_close(out["cls"][:, j], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(pixels, ids, mask, mode="options")["cls"], out["cls"])


def test_pretrain_mode_adds_the_embeddings_of_the_clean_captions(net):
    pixels, (ids, mask) = clips(B, T), texts(B, length=L)
    clean_ids, clean_mask = texts(B, length=L, seed=5)
    with torch.no_grad():
        out = net(pixels, ids, mask, mode="pretrain", clean_ids=clean_ids, clean_mask=clean_mask)
        assert {"cls", "text", "video", "video_emb", "text_emb"} <= set(out)
        torch.testing.assert_close(out["video_emb"], net.embed_video(pixels))
        torch.testing.assert_close(out["text_emb"], net.embed_text(clean_ids, clean_mask))
        torch.testing.assert_close(out["cls"], net.forward_features(pixels, ids, mask)["cls"])
    with pytest.raises(ValueError, match="unknown forward mode 'nope'"):
        net(pixels, ids, mask, mode="nope")


def test_heads_sit_apart_from_the_trunk(net):
    assert set(net.heads) == {"mlm", "vtm", "mvm"} and set(net.retrieval) == {"video", "text"}
    feats = torch.randn(B, N, D)
    assert net.heads["mvm"](feats).shape == (B, N, 16)  # codebook_size
    assert net.heads["mlm"](feats).shape == (B, N, 20)  # vocab_size
    assert net.heads["vtm"](feats[:, 0]).shape == (B, 2)
    heads = sum(p.numel() for m in (net.heads, net.retrieval) for p in m.parameters()) + 1  # + logit_scale
    assert net.trunk_parameters() + heads == sum(p.numel() for p in net.parameters())


def test_text_side_has_no_video_encoder_and_no_heads():
    side = EViLM.text_side(tiny_config())
    assert side.video is None and len(side.heads) == 0
    names = {n for n, _ in side.named_parameters()}
    assert names and not any(n.startswith(("video.", "heads.")) for n in names)
    assert names <= {n for n, _ in tiny_model().named_parameters()}  # EViLM's parameter names
    ids, mask = texts(B, length=L)
    with torch.no_grad():
        assert side.eval().embed_text(ids, mask).shape == (B, E)
