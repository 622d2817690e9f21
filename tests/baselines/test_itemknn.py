"""Known answers for the streaming item-kNN, worked by hand on a toy stream."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conformance import synthetic_stream
from hypothesis import given, settings
from hypothesis import strategies as st

import nmrn.baselines.itemknn as itemknn
from nmrn.baselines import ItemKNN
from nmrn.errors import ConfigError

# Three users (plus D, who only adds to x's count). With history_len=2 the pairs are:
#   2. A y  <- x            c(x,y) += 1
#   4. B z  <- x            c(x,z) += 1
#   5. A z  <- y, x         c(y,z) += 1, c(x,z) += 1     (age 0, age 1)
#   7. C w  <- y            c(y,w) += 1
#   8. A w  <- z, y         c(z,w) += 1, c(y,w) += 1     (x is beyond history_len)
# so c(x,y)=1, c(x,z)=2, c(y,z)=1, c(y,w)=2, c(z,w)=1, c(x,w)=0; counts n = x:3, y:2, z:2, w:2.
TOY = [
    ("A", "x", 1),
    ("A", "y", 2),
    ("B", "x", 3),
    ("B", "z", 4),
    ("A", "z", 5),
    ("C", "y", 6),
    ("C", "w", 7),
    ("A", "w", 8),
    ("D", "x", 9),
]
ORDER = ["x", "y", "z", "w"]  # item indices, in order of first appearance
COOC = np.array(
    [
        [0, 1, 2, 0],
        [1, 0, 1, 2],
        [2, 1, 0, 1],
        [0, 2, 1, 0],
    ],
    dtype=np.float32,
)
TIE = itemknn.TIE_EPS


def _cooc(rec: ItemKNN) -> np.ndarray:
    assert rec.known_items.tolist() == ORDER
    return rec.cooccurrence().toarray()


@pytest.mark.parametrize("cuts", [[9], [1, 2, 3, 4, 5, 6, 7, 8, 9], [4, 9], [5, 6, 9], [2, 8, 9]])
@pytest.mark.parametrize("dense_max_items", [4096, 3])
def test_cooccurrence_known_answer_for_any_batching(cuts: list[int], dense_max_items: int) -> None:
    rec = ItemKNN(history_len=2, dense_max_items=dense_max_items)
    lo = 0
    for hi in cuts:
        rec.learn(TOY[lo:hi])
        lo = hi
    np.testing.assert_array_equal(_cooc(rec), COOC)
    assert rec.is_sparse == (dense_max_items == 3)


def test_cooc_decay_weights_pairs_by_age() -> None:
    rec = ItemKNN(history_len=2, cooc_decay=0.5).fit(TOY)
    expected = COOC.copy()
    # event 5: x is age 1 -> c(x,z) = 1 + 0.5; event 8: y is age 1 -> c(y,w) = 1 + 0.5
    expected[0, 2] = expected[2, 0] = 1.5
    expected[1, 3] = expected[3, 1] = 1.5
    np.testing.assert_array_equal(_cooc(rec), expected)


def test_recency_weighted_score_known_answer() -> None:
    rec = ItemKNN(history_len=2, alpha=0.5, recency_decay=0.5).fit(TOY)
    share = {"x": 3 / 10, "y": 2 / 10, "z": 2 / 10, "w": 2 / 10}  # n_j / (n_events + 1)
    # C's history: w (age 0, weight 1), y (age 1, weight 0.5); sim = c / sqrt(n_i n_j)
    expected_c = {
        "x": 0 + 0.5 * 1 / math.sqrt(2 * 3),
        "y": 2 / 2 + 0.5 * 0,
        "z": 1 / 2 + 0.5 * 1 / 2,
        "w": 0 + 0.5 * 2 / 2,
    }
    # B's history: z (age 0), x (age 1)
    expected_b = {
        "x": 2 / math.sqrt(6) + 0,
        "y": 1 / 2 + 0.5 * 1 / math.sqrt(6),
        "z": 0 + 0.5 * 2 / math.sqrt(6),
        "w": 1 / 2 + 0.5 * 0,
    }
    got = rec.score(["C", "B"], ORDER)
    for row, expected in enumerate((expected_c, expected_b)):
        want = [expected[j] + TIE * share[j] for j in ORDER]
        np.testing.assert_allclose(got[row], want, rtol=1e-6)
    assert rec.recommend("C", k=2).items.tolist() == ["z", "x"]
    assert rec.recommend("B", k=2).items.tolist() == ["y", "w"]


def test_alpha_one_is_conditional_probability() -> None:
    rec = ItemKNN(history_len=2, alpha=1.0, recency_decay=0.5).fit(TOY)
    # sim(i, j) = c_ij / n_i; C: w (age 0), y (age 1)
    want_x = 0 + 0.5 * 1 / 2
    want_z = 1 / 2 + 0.5 * 1 / 2
    got = rec.score(["C"], ["x", "z"])[0]
    np.testing.assert_allclose(got, [want_x + TIE * 0.3, want_z + TIE * 0.2], rtol=1e-6)


def test_unweighted_profile_sums_similarities() -> None:
    rec = ItemKNN(history_len=2, recency_decay=1.0).fit(TOY)
    # A's last two items: w, z -> s(A, y) = sim(w,y) + sim(z,y) = 2/2 + 1/2
    np.testing.assert_allclose(rec.score(["A"], ["y"])[0, 0], 1.5 + TIE * 0.2, rtol=1e-6)


def test_user_with_no_cooccurrence_falls_back_to_popularity_order() -> None:
    rec = ItemKNN().fit([("a", 1, 0), ("b", 2, 1), ("c", 2, 2), ("d", 3, 3)])
    # d's only item co-occurs with nothing: every score is 0 + the popularity tie-break
    assert rec.recommend("d", k=2).items.tolist() == [2, 1]


@pytest.mark.parametrize("min_merge", [1, 1 << 16])
def test_sparse_storage_matches_dense(monkeypatch: pytest.MonkeyPatch, min_merge: int) -> None:
    monkeypatch.setattr(itemknn, "_MIN_MERGE", min_merge)  # 1: merge pending counts often
    stream = synthetic_stream(n_users=15, n_items=40, n_events=600, seed=3)
    dense = ItemKNN(history_len=6, recency_decay=0.7)
    sparse = ItemKNN(history_len=6, recency_decay=0.7, dense_max_items=25)
    for rec in (dense, sparse):
        rec.fit(stream.iloc[:20])  # 20 items: still dense, then outgrows 25 while learning
        for lo in range(20, len(stream), 37):
            rec.learn(stream.iloc[lo : lo + 37])
    assert not dense.is_sparse and sparse.is_sparse
    np.testing.assert_array_equal(dense.cooccurrence().toarray(), sparse.cooccurrence().toarray())
    users = dense.known_users
    np.testing.assert_allclose(
        dense.score(users, dense.known_items), sparse.score(users, dense.known_items), rtol=1e-5
    )


def test_history_len_bounds_pairs_per_event() -> None:
    rec = ItemKNN(history_len=3).fit(
        pd.DataFrame({"user": [0] * 6, "item": [1, 2, 3, 4, 5, 6], "timestamp": range(6)})
    )
    cooc = rec.cooccurrence().toarray()
    # item 6 (index 5) pairs with 3, 4, 5 only
    assert cooc[5].tolist() == [0, 0, 1, 1, 1, 0]
    assert cooc.sum() == 2 * (0 + 1 + 2 + 3 + 3 + 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"history_len": 0},
        {"history_len": 2.0},
        {"alpha": 1.5},
        {"alpha": -0.1},
        {"recency_decay": 0.0},
        {"recency_decay": 1.1},
        {"cooc_decay": 0},
        {"dense_max_items": -1},
    ],
)
def test_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ItemKNN(**kwargs)


@pytest.mark.parametrize("dense_max_items", [4096, 5])
def test_repeated_items_in_a_profile_add_up(dense_max_items: int) -> None:
    # user u re-consumes x: tail (oldest first) x, y, x -> weights x: rho**2 + rho**0, y: rho
    log = [("v", "x", 0), ("v", "y", 1), ("v", "z", 2), ("w", "y", 3), ("w", "z", 4),
           ("u", "x", 5), ("u", "y", 6), ("u", "x", 7)]
    rho = 0.5
    rec = ItemKNN(history_len=3, recency_decay=rho, dense_max_items=dense_max_items).fit(log)
    c = rec.cooccurrence().toarray().astype(np.float64)
    ix = {item: j for j, item in enumerate(rec.known_items.tolist())}
    n = rec.item_counts
    x, y, z = ix["x"], ix["y"], ix["z"]
    want = (rho**2 + 1) * c[x, z] / n[x] + rho * c[y, z] / n[y] + TIE * n[z] / (len(log) + 1)
    np.testing.assert_allclose(rec.score(["u"], ["z"])[0, 0], want, rtol=1e-6)


@pytest.mark.parametrize("dense_max_items", [4096, 30])
def test_a_users_scores_do_not_depend_on_who_is_scored_alongside(dense_max_items: int) -> None:
    stream = synthetic_stream(n_users=12, n_items=40, n_events=500, seed=5)
    rec = ItemKNN(history_len=8, recency_decay=0.8, dense_max_items=dense_max_items).fit(stream)
    rec.learn(stream.iloc[::7].assign(timestamp=stream["timestamp"].max() + 1.0))  # re-consume
    users = rec.known_users
    together = rec.score(users, rec.known_items)
    for j, user in enumerate(users.tolist()):
        np.testing.assert_array_equal(rec.score([user], rec.known_items)[0], together[j])
        np.testing.assert_array_equal(rec.score(users[::-1], rec.known_items)[-1 - j],
                                      together[j])


@pytest.mark.parametrize("dense_max_items", [4096, 0])
def test_directed_counts_what_follows_by_hand(dense_max_items: int) -> None:
    # a: x then y; b: x then z; c: y then w. Directed counts: x->y, x->z, y->w (each 1).
    log = [("a", "x", 0), ("a", "y", 1), ("b", "x", 2), ("b", "z", 3), ("c", "y", 4),
           ("c", "w", 5), ("d", "y", 6)]
    rec = ItemKNN(directed=True, alpha=1.0, dense_max_items=dense_max_items).fit(log)
    counts = rec.cooccurrence().toarray()
    ix = {i: rec.items.get(i) for i in "xyzw"}
    expected = np.zeros((4, 4))
    for i, j in (("x", "y"), ("x", "z"), ("y", "w")):
        expected[ix[i], ix[j]] = 1.0
    np.testing.assert_array_equal(counts, expected)
    # d's last item is y: w followed y once in y's 3 events (P(w | y) = 1/3); x only precedes
    # y, so it scores 0 (undirected counts would give it 1/3 too)
    scores = rec.score(["d"], ["x", "y", "z", "w"])[0]
    share = rec.item_counts / (rec.n_events + 1)
    np.testing.assert_allclose(scores, [0, 0, 0, 1 / 3] + 1e-9 * share[[ix[i] for i in "xyzw"]],
                               rtol=1e-6)
    # the same counts read at another recency: only the profile's weights change
    twin = ItemKNN(directed=True, recency_decay=0.5, dense_max_items=dense_max_items).fit(log)
    np.testing.assert_allclose(rec.scores_with_decay(np.array([rec.users.get("a")]), 0.5),
                               twin._score_all(np.array([twin.users.get("a")])))


def _full_top_k(rec: ItemKNN, users: np.ndarray, k: int, exclude_seen: bool) -> tuple:
    """The reference: score every item, exclude, top_k (what recommend did before candidates)."""
    from nmrn.training.ranking import top_k

    u = rec.users.encode(users, missing=-1)
    scores = rec._scores_for(u)
    if exclude_seen:
        rows, cols = rec.history.seen_pairs(u)
        scores[rows, cols] = -np.inf
    return top_k(scores, k)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 80), exclude=st.booleans(),
       history_len=st.sampled_from([1, 5]),
       directed=st.booleans(), alpha=st.sampled_from([0.0, 0.5, 1.0]),
       min_merge=st.sampled_from([1, 1 << 16]))
def test_candidate_top_k_equals_scoring_every_item(seed: int, k: int, exclude: bool,
                                                   history_len: int, directed: bool,
                                                   alpha: float, min_merge: int) -> None:
    # sparse counts (the candidate path) with pending increments or merged ones; 300 items and
    # short histories, so that most items are no user's candidates and the popularity
    # tie-breaker ranks the tail of many a top-k
    itemknn._MIN_MERGE, saved = min_merge, itemknn._MIN_MERGE
    try:
        stream = synthetic_stream(n_users=40, n_items=300, n_events=1_500, seed=seed)
        rec = ItemKNN(history_len=history_len, recency_decay=0.8, alpha=alpha,
                      directed=directed, dense_max_items=16)
        rec.fit(stream.iloc[:700])
        rec.learn(stream.iloc[700:])
        assert rec.is_sparse
        users = rec.known_users
        u = rec.users.encode(users, missing=-1)
        got = rec._candidate_top_k(u, k, exclude)
        assert got is not None  # the path was taken (it is not a fallback in this test)
        want = _full_top_k(rec, users, k, exclude)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])  # bit for bit, ties included
        recs = rec.recommend(users, k=k, exclude_seen=exclude)  # and recommend goes through it
        np.testing.assert_array_equal(recs.items, rec.items.decode(want[0]))
    finally:
        itemknn._MIN_MERGE = saved


def test_candidate_top_k_falls_back_where_it_must() -> None:
    stream = synthetic_stream(n_users=10, n_items=60, n_events=400, seed=1)
    dense = ItemKNN(history_len=5).fit(stream)
    u = dense.users.encode(dense.known_users, missing=-1)
    assert dense._candidate_top_k(u, 5, True) is None  # dense counts: scored in full
    sparse = ItemKNN(history_len=5, dense_max_items=8).fit(stream)
    assert sparse._candidate_top_k(np.array([-1]), 5, True) is None  # unknown user
    n = len(sparse.items)
    # more items asked than a user has left unseen: the full path pads with -inf
    assert sparse._candidate_top_k(u[:1], n, True) is None
    recs = sparse.recommend(sparse.known_users[:1], k=n)
    assert (recs.scores == -np.inf).sum() > 0


def _growing_stream(seed: int, n_events: int) -> list[tuple[str, int, int]]:
    """Users and items that keep arriving (a new item about every fourth event; Zipf-like
    reuse of the earlier ones), so that many ``learn`` calls widen the counts."""
    rng = np.random.default_rng(seed)
    log = []
    for t in range(n_events):
        n_items = 3 + t // 4
        item = n_items - 1 if rng.random() < 0.3 else int(min(rng.zipf(1.3), n_items) - 1)
        log.append((f"u{int(rng.integers(0, 4 + t // 10))}", item, t))
    return log


def _reference_counts(log: list, history_len: int, directed: bool) -> dict:
    """The counts by their definition (module docstring), one event at a time, by item id."""
    counts: dict[tuple[int, int], float] = {}
    seen: dict[str, list[int]] = {}
    for user, item, _ in log:
        tail = seen.setdefault(user, [])
        for prev in tail[-history_len:]:
            if prev == item:
                continue
            pairs = [(prev, item)] if directed else [(prev, item), (item, prev)]
            for key in pairs:
                counts[key] = counts.get(key, 0.0) + 1.0
        tail.append(item)
    return counts


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 239), max_size=25),
       dense_max_items=st.sampled_from([0, 6, 25, 4096]),
       min_merge=st.sampled_from([1, 40, 1 << 16]),
       history_len=st.sampled_from([1, 3, 8]), directed=st.booleans(),
       alpha=st.sampled_from([0.5, 1.0]))
def test_any_split_into_learn_calls_gives_the_same_counts_and_scores(
        seed: int, cuts: list[int], dense_max_items: int, min_merge: int, history_len: int,
        directed: bool, alpha: float) -> None:
    # One stream, split at random points (growth of the catalogue in most calls, pending
    # counts merged early or late), against the same stream in one call: counts equal to the
    # definition's; with dense counts also the checkpointed state and scores bit for bit
    # those of the single call (sparse: to float32 precision, see the module docstring).
    log = _growing_stream(seed, 240)
    options = {"history_len": history_len, "recency_decay": 0.8, "alpha": alpha,
               "directed": directed, "dense_max_items": dense_max_items}
    itemknn._MIN_MERGE, saved = min_merge, itemknn._MIN_MERGE
    try:
        whole = ItemKNN(**options).fit(log)
        split = ItemKNN(**options)
        bounds = [0, *sorted(set(cuts)), len(log)]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            (split.fit if lo == 0 else split.learn)(log[lo:hi])
    finally:
        itemknn._MIN_MERGE = saved
    assert split.is_sparse == whole.is_sparse == (len(whole.items) > dense_max_items)
    ids = split.known_items.tolist()
    want = np.zeros((len(ids), len(ids)), dtype=np.float32)
    for (a, b), value in _reference_counts(log, history_len, directed).items():
        want[ids.index(a), ids.index(b)] = value
    np.testing.assert_array_equal(split.cooccurrence().toarray(), want)
    users = whole.known_users
    scores = split.score(users, whole.known_items)
    if not whole.is_sparse:  # dense counts: state and scores bit for bit the single call's
        got_state, want_state = split._state()[0], whole._state()[0]
        assert got_state.keys() == want_state.keys()
        for key in want_state:
            np.testing.assert_array_equal(got_state[key], want_state[key], err_msg=key)
        np.testing.assert_array_equal(scores, whole.score(users, whole.known_items))
    else:  # which counts are pending depends on the calls: float32 products, last bits
        np.testing.assert_allclose(scores, whole.score(users, whole.known_items), rtol=1e-6)
    # and they are the definition's scores (float32 products: to float32 precision)
    n = whole.item_counts
    rows = np.zeros((len(users), len(ids)))
    for r, user in enumerate(users.tolist()):
        tail = whole.history.items_of(whole.users.get(user))[-history_len:]
        for age, item in enumerate(tail[::-1]):
            rows[r] += 0.8**age * want[item].astype(np.float64) / n[item] ** alpha
    reference = rows * n ** (alpha - 1.0) + TIE * n / (len(log) + 1)
    np.testing.assert_allclose(scores, reference, rtol=2e-6, atol=1e-12)
    if not whole.is_sparse:
        top = split.recommend(users, k=5)
        np.testing.assert_array_equal(top.items, whole.recommend(users, k=5).items)


@pytest.mark.parametrize("min_merge", [1, 1 << 16])
def test_sparse_counts_with_pending_ones_survive_a_checkpoint_bit_for_bit(
        tmp_path, min_merge: int) -> None:
    # main and pending counts are saved apart: the loaded model computes the same float32
    # products (a saved sum of the two would move scores in the last bit), and it goes on
    # learning, growing and merging as the original does
    log = _growing_stream(3, 400)
    itemknn._MIN_MERGE, saved = min_merge, itemknn._MIN_MERGE
    try:
        rec = ItemKNN(history_len=8, recency_decay=0.8, dense_max_items=0).fit(log[:200])
        rec.learn(log[200:300])
        assert rec.is_sparse and (rec._pending.nnz > 0) == (min_merge > 1)
        rec.save(tmp_path / "knn")
        back = ItemKNN.load(tmp_path / "knn")
        users, items = rec.known_users, rec.known_items
        np.testing.assert_array_equal(back.score(users, items), rec.score(users, items))
        for model in (rec, back):
            model.learn(log[300:])
        users, items = rec.known_users, rec.known_items
        np.testing.assert_array_equal(back.score(users, items), rec.score(users, items))
        np.testing.assert_array_equal(back.cooccurrence().toarray(),
                                      rec.cooccurrence().toarray())
    finally:
        itemknn._MIN_MERGE = saved


@settings(max_examples=30, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=60),
       start=st.lists(st.integers(0, 3), min_size=49, max_size=49), directed=st.booleans())
def test_dense_counts_of_weight_one_are_added_pair_by_pair_as_grouped(
        pairs: list[tuple[int, int]], start: list[int], directed: bool) -> None:
    # cooc_decay 1 adds ones straight into the dense counts (no grouping of the pairs): the
    # very bits the grouped sum gives, repeated pairs, both directions and earlier counts included
    pairs = [(r, c) for r, c in pairs if r != c]
    rows = np.array([r for r, _ in pairs], dtype=np.int64)
    cols = np.array([c for _, c in pairs], dtype=np.int64)
    grouped, one_by_one = (ItemKNN(directed=directed) for _ in range(2))
    for rec in (grouped, one_by_one):
        rec._grow(1, 7)  # a capacity (16) wider than the 7 items
        rec._dense[:7, :7] = np.array(start, dtype=np.float32).reshape(7, 7)
    grouped._add_grouped(rows, cols, np.ones(len(rows)))
    one_by_one._add(rows, cols, np.ones(len(rows)))  # weights of one: added pair by pair
    np.testing.assert_array_equal(one_by_one._dense, grouped._dense)
