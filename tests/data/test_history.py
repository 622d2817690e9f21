from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.data.history import History

events_strategy = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 30)), max_size=120)


@settings(deadline=None, max_examples=200)
@given(events_strategy, st.integers(1, 10))
def test_matches_plain_lists_whatever_the_batching(events, n_batches):
    h = History()
    parts = np.array_split(np.arange(len(events)), n_batches)
    for part in parts:
        h.append([events[j][0] for j in part], [events[j][1] for j in part])
    expected: dict[int, list[int]] = {}
    for u, i in events:
        expected.setdefault(u, []).append(i)
    for u in range(14):
        assert h.items_of(u).tolist() == expected.get(u, [])
        assert h.length(u) == len(expected.get(u, []))
    assert len(h) == len(events)


@settings(deadline=None, max_examples=100)
@given(events_strategy)
def test_csr_round_trip(events):
    h = History()
    h.append([u for u, _ in events], [i for _, i in events])
    again = History.from_arrays(*h.to_arrays())
    assert again == h
    again.append([0], [99])  # the copy is independent and still appendable
    assert h.items_of(0).tolist() == [i for u, i in events if u == 0]


@settings(deadline=None, max_examples=150)
@given(st.lists(events_strategy, min_size=1, max_size=6), st.booleans())
def test_views_loads_and_moved_blocks_stay_right(batches, reload):
    # blocks move to the arena's end as they fill, and a loaded history starts compact: a
    # view taken earlier keeps what it showed, and every user keeps all their items, in order
    h = History()
    expected: dict[int, list[int]] = {}
    taken: list[tuple[np.ndarray, list[int]]] = []
    for batch in batches:
        if reload:
            h = History.from_arrays(*h.to_arrays())
        h.append([u for u, _ in batch], [i for _, i in batch])
        for u, i in batch:
            expected.setdefault(u, []).append(i)
        for u in range(14):
            taken.append((h.items_of(u), list(expected.get(u, []))))
    for view, then in taken:
        assert view.tolist() == then
    indptr, items = h.to_arrays()
    assert items.tolist() == [i for u in range(h.n_users) for i in expected.get(u, [])]
    assert h.n_users == (max(expected) + 1 if expected else 0)


def test_seen_pairs_masks_the_right_cells():
    h = History()
    h.append([0, 1, 0, 2], [3, 4, 5, 3])
    rows, cols = h.seen_pairs(np.array([2, -1, 0]))
    mask = np.zeros((3, 6), bool)
    mask[rows, cols] = True
    assert np.flatnonzero(mask[0]).tolist() == [3]
    assert not mask[1].any()  # unknown user
    assert np.flatnonzero(mask[2]).tolist() == [3, 5]


def test_views_are_read_only():
    h = History()
    h.append([0], [1])
    with pytest.raises(ValueError):
        h.items_of(0)[0] = 7


def test_bad_input():
    h = History()
    with pytest.raises(ValueError, match="non-negative"):
        h.append([-1], [0])
    with pytest.raises(ValueError, match="equal"):
        h.append([0, 1], [0])
    with pytest.raises(ValueError, match="inconsistent"):
        History.from_arrays(np.array([0, 3]), np.array([1, 2]))


def test_million_events_in_chunks():
    rng = np.random.default_rng(0)
    h = History()
    users = rng.integers(0, 50_000, 1_000_000)
    items = rng.integers(0, 5_000, 1_000_000)
    for s in range(0, len(users), 100_000):
        h.append(users[s : s + 100_000], items[s : s + 100_000])
    u = int(users[123])
    assert h.items_of(u).tolist() == items[users == u].tolist()
    assert len(h) == 1_000_000


@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 9)), min_size=0, max_size=40),
    st.integers(0, 40),
    st.integers(0, 6),
)
@settings(max_examples=150, deadline=None)
def test_contexts_do_not_depend_on_how_the_stream_is_cut(
    events: list[tuple[int, int]], cut: int, length: int
) -> None:
    users = np.array([u for u, _ in events], dtype=np.int64)
    items = np.array([i for _, i in events], dtype=np.int64)
    cut = min(cut, len(events))
    # the oracle: for each event, the user's earlier items, most recent first
    expected = np.full((len(events), length), -1, dtype=np.int64)
    for k, (u, _) in enumerate(events):
        before = [i for uu, i in events[:k] if uu == u][::-1][:length]
        expected[k, : len(before)] = before
    whole = History()
    np.testing.assert_array_equal(whole.contexts(users, items, length), expected)
    split = History()
    first = split.contexts(users[:cut], items[:cut], length)
    split.append(users[:cut], items[:cut])
    second = split.contexts(users[cut:], items[cut:], length)
    np.testing.assert_array_equal(np.concatenate([first, second]), expected)
    split.append(users[cut:], items[cut:])
    np.testing.assert_array_equal(
        split.recent(np.arange(6), length),
        np.array([([i for uu, i in events if uu == u][::-1][:length] + [-1] * length)[:length]
                  for u in range(6)], dtype=np.int64).reshape(6, length),
    )


def test_appending_is_amortised() -> None:
    # one event at a time: a block that doubles when full moves O(log n) times, so the arena
    # (live and abandoned blocks) stays within a few times the events
    h = History()
    for t in range(2_000):
        h.append([t % 3], [t])
    assert h._used <= 4 * len(h)
    assert h.items_of(1).tolist() == list(range(1, 2_000, 3))


@settings(deadline=None, max_examples=150)
@given(st.lists(events_strategy, max_size=5), events_strategy,
       st.sampled_from([(2, 1), (2, 2), (4, 3), (1024, 8)]), st.booleans())
def test_seen_pairs_is_a_set_of_pairs(batches, queries, shape, read_keys):
    # shape: (buckets of the empty table, keys per bucket). Tiny ones make full buckets,
    # overflow into the next bucket (wrapping around the end) and rehashing common;
    # (1024, 8) is the default. read_keys: the sorted keys are read after every batch (a
    # checkpoint each time), so that later reads bring them up to date with the pairs since
    from nmrn.data.history import SeenPairs

    class Seen(SeenPairs):
        MIN_BUCKETS, BUCKET = shape

    seen, reference = Seen(), set()
    for batch in batches:
        seen.add(np.array([u for u, _ in batch], np.int64),
                 np.array([i for _, i in batch], np.int64))
        reference |= set(batch)
        assert len(seen) == len(reference)
        if read_keys:
            assert seen.keys.tolist() == sorted((u << 32) | i for u, i in reference)
        assert seen.contains(np.array([u for u, _ in batch], np.int64),
                             np.array([i for _, i in batch], np.int64)).all()
    got = seen.contains(np.array([u for u, _ in queries], np.int64),
                        np.array([i for _, i in queries], np.int64))
    assert got.tolist() == [q in reference for q in queries]
    assert seen.keys.tolist() == sorted((u << 32) | i for u, i in reference)
    again = Seen(seen.keys)  # a checkpoint's round trip
    assert again.keys.tolist() == seen.keys.tolist() and len(again) == len(reference)
    assert again.contains(np.array([u for u, _ in queries], np.int64),
                          np.array([i for _, i in queries], np.int64)).tolist() == got.tolist()


def test_seen_pairs_at_scale_against_a_sorted_array() -> None:
    # many pairs, with large user and item indices and repeats: every pair added is found,
    # pairs never added are not, and the sorted keys are the set's, as a sorted array gives
    from nmrn.data.history import SeenPairs

    rng = np.random.default_rng(3)
    seen, added = SeenPairs(), []
    for _ in range(20):
        users = rng.integers(0, 2_000_000, 5_000)
        items = rng.integers(0, 100_000, 5_000)
        users[:500], items[:500] = users[500:1000], items[500:1000]  # repeats in a batch
        seen.add(users, items)
        added.append((users << 32) | items)
    reference = np.unique(np.concatenate(added))
    assert len(seen) == len(reference)
    assert np.array_equal(seen.keys, reference)
    probe_u, probe_i = rng.integers(0, 2_000_000, 50_000), rng.integers(0, 100_000, 50_000)
    expected = np.isin((probe_u << 32) | probe_i, reference)
    assert np.array_equal(seen.contains(probe_u, probe_i), expected)
    assert seen.contains(reference >> 32, reference & 0xFFFFFFFF).all()
