"""Retrieval and accuracy metrics against hand-computed cases (ties, R@K boundaries)."""

from __future__ import annotations

import pytest
import torch

from evilm_core.evaluation.metrics import accuracy, rank_metrics, retrieval_metrics, retrieval_ranks


def test_ranks_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.5],
                        [0.8, 0.7, 0.9],
                        [0.1, 0.2, 0.3]])
    assert retrieval_ranks(sim).tolist() == [1, 3, 1]


def test_ties_are_pessimistic():
    sim = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.5, 0.5], [0.1, 0.1, 0.9]])
    # row 0: two others tie with the truth -> rank 3; row 1: one tie -> rank 2; row 2: clear -> 1
    assert retrieval_ranks(sim).tolist() == [3, 2, 1]
    constant = torch.zeros(4, 4)
    assert retrieval_ranks(constant).tolist() == [4, 4, 4, 4]


def test_recall_at_k_boundaries_and_median():
    ranks = torch.tensor([1, 5, 6, 10, 11, 2])
    m = rank_metrics(ranks, "t2v")
    assert m["t2v_R@1"] == pytest.approx(100 / 6)
    assert m["t2v_R@5"] == pytest.approx(300 / 6)  # ranks 1, 5, 2: rank 5 counts for R@5
    assert m["t2v_R@10"] == pytest.approx(500 / 6)  # rank 10 counts, 11 does not
    assert m["t2v_MdR"] == 5.5 and m["t2v_MnR"] == pytest.approx(35 / 6)
    assert rank_metrics(torch.tensor([3, 1, 2]), "x")["x_MdR"] == 2.0


def test_retrieval_metrics_both_directions_with_several_captions_per_video():
    # 3 texts, 2 videos; texts 0 and 1 describe video 0, text 2 video 1
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    m = retrieval_metrics(sim, torch.tensor([0, 0, 1]))
    assert m["t2v_R@1"] == pytest.approx(200 / 3)  # text 1 ranks video 0 second
    # video 0: its texts score 0.9 (rank 1) and 0.2; the best counts -> rank 1
    # video 1: column [0.1, 0.8, 0.7], text 2 has 0.7 -> rank 2
    assert m["v2t_R@1"] == 50.0 and m["v2t_MdR"] == 1.5


def test_a_videos_own_captions_do_not_rank_against_each_other():
    # video 0 has two captions scoring exactly the same (0.6); video 1's caption scores 0.5 on video 0
    sim = torch.tensor([[0.6, 0.1], [0.6, 0.2], [0.5, 0.9]])
    m = retrieval_metrics(sim, torch.tensor([0, 0, 1]))
    assert m["v2t_R@1"] == 100.0  # the tie between its own captions used to make video 0 rank 2
    sim[2, 0] = 0.6  # a tie with another video's caption still counts against it
    assert retrieval_metrics(sim, torch.tensor([0, 0, 1]))["v2t_R@1"] == 50.0


def test_accuracy_counts_unanswerable_as_wrong():
    assert accuracy(["red", "blue", None], ["red", "green", "purple"]) == pytest.approx(100 / 3)
    assert accuracy([], []) == 0.0
