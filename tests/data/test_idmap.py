from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.data.idmap import IdMap, as_id_array
from nmrn.errors import DataError, UnknownIdError

ids_strategy = st.lists(
    st.one_of(st.integers(-(2**62), 2**62), st.text(min_size=0, max_size=5)), max_size=60
)


@settings(deadline=None, max_examples=200)
@given(ids_strategy)
def test_round_trip_dense_and_first_appearance_order(ids):
    m = IdMap(what="item")
    idx = m.encode(np.array(ids, dtype=object), grow=True) if ids else m.encode([], grow=True)
    distinct = list(dict.fromkeys(ids))
    assert len(m) == len(distinct)
    # dense indices, numbered in order of first appearance
    assert [m.get(x) for x in distinct] == list(range(len(distinct)))
    assert m.decode(idx).tolist() == ids
    # encoding again without growing is stable
    assert m.encode(np.array(ids, dtype=object), missing=-1).tolist() == idx.tolist()


@settings(deadline=None, max_examples=100)
@given(ids_strategy, ids_strategy)
def test_growth_never_renumbers(first, second):
    m = IdMap()
    m.encode(np.array(first, dtype=object), grow=True)
    before = {x: m.get(x) for x in first}
    m.encode(np.array(second, dtype=object), grow=True)
    assert {x: m.get(x) for x in first} == before


@settings(deadline=None, max_examples=100)
@given(ids_strategy)
def test_serialisation_round_trip(ids):
    m = IdMap(what="user")
    m.encode(np.array(ids, dtype=object), grow=True)
    again = IdMap.from_list(m.to_list(), what="user")
    assert again == m
    assert again.ids.tolist() == m.ids.tolist()


def test_int_ids_decode_as_int64_and_str_ids_as_object():
    m = IdMap()
    m.encode(np.array([5, 3, 5]), grow=True)
    assert m.ids.dtype == np.int64 and m.ids.tolist() == [5, 3]
    m.encode(["x"], grow=True)
    assert m.ids.dtype == object and m.ids.tolist() == [5, 3, "x"]


def test_int_and_str_with_same_text_are_different_ids():
    m = IdMap()
    assert m.encode([1, "1"], grow=True).tolist() == [0, 1]


def test_unknown_id_raises_with_name_or_uses_missing():
    m = IdMap(["a"], what="user")
    with pytest.raises(UnknownIdError, match="unknown user 'b'"):
        m.encode(["a", "b"])
    assert m.encode(["b", "a"], missing=-1).tolist() == [-1, 0]
    assert len(m) == 1  # nothing was added


@pytest.mark.parametrize("bad", [[1.5], [True], [None], [3.0]])
def test_wrong_id_types_are_rejected(bad):
    m = IdMap(what="item")
    with pytest.raises(DataError, match="item id"):
        m.encode(np.array(bad, dtype=object), grow=True)
    assert len(m) == 0


def test_float_array_is_rejected_not_silently_matched():
    m = IdMap([3])
    with pytest.raises(DataError, match="dtype float64"):
        m.encode(np.array([3.0]))


def test_decode_out_of_range():
    m = IdMap(["a", "b"], what="item")
    with pytest.raises(IndexError, match="item index 2 out of range"):
        m.decode([0, 2])


def test_duplicate_initial_ids():
    with pytest.raises(DataError, match="duplicate"):
        IdMap(["a", "a"])


def test_contains():
    m = IdMap([1, "a"])
    assert 1 in m and np.int64(1) in m and "a" in m
    assert "1" not in m and True not in m and 2 not in m


def test_scales_to_a_million_ids():
    m = IdMap()
    ids = np.arange(1_000_000, dtype=np.int64) * 7
    idx = m.encode(ids, grow=True)
    assert idx[-1] == 999_999 and len(m) == 1_000_000
    assert np.array_equal(m.decode(idx[::1000]), ids[::1000])


@pytest.mark.parametrize(
    "bad", [[1, True], [1, 1.0], ["a", (1, 2)], [1, b"x"], [np.int64(1), np.bool_(True)]]
)
def test_mixed_arrays_are_checked_element_by_element(bad):
    # pandas infers "mixed-integer" for these; in a dict 1, True and 1.0 are one key
    m = IdMap(what="user")
    with pytest.raises(DataError, match="ids must be int or str"):
        m.encode(np.array(bad, dtype=object), grow=True)
    assert len(m) == 0


@settings(deadline=None, max_examples=200)
@given(st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=5), st.booleans(),
                 st.floats(allow_nan=False), st.none(), st.binary(max_size=3)))
def test_one_id_alone_is_read_as_in_a_list(x):
    # the scalar fast path (every one-user read) must agree with the general path
    def outcome(ids):
        try:
            arr = as_id_array(ids, "user")
        except DataError as err:
            return "error", str(err)
        return arr.dtype, arr.tolist()

    assert outcome(x) == outcome(np.array([x], dtype=object)) == outcome([x])
