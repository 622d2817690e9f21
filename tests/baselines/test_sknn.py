"""STAN / V-SKNN: sessions cut from the log, scores worked by hand, exact streaming updates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conformance import synthetic_stream

import nmrn.baselines.sknn as sknn
from nmrn.baselines import STAN
from nmrn.errors import ConfigError

# session_gap 10. Sessions (ids in order of creation):
#   0  A: x y z      t(0) = 2
#   1  B: y w        t(1) = 4
#   2  A: v          t(2) = 100   (A's gap of 98 > 10 starts a new session)
#   3  C: x y v u    t(3) = 104
#   4  D: z x y      t(4) = 107   (D's current session, the one scored below)
TOY = [
    ("A", "x", 0), ("A", "y", 1), ("A", "z", 2),
    ("B", "y", 3), ("B", "w", 4),
    ("A", "v", 100),
    ("C", "x", 101), ("C", "y", 102), ("C", "v", 103), ("C", "u", 104),
    ("D", "z", 105), ("D", "x", 106), ("D", "y", 107),
]
ITEMS = ["x", "y", "z", "w", "v", "u"]
COUNTS = {"x": 3, "y": 4, "z": 2, "w": 1, "v": 2, "u": 1}
E = math.e
TIE = sknn.TIE_EPS


def _tie(item: str) -> float:
    return TIE * COUNTS[item] / (len(TOY) + 1)


def _check(rec: STAN, user: str, expected: dict[str, float]) -> None:
    got = rec.score([user], ITEMS)[0]
    want = [expected.get(item, 0.0) + _tie(item) for item in ITEMS]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_sessions_are_cut_by_gap() -> None:
    rec = STAN(session_gap=10).fit(TOY)
    assert rec.n_sessions == 5
    sessions = [rec.items.decode(rec.content(s)).tolist() for s in range(rec.n_sessions)]
    assert sessions == [["x", "y", "z"], ["y", "w"], ["v"], ["x", "y", "v", "u"], ["z", "x", "y"]]
    assert rec.session_of("A").tolist() == ["v"]
    assert rec.session_of("D").tolist() == ["z", "x", "y"]


def test_stan_known_answer() -> None:
    """All three factors, lambda_1 = lambda_3 = 1, lambda_2 = 100, k = 2 neighbours."""
    rec = STAN(
        session_gap=10, n_neighbours=2, lambda_position=1.0, lambda_time=100.0,
        lambda_neighbour=1.0,
    ).fit(TOY)
    # D's session z x y: w1 = e^-2, e^-1, 1. Candidates: the sessions holding z, x or y (not D's
    # own): 0, 1, 3. Cosine over sqrt(3 |n|), recency from t* = max(107, 104) = 107.
    sim0 = (E**-2 + E**-1 + 1) / math.sqrt(3 * 3) * math.exp(-(107 - 2) / 100)
    sim1 = 1 / math.sqrt(3 * 2) * math.exp(-(107 - 4) / 100)
    sim3 = (E**-1 + 1) / math.sqrt(3 * 4) * math.exp(-(107 - 104) / 100)
    assert sim3 > sim0 > sim1  # k = 2 keeps sessions 3 and 0
    # i* is y in both neighbours (the latest item of D's session); position weight e^-|p - p*|
    #   session 3 = x y v u (y at 1): x e^-1, y 1, v e^-1, u e^-2
    #   session 0 = x y z   (y at 1): x e^-1, y 1, z e^-1
    expected = {
        "x": sim3 / E + sim0 / E,
        "y": sim3 + sim0,
        "z": sim0 / E,
        "v": sim3 / E,
        "u": sim3 / E**2,
    }
    _check(rec, "D", expected)
    assert rec.recommend("D", k=3).items.tolist() == ["v", "u", "w"]


def test_v_sknn_known_answer() -> None:
    """Linear position weights, dot product, no time or in-neighbour weight, k = 2."""
    rec = STAN(
        session_gap=10, n_neighbours=2, position_weighting="linear", lambda_position=None,
        similarity="dot", lambda_time=None, lambda_neighbour=None,
    ).fit(TOY)
    # w1 = k / l: z 1/3, x 2/3, y 1. sim: session 0: 2, session 1: 1, session 3: 5/3
    expected = {"x": 2 + 5 / 3, "y": 2 + 5 / 3, "z": 2, "v": 5 / 3, "u": 5 / 3}
    _check(rec, "D", expected)
    # A's current session is v alone (w1 = 1); its one candidate, session 3, has sim 1
    _check(rec, "A", {"x": 1, "y": 1, "v": 1, "u": 1})
    assert rec.recommend("A", k=1).items.tolist() == ["u"]


def test_sample_size_keeps_the_most_recent_sessions() -> None:
    """sample_size = 1: each item offers its latest session other than D's; one survives."""
    rec = STAN(
        session_gap=10, sample_size=1, lambda_position=None, lambda_time=None,
        lambda_neighbour=None,
    ).fit(TOY)
    # per item (other than D's session 4): z -> 0, x -> 3, y -> 3; the most recent is 3
    sim3 = 2 / math.sqrt(3 * 4)
    _check(rec, "D", {"x": sim3, "y": sim3, "v": sim3, "u": sim3})
    assert rec._candidates(4, rec.content(4)).tolist() == [3]


def test_ties_between_neighbours_go_to_the_more_recent_session() -> None:
    # u's session a shares a with sessions of v (t=1) and w (t=3), equally similar; k = 1
    log = [("v", "a", 0), ("v", "b", 1), ("w", "a", 2), ("w", "c", 3), ("u", "a", 4)]
    rec = STAN(n_neighbours=1, lambda_position=None, lambda_time=None,
               lambda_neighbour=None).fit(log)
    assert rec.recommend("u", k=1).items.tolist() == ["c"]


def test_max_session_len_and_repeats() -> None:
    log = [("e", item, t) for t, item in enumerate("abacde")]
    rec = STAN(max_session_len=2).fit(log)
    # a, b, (a again: nothing), then c opens a new session, ...
    sessions = [rec.items.decode(rec.content(s)).tolist() for s in range(rec.n_sessions)]
    assert sessions == [["a", "b"], ["c", "d"], ["e"]]
    assert rec.session_of("e").tolist() == ["e"]


def test_user_with_no_neighbour_falls_back_to_popularity() -> None:
    rec = STAN().fit([("a", 1, 0), ("b", 2, 1), ("c", 2, 2), ("d", 3, 3)])
    assert rec.recommend("d", k=2).items.tolist() == [2, 1]


def _stream() -> pd.DataFrame:
    stream = synthetic_stream(n_users=10, n_items=40, n_events=400, seed=4)
    # bursts: a gap of 20 after every 13th event cuts sessions
    stream["timestamp"] = np.arange(len(stream)) + 20.0 * (np.arange(len(stream)) // 13)
    return stream


def _stan() -> STAN:
    return STAN(session_gap=15, max_session_len=7, n_neighbours=6, sample_size=3,
                lambda_position=2.0, lambda_time=40.0, lambda_neighbour=3.0)


@pytest.mark.parametrize("cuts", [[400], [1, 50, 51, 200, 400], [137, 138, 139, 400]])
def test_batched_equals_event_by_event(cuts: list[int]) -> None:
    stream = _stream()
    one = _stan().fit(stream.iloc[:1])
    for t in range(1, len(stream)):
        one.learn(stream.iloc[t : t + 1])
    other = _stan()
    lo = 0
    for j, hi in enumerate(cuts):
        (other.fit if j == 0 else other.learn)(stream.iloc[lo:hi])
        lo = hi
    a, meta_a = one._state()
    b, meta_b = other._state()
    assert meta_a == meta_b and sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert one.n_sessions > 30
    assert max(len(x) for x in one._item_sessions) <= 2 * (one.config.sample_size + 1)
    users = one.known_users
    np.testing.assert_array_equal(
        one.score(users, one.known_items), other.score(users, one.known_items)
    )


def test_a_users_scores_do_not_depend_on_who_is_scored_alongside() -> None:
    rec = _stan().fit(_stream())
    users = rec.known_users
    together = rec.score(users, rec.known_items)
    for j, user in enumerate(users.tolist()):
        np.testing.assert_array_equal(rec.score([user], rec.known_items)[0], together[j])


def test_candidates_are_bounded() -> None:
    rec = STAN(sample_size=5, max_session_len=7, session_gap=15).fit(_stream())
    for user in range(len(rec.known_users)):
        sid = int(rec._user_session[user])
        cand = rec._candidates(sid, rec.content(sid))
        assert len(cand) <= 5 and sid not in cand.tolist()
        assert np.all(np.diff(rec._sess_time[cand]) <= 0)  # most recent first


@pytest.mark.parametrize(
    "kwargs",
    [
        {"session_gap": -1},
        {"session_gap": float("inf")},
        {"max_session_len": 0},
        {"n_neighbours": 2.5},
        {"sample_size": 0},
        {"position_weighting": "log"},
        {"similarity": "jaccard"},
        {"lambda_position": 0},
        {"lambda_time": -3.0},
        {"lambda_neighbour": float("nan")},
        {"position_weighting": "linear"},  # lambda_position is left at its exp default
    ],
)
def test_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="STAN"):
        STAN(**kwargs)


def _old_candidates(rec: STAN, sid: int, current: np.ndarray) -> np.ndarray:
    """The candidate sessions as the first vectorised STAN found them (``np.unique`` of the
    sessions that added the current items): the reference for the marking kernel."""
    m = rec.config.sample_size
    out: set[int] = set()
    for i in current.tolist():
        added = list(rec._item_sessions[i][-(m + 1):])
        if sid in added:
            added.remove(sid)
        out.update(added[-m:])
    cand = np.array(sorted(out), dtype=np.int64)
    order = np.lexsort((-cand, -rec._sess_time[cand]))
    return cand[order[:m]]


def _old_score_user(rec: STAN, user: int) -> np.ndarray:
    """STAN's score of one user with the neighbours' items gathered by a Python loop over the
    neighbours (the code before the vectorised gather), candidates from :func:`_old_candidates`."""
    cfg = rec.config
    scores = np.zeros(len(rec.items))
    sid = int(rec._user_session[user])
    current = rec.content(sid)
    length = len(current)
    cand = _old_candidates(rec, sid, current)
    if length == 0 or len(cand) == 0:
        return scores
    w1 = rec._position_weights(length)
    rank = np.zeros(len(rec.items), dtype=np.int64)
    rank[current] = np.arange(1, length + 1)
    lens = rec._sess_len[cand]
    parts = zip(cand.tolist(), lens.tolist(), strict=True)
    flat = np.concatenate([rec._sess_items[n][:ln] for n, ln in parts])
    row = np.repeat(np.arange(len(cand)), lens)
    r = rank[flat]
    shared = r > 0
    overlap = np.bincount(row[shared], weights=w1[r[shared] - 1], minlength=len(cand))
    sim = overlap / np.sqrt(length * lens) if cfg.similarity == "cosine" else overlap
    times = rec._sess_time[cand]
    if cfg.lambda_time is not None:
        ref = max(float(rec._sess_time[sid]), float(times.max()))
        sim = sim * np.exp(-(ref - times) / cfg.lambda_time)
    top = np.argsort(-sim, kind="stable")[: cfg.n_neighbours]
    top = top[sim[top] > 0]
    if len(top) == 0:
        return scores
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pick = np.concatenate([np.arange(starts[j], starts[j] + lens[j]) for j in top.tolist()])
    local_row = np.repeat(np.arange(len(top)), lens[top])
    weight = sim[top][local_row]
    if cfg.lambda_neighbour is not None:
        pos = pick - starts[row[pick]]
        r_top = r[pick]
        r_star = np.zeros(len(top), dtype=np.int64)
        np.maximum.at(r_star, local_row, r_top)
        is_star = (r_top == r_star[local_row]) & (r_top > 0)
        p_star = np.zeros(len(top), dtype=np.int64)
        p_star[local_row[is_star]] = pos[is_star]
        weight = weight * np.exp(-np.abs(pos - p_star[local_row]) / cfg.lambda_neighbour)
    return np.bincount(flat[pick], weights=weight, minlength=len(rec.items))


@pytest.mark.parametrize("options", [
    {},  # _stan(): small samples, so the per-item lists are trimmed and full
    {"lambda_neighbour": None, "similarity": "cosine", "n_neighbours": 2},
    {"sample_size": 40, "max_session_len": 50, "session_gap": 1e9},  # long sessions, many lists
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_vectorised_kernels_equal_the_loops_bit_for_bit(options: dict, seed: int) -> None:
    base = _stan().config.to_dict()
    rec = STAN(**{**base, **options}).fit(synthetic_stream(n_users=15, n_items=40,
                                                           n_events=500, seed=seed))
    for user in range(len(rec.known_users)):
        sid = int(rec._user_session[user])
        np.testing.assert_array_equal(rec._candidates(sid, rec.content(sid)),
                                      _old_candidates(rec, sid, rec.content(sid)))
        np.testing.assert_array_equal(rec._score_user(user), _old_score_user(rec, user))
