"""Known answers for the popularity baselines, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nmrn.baselines import Popularity, RecentPopularity
from nmrn.errors import ConfigError

# items 1, 2, 1, 3, 3, 2 by users a..f, one event each
SIX = [("a", 1, 0), ("b", 2, 1), ("c", 1, 2), ("d", 3, 3), ("e", 3, 4), ("f", 2, 5)]


def test_pop_counts_fit_and_learn_and_orders_by_count() -> None:
    rec = Popularity().fit([("a", 1, 0), ("b", 2, 1), ("c", 2, 2), ("a", 3, 3)])
    rec.learn([("d", 3, 4), ("e", 3, 5)])
    items, scores = rec.recommend("zz", k=3)
    assert items.tolist() == [3, 2, 1]
    assert scores.tolist() == [3.0, 2.0, 1.0]
    # a known user gets the same order minus what they consumed
    assert rec.recommend("a", k=3).items.tolist() == [2, None, None]
    np.testing.assert_array_equal(rec.score(["b", "zz"], [1, 2, 3]), [[1, 2, 3], [1, 2, 3]])


def test_pop_ties_go_to_the_item_seen_first() -> None:
    rec = Popularity().fit([("a", 9, 0), ("b", 4, 1), ("c", 7, 2)])
    assert rec.recommend("a", k=3, exclude_seen=False).items.tolist() == [9, 4, 7]


# window of 3 over items 1, 2, 1, 3, 3, 2: the counts after each event, worked by hand
WINDOW_COUNTS = [
    {1: 1, 2: 0, 3: 0},  # [1]
    {1: 1, 2: 1, 3: 0},  # [1 2]
    {1: 2, 2: 1, 3: 0},  # [1 2 1]
    {1: 1, 2: 1, 3: 1},  # [2 1 3]   the first 1 leaves
    {1: 1, 2: 0, 3: 2},  # [1 3 3]   2 leaves
    {1: 0, 2: 1, 3: 2},  # [3 3 2]   1 leaves
]


def _window_counts(rec: RecentPopularity) -> dict[int, float]:
    return dict(zip(rec.known_items.tolist(), rec.recent_scores().tolist(), strict=True))


def test_recent_pop_window_evicts_one_event_at_a_time() -> None:
    rec = RecentPopularity(window=3)
    for step, event in enumerate(SIX):
        rec.learn([event])
        expected = {i: c for i, c in WINDOW_COUNTS[step].items() if i in rec.known_items}
        assert _window_counts(rec) == expected


@pytest.mark.parametrize("cuts", [[6], [2, 4, 6], [4, 6], [1, 5, 6], [3, 6]])
def test_recent_pop_window_same_for_any_batching(cuts: list[int]) -> None:
    rec = RecentPopularity(window=3)
    lo = 0
    for hi in cuts:
        rec.learn(SIX[lo:hi])
        lo = hi
    assert _window_counts(rec) == WINDOW_COUNTS[-1]


def test_recent_pop_ties_broken_by_all_time_popularity() -> None:
    rec = RecentPopularity(window=3).fit(SIX[:4])  # window [2 1 3]: all tied at 1
    items, scores = rec.recommend("a", k=3, exclude_seen=False)
    assert items.tolist() == [1, 2, 3]  # 1 has 2 events in all, 2 and 3 one each
    np.testing.assert_allclose(scores, [1 + 2 / 5, 1 + 1 / 5, 1 + 1 / 5])
    # after all six: 3 (2 in window) > 2 (1 in window) > 1 (0 in window, though 2 in all)
    rec.learn(SIX[4:])
    assert rec.recommend("a", k=3, exclude_seen=False).items.tolist() == [3, 2, 1]
    # an unknown user gets the all-time popularity fallback instead (the base contract)
    assert rec.recommend("zz", k=3).items.tolist() == [1, 2, 3]


def test_recent_pop_half_life_decays_by_event_age() -> None:
    rec = RecentPopularity(half_life=1.0).fit([("a", 1, 0), ("b", 2, 1)])
    np.testing.assert_allclose(rec.recent_scores(), [0.5, 1.0])
    rec.learn([("c", 1, 2)])
    np.testing.assert_allclose(rec.recent_scores(), [0.25 + 1.0, 0.5])
    twin = RecentPopularity(half_life=1.0).fit([("a", 1, 0), ("b", 2, 1), ("c", 1, 2)])
    np.testing.assert_allclose(twin.recent_scores(), rec.recent_scores())


def test_recent_pop_half_life_survives_long_streams() -> None:
    # gamma = 2**-100 per event: the inflated masses would overflow without rescaling
    rec = RecentPopularity(half_life=0.01)
    items = np.tile([0, 1, 2], 200)
    for lo in range(0, len(items), 7):
        chunk = items[lo : lo + 7]
        rec.learn({"user": np.zeros(len(chunk), int), "item": chunk, "timestamp": chunk * 0.0})
    scores = rec.recent_scores()
    assert np.all(np.isfinite(scores))
    assert scores[items[-1]] == pytest.approx(1.0)  # the newest event counts 1
    rec.learn(
        {"user": np.zeros(5000, int), "item": np.arange(5000) % 3, "timestamp": np.zeros(5000)}
    )
    assert np.isfinite(rec.recent_scores()).all()
    assert rec.recent_scores()[4999 % 3] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 10, "half_life": 5.0},
        {"window": 0},
        {"window": 2.5},
        {"window": True},
        {"half_life": 0.0},
        {"half_life": float("inf")},
        {"half_life": "5"},
    ],
)
def test_recent_pop_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        RecentPopularity(**kwargs)


def test_recent_pop_default_window() -> None:
    rec = RecentPopularity()
    assert rec.config.window is None and rec.config.half_life is None
    items = np.arange(1500) % 7
    rec.fit({"user": np.zeros(1500, int), "item": items, "timestamp": np.zeros(1500)})
    np.testing.assert_array_equal(rec.recent_scores(), np.bincount(items[-1000:]))


def test_tiny_half_life_still_counts_the_newest_event():
    # a huge decay per event used to drop every event of a batch (keep == 0)
    model = RecentPopularity(half_life=0.001).fit([(1, "a", 0.0), (1, "b", 1.0), (2, "c", 2.0)])
    scores = model.recent_scores()
    assert scores[model.items.get("c")] > 0
    assert scores[model.items.get("c")] > scores[model.items.get("a")]
