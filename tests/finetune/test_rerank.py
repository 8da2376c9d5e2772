"""Re-ranking retrieval with the matching head (`evilm evaluate --rerank K`): the re-ranked
matrix on a stub whose VTM head prefers one clip, the whole command on the tiny synthetic set
(both metric sets, dual-encoder metrics unchanged), and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from evilm_core.checkpoints import files as ckpt
from evilm_core.data.records.manifest import read_manifest
from evilm_core.errors import EvilmError
from evilm_core.finetune.rerank import require_matching_head, rerank_metrics, rerank_scores
from evilm_core.finetune.run import evaluate_checkpoint
from evilm_core.models.config import EViLMConfig
from evilm_core.models.evilm import EViLM
from evilm_core.text.vocab import build_vocab
from tests.helpers.cli import REPO, last_json, run_evilm
from tests.helpers.finetune import tiny_recipe

CHOSEN = 3  # the clip the stub's matching head prefers
SIM = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.3],  # [T=3, V=5]
                    [0.1, 0.2, 0.9, 0.8, 0.7],
                    [0.5, 0.4, 0.3, 0.2, 0.1]])
GOLD = torch.tensor([1, 3, 4])


class StubVTM(nn.Module):
    """Log-odds 5 for CHOSEN, -column for any other clip (the lower column wins among those)."""

    def forward(self, cls: torch.Tensor) -> torch.Tensor:  # cls [b, 1] = the clip's column
        col = cls[:, 0]
        return torch.stack([torch.zeros_like(col), torch.where(col == CHOSEN, 5.0, -col)], dim=1)  # [b, 2]


class StubNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"vtm": StubVTM()})
        self.pairs: list[tuple[int, int]] = []  # (text, clip) pairs scored
        self.largest = 0

    def _joint(self, video, ids, mask):
        self.largest = max(self.largest, video.shape[0])
        self.pairs += list(zip(ids[:, 0].tolist(), video[:, 0, 0].long().tolist()))
        return {"cls": video[:, 0]}  # [b, 1]


def stub_inputs():
    tokens = torch.arange(5, dtype=torch.float32).view(5, 1, 1)  # [V, N=1, D=1]: clip v's token is v
    ids = torch.arange(3).view(3, 1)  # [T, L=1]: text t's id is t
    return tokens, ids, torch.ones_like(ids)


@pytest.mark.parametrize("k, top1", [(1, [0, 2, 0]), (2, [0, CHOSEN, 0]), (3, [0, CHOSEN, 0]),
                                     (4, [CHOSEN, CHOSEN, CHOSEN])])
def test_rerank_scores_lifts_the_matching_head_choice_within_top_k(k, top1):
    net, (tokens, ids, mask) = StubNet(), stub_inputs()
    reranked = rerank_scores(net, tokens, ids, mask, SIM, k, batch_size=3, device=torch.device("cpu"))
    assert reranked.shape == SIM.shape and net.largest <= 3
    assert sorted(net.pairs) == sorted((t, c) for t in range(3) for c in SIM[t].topk(k).indices.tolist())
    assert reranked.argmax(1).tolist() == top1  # CHOSEN wins only where it is among the text's top k
    top = SIM.topk(k, dim=1).indices
    for t in range(3):  # every re-scored clip above every other one; the others keep their similarity
        rest = [c for c in range(5) if c not in top[t]]
        assert reranked[t, top[t]].min() > reranked[t, rest].max() if rest else True
        assert torch.equal(reranked[t, rest], SIM[t, rest].double())


def test_rerank_metrics_hand_computed():
    net, (tokens, ids, mask) = StubNet(), stub_inputs()
    m = rerank_metrics(net, tokens, ids, mask, SIM, GOLD, 2, 4, torch.device("cpu"))
    # text 0: gold 1 re-scored second (-1 < 0); text 1: gold 3 = CHOSEN, first; text 2: gold 4 outside
    # the top 2, below the two lifted clips and the similarities 0.3, 0.2 -> ranks 2, 1, 5
    assert m["rerank_t2v_R@1"] == pytest.approx(100 / 3) and m["rerank_t2v_R@5"] == 100.0
    assert m["rerank_t2v_MdR"] == 2.0 and m["rerank_t2v_MnR"] == pytest.approx(8 / 3)
    assert m["rerank_k"] == 2 and m["rerank_ms_per_query"] >= 0.0
    assert not any(key.startswith("rerank_v2t") for key in m)
    assert rerank_metrics(net, tokens, ids, mask, SIM, GOLD, 50, 4, torch.device("cpu"))["rerank_k"] == 5


def test_rerank_refuses_a_non_retrieval_recipe():
    with pytest.raises(EvilmError, match="--rerank applies to retrieval recipes"):
        evaluate_checkpoint(tiny_recipe("mc"), "/nonexistent/checkpoint", rerank=3)


def test_matching_head_of_a_retrieval_model_fine_tuned_from_scratch_is_refused(tmp_path):
    net = StubNet()
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    config = {"format": "evilm-finetune/1", "task": "retrieval"}
    for init, ok in ((None, False), ("runs/pretrain", True)):
        recipe = {"kind": "finetune", "task": "retrieval", "init": {"checkpoint": init}}
        (final.parent / "config.yaml").write_text(yaml.safe_dump(recipe))
        if ok:
            require_matching_head(net, final, config)
        else:
            with pytest.raises(EvilmError, match="never trained.*pre-trained checkpoint"):
                require_matching_head(net, final, config)
    require_matching_head(net, tmp_path, {"format": "evilm-model/1"})  # pre-trained
    del net.heads["vtm"]
    with pytest.raises(EvilmError, match="no matching"):
        require_matching_head(net, tmp_path, {"format": "evilm-model/1"})


@pytest.fixture(scope="module")
def random_model(synth_dir, tmp_path_factory) -> Path:
    """A tiny random-weight pre-trained-format checkpoint (as tests/retrieval does): enough to
    check the plumbing, not the model."""
    vocab = build_vocab([r.caption for r in read_manifest(synth_dir / "train.jsonl")])
    torch.manual_seed(0)
    net = EViLM(EViLMConfig(video_encoder="edgenext_xx_small", image_size=64, text_layers=1, fusion_layers=1,
                            fusion_dim=96, fusion_heads=2, codebook_size=16, max_text_len=24, embed_dim=32,
                            vocab_size=len(vocab)))
    out = tmp_path_factory.mktemp("rerank") / "model"
    return ckpt.write_checkpoint(out, net.state_dict(), {"format": "evilm-model/1", "model": net.cfg}, vocab)


def test_evaluate_cli_reports_both_rankings(random_model, synth_dir):
    sets = [a for k, v in {**{f"data.{s}": synth_dir / f"{s}.jsonl" for s in ("train", "val", "test")},
                           "data.image_size": 64, "data.batch_size": 4, "data.num_workers": 0}.items()
            for a in ("--set", f"{k}={v}")]
    args = ("evaluate", REPO / "recipes/synthetic/retrieval.yaml", "--checkpoint", random_model, *sets,
            "--precision", "fp32", "--threads", "1", "--json")
    plain = last_json(run_evilm(*map(str, args)).stdout)["metrics"]
    proc = run_evilm(*map(str, args), "--rerank", "3")
    both = last_json(proc.stdout)["metrics"]
    assert {k: v for k, v in both.items() if not k.startswith("rerank_")} == plain  # bit for bit
    rerank = {k: v for k, v in both.items() if k.startswith("rerank_")}
    assert set(rerank) == {f"rerank_t2v_{m}" for m in ("R@1", "R@5", "R@10", "MdR", "MnR")} | {
        "rerank_k", "rerank_ms_per_query"}
    assert all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in both.values())
    assert rerank["rerank_k"] == 3 and rerank["rerank_ms_per_query"] > 0
    # re-ranking reorders each text's top 3 only, so a gold clip ranked below 3 keeps its rank
    assert rerank["rerank_t2v_R@5"] == plain["t2v_R@5"] and rerank["rerank_t2v_R@10"] == plain["t2v_R@10"]
    assert "rerank_t2v_R@1=" in proc.stdout + proc.stderr and "t2v_R@1=" in proc.stdout + proc.stderr
    json.dumps(both)
