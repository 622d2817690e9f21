"""The test-then-train protocol: exclusions, leakage, cold events, sampling, results."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import nmrn.evaluation.protocol as protocol_module
from nmrn.data.events import EventBatch, as_events
from nmrn.errors import ConfigError, DataError
from nmrn.evaluation.protocol import (
    METRICS,
    NEW_USER_EVENTS,
    SAMPLED_HITS,
    evaluate,
    iter_evaluate,
    sample_negatives,
)
from nmrn.training.contract import Recommender


# -- models used by the tests ------------------------------------------------------------------
class Popularity(Recommender):
    """Score = number of events of the item learned so far (ties between equally popular)."""

    def _fit(self, users, items, timestamps, weights):
        pass

    def _learn(self, users, items, timestamps, weights):
        pass

    def _score_all(self, users):
        return np.broadcast_to(self.item_counts, (len(users), len(self.item_counts)))

    def _state(self):
        return {}, {}

    def _load_state(self, arrays, meta):
        pass


class NoisyPopularity(Popularity):
    """Popularity plus a per-(user, item) offset in {0, 0.5, 1}: some ties, some not."""

    def _score_all(self, users):
        offset = (users[:, None] * 7 + np.arange(len(self.item_counts))[None, :] * 13) % 3
        return self.item_counts[None, :] + 0.5 * offset


class FixedScores:
    """Any object with the contract: the same fixed score per item for everyone."""

    def __init__(self, table):
        self.table = table

    def fit(self, events):
        pass

    def learn(self, events):
        pass

    def score(self, users, items):
        row = np.array([self.table[i] for i in items], dtype=float)
        return np.tile(row, (len(users), 1))


class Constant(FixedScores):
    def __init__(self):
        super().__init__({})

    def score(self, users, items):
        return np.zeros((len(users), len(items)))


class Spy:
    """Records every call; timestamps are the events' positions in the log."""

    def __init__(self):
        self.calls = []
        self.learned = []

    def fit(self, events):
        self.calls.append(("fit", events.timestamps.astype(int).tolist()))
        self.learned += events.timestamps.astype(int).tolist()

    def learn(self, events):
        self.calls.append(("learn", events.timestamps.astype(int).tolist()))
        self.learned += events.timestamps.astype(int).tolist()

    def score(self, users, items):
        self.calls.append(("score", list(users), list(items), len(self.learned)))
        return np.zeros((len(users), len(items)))


def random_log(seed: int, n: int = 160, n_users: int = 9, n_items: int = 14) -> EventBatch:
    """A log with string users and int items; timestamps are the positions."""
    rng = np.random.default_rng(seed)
    # Later positions may draw from a larger id range, so users and items keep arriving.
    reach = np.linspace(0.35, 1.0, n)
    users = (rng.random(n) * reach * n_users).astype(int)
    items = (rng.random(n) * reach * n_items).astype(int)
    return as_events(
        {"user": [f"u{u}" for u in users], "item": items, "timestamp": np.arange(n, dtype=float)}
    )


# -- a plain, per-event reference implementation of DESIGN §3 ----------------------------------
def _parts(n, n_base, protocol, n_blocks, chunk_size):
    if protocol == "blocks":
        return [(int(b[0]), int(b[-1]) + 1) for b in np.array_split(np.arange(n_base, n), n_blocks)]
    return [(s, min(s + chunk_size, n)) for s in range(n_base, n, chunk_size)]


def _avg(g, t, f):
    return sum(f(r) for r in range(g + 1, g + t + 2)) / (t + 1)


def reference(model, log, *, protocol, base_fraction, n_blocks=5, chunk_size=10, n_sampled=5):
    events = list(zip(log.users.tolist(), log.items.tolist(), strict=True))
    n = len(events)
    n_base = math.floor(base_fraction * n)
    model.fit(log[:n_base])
    parts = _parts(n, n_base, protocol, n_blocks, chunk_size)
    per_part, per_event, new_user = [], [], []
    for start, stop in parts:
        known_users = {u for u, _ in events[:start]}
        known_items = list(dict.fromkeys(i for _, i in events[:start]))
        rows = []
        for p in range(start, stop):
            u, v = events[p]
            if u not in known_users or v not in known_items:
                continue
            scores = model.score([u], np.array(known_items))[0]
            consumed = {i for uu, i in events[:p] if uu == u} - {v}
            cand = [j for j, it in enumerate(known_items) if it not in consumed]
            target = known_items.index(v)
            s_v = scores[target]
            g = sum(scores[j] > s_v for j in cand)
            t = sum(scores[j] == s_v for j in cand) - 1
            eligible = np.zeros((1, len(known_items)), dtype=bool)
            eligible[0, [j for j in cand if j != target]] = True
            drawn = [j for j in sample_negatives(0, [p], eligible, n_sampled)[0] if j >= 0]
            sg = sum(scores[j] > s_v for j in drawn)
            st = sum(scores[j] == s_v for j in drawn)
            rows.append(
                [_avg(g, t, lambda r, k=k: float(r <= k)) for k in (1, 5, 10, 20)]
                + [
                    _avg(g, t, lambda r: 1 / math.log2(r + 1) if r <= 10 else 0.0),
                    _avg(g, t, lambda r: 1 / r),
                    _avg(sg, st, lambda r: float(r <= 10)),
                ]
            )
            if sum(uu == u for uu, _ in events[:p]) < NEW_USER_EVENTS:
                new_user.append(rows[-1])
        model.learn(log[start:stop])
        per_part.append(rows)
        per_event += rows
    if protocol == "blocks":
        headline = np.mean([np.mean(rows, axis=0) for rows in per_part if rows], axis=0)
    else:
        headline = np.mean(per_event, axis=0)
    reference.new_user = (  # type: ignore[attr-defined]
        len(new_user), dict(zip(METRICS, np.mean(new_user, axis=0).tolist(), strict=True))
    )
    return dict(zip(METRICS, headline.tolist(), strict=True)), len(per_event)


@pytest.mark.parametrize("protocol", ["blocks", "chunks"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_per_event_reference(protocol, seed):
    log = random_log(seed)
    expected, n_tested = reference(
        NoisyPopularity(), log, protocol=protocol, base_fraction=0.4, n_blocks=4, chunk_size=13
    )
    result = evaluate(
        NoisyPopularity(),
        log,
        protocol=protocol,
        base_fraction=0.4,
        n_blocks=4,
        chunk_size=13,
        n_sampled=5,
        batch_size=7,
    )
    assert result.n_tested == n_tested > 20
    assert result.n_tested + result.n_skipped + result.n_base == len(log)
    for name in METRICS:
        assert result.metrics[name] == pytest.approx(expected[name], abs=1e-12), name
    # the events of users with fewer than NEW_USER_EVENTS earlier events, counted by hand
    n_new, new_metrics = reference.new_user
    assert result.n_tested_new == n_new and 0 < n_new < n_tested
    for name in METRICS:
        assert result.new_user_metrics[name] == pytest.approx(new_metrics[name], abs=1e-12)


# -- exclusions ----------------------------------------------------------------------------------
# Base: u1 consumed a; u2 consumed b, c, d, e. One test block of five events:
#   5 (u1, c)  excludes {a}          -- b, consumed later by u1, stays a candidate
#   6 (u1, b)  excludes {a, c}       -- c from earlier in the same block
#   7 (u1, c)  excludes {a, b}       -- c again: the target is never excluded
#   8 (u2, b)  excludes {c, d, e}
#   9 (u1, d)  excludes {a, b, c}
EXCLUSION_LOG = as_events(
    [
        ("u1", "a", 0), ("u2", "b", 1), ("u2", "c", 2), ("u2", "d", 3), ("u2", "e", 4),
        ("u1", "c", 5), ("u1", "b", 6), ("u1", "c", 7), ("u2", "b", 8), ("u1", "d", 9),
    ]
)  # fmt: skip


def test_exclusions_constant_scorer_hits_are_one_over_candidates():
    result = evaluate(Constant(), EXCLUSION_LOG, base_fraction=0.5, n_blocks=1)
    assert result.n_tested == 5
    candidates = [4, 3, 3, 2, 2]  # 5 known items minus the exclusions listed above
    assert result.metrics["Hits@1"] == pytest.approx(np.mean([1 / m for m in candidates]))
    # every candidate is in the top 5, so Hits@5 is exactly 1
    assert result.metrics["Hits@5"] == 1.0


def test_exclusions_fixed_scores_give_hand_worked_ranks():
    model = FixedScores({"a": 5, "b": 4, "c": 3, "d": 2, "e": 1})
    result = evaluate(model, EXCLUSION_LOG, base_fraction=0.5, n_blocks=1)
    ranks = [2, 1, 1, 2, 1]  # e.g. event 8: u2's b among {a, b} ranks behind a
    assert result.metrics["MRR"] == pytest.approx(np.mean([1 / r for r in ranks]))
    assert result.metrics["Hits@1"] == pytest.approx(3 / 5)


# -- leakage --------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["blocks", "chunks"])
def test_spy_every_event_is_scored_before_it_is_learned(protocol):
    log = random_log(3)
    users, items = log.users.tolist(), log.items.tolist()
    n, n_base = len(log), math.floor(0.5 * len(log))
    spy = Spy()
    options = {"base_fraction": 0.5, "n_blocks": 3, "chunk_size": 17, "batch_size": 4}
    evaluate(spy, log, protocol=protocol, **options)
    parts = _parts(n, n_base, protocol, 3, 17)

    # fit once on the history, then every part learned exactly once, in order
    assert spy.calls[0] == ("fit", list(range(n_base)))
    learns = [c[1] for c in spy.calls if c[0] == "learn"]
    assert learns == [list(range(s, e)) for s, e in parts]

    starts = {s for s, _ in parts}
    for c, call in enumerate(spy.calls):
        if call[0] != "score":
            continue
        _, called_users, candidates, n_learned = call
        assert n_learned in starts  # the state is the one at the start of a part
        assert len(set(called_users)) <= 4  # batch_size
        assert candidates == list(dict.fromkeys(items[:n_learned]))  # nothing from the future
        # the next learn after this score call is the part being scored: nothing of the part
        # was learned before it was scored
        next_learn = next(x for x in spy.calls[c + 1 :] if x[0] == "learn")
        assert next_learn[1][0] == n_learned

    # every warm test event was scored (its user, its item among the candidates) at the start
    # of its own part
    scored = {}
    for call in spy.calls:
        if call[0] == "score":
            for u in call[1]:
                scored.setdefault((u, call[3]), set()).update(call[2])
    n_warm = 0
    for start, stop in parts:
        for p in range(start, stop):
            if users[p] in users[:start] and items[p] in items[:start]:
                n_warm += 1
                assert items[p] in scored[(users[p], start)]
    assert n_warm > 10


def test_segments_are_yielded_as_soon_as_their_block_is_done():
    spy = Spy()
    run = iter_evaluate(spy, random_log(4), base_fraction=0.5, n_blocks=4)
    assert run.result is None
    seen = []
    for segment in run:
        assert len(spy.learned) == segment.stop  # yielded right after the block was learned
        assert run.result is None
        seen.append(segment.index)
    assert seen == [0, 1, 2, 3]
    assert run.result is not None and [s.index for s in run.result.segments] == seen


# -- cold events ----------------------------------------------------------------------------------
COLD_LOG = as_events(
    [
        ("u1", "a", 0), ("u2", "b", 1),
        ("u3", "a", 2), ("u1", "c", 3), ("u1", "b", 4),  # block 1: new user, new item, warm
        ("u3", "b", 5), ("u1", "c", 6), ("u4", "a", 7),  # block 2: u3 and c now known; new u4
    ]
)  # fmt: skip


def test_cold_events_are_skipped_and_counted_per_block():
    result = evaluate(Constant(), COLD_LOG, base_fraction=0.25, n_blocks=2)
    assert result.n_base == 2
    assert [(s.n_tested, s.n_skipped) for s in result.segments] == [(1, 2), (2, 1)]
    assert (result.n_tested, result.n_skipped) == (3, 3)


def test_cold_events_in_chunks_of_one_are_known_from_the_next_event_on():
    result = evaluate(Constant(), COLD_LOG, protocol="chunks", base_fraction=0.25, chunk_size=1)
    # (u3, a) and (u1, c) at 2 and 3 are cold; u3 and c are known by 5 and 6; u4 is cold
    assert (result.n_tested, result.n_skipped) == (3, 3)
    # fifths of six test events: [2, 4), [4, 5), [5, 6), [6, 7), [7, 8)
    assert [(s.start, s.stop) for s in result.segments] == [(2, 4), (4, 5), (5, 6), (6, 7), (7, 8)]
    assert [s.n_skipped for s in result.segments] == [2, 0, 0, 0, 1]
    assert [s.n_tested for s in result.segments] == [0, 1, 1, 1, 0]


def test_nothing_tested_gives_nan_metrics():
    log = as_events([("u1", "a", 0), ("u2", "b", 1), ("u3", "c", 2), ("u4", "d", 3)])
    result = evaluate(Constant(), log, base_fraction=0.5, n_blocks=2)
    assert result.n_tested == 0 and result.n_skipped == 2
    assert all(math.isnan(v) for v in result.metrics.values())


# -- sampled candidates ---------------------------------------------------------------------------
def _recording(store):
    real = sample_negatives

    def wrapped(seed, positions, eligible, n_sampled):
        cols = real(seed, positions, eligible, n_sampled)
        for p, row, ok in zip(positions.tolist(), cols.tolist(), eligible, strict=True):
            store[p] = (row, np.flatnonzero(ok).tolist())
        return cols

    return wrapped


def test_sampled_candidates_are_identical_across_models_and_batch_sizes(monkeypatch):
    log = random_log(5)
    draws = []
    for model, batch_size, seed in [
        (Popularity(), 1024, 0),
        (NoisyPopularity(), 3, 0),
        (Constant(), 64, 1),
    ]:
        store = {}
        monkeypatch.setattr(protocol_module, "sample_negatives", _recording(store))
        result = evaluate(
            model, log, protocol="chunks", base_fraction=0.3, chunk_size=11, n_sampled=4,
            batch_size=batch_size, seed=seed,
        )  # fmt: skip
        assert len(store) == result.n_tested
        draws.append(store)
    first, second, other_seed = draws
    assert first == second
    assert {p: v[0] for p, v in first.items()} != {p: v[0] for p, v in other_seed.items()}
    # each draw is distinct, eligible, and as large as possible
    for row, eligible in first.values():
        drawn = [c for c in row if c >= 0]
        assert len(set(drawn)) == len(drawn) == min(4, len(eligible))
        assert set(drawn) <= set(eligible)


def test_sample_negatives_is_uniform_without_replacement():
    eligible = np.ones((20_000, 10), dtype=bool)
    eligible[:, 7] = False
    cols = sample_negatives(3, np.arange(20_000), eligible, 3)
    assert cols.shape == (20_000, 3) and (cols >= 0).all() and not (cols == 7).any()
    assert (np.sort(cols, axis=1)[:, 1:] != np.sort(cols, axis=1)[:, :-1]).all()
    freq = np.bincount(cols.ravel(), minlength=10)[np.arange(10) != 7] / 20_000
    np.testing.assert_allclose(freq, 3 / 9, atol=0.015)
    padded = sample_negatives(3, [0], [[False, True, False]], 5)
    assert padded.tolist() == [[1, -1, -1]]


def test_sampled_hits_of_constant_scorer_is_chance():
    result = evaluate(Constant(), random_log(6), base_fraction=0.5, n_sampled=3)
    # target plus at most 3 drawn items: Hits@10 is 1 for every event
    assert result.metrics[SAMPLED_HITS] == 1.0
    assert result.metrics["Hits@1"] < 0.5


# -- headline, timing, progress --------------------------------------------------------------------
def test_headline_is_mean_of_block_means_or_of_events():
    log = random_log(7)
    blocks = evaluate(NoisyPopularity(), log, base_fraction=0.4, n_blocks=4)
    means = np.mean([[s.metrics[m] for m in METRICS] for s in blocks.segments], axis=0)
    np.testing.assert_allclose([blocks.metrics[m] for m in METRICS], means)
    assert len({s.n_tested for s in blocks.segments}) > 1  # so the two means differ

    chunks = evaluate(NoisyPopularity(), log, protocol="chunks", base_fraction=0.4, chunk_size=9)
    assert len(chunks.segments) == 5
    assert [s.start for s in chunks.segments][0] == chunks.n_base
    assert chunks.segments[-1].stop == len(log)
    weights = np.array([s.n_tested for s in chunks.segments])
    values = np.array([[s.metrics[m] for m in METRICS] for s in chunks.segments])
    weighted = (weights[:, None] * values).sum(axis=0) / weights.sum()
    np.testing.assert_allclose([chunks.metrics[m] for m in METRICS], weighted)


class SlowConstant(Constant):
    def fit(self, events):
        import time

        time.sleep(0.02)

    def learn(self, events):
        import time

        time.sleep(0.01)


def test_timing_and_progress():
    log = random_log(8, n=100)
    calls = []
    result = evaluate(
        SlowConstant(), log, name="slow", base_fraction=0.5, n_blocks=5,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    assert result.model == "slow"
    assert result.fit_seconds >= 0.02 and result.learn_seconds >= 0.05
    assert result.fit_events_per_s == pytest.approx(50 / result.fit_seconds)
    assert result.learn_events_per_s == pytest.approx(50 / result.learn_seconds)
    assert calls == [(0, 50), (10, 50), (20, 50), (30, 50), (40, 50), (50, 50)]
    assert result.params["n_blocks"] == 5 and result.params["seed"] == 0


def test_params_include_model_hyper_parameters_when_offered():
    result = evaluate(Popularity(seed=3), random_log(9), protocol="chunks", chunk_size=20)
    assert result.model == "Popularity"
    assert result.params["chunk_size"] == 20 and "n_blocks" not in result.params
    assert result.params["model_params"] == {"seed": 3}


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_fraction": 0.0}, "base_fraction"),
        ({"base_fraction": 1.0}, "base_fraction"),
        ({"base_fraction": True}, "base_fraction"),
        ({"n_blocks": 0}, "n_blocks must be >= 1"),
        ({"protocol": "chunks", "chunk_size": 0}, "chunk_size must be >= 1"),
        ({"n_sampled": 0}, "n_sampled"),
        ({"batch_size": 2.0}, "batch_size must be an int"),
        ({"protocol": "windows"}, "protocol must be one of"),
    ],
)
def test_bad_settings_raise_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        evaluate(Constant(), random_log(0), **options)


def test_bad_logs_raise_data_error():
    with pytest.raises(DataError, match="empty"):
        evaluate(Constant(), pd.DataFrame({"user": [], "item": [], "timestamp": []}))
    unsorted = as_events([("u", "a", 0), ("u", "b", 2), ("u", "c", 1), ("u", "d", 3)])
    with pytest.raises(DataError, match="not sorted by time.*row 2"):
        evaluate(Constant(), unsorted)
    with pytest.raises(DataError, match="both must be non-empty"):
        evaluate(Constant(), as_events([("u", "a", 0)]), base_fraction=0.5)
    with pytest.raises(DataError, match="n_blocks=5 is more than the 2 events"):
        evaluate(Constant(), as_events([("u", "a", t) for t in range(4)]), base_fraction=0.5)


def test_model_contract_is_checked():
    with pytest.raises(TypeError, match="no fit"):
        evaluate(object(), random_log(0))

    class WrongShape(Constant):
        def score(self, users, items):
            return np.zeros((len(users), len(items) + 1))

    with pytest.raises(ValueError, match="returned shape"):
        evaluate(WrongShape(), random_log(0))


# -- the reference figure -------------------------------------------------------------------------
def test_popularity_on_movielens_100k_reference_figure(ml100k_path):
    frame = pd.read_csv(ml100k_path, sep="\t")
    log = as_events(
        frame,
        columns={"user": "user_id:token", "item": "item_id:token", "timestamp": "timestamp:float"},
    ).sorted_by_time()
    result = evaluate(Popularity(), log, base_fraction=0.5, n_blocks=5)
    assert round(result.metrics["Hits@10"], 4) == 0.0642


def test_nan_scores_raise_a_model_fit_error_naming_the_model():
    from nmrn.errors import ModelFitError

    class Diverged(Constant):
        def score(self, users, items):
            return np.full((len(users), len(items)), np.nan)

    with pytest.raises(ModelFitError, match="returned NaN"):
        evaluate(Diverged(), random_log(0))
