"""Task losses on a tiny in-memory model: shapes, and gradients reaching exactly what trains
(every trainable parameter gets one, so DDP never waits; frozen heads get none)."""

from __future__ import annotations

import math

import pytest
import torch

from evilm_core.config.sections import DataConfig
from evilm_core.finetune.tasks import MCTask, QATask, RetrievalTask, evaluate_mc, option_scores
from evilm_core.models.heads import attach_head
from evilm_core.settings import RunSettings
from tests.helpers.finetune import ListDataset, clips, texts, tiny_model, tiny_recipe

GEN = torch.Generator().manual_seed(0)


def grads_by_group(net) -> tuple[set[str], set[str]]:
    """(groups whose trainable parameters all got a gradient, groups with any gradient)"""
    trained, touched = set(), set()
    groups: dict[str, list] = {}
    for name, p in net.named_parameters():
        group = ".".join(name.split(".")[:2]) if name.startswith("heads.") else name.split(".")[0]
        groups.setdefault(group, []).append(p)
    for group, params in groups.items():
        if any(p.grad is not None for p in params):
            touched.add(group)
        if all(p.requires_grad and p.grad is not None for p in params):
            trained.add(group)
    return trained, touched


def assert_trainable_all_have_grads(net) -> None:
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]


def test_qa_loss_trains_trunk_and_qa_head_only():
    net = tiny_model()
    attach_head(net, "qa", 7)
    task = QATask(tiny_recipe("qa"), net, vocab=[], settings=RunSettings(), classes=[f"a{i}" for i in range(7)])
    ids, mask = texts(3)
    batch = {"pixels": clips(3), "input_ids": ids, "attention_mask": mask, "answer": torch.tensor([0, 6, 3])}
    loss, parts = task.loss(net, batch, GEN)
    assert loss.ndim == 0 and set(parts) == {"loss", "acc"}
    loss.backward()
    trained, touched = grads_by_group(net)
    assert {"video", "text", "fusion", "heads.qa"} <= trained
    assert touched.isdisjoint({"heads.mlm", "heads.vtm", "heads.mvm", "retrieval", "logit_scale"})
    assert_trainable_all_have_grads(net)


def test_mc_loss_trains_trunk_and_vtm_head_only():
    net = tiny_model()
    task = MCTask(tiny_recipe("mc"), net, vocab=[], settings=RunSettings())
    ids, mask = texts(2, 5)
    batch = {"pixels": clips(2), "option_ids": ids, "option_mask": mask, "answer": torch.tensor([4, 1])}
    loss, _ = task.loss(net, batch, GEN)
    loss.backward()
    trained, touched = grads_by_group(net)
    assert {"video", "text", "fusion", "heads.vtm"} <= trained
    assert touched.isdisjoint({"heads.mlm", "heads.mvm", "retrieval", "logit_scale"})
    assert_trainable_all_have_grads(net)


def test_retrieval_loss_trains_projections_and_temperature_not_heads():
    net = tiny_model()
    task = RetrievalTask(tiny_recipe("retrieval"), net, vocab=[], settings=RunSettings())
    assert net.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    ids, mask = texts(4)
    batch = {"pixels": clips(4), "input_ids": ids, "attention_mask": mask, "video": ["a", "b", "c", "d"]}
    loss, parts = task.loss(net, batch, GEN)
    loss.backward()
    trained, touched = grads_by_group(net)
    assert {"video", "text", "fusion", "retrieval", "logit_scale"} <= trained
    assert touched.isdisjoint({"heads.mlm", "heads.vtm", "heads.mvm"})
    assert_trainable_all_have_grads(net)
    assert parts["temperature"] == pytest.approx(0.07, rel=1e-4)


def test_option_scores_encode_the_clip_once_and_equal_the_joint_forward():
    net = tiny_model().eval()
    pixels, (ids, mask) = clips(2), texts(2, 3)
    with torch.no_grad():
        scores = option_scores(net, pixels, ids, mask)
        ref = torch.stack([net.heads["vtm"](net.forward_features(pixels, ids[:, k], mask[:, k])["cls"])
                           for k in range(3)], dim=1)
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores, ref[..., 1] - ref[..., 0], atol=1e-5, rtol=1e-5)


def test_mc_evaluation_picks_the_option_with_the_highest_match_score():
    net = tiny_model().eval()
    pixels, (ids, mask) = clips(4), texts(4, 5)
    with torch.no_grad():
        scores = option_scores(net, pixels, ids, mask)
    best, worst = scores.argmax(-1), scores.argmin(-1)
    data = DataConfig(image_size=64, batch_size=3, num_workers=0)

    def items(answers):
        return ListDataset([{"pixels": pixels[i], "option_ids": ids[i], "option_mask": mask[i],
                             "answer": int(answers[i])} for i in range(4)])

    right = evaluate_mc(net, items(best), data, torch.device("cpu"))
    assert right == {"accuracy": 100.0, "chance": 20.0, "num_examples": 4, "skipped": 0}
    assert evaluate_mc(net, items(worst), data, torch.device("cpu"))["accuracy"] == 0.0
