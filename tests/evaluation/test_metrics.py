"""Tie-aware ranking metrics against literal formulas and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.evaluation.metrics import expected_hits, expected_ndcg, expected_rr, rank_counts

counts = st.integers(min_value=0, max_value=400)
cutoffs = st.integers(min_value=1, max_value=50)


def _brute(g: int, t: int, metric) -> float:
    """Average of ``metric(rank)`` over the tied ranks g+1 .. g+t+1, written out."""
    ranks = range(g + 1, g + t + 2)
    return sum(metric(r) for r in ranks) / (t + 1)


def test_plain_values_by_hand():
    g = np.array([0, 1, 4, 9, 10, 30])
    t = np.zeros_like(g)
    assert expected_hits(g, t, 10).tolist() == [1, 1, 1, 1, 0, 0]
    assert expected_hits(g, t, 1).tolist() == [1, 0, 0, 0, 0, 0]
    ndcg = [1 / math.log2(r + 1) if r <= 10 else 0.0 for r in (g + 1).tolist()]
    np.testing.assert_allclose(expected_ndcg(g, t, 10), ndcg, rtol=0, atol=1e-15)
    np.testing.assert_allclose(expected_rr(g, t), 1.0 / (g + 1), rtol=0, atol=1e-15)


def test_ties_by_hand_target_tied_with_three_after_four_greater():
    # ranks 5, 6, 7, 8 each with probability 1/4
    assert expected_hits(4, 3, 1).item() == 0.0
    assert expected_hits(4, 3, 4).item() == 0.0
    assert expected_hits(4, 3, 5).item() == 0.25
    assert expected_hits(4, 3, 6).item() == 0.5
    assert expected_hits(4, 3, 8).item() == 1.0
    assert expected_hits(4, 3, 20).item() == 1.0
    assert expected_ndcg(4, 3, 6).item() == pytest.approx((1 / math.log2(6) + 1 / math.log2(7)) / 4)
    assert expected_rr(4, 3).item() == pytest.approx((1 / 5 + 1 / 6 + 1 / 7 + 1 / 8) / 4)


@settings(deadline=None, max_examples=200)
@given(g=counts, t=counts, k=cutoffs)
def test_expected_values_equal_average_over_tie_positions(g, t, k):
    assert expected_hits(g, t, k).item() == pytest.approx(_brute(g, t, lambda r: float(r <= k)))
    ndcg = _brute(g, t, lambda r: 1 / math.log2(r + 1) if r <= k else 0.0)
    assert expected_ndcg(g, t, k).item() == pytest.approx(ndcg, abs=1e-12)
    assert expected_rr(g, t).item() == pytest.approx(_brute(g, t, lambda r: 1 / r), rel=1e-12)


@settings(deadline=None)
@given(g=st.lists(counts, min_size=1, max_size=30), k=cutoffs)
def test_without_ties_expected_equals_plain(g, k):
    g = np.array(g)
    t = np.zeros_like(g)
    rank = g + 1
    np.testing.assert_array_equal(expected_hits(g, t, k), (rank <= k).astype(float))
    plain_ndcg = np.where(rank <= k, 1 / np.log2(rank + 1), 0.0)
    np.testing.assert_allclose(expected_ndcg(g, t, k), plain_ndcg, rtol=1e-14)
    np.testing.assert_array_equal(expected_rr(g, t), 1.0 / rank)


def test_reciprocal_rank_with_large_counts_uses_accurate_harmonic_numbers():
    for g, t in [(1000, 500), (0, 10_000), (255, 1), (123_456, 7)]:
        exact = math.fsum(1 / r for r in range(g + 1, g + t + 2)) / (t + 1)
        assert expected_rr(g, t).item() == pytest.approx(exact, rel=1e-13)


@settings(deadline=None)
@given(m=st.integers(min_value=1, max_value=300), k=cutoffs, target=st.integers(0, 299))
def test_constant_scorer_gets_chance_hits(m, k, target):
    scores = np.full((1, m), 3.5)
    g, t = rank_counts(scores, [target % m])
    assert (g.item(), t.item()) == (0, m - 1)
    assert expected_hits(g, t, k).item() == pytest.approx(min(k, m) / m, rel=1e-15)


def test_rank_counts_counts_greater_and_tied_without_the_target():
    scores = np.array([[5.0, 3.0, 3.0, 3.0, 9.0, -np.inf], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    g, t = rank_counts(scores, [1, 5])
    assert g.tolist() == [2, 0]
    assert t.tolist() == [2, 0]


def test_rank_counts_honours_exclusions_but_never_the_target():
    scores = np.array([[5.0, 3.0, 3.0, 3.0, 9.0]])
    mask = np.array([[True, True, True, False, False]])  # the target (column 1) marked too
    g, t = rank_counts(scores, [1], mask)
    assert (g.item(), t.item()) == (1, 1)  # 9 above; column 3 level; columns 0 and 2 excluded
    assert mask.tolist() == [[True, True, True, False, False]]  # input untouched


def test_rank_counts_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        rank_counts([[1.0, np.nan]], [0])
    with pytest.raises(ValueError, match="target_col"):
        rank_counts([[1.0, 2.0]], [2])
    with pytest.raises(ValueError, match="excluded_mask"):
        rank_counts([[1.0, 2.0]], [0], [[True]])
    with pytest.raises(ValueError, match=r"\[n, m\]"):
        rank_counts([1.0, 2.0], [0])


def test_metric_arguments_are_checked():
    with pytest.raises(ValueError, match="k must be"):
        expected_hits(0, 0, 0)
    with pytest.raises(ValueError, match="n_greater must be >= 0"):
        expected_ndcg(-1, 0, 10)
    with pytest.raises(TypeError, match="integer counts"):
        expected_rr(0.5, 0)
