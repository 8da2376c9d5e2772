"""The optional video-text contrastive term of pre-training (loss.vtc, not in the paper).

It must be exactly InfoNCE between the unimodal embeddings of the (masked) clips and of their
own unmasked captions, reach the retrieval projections, and be absent (and those parameters
frozen) at the paper's setting vtc = 0."""

from __future__ import annotations

import torch

from evilm_core.config.loader import from_dict
from evilm_core.models.losses import contrastive_loss
from evilm_core.pretrain.config import PretrainRecipe
from evilm_core.pretrain.objectives import PretrainTask
from tests.helpers.pretrain import TINY, VOCAB, text_batch


def _task(vtc: float) -> PretrainTask:
    recipe = from_dict(PretrainRecipe, {"kind": "pretrain", "model": {**TINY}, "data": {"image_size": 64, "num_frames": 2},
                                        "loss": {"mlm": 1.0, "vtm": 1.0, "mvm": 0.0, "vtc": vtc}})
    torch.manual_seed(0)
    return PretrainTask(recipe, VOCAB, None)


def _batch(b: int = 4) -> dict:
    ids, attn = text_batch(b)
    pixels = torch.randn(b, 2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return {"pixels": pixels, "input_ids": ids, "attention_mask": attn, "caption": [f"c{i}" for i in range(b)]}


def test_vtc_is_infonce_of_unimodal_embeddings_of_own_captions():
    task, batch = _task(1.0), _batch()
    model = task.model.eval()
    _, parts = task.loss(model, batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = contrastive_loss(model.embed_video(batch["pixels"]),
                                    model.embed_text(batch["input_ids"], batch["attention_mask"]), model.logit_scale)
    assert abs(parts["vtc_loss"] - float(expected)) < 1e-5  # mvm off: the clips are not masked
    assert {"vtm_loss", "mlm_loss", "vtc_loss"} <= set(parts)


def test_vtc_trains_the_retrieval_projections_and_is_off_by_default():
    task = _task(1.0)
    loss, _ = task.loss(task.model.train(), _batch(), torch.Generator().manual_seed(0))
    loss.backward()
    assert task.model.retrieval["text"].weight.grad.abs().sum() > 0
    assert task.model.retrieval["video"].weight.grad.abs().sum() > 0 and task.model.logit_scale.grad is not None
    paper = _task(0.0)
    _, parts = paper.loss(paper.model, _batch(), torch.Generator().manual_seed(0))
    assert "vtc_loss" not in parts
    assert not any(p.requires_grad for p in paper.model.retrieval.parameters())
    assert PretrainRecipe().loss.vtc == 0.0
