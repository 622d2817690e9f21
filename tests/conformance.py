"""A conformance suite every recommender must pass (river's ``yield_checks``, implicit's mixin).

Each check takes a *factory*: a zero-argument callable returning a fresh, untrained model with
a fixed seed (so that two calls give twins). Checks state properties of the public contract
(DESIGN §5 and :class:`nmrn.training.contract.Recommender`), not numbers, so any model can be
plugged in::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check):
        check(lambda: MyModel(seed=0))

:func:`synthetic_stream` makes the small event log the checks train on.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmrn.errors import CheckpointError, UnknownIdError
from nmrn.training.contract import Recommender

Factory = Callable[[], Recommender]

UNKNOWN_USER = "nobody-knows-me"
UNKNOWN_ITEM = 987_654_321


def synthetic_stream(
    n_users: int = 12, n_items: int = 30, n_events: int = 240, *, seed: int = 0
) -> pd.DataFrame:
    """A small time-ordered log with structure: two user groups, each favouring half the items.

    Users are strings ``"u0", "u1", ...`` and items ints ``100, 101, ...`` (so that external ids
    differ from dense indices); timestamps increase by 1. Every user and item appears in the
    first half of the log, and 80% of a user's events fall in their group's half of the
    catalogue, so a personalised model has something to learn.

    Returns
    -------
    pandas.DataFrame
        Columns ``user``, ``item``, ``timestamp``; ``n_events`` rows.
    """
    rng = np.random.default_rng(seed)
    half = n_items // 2
    # the first n_items events make every item (and, cyclically, every user) known early on
    users = np.concatenate([np.arange(n_items) % n_users, rng.integers(0, n_users, n_events)])
    own_half = rng.random(len(users)) < 0.8
    offset = np.where((users % 2 == 0) == own_half, 0, half)
    items = offset + rng.integers(0, n_items - half, len(users))
    items[:n_items] = np.arange(n_items)
    users, items = users[:n_events], items[:n_events]
    return pd.DataFrame(
        {
            "user": [f"u{u}" for u in users],
            "item": items + 100,
            "timestamp": np.arange(n_events, dtype=np.float64),
        }
    )


def _trained(factory: Factory, stream: pd.DataFrame | None = None) -> Recommender:
    """Fit on the first half of the stream, then learn the rest in chunks of 30."""
    stream = synthetic_stream() if stream is None else stream
    half = len(stream) // 2
    model = factory().fit(stream.iloc[:half])
    for lo in range(half, len(stream), 30):
        model.learn(stream.iloc[lo : lo + 30])
    return model


def _seen(model: Recommender, user: Any) -> set[Any]:
    idx = model.users.get(user)
    if idx < 0:
        return set()
    return set(model.items.decode(model.history.items_of(idx)).tolist())


def _assert_same_recommendations(a: Recommender, b: Recommender, users: list[Any]) -> None:
    for exclude in (True, False):
        ra = a.recommend(users, k=len(a.known_items) + 1, exclude_seen=exclude)
        rb = b.recommend(users, k=len(b.known_items) + 1, exclude_seen=exclude)
        np.testing.assert_array_equal(ra.items, rb.items)
        np.testing.assert_array_equal(ra.scores, rb.scores)
        np.testing.assert_array_equal(ra.cold, rb.cold)


def _extra_events() -> pd.DataFrame:
    """Events after the synthetic stream: known and new users, known and new items."""
    return pd.DataFrame(
        {
            "user": ["u1", "fresh-user", "u2", "fresh-user", "u1"],
            "item": [101, 100, 5000, 5000, 5001],
            "timestamp": [1000.0, 1001.0, 1002.0, 1003.0, 1004.0],
        }
    )


# -- checks ------------------------------------------------------------------------------------


def check_fit_and_learn_return_self(factory: Factory) -> None:
    stream = synthetic_stream()
    model = factory()
    assert model.fit(stream.iloc[:100]) is model
    assert model.learn(stream.iloc[100:]) is model
    assert model.n_events == len(stream)
    assert set(model.known_items.tolist()) == set(stream["item"].tolist())


def check_recommend_contract(factory: Factory) -> None:
    """``min(k, candidates)`` distinct, known, non-excluded items, best first; scores agree."""
    model = _trained(factory)
    known_items = set(model.known_items.tolist())
    n_items = len(known_items)
    pool = list(model.known_users.tolist()) + [UNKNOWN_USER]

    @settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
    @given(
        k=st.integers(1, n_items + 5),
        users=st.lists(st.sampled_from(pool), min_size=1, max_size=4),
        exclude=st.booleans(),
    )
    def prop(k: int, users: list[Any], exclude: bool) -> None:
        items, scores = rec = model.recommend(users, k=k, exclude_seen=exclude)
        width = min(k, n_items)
        assert items.shape == scores.shape == (len(users), width)
        assert rec.cold.tolist() == [u == UNKNOWN_USER for u in users]
        for row, user in enumerate(users):
            excluded = _seen(model, user) if exclude else set()
            n_valid = min(k, n_items - len(excluded))
            got = items[row, :n_valid].tolist()
            assert len(set(got)) == n_valid, "recommended items must be distinct"
            assert set(got) <= known_items - excluded
            assert all(x is None for x in items[row, n_valid:].tolist())
            assert np.all(scores[row, n_valid:] == -np.inf)
            valid_scores = scores[row, :n_valid]
            assert np.all(np.isfinite(valid_scores))
            assert np.all(np.diff(valid_scores) <= 0), "scores must be non-increasing"
            if n_valid:
                direct = model.score([user], got)[0]
                np.testing.assert_allclose(direct, valid_scores, rtol=1e-9, atol=0)
                # nothing left out scores higher than the last item kept
                rest = sorted(known_items - excluded - set(got))
                if rest:
                    assert model.score([user], rest)[0].max() <= valid_scores[-1]

    prop()


def check_scalar_and_batch_recommend_agree(factory: Factory) -> None:
    model = _trained(factory)
    users = list(model.known_users.tolist()[:5]) + [UNKNOWN_USER]
    batch = model.recommend(users, k=7)
    for row, user in enumerate(users):
        one = model.recommend(user, k=7)
        assert one.items.ndim == 1
        np.testing.assert_array_equal(one.items, batch.items[row])
        # a batched matrix product may round differently from a single row's
        np.testing.assert_allclose(one.scores, batch.scores[row], rtol=1e-9, atol=0)
        assert one.cold is bool(batch.cold[row])


def check_score_shapes_agree(factory: Factory) -> None:
    """``score`` with ``[c]`` and ``[n, c]`` items agree, and match ``recommend``'s scores."""
    model = _trained(factory)
    users = list(model.known_users.tolist()[:4]) + [UNKNOWN_USER]
    candidates = model.known_items[::-1][:9]
    flat = model.score(users, candidates)
    assert flat.shape == (len(users), len(candidates))
    assert flat.dtype == np.float64
    tiled = model.score(users, np.tile(candidates, (len(users), 1)))
    np.testing.assert_array_equal(flat, tiled)
    rec = model.recommend(users, k=6, exclude_seen=False)
    np.testing.assert_allclose(model.score(users, rec.items), rec.scores, rtol=1e-9, atol=0)
    with pytest.raises(ValueError):
        model.score(users, np.tile(candidates, (len(users) + 1, 1)))


def check_exclude_seen(factory: Factory) -> None:
    model = _trained(factory)
    n_items = len(model.known_items)
    for user in model.known_users.tolist():
        seen = _seen(model, user)
        assert seen, "every known user has events"
        got = model.recommend(user, k=n_items, exclude_seen=True).items.tolist()
        kept = [x for x in got if x is not None]
        assert not seen & set(kept)
        assert len(kept) == n_items - len(seen)
        everything = model.recommend(user, k=n_items, exclude_seen=False).items.tolist()
        assert sorted(everything) == sorted(model.known_items.tolist())


def check_k_larger_than_catalogue(factory: Factory) -> None:
    model = _trained(factory)
    n_items = len(model.known_items)
    user = model.known_users[0]
    items, scores = model.recommend(user, k=n_items + 50, exclude_seen=False)
    assert len(items) == n_items
    assert sorted(items.tolist()) == sorted(model.known_items.tolist())
    cold = model.recommend(UNKNOWN_USER, k=n_items + 50)
    assert sorted(cold.items.tolist()) == sorted(model.known_items.tolist())


def check_unknown_user_gets_popularity(factory: Factory) -> None:
    """An unknown user is flagged cold and gets items by event count, never an error."""
    stream = synthetic_stream()
    model = _trained(factory, stream)
    counts = stream["item"].value_counts()
    items, scores, cold = (lambda r: (r.items, r.scores, r.cold))(
        model.recommend(UNKNOWN_USER, k=len(model.known_items))
    )
    assert cold is True
    np.testing.assert_array_equal(scores, counts.loc[items.tolist()].to_numpy(dtype=np.float64))
    assert np.all(np.diff(scores) <= 0)
    mixed = model.recommend([model.known_users[0], UNKNOWN_USER, "also-unknown"], k=3)
    assert mixed.cold.tolist() == [False, True, True]
    np.testing.assert_array_equal(mixed.items[1], items[:3])
    fresh = factory()
    empty = fresh.recommend(UNKNOWN_USER, k=5)
    assert empty.cold is True and len(empty.items) == 0


def check_unknown_item_in_score_raises(factory: Factory) -> None:
    model = _trained(factory)
    user = model.known_users[0]
    with pytest.raises(UnknownIdError, match=str(UNKNOWN_ITEM)):
        model.score([user], [model.known_items[0], UNKNOWN_ITEM])
    with pytest.raises(KeyError):
        model.score([UNKNOWN_USER], [[UNKNOWN_ITEM]])


def check_bad_k_rejected(factory: Factory) -> None:
    model = _trained(factory)
    user = model.known_users[0]
    for bad in (0, -1, 2.5, "3", True, None):
        with pytest.raises((TypeError, ValueError), match="k"):
            model.recommend(user, k=bad)  # type: ignore[arg-type]


def check_save_load_round_trip(factory: Factory) -> None:
    """Identical recommendations after loading, and after both continue on the same events."""
    model = _trained(factory)
    users = list(model.known_users.tolist()) + [UNKNOWN_USER, "fresh-user"]
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "ckpt")
        loaded = type(model).load(path)
        generic = Recommender.load(path)
    for other in (loaded, generic):
        assert type(other) is type(model)
        assert other.get_params() == model.get_params()
        assert other.n_events == model.n_events
        np.testing.assert_array_equal(other.known_items, model.known_items)
        _assert_same_recommendations(model, other, users)
    extra = _extra_events()
    model.learn(extra.iloc[:2]).learn(extra.iloc[2:])
    loaded.learn(extra.iloc[:2]).learn(extra.iloc[2:])
    _assert_same_recommendations(model, loaded, users)


class _Decoy(Recommender):
    """A model of another class, not registered."""

    def _fit(self, users: Any, items: Any, timestamps: Any, weights: Any) -> None:
        pass

    def _learn(self, users: Any, items: Any, timestamps: Any, weights: Any) -> None:
        pass

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return np.zeros((len(users), len(self.items)))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        pass


def check_load_as_other_class_fails(factory: Factory) -> None:
    model = _trained(factory)
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "ckpt")
        with pytest.raises(CheckpointError, match=type(model).__name__):
            _Decoy.load(path)
        decoy_path = _Decoy().fit(synthetic_stream(n_events=40)).save(Path(tmp) / "decoy")
        with pytest.raises(CheckpointError):
            type(model).load(decoy_path)


def check_same_seed_same_outputs(factory: Factory) -> None:
    """Two fresh models from the factory agree exactly after every step."""
    stream = pd.concat([synthetic_stream(), _extra_events()], ignore_index=True)
    a, b = factory(), factory()
    users = sorted(set(stream["user"].tolist())) + [UNKNOWN_USER]
    steps = [stream.iloc[:120]] + [stream.iloc[lo : lo + 25] for lo in range(120, len(stream), 25)]
    for j, events in enumerate(steps):
        (a.fit if j == 0 else a.learn)(events)
        (b.fit if j == 0 else b.learn)(events)
        _assert_same_recommendations(a, b, users)
        np.testing.assert_array_equal(a.score(users, a.known_items), b.score(users, b.known_items))


def check_empty_learn_is_noop(factory: Factory) -> None:
    model = _trained(factory)
    twin = _trained(factory)
    empty = pd.DataFrame({"user": [], "item": [], "timestamp": []})
    assert model.learn(empty) is model
    model.learn([])
    assert model.n_events == twin.n_events
    users = list(model.known_users.tolist()) + [UNKNOWN_USER]
    _assert_same_recommendations(model, twin, users)
    # and the model continues exactly like its twin (no hidden state, e.g. RNG draws, moved)
    extra = _extra_events()
    model.learn(extra)
    twin.learn(extra)
    _assert_same_recommendations(model, twin, users + ["fresh-user"])


def check_learn_does_not_mutate_input(factory: Factory) -> None:
    stream = synthetic_stream()
    fit_part = stream.iloc[:120].copy()
    learn_part = stream.iloc[120:].copy()
    fit_copy, learn_copy = fit_part.copy(deep=True), learn_part.copy(deep=True)
    model = factory().fit(fit_part)
    model.learn(learn_part)
    pd.testing.assert_frame_equal(fit_part, fit_copy)
    pd.testing.assert_frame_equal(learn_part, learn_copy)


def check_clone_is_untrained_twin(factory: Factory) -> None:
    model = _trained(factory)
    twin = model.clone()
    assert type(twin) is type(model)
    assert twin.get_params() == model.get_params() == factory().get_params()
    assert twin.n_events == 0 and len(twin.known_items) == 0 and len(twin.known_users) == 0
    assert model.n_events > 0, "cloning must not reset the original"
    retrained = _trained(lambda: twin)
    _assert_same_recommendations(model, retrained, list(model.known_users.tolist()))


def check_new_ids_in_learn(factory: Factory) -> None:
    model = _trained(factory)
    n_users, n_items = len(model.known_users), len(model.known_items)
    model.learn(_extra_events())
    assert len(model.known_users) == n_users + 1
    assert len(model.known_items) == n_items + 2
    assert {5000, 5001} <= set(model.known_items.tolist())
    rec = model.recommend("fresh-user", k=n_items + 2, exclude_seen=False)
    assert rec.cold is False
    assert {5000, 5001} <= set(rec.items.tolist())
    scores = model.score(["fresh-user", "u1", UNKNOWN_USER], [5000, 5001, 100])
    assert np.all(np.isfinite(scores))
    assert _seen(model, "fresh-user") == {100, 5000}


CHECKS: tuple[Callable[[Factory], None], ...] = (
    check_fit_and_learn_return_self,
    check_recommend_contract,
    check_scalar_and_batch_recommend_agree,
    check_score_shapes_agree,
    check_exclude_seen,
    check_k_larger_than_catalogue,
    check_unknown_user_gets_popularity,
    check_unknown_item_in_score_raises,
    check_bad_k_rejected,
    check_save_load_round_trip,
    check_load_as_other_class_fails,
    check_same_seed_same_outputs,
    check_empty_learn_is_noop,
    check_learn_does_not_mutate_input,
    check_clone_is_untrained_twin,
    check_new_ids_in_learn,
)


def yield_checks(factory: Factory) -> list[Callable[[], None]]:
    """Every check bound to ``factory`` (for ad-hoc use outside pytest parametrisation)."""
    return [lambda check=check: check(factory) for check in CHECKS]
