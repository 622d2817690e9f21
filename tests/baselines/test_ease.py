"""Known answers for streamed EASE: a 2-item case worked by hand, the closed form from the raw
matrix, and exactness under any batching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.baselines import EASE
from nmrn.errors import ModelFitError

# Users a and b consume x and y, c consumes x: G = [[3, 2], [2, 2]] (x first).
# For two items, (G + l I)^-1 = [[g_yy + l, -g_xy], [-g_xy, g_xx + l]] / det, and
# B_ij = -P_ij / P_jj gives B_xy = g_xy / (g_xx + l) and B_yx = g_xy / (g_yy + l).
TOY = [("a", "x", 0), ("a", "y", 1), ("b", "x", 2), ("b", "y", 3), ("c", "x", 4)]


def test_two_items_by_hand() -> None:
    rec = EASE(l2=1.0).fit(TOY)
    np.testing.assert_allclose(rec.item_weights(), [[0.0, 2 / 4], [2 / 3, 0.0]], rtol=1e-12)
    # c's profile is x alone (weight 1): y scores B_xy, x scores B_xx = 0; ties add 1e-9 * share
    scores = rec.score(["c"], ["x", "y"])[0]
    np.testing.assert_allclose(scores, [1e-9 * 3 / 6, 0.5 + 1e-9 * 2 / 6], rtol=1e-12)
    # a repeated item changes no count (the matrix is binary)
    again = EASE(l2=1.0).fit(TOY + [("a", "x", 5), ("c", "x", 6)])
    np.testing.assert_array_equal(again.item_weights(), rec.item_weights())


def test_recency_weights_the_profile() -> None:
    # user d: x then y; with decay 0.5 the profile is x: 0.5, y: 1 -> score(z) = 0.5 B_xz + B_yz
    log = [("a", "x", 0), ("a", "z", 1), ("b", "y", 2), ("b", "z", 3), ("b", "x", 4),
           ("d", "x", 5), ("d", "y", 6)]
    rec = EASE(l2=1.0, recency_decay=0.5).fit(log)
    b = rec.item_weights()
    x, y, z = (int(rec.items.encode(np.array([i]))[0]) for i in "xyz")
    expected = 0.5 * b[x, z] + b[y, z] + 1e-9 * 2 / 8
    assert rec.score(["d"], ["z"])[0, 0] == pytest.approx(expected, rel=1e-12)
    # history_len 1 keeps the last event only
    last = EASE(l2=1.0, recency_decay=0.5, history_len=1).fit(log)
    assert last.score(["d"], ["z"])[0, 0] == pytest.approx(b[y, z] + 1e-9 * 2 / 8, rel=1e-12)


logs = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(log=logs, cuts=st.lists(st.integers(0, 40), max_size=4), l2=st.floats(0.1, 50.0))
def test_streamed_model_is_the_closed_form_of_the_whole_matrix(
    log: list[tuple[int, int]], cuts: list[int], l2: float
) -> None:
    events = [(f"u{u}", f"i{i}", t) for t, (u, i) in enumerate(log)]
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    rec = EASE(l2=l2)
    rec.fit(events[: bounds[1]])
    for lo, hi in zip(bounds[1:-1], bounds[2:], strict=True):
        rec.learn(events[lo:hi])
    # the textbook solution, from the binary user-item matrix of every event at once
    users = rec.users.encode(np.array([u for u, _, _ in events]))
    items = rec.items.encode(np.array([i for _, i, _ in events]))
    x = np.zeros((len(rec.users), len(rec.items)))
    x[users, items] = 1.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(rec.item_weights(), expected, rtol=1e-9, atol=1e-12)
    # and one batch gives bit for bit the same scores as the split stream
    whole = EASE(l2=l2).fit(events)
    names = [f"u{u}" for u in sorted({u for u, _ in log})]
    np.testing.assert_array_equal(whole.score(names, list(rec.items.ids)),
                                  rec.score(names, list(rec.items.ids)))


def test_a_catalogue_over_max_items_is_refused_and_nothing_is_lost() -> None:
    rec = EASE(l2=1.0, max_items=3).fit(TOY)
    before = rec.score(["a"], ["x", "y"])
    with pytest.raises(ModelFitError, match="max_items=3"):
        rec.learn([("a", "p", 7), ("a", "q", 8)])
    np.testing.assert_array_equal(rec.score(["a"], ["x", "y"]), before)
