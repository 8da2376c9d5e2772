"""Linear probe: the backbone is frozen and untouched, features are computed once and cached,
only the linear classifier trains, and unknown labels count as wrong."""

from __future__ import annotations

import pytest
import torch

from evilm_core.config.sections import DataConfig
from evilm_core.finetune.config import ProbeConfig
from evilm_core.finetune.probe import cached_features, evaluate_probe, extract_features, feature_dim, fit_linear
from evilm_core.models.heads import attach_head
from tests.helpers.finetune import ListDataset, clips, tiny_model

DATA = DataConfig(image_size=64, batch_size=3, num_workers=0)


def test_fit_linear_learns_and_folds_the_standardisation_into_the_layer():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    feats = torch.randn(60, 8, generator=g) * 0.01 + 50.0  # far from zero mean / unit scale
    feats[torch.arange(60), labels] += 0.05  # class = which of the first 3 dims is raised
    head = torch.nn.Linear(8, 3)
    steps = fit_linear(head, feats, labels, ProbeConfig(lr=0.05, epochs=60, batch_size=16))
    assert steps == 60 * 4
    with torch.no_grad():
        acc = (head(feats).argmax(-1) == labels).float().mean()  # raw features: the fold is in the layer
    assert acc == 1.0


def test_probe_trains_only_the_classifier_on_features_computed_once(tmp_path):
    net = tiny_model()
    net.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pixels = clips(6)
    items = [{"video": f"{i}.mp4", "pixels": pixels[i], "label": i % 2, "label_text": str(i % 2)} for i in range(6)]
    feats = extract_features(net, ListDataset(items), "cls", DATA, torch.device("cpu"))
    assert feats["features"].shape == (6, feature_dim(net, "cls")) and feats["skipped"] == 0

    calls = []
    key = {"source": "test", "feature": "cls"}
    path = tmp_path / "features" / "train.safetensors"
    path.parent.mkdir()
    first = cached_features(path, key, lambda: calls.append(1) or feats)
    again = cached_features(path, key, lambda: calls.append(1) or feats)
    assert calls == [1] and torch.equal(first["features"], again["features"])  # computed once, then read
    cached_features(path, {**key, "feature": "embed"}, lambda: calls.append(1) or feats)
    assert calls == [1, 1]  # another key recomputes

    head = attach_head(net, "probe", 2, feature_dim(net, "cls"))
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["heads.probe.weight", "heads.probe.bias"]
    fit_linear(head, feats["features"], feats["labels"], ProbeConfig(epochs=5, batch_size=4))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # backbone and other heads untouched
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("heads.probe"))


def test_probe_metrics_count_unknown_labels_as_wrong():
    net = tiny_model().eval()
    attach_head(net, "probe", 2, feature_dim(net, "embed"))
    feats = {"features": torch.randn(4, feature_dim(net, "embed")), "labels": torch.tensor([0, 1, -1, -1]),
             "skipped": 1}
    with torch.no_grad():
        pred = net.heads["probe"](feats["features"]).argmax(-1)
    feats["labels"][:2] = pred[:2]
    m = evaluate_probe(net, None, "embed", DATA, torch.device("cpu"), feats=feats)
    assert m == {"accuracy": 50.0, "chance": 50.0, "oov_labels": 2, "num_examples": 4, "skipped": 1}


@pytest.mark.parametrize("feature", ["cls", "embed"])
def test_probe_feature_is_the_unimodal_video_cls_before_or_after_the_projection(feature):
    net = tiny_model().eval()
    pixels = clips(2)
    items = [{"video": f"{i}.mp4", "pixels": pixels[i], "label": 0, "label_text": "0"} for i in range(2)]
    feats = extract_features(net, ListDataset(items), feature, DATA, torch.device("cpu"))
    with torch.no_grad():
        ref = net.video_cls(pixels) if feature == "cls" else net.embed_video(pixels)
    torch.testing.assert_close(feats["features"], ref)
