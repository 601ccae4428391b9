"""Ranking metrics against cases worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from learn.metrics import (
    coverage,
    mrr_at,
    ndcg_at,
    recall_at,
    summarise,
    target_ranks,
    top_k,
)


def test_ranks_count_better_items_and_break_ties_by_index():
    scores = np.array([[0.9, 0.1, 0.5, 0.7],     # target 2: 0.9 and 0.7 above -> rank 2
                       [0.3, 0.3, 0.3, 0.3],     # target 2: ties, items 0 and 1 come first -> rank 2
                       [0.0, 1.0, 0.2, 0.1]])    # target 1: best -> rank 0
    assert target_ranks(scores, np.array([2, 2, 1])).tolist() == [2, 2, 0]


def test_excluded_items_leave_the_ranking_and_an_excluded_target_is_a_miss():
    scores = np.array([[0.9, 0.1, 0.5, 0.7], [0.9, 0.1, 0.5, 0.7]])
    ranks = target_ranks(scores, np.array([2, 2]), excluded=[[0, 1], [2]])
    assert ranks.tolist() == [1, 4]          # only 0.7 stays above; the second target was excluded


def test_recall_ndcg_mrr_by_hand():
    ranks = np.array([0, 1, 4, 12, 30])
    assert recall_at(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at(ranks, 10) == pytest.approx(3 / 5)
    assert recall_at(ranks, 20) == pytest.approx(4 / 5)
    assert ndcg_at(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert ndcg_at(ranks, 20) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(14)) / 5)
    assert mrr_at(ranks, 20) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 13) / 5)
    s = summarise(ranks)
    assert set(s) == {"recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@20"}
    assert s["ndcg@10"] == pytest.approx(ndcg_at(ranks, 10))


def test_top_k_and_coverage():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [0.4, 0.3, 0.2, 0.1]])
    top = top_k(scores, 2, excluded=[[1], []])
    assert top.tolist() == [[3, 2], [0, 1]]
    assert coverage(top, 5) == pytest.approx(4 / 5)
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


def test_shapes_are_checked():
    with pytest.raises(ValueError):
        target_ranks(np.zeros((2, 3)), np.array([0]))
