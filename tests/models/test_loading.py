"""E-ViLM checkpoints in and out (models/loading.py): export then load gives the same model
(task head and classes included), the text side loads alone with the full model's text
embeddings, and a checkpoint argument resolves and merges with a recipe as documented."""

from __future__ import annotations

import pytest
import torch

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.errors import EvilmError
from evilm_core.models.config import EViLMConfig
from evilm_core.models.heads import attach_head
from evilm_core.models.loading import load_checkpoint, load_init_weights, load_text_side, merge_model_config
from evilm_core.models.pretrained import FORMAT, PRETRAINED_FORMAT, export_model
from tests.helpers.models import VOCAB, clips, texts, tiny_config, tiny_model


def _outputs(net, pixels, ids, mask) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = net.forward_features(pixels, ids, mask)
        res = {"cls": out["cls"], "video": out["video"], "text": out["text"],
               "video_emb": net.embed_video(pixels), "text_emb": net.embed_text(ids, mask),
               "vtm": net.heads["vtm"](out["cls"]), "mvm": net.heads["mvm"](out["video"])}
        if "qa" in net.heads:
            res["qa"] = net.heads["qa"](out["cls"])
    return res


def test_pretrained_export_loads_back_identical(tmp_path):
    net = tiny_model(seed=3).eval()
    final = export_model(net, tmp_path / "run" / "final", VOCAB)
    assert {p.name for p in final.iterdir()} == {"model.safetensors", "config.json", "vocab.txt", "README.md"}
    assert ckpt.read_config(final)["format"] == PRETRAINED_FORMAT
    loaded = load_checkpoint(tmp_path / "run")  # a run directory resolves to its final/
    assert loaded.directory == final and loaded.vocab == VOCAB and loaded.task is None and loaded.classes == {}
    assert loaded.model.cfg == net.cfg
    pixels, (ids, mask) = clips(2), texts(2)
    want, got = _outputs(net, pixels, ids, mask), _outputs(loaded.model.eval(), pixels, ids, mask)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_finetuned_export_rebuilds_its_head_and_classes(tmp_path):
    net = tiny_model(seed=4).eval()
    classes = ["yes", "no", "two"]
    attach_head(net, "qa", len(classes))
    final = export_model(net, tmp_path / "final", VOCAB, "qa", extra={"note": "x"}, classes=classes)
    assert (final / "answers.txt").read_text() == "yes\nno\ntwo\n"
    config = ckpt.read_config(final)
    assert config["format"] == FORMAT and config["task"] == "qa" and config["note"] == "x"
    loaded = load_checkpoint(final)
    assert loaded.task == "qa" and loaded.classes == {"qa": classes}
    pixels, (ids, mask) = clips(2), texts(2)
    want, got = _outputs(net, pixels, ids, mask), _outputs(loaded.model.eval(), pixels, ids, mask)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    (final / "answers.txt").write_text("yes\nno\n")
    with pytest.raises(EvilmError, match="qa head has 3 classes but answers.txt is missing or lists 2"):
        load_checkpoint(final)


def test_load_checkpoint_checks_the_vocabulary_against_the_model(tmp_path):
    final = export_model(tiny_model(), tmp_path / "final", VOCAB)
    (final / "vocab.txt").write_text("".join(w + "\n" for w in VOCAB[:-1]))
    with pytest.raises(EvilmError, match="vocab.txt has 19 entries but the model was built for 20"):
        load_checkpoint(final)


def test_text_side_gives_the_full_models_text_embeddings(tmp_path):
    net = tiny_model(seed=5).eval()
    final = export_model(net, tmp_path / "final", VOCAB)
    side, directory = load_text_side(tmp_path)
    assert directory == final and side.video is None and not side.training
    assert set(side.state_dict()) < set(net.state_dict())
    ids, mask = texts(4)
    with torch.no_grad():
        torch.testing.assert_close(side.embed_text(ids, mask), net.embed_text(ids, mask), atol=0, rtol=0)


def test_init_weights_load_the_trunk_and_leave_a_new_qa_head_fresh(tmp_path):
    source = tiny_model(seed=1)
    attach_head(source, "qa", 4)
    final = export_model(source, tmp_path / "final", VOCAB, "qa", classes=["a", "b", "c", "d"])
    net = tiny_model(seed=2)
    fresh = attach_head(net, "qa", 2)
    head_before = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_init_weights(net, final)
    src, dst = source.state_dict(), net.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in dst if not k.startswith("heads.qa."))
    # another run's head never carries over
    assert all(torch.equal(head_before[k], v) for k, v in fresh.state_dict().items())
    with pytest.raises(EvilmError, match="not a checkpoint directory"):
        load_init_weights(net, tmp_path)


def test_model_config_from_checkpoint_allows_only_safe_changes(tmp_path):
    saved = tiny_config(dropout=0.1)
    merged = merge_model_config(tiny_config(dropout=0.3, max_text_len=40), saved, tmp_path)
    assert merged.dropout == 0.3 and merged.max_text_len == 40 and merged.fusion_dim == saved.fusion_dim
    assert merge_model_config(EViLMConfig(), saved, tmp_path).fusion_dim == 96  # recipe silent: checkpoint's
    with pytest.raises(EvilmError, match=r"model.fusion_layers is 3 but checkpoint .* has 1"):
        merge_model_config(tiny_config(fusion_layers=3), saved, tmp_path)


def test_resolve_checkpoint_prefers_final_then_newest_step(tmp_path):
    for name in ("step_00000002", "step_00000010"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"")
        (tmp_path / name / "config.yaml").write_text("{}")
    assert resolve_checkpoint(tmp_path) == tmp_path / "step_00000010"
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "model.safetensors").write_bytes(b"")
    (tmp_path / "final" / "config.yaml").write_text("{}")
    assert resolve_checkpoint(tmp_path) == tmp_path / "final"
    with pytest.raises(EvilmError, match="nothing-here.*does not exist"):
        resolve_checkpoint(tmp_path / "nothing-here")
