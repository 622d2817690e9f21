"""Online BPR: a checkerboard world, table growth, negatives, divergence, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nmrn.baselines import BPR
from nmrn.errors import ConfigError, ModelFitError


def _checkerboard(n_users: int = 20, n_items: int = 20, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Even users consume even items, odd users odd items; one item per user is held out."""
    rng = np.random.default_rng(seed)
    rows, held_out = [], {}
    for u in range(n_users):
        liked = [i for i in range(n_items) if i % 2 == u % 2]
        held_out[u] = int(rng.choice(liked))
        rows += [(u, i, 0.0) for i in liked if i != held_out[u]]
    order = rng.permutation(len(rows))
    frame = pd.DataFrame([rows[j] for j in order], columns=["user", "item", "timestamp"])
    frame["timestamp"] = np.arange(len(frame), dtype=np.float64)
    return frame, held_out


@pytest.mark.parametrize("optimizer,lr", [("adagrad", 0.1), ("adam", 0.02)])
def test_learns_the_checkerboard(optimizer: str, lr: float) -> None:
    events, held_out = _checkerboard()
    rec = BPR(dim=8, epochs=60, batch_size=32, lr=lr, optimizer=optimizer, seed=1).fit(events)
    top1 = rec.recommend(list(held_out), k=1).items[:, 0]
    # the unseen items are the held-out one (right parity) and ten of the wrong parity
    right = np.mean([top1[u] == held_out[u] for u in held_out])
    assert right >= 0.8
    assert rec.last_loss < 0.5


def test_tables_grow_with_old_rows_intact() -> None:
    events, _ = _checkerboard(n_users=6, n_items=8)
    rec = BPR(dim=4, epochs=2, learn_passes=0, init_std=0.5, seed=0).fit(events)
    users, items, bias = rec.user_emb.clone(), rec.item_emb.clone(), rec.item_bias.clone()
    rec.learn([(100, 200, 1.0), (101, 3, 2.0), (100, 201, 3.0)])
    assert rec.user_emb.shape == (8, 4) and rec.item_emb.shape == (10, 4)
    assert rec.item_bias.shape == (10,)
    torch.testing.assert_close(rec.user_emb[:6], users, rtol=0, atol=0)
    torch.testing.assert_close(rec.item_emb[:8], items, rtol=0, atol=0)
    torch.testing.assert_close(rec.item_bias[:8], bias, rtol=0, atol=0)
    assert torch.all(rec.item_bias[8:] == 0) and torch.all(rec.item_emb[8:] != 0)
    for state in (rec._m, rec._v):
        assert state["user"].shape == (8, 4) and state["item"].shape == (10, 4)
        assert state["bias"].shape == (10,)
        assert torch.all(state["item"][8:] == 0)


def test_learning_leaves_untouched_users_alone() -> None:
    events, _ = _checkerboard(n_users=6, n_items=8)
    rec = BPR(dim=4, epochs=2, seed=0).fit(events)
    before = rec.user_emb.clone()
    rec.learn([(0, 2, 1.0), (7, 3, 2.0)])  # user 0 and a new user
    row = rec.users.get(0)
    others = [j for j in range(6) if j != row]
    assert not torch.equal(rec.user_emb[row], before[row])
    torch.testing.assert_close(rec.user_emb[others], before[others], rtol=0, atol=0)


def test_negatives_avoid_seen_items() -> None:
    # user 0 has seen items 0..8 of 10; with enough redraws every negative is item 9
    events = [(0, i, float(i)) for i in range(9)] + [(1, 9, 9.0)]
    rec = BPR(dim=4, epochs=1, n_resample=200, seed=0).fit(events)
    neg = rec._negatives(torch.zeros(64, dtype=torch.int64))
    assert set(neg.tolist()) == {9}
    # without redraws, uniform over all ten items
    rec.config = rec.config.replace(n_resample=0)
    neg = rec._negatives(torch.zeros(4000, dtype=torch.int64))
    assert set(neg.tolist()) == set(range(10))


def test_nan_loss_raises_model_fit_error() -> None:
    events, _ = _checkerboard(n_users=4, n_items=6)
    rec = BPR(dim=4, epochs=1, seed=0).fit(events)
    rec.item_emb[:] = float("nan")
    with pytest.raises(ModelFitError, match="loss is nan"):
        rec.learn([(0, 0, 1.0)])


def test_private_generator_leaves_global_rng_alone() -> None:
    events, _ = _checkerboard(n_users=4, n_items=6)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = BPR(dim=4, epochs=2, seed=5).fit(events)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # must not matter
    b = BPR(dim=4, epochs=2, seed=5).fit(events)
    torch.testing.assert_close(a.item_emb, b.item_emb, rtol=0, atol=0)
    c = BPR(dim=4, epochs=2, seed=6).fit(events)
    assert not torch.equal(a.item_emb, c.item_emb)


def test_learn_lr_and_passes_are_used() -> None:
    events, _ = _checkerboard(n_users=4, n_items=6)
    frozen = BPR(dim=4, epochs=1, learn_passes=0, seed=0).fit(events)
    before = frozen.item_emb.clone()
    frozen.learn([(0, 0, 1.0)])
    torch.testing.assert_close(frozen.item_emb, before, rtol=0, atol=0)
    slow = BPR(dim=4, epochs=1, learn_lr=1e-6, seed=0).fit(events)
    fast = BPR(dim=4, epochs=1, learn_lr=0.5, seed=0).fit(events)
    row = slow.users.get(0)
    start = slow.user_emb[row].clone()
    slow.learn([(0, 0, 1.0)])
    fast.learn([(0, 0, 1.0)])
    slow_step = (slow.user_emb[row] - start).abs().max()
    fast_step = (fast.user_emb[row] - start).abs().max()
    assert 0 < slow_step < 1e-4 < fast_step


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"reg": -1.0},
        {"epochs": -1},
        {"batch_size": 0},
        {"learn_lr": -0.1},
        {"optimizer": "sgd"},
        {"n_resample": 1.5},
    ],
)
def test_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BPR(**kwargs)


class _SetOfPairs:
    """The seen pairs as a Python set: what the hash table in ``SeenPairs`` must behave as."""

    def __init__(self) -> None:
        self.pairs: set[int] = set()

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        self.pairs.update(((users.astype(np.int64) << 32) | items).tolist())

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = ((users.astype(np.int64) << 32) | items.astype(np.int64)).tolist()
        return np.array([k in self.pairs for k in keys], dtype=bool)

    @property
    def keys(self) -> np.ndarray:
        return np.array(sorted(self.pairs), dtype=np.int64)


def test_seen_pairs_table_trains_as_a_plain_set_does() -> None:
    # BPR's negatives are redrawn when the user has seen them: the table must answer as a set
    # of pairs does, so that a stream gives bit-identical tables, optimiser state, generator
    # state and saved pairs. Few items and users with many events each make redraws common;
    # a small table makes full buckets, overflow and rehashing happen along the stream
    from nmrn.data.history import SeenPairs

    class Small(SeenPairs):
        MIN_BUCKETS, BUCKET = 2, 2

    rng = np.random.default_rng(5)
    events = [(int(u), int(i), t) for t, (u, i) in
              enumerate(zip(rng.integers(0, 60, 3_000), rng.integers(0, 40, 3_000), strict=True))]
    models = [BPR(dim=8, epochs=2, batch_size=64, learn_passes=2, seed=3) for _ in range(2)]
    models[0]._seen = Small()
    models[1]._seen = _SetOfPairs()  # type: ignore[assignment]
    for m in models:
        m.fit(events[:500])
        for lo in range(500, len(events), 250):
            m.learn(events[lo : lo + 250])
    (a, meta_a), (b, meta_b) = models[0]._state(), models[1]._state()
    assert a.keys() == b.keys() and meta_a == meta_b
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert np.array_equal(models[0].score([0, 1, 2], list(range(40))),
                          models[1].score([0, 1, 2], list(range(40))))
    # the redraws did fire: most of the 40 items are seen by each user by the end
    assert len(models[0]._seen) > 0.6 * 60 * 40
