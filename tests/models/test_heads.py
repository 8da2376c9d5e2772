"""Task heads and what trains (models/heads.py): attach_head's shapes, the class files, and
freeze_except."""

from __future__ import annotations

import pytest
import torch

from evilm_core.models.heads import CLASS_FILES, attach_head, class_file_text, freeze_except, read_class_file
from tests.helpers.models import clips, texts, tiny_model


def test_qa_head_maps_the_joint_cls_to_the_answers():
    net = tiny_model().eval()
    head = attach_head(net, "qa", 7)
    assert net.heads["qa"] is head and head[-1].weight.shape == (7, 96)
    ids, mask = texts(3)
    with torch.no_grad():
        logits = net.heads["qa"](net(clips(3), ids, mask)["cls"])
    assert logits.shape == (3, 7)


def test_probe_head_is_one_linear_of_the_feature_size():
    net = tiny_model()
    head = attach_head(net, "probe", 5, in_dim=32)
    assert isinstance(head, torch.nn.Linear) and head.weight.shape == (5, 32)
    assert net.heads["probe"](torch.randn(4, 32)).shape == (4, 5)
    assert attach_head(net, "probe", 3).weight.shape == (3, 96)  # default: the fusion width (the video [CLS])
    with pytest.raises(ValueError, match="task 'mc' has no head of its own"):
        attach_head(net, "mc", 5)


def test_class_files_round_trip_and_a_step_checkpoint_reads_its_run_dir(tmp_path):
    classes = ["a dog", "two", "réd"]
    (tmp_path / CLASS_FILES["qa"]).write_text(class_file_text(classes), encoding="utf-8")
    step = tmp_path / "step_00000004"
    step.mkdir()
    assert read_class_file(tmp_path, "qa") == classes
    assert read_class_file(step, "qa") == classes  # a trainer step_* keeps it in its run dir
    assert read_class_file(step, "probe") is None


def test_freeze_except_keeps_the_trunk_and_the_named_heads_trainable():
    net = tiny_model()
    attach_head(net, "qa", 3)
    freeze_except(net, ("qa", "logit_scale"))
    trainable = {n.split(".")[0] if not n.startswith("heads.") else ".".join(n.split(".")[:2])
                 for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"video", "text", "fusion", "heads.qa", "logit_scale"}
    freeze_except(net, ("retrieval",))
    assert net.retrieval["text"].weight.requires_grad and not net.logit_scale.requires_grad
    assert not any(p.requires_grad for p in net.heads.parameters())
