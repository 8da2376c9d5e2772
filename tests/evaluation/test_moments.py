"""The merge rule and the temporal grounding metrics (evaluation/moments.py), on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest

from evilm_core.evaluation.moments import (
    fixed_windows,
    mean_scores,
    propose_moments,
    query_scores,
    random_scores,
    temporal_iou,
)

# 8 windows of 2 s at a 1 s stride over a 9 s video
TIMES = np.array([[s, s + 2.0, 9.0] for s in range(8)], dtype=np.float64)


def test_neighbours_close_to_the_peak_merge_into_one_moment():
    scores = np.array([0.1, 0.1, 0.8, 0.9, 0.85, 0.1, 0.5, 0.1])  # median 0.3
    (best,) = propose_moments(scores, TIMES, 1, merge=0.25)  # floor 0.9 - 0.25 * 0.6 = 0.75
    assert (best.start, best.end, best.score, best.first, best.last) == (2.0, 6.0, 0.9, 2, 4)
    (single,) = propose_moments(scores, TIMES, 1, merge=0.0)
    assert (single.start, single.end) == (3.0, 5.0)
    moments = propose_moments(scores, TIMES, 3, merge=0.25)
    assert [(m.start, m.end) for m in moments] == [(2.0, 6.0), (6.0, 8.0), (0.0, 3.0)]  # equal 0.1s merge
    everything = propose_moments(scores, TIMES, 1, merge=1.0)  # down to the median 0.3: the 0.1s stay out
    assert (everything[0].start, everything[0].end) == (2.0, 6.0)


def test_merging_stops_at_a_window_already_in_a_moment():
    scores = np.array([0.1, 0.1, 0.9, 0.5, 0.6, 0.1, 0.1, 0.1])  # median 0.1
    first, second = propose_moments(scores, TIMES, 2, merge=0.4)  # floors 0.58, then 0.4
    assert (first.first, first.last) == (2, 2) and (second.first, second.last) == (3, 4)
    assert (second.start, second.end) == (3.0, 6.0)


def test_fixed_windows_are_the_best_windows_as_they_are():
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.1, 0.1, 0.1, 0.1])
    assert [(m.start, m.end) for m in fixed_windows(scores, TIMES, 2)] == [(1.0, 3.0), (2.0, 4.0)]


def test_temporal_iou_takes_the_best_ground_truth():
    truths = np.array([[2.0, 6.0], [7.0, 9.0]])
    assert temporal_iou(2.0, 6.0, truths) == 1.0
    assert temporal_iou(4.0, 8.0, truths) == pytest.approx(max(2 / 6, 1 / 5))
    assert temporal_iou(np.array([0.0, 7.0]), np.array([1.0, 9.0]), truths).tolist() == [0.0, 1.0]


def test_query_scores_and_their_mean():
    scores = np.array([0.1, 0.1, 0.8, 0.9, 0.85, 0.1, 0.5, 0.1])
    moments = propose_moments(scores, TIMES, 5, merge=0.25)  # (2, 6) first
    hit = query_scores(moments, np.array([[2.5, 6.0]]))  # IoU 3.5 / 4
    assert hit["R@1_IoU0.7"] == 100.0 and hit["mIoU"] == pytest.approx(87.5)
    miss = query_scores(moments, np.array([[8.0, 9.0]]))  # only the fifth moment, (7, 9), meets it: IoU 0.5
    assert miss["R@1_IoU0.3"] == 0.0 and miss["R@5_IoU0.5"] == 100.0 and miss["R@5_IoU0.7"] == 0.0
    assert mean_scores([hit, miss])["R@1_IoU0.7"] == 50.0


def test_random_window_scores_in_expectation():
    """A window of the whole video's length always covers the truth: IoU = its share. A 1 s
    window in a 10 s video hits a 1 s truth at IoU >= 0.5 in about 1/9 of the placements."""
    whole = random_scores([10.0], 10.0, np.array([[0.0, 5.0]]))
    assert whole["mIoU"] == pytest.approx(50.0) and whole["R@1_IoU0.5"] == 100.0 and whole["R@1_IoU0.7"] == 0.0
    small = random_scores([1.0], 10.0, np.array([[4.0, 5.0]]))
    assert small["R@1_IoU0.5"] == pytest.approx(100 * (2 / 3) / 9, abs=0.5)
    five = random_scores([1.0] * 5, 10.0, np.array([[4.0, 5.0]]))
    p = small["R@1_IoU0.5"] / 100
    assert five["R@5_IoU0.5"] == pytest.approx(100 * (1 - (1 - p) ** 5), abs=0.01)
