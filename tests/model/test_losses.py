"""The rank-weighted hinge, by hand and by property."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.model.losses import hinge, rank_weight, rank_weighted_hinge


def _dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.dist(a, b)


def test_hinge_by_hand_2d() -> None:
    u, pos = (0.0, 0.0), (1.0, 0.0)
    d_pos = torch.tensor([_dist(u, pos)])
    # neg=(0, 2): max(0, 1 + 1 - 2) = 0, and no violator, so the weight is log(1) = 0 too
    far = torch.tensor([[_dist(u, (0.0, 2.0))]])
    assert hinge(d_pos, far, margin=1.0).item() == 0.0
    assert rank_weighted_hinge(d_pos, far, margin=1.0, n_items=10).item() == 0.0
    # neg=(0, 1): hinge = 1 + 1 - 1 = 1; one violator of T=1 -> rank = floor(10 * 1 / 1) = 10
    near = torch.tensor([[_dist(u, (0.0, 1.0))]])
    assert hinge(d_pos, near, margin=1.0).item() == 1.0
    got = rank_weighted_hinge(d_pos, near, margin=1.0, n_items=10).item()
    assert got == pytest.approx(math.log(11) * 1.0)


def test_rank_weight_and_hardest_candidate_by_hand() -> None:
    d_pos = torch.tensor([1.0, 2.0])
    d_neg = torch.tensor([[1.2, 3.0, 0.9, 1.6], [5.0, 5.0, 5.0, 5.0]])
    # row 0, margin 0.5: violators 1.2, 0.9 (1.6 is not: 0.5 + 1 - 1.6 < 0) -> 2 of T=4;
    # rank = floor(7 * 2 / 4) = 3; hardest = 0.9 -> hinge 0.6. Row 1: no violator.
    weight = rank_weight(d_pos, d_neg, 0.5, n_items=7)
    assert weight.tolist() == pytest.approx([math.log(4), 0.0])
    loss = rank_weighted_hinge(d_pos, d_neg, 0.5, n_items=7)
    assert loss.tolist() == pytest.approx([math.log(4) * 0.6, 0.0])


def test_weight_is_constant_and_gradient_goes_to_hardest_only() -> None:
    d_pos = torch.tensor([1.0], requires_grad=True)
    d_neg = torch.tensor([[1.2, 0.9, 3.0]], requires_grad=True)
    rank_weighted_hinge(d_pos, d_neg, 0.5, n_items=3).sum().backward()
    w = math.log(1 + math.floor(3 * 2 / 3))
    assert d_pos.grad.tolist() == pytest.approx([w])  # d(w * (m + d_pos - d*))/d d_pos = w
    assert d_neg.grad[0].tolist() == pytest.approx([0.0, -w, 0.0])


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(0)
    d_pos = (torch.rand(2, generator=g, dtype=torch.float64) + 1).requires_grad_()
    d_neg = (torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.8).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, n: rank_weighted_hinge(p, n, 0.5, 5), (d_pos, d_neg))
    assert torch.autograd.gradcheck(lambda p, n: hinge(p, n, 0.5), (d_pos, d_neg))


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="d_neg"):
        rank_weighted_hinge(torch.ones(2), torch.ones(3, 2), 0.5, 4)
    with pytest.raises(ValueError, match="at least one candidate"):
        rank_weighted_hinge(torch.ones(2), torch.ones(2, 0), 0.5, 4)


distances = st.floats(0.0, 4.0, allow_nan=False)


@settings(deadline=None, max_examples=60)
@given(
    st.lists(
        st.tuples(distances, st.lists(distances, min_size=1, max_size=5)), min_size=1, max_size=6
    ),
    st.floats(0.0, 2.0),
    st.integers(1, 1000),
)
def test_properties(rows: list, margin: float, n_items: int) -> None:
    t = max(len(r[1]) for r in rows)
    d_pos = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    d_neg = torch.tensor([r[1] + [r[1][0]] * (t - len(r[1])) for r in rows], dtype=torch.float64)
    loss = rank_weighted_hinge(d_pos, d_neg, margin, n_items)
    assert (loss >= 0).all()
    # zero when every candidate is at least a margin further than the positive
    safe = d_pos + margin + d_neg.max()
    assert (rank_weighted_hinge(d_pos, d_neg + safe[:, None], margin, n_items) == 0).all()
    # monotone (non-decreasing) in d_pos
    assert (rank_weighted_hinge(d_pos + 0.1, d_neg, margin, n_items) >= loss - 1e-12).all()
