"""Cached rankings: a model whose score row is shared by many users (popularity for every known
user, the popularity fallback for every unknown one) answers ``recommend`` from one ranking per
model state. The answers must be exactly those of scoring every item and taking the top-k."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmrn.baselines.itemknn import ItemKNN
from nmrn.baselines.popularity import Popularity, RecentPopularity
from nmrn.training import contract
from nmrn.training import ranking as ranking_mod
from nmrn.training.contract import Recommender
from nmrn.training.ranking import top_k

events = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 25)), min_size=1, max_size=80
).map(lambda pairs: [(u, i, float(t)) for t, (u, i) in enumerate(pairs)])

MODELS = [
    Popularity,
    lambda: RecentPopularity(window=5),
    lambda: RecentPopularity(half_life=4.0),
    lambda: ItemKNN(history_len=10),  # personalised: only its unknown users are ranked
]


def reference(model: Recommender, users: list[Any], k: int, exclude: bool) -> tuple[Any, Any]:
    """Score every item, mask the seen ones, take the top-k: the definition."""
    u = model.users.encode(np.asarray(users, dtype=object), missing=-1)
    scores = model._scores_for(u)
    if exclude:
        rows, cols = model.history.seen_pairs(u)
        scores[rows, cols] = -np.inf
    idx, vals = top_k(scores, k)
    items = np.empty(idx.shape, dtype=object)
    valid = vals > -np.inf
    items[valid] = model.items.decode(idx[valid])
    items[~valid] = None
    return items.tolist(), vals.tolist()


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("prefix", [1, 3, 2048])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # same patch for all
@given(log=events, more=events, k=st.integers(1, 30), exclude=st.booleans())
def test_ranked_answers_equal_scoring_every_item(
    make: Any, prefix: int, log: list[Any], more: list[Any], k: int, exclude: bool,
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(contract, "RANKING_PREFIX", prefix)  # short prefixes force the fallback
    model = make().fit(log)
    users = [0, 3, 7, 99, "stranger"]
    for step in range(2):  # the cache must follow the model as it learns
        got = model.recommend(users, k=k, exclude_seen=exclude)
        assert (got.items.tolist(), got.scores.tolist()) == reference(model, users, k, exclude)
        one = model.recommend(3, k=k, exclude_seen=exclude)
        assert one.items.tolist() == reference(model, [3], k, exclude)[0][0]
        if step == 0:
            model.learn(more)


def test_rankings_are_rebuilt_after_learning_and_reused_until_then() -> None:
    model = Popularity().fit([(0, "a", 0.0), (1, "a", 1.0), (1, "b", 2.0)])
    assert model.recommend(2, k=2).items.tolist() == ["a", "b"]  # unknown user: cold ranking
    first = model._ranking("cold")
    assert model._ranking("cold") is first  # same state: reused
    model.learn([(2, "b", 3.0), (3, "b", 4.0)])
    assert model.recommend(9, k=2).items.tolist() == ["b", "a"]
    assert model._ranking("cold") is not first


def test_a_prefix_that_runs_out_falls_back_to_every_item(monkeypatch: Any) -> None:
    monkeypatch.setattr(contract, "RANKING_PREFIX", 2)
    # user 0 has seen the two most popular items; the prefix holds only those two
    log = [(1, "a", 0.0), (2, "a", 1.0), (1, "b", 2.0), (2, "b", 3.0), (0, "a", 4.0),
           (0, "b", 5.0), (3, "c", 6.0)]
    model = Popularity().fit(log)
    assert model.recommend(0, k=1).items.tolist() == ["c"]
    assert model.recommend(0, k=3).items.tolist() == ["c", None, None]


def test_ties_at_the_prefix_edge_keep_the_lower_index(monkeypatch: Any) -> None:
    monkeypatch.setattr(contract, "RANKING_PREFIX", 2)
    # a: 2 events; b, c, d: 1 each (tied). The prefix must hold a and b, not a and c or d.
    model = Popularity().fit([(0, "a", 0.0), (1, "a", 1.0), (0, "b", 2.0), (1, "c", 3.0),
                              (2, "d", 4.0)])
    assert model._ranking("cold").items.tolist() == [0, 1]
    assert model.recommend(5, k=2).items.tolist() == ["a", "b"]
    assert model.recommend(2, k=2).items.tolist() == ["a", "b"]  # d seen


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(st.sampled_from([0.0, 1.0, 2.0, 2.5, -np.inf]), min_size=1,
                           max_size=12), min_size=1, max_size=4),
    k=st.integers(1, 14),
)
def test_top_k_breaks_ties_by_the_lower_index(rows: list[list[float]], k: int) -> None:
    width = min(len(r) for r in rows)
    scores = np.array([r[:width] for r in rows])
    idx, vals = top_k(scores, k)
    for r, row in enumerate(scores):
        expected = np.lexsort((np.arange(width), -row))[: min(k, width)]  # stable: index order
        assert idx[r].tolist() == expected.tolist()
        assert vals[r].tolist() == row[expected].tolist()


@pytest.mark.parametrize("sample", [1, 3, 1024])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # same patch for all
@given(
    rows=st.lists(st.lists(st.sampled_from([0.0, 1.0, 2.0, 2.5, 7.0, -np.inf]), min_size=1,
                           max_size=40), min_size=1, max_size=3),
    k=st.integers(1, 45),
)
def test_the_sampled_path_of_top_k_is_exact(
    rows: list[list[float]], k: int, sample: int, monkeypatch: Any
) -> None:
    monkeypatch.setattr(ranking_mod, "TOPK_LONG_ROW", 1)  # every row takes the sampled path
    monkeypatch.setattr(ranking_mod, "TOPK_SAMPLE", sample)
    width = min(len(r) for r in rows)
    scores = np.array([r[:width] for r in rows])
    idx, vals = top_k(scores, k)
    for r, row in enumerate(scores):
        expected = np.lexsort((np.arange(width), -row))[: min(k, width)]
        assert idx[r].tolist() == expected.tolist()
        assert vals[r].tolist() == row[expected].tolist()


def test_top_k_on_a_long_row_with_nan_falls_back() -> None:
    row = np.arange(10_000, dtype=np.float64)
    row[::3] = np.nan
    idx, _ = top_k(row[None, :], 5)
    reference = ranking_mod._top_k_rows(row[None, :], 5)
    assert idx.tolist() == reference.tolist()


def test_top_k_on_a_long_row_with_a_few_nans_is_still_exact() -> None:
    # NaN at sampled positions lifts the sample's threshold above all but two real scores
    row = np.zeros(10_000)
    row[9972], row[9963] = 2.0, 1.0
    row[[9981, 9990, 9999]] = np.nan
    idx, vals = top_k(row[None, :], 5)
    assert idx[0].tolist()[:2] == [9972, 9963] and len(set(idx[0].tolist())) == 5
    assert vals[0].tolist()[:2] == [2.0, 1.0]


@pytest.mark.parametrize("kind", ["counts", "continuous", "few distinct"])
def test_a_ranking_of_a_long_row_is_the_prefix_of_a_stable_sort(kind: str) -> None:
    rng = np.random.default_rng(1)
    n = 50_000  # long enough for the sampled estimate of the threshold
    row = {
        "counts": (rng.zipf(1.3, n) % 50).astype(np.float64),
        "continuous": rng.standard_normal(n),
        "few distinct": rng.integers(0, 3, n).astype(np.float64),
    }[kind]
    ranking = ranking_mod.Ranking(row, 2048, 0)
    expected = np.argsort(-row, kind="stable")[:2048]
    assert ranking.items.tolist() == expected.tolist() and not ranking.complete
    assert ranking.scores.tolist() == row[expected].tolist()
