from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.data.events import EventBatch, as_events
from nmrn.errors import DataError


def test_frame_with_mapping():
    df = pd.DataFrame({"u": ["a", "b"], "i": [1, 2], "t": [5, 4], "r": [3.0, 4.0]})
    b = as_events(df, columns={"user": "u", "item": "i", "timestamp": "t", "weight": "r"})
    assert b.users.tolist() == ["a", "b"] and b.items.tolist() == [1, 2]
    assert b.timestamps.dtype == np.float64 and b.weights.tolist() == [3.0, 4.0]
    assert b.sorted_by_time().users.tolist() == ["b", "a"]


def test_stable_sort_keeps_ties_in_order():
    b = as_events([(1, 1, 2.0), (2, 2, 1.0), (3, 3, 2.0), (4, 4, 1.0)])
    assert b.sorted_by_time().users.tolist() == [2, 4, 1, 3]


def test_missing_column_names_what_was_found():
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['timestamp'\]; found \['user', 'item'\]"
    ):
        as_events(pd.DataFrame({"user": [1], "item": [2]}))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"user": [1, 2], "item": [1, 2], "timestamp": [1, "x"]}, "row 1: timestamp 'x'"),
        ({"user": [1, 2], "item": [1, 2], "timestamp": [1, None]}, "row 1: timestamp"),
        ({"user": [1, None], "item": [1, 2], "timestamp": [1, 2]}, "row 1: user id is missing"),
        ({"user": [1, 2], "item": [1.5, 2], "timestamp": [1, 2]}, "row 0: item id 1.5"),
        (
            {"user": [1, 2], "item": [1, 2], "timestamp": [1, 2], "weight": [1, "a"]},
            "row 1: weight",
        ),
    ],
)
def test_bad_values_name_the_row(frame, message):
    with pytest.raises(DataError, match=message):
        as_events(pd.DataFrame(frame))


def test_wrong_type_and_bad_tuples():
    with pytest.raises(TypeError, match="got int"):
        as_events(5)
    with pytest.raises(DataError, match="tuples"):
        as_events([(1, 2)])
    with pytest.raises(DataError, match="unknown column role"):
        as_events(pd.DataFrame({"user": [1]}), columns={"usr": "user"})


def test_concat_and_slicing():
    a = as_events([(1, 1, 1.0)])
    b = as_events([("x", 2, 2.0, 0.5)])
    c = EventBatch.concat([a, b])
    assert c.users.tolist() == [1, "x"] and c.weights.tolist() == [1.0, 0.5]
    assert len(c[1:]) == 1 and c[np.array([True, False])].users.tolist() == [1]
    assert len(EventBatch.concat([])) == 0


@pytest.mark.parametrize("bad", [float("inf"), 1e20, -1e19])
def test_float_ids_outside_int64_are_rejected_not_wrapped(bad):
    with pytest.raises(DataError, match="row 1: item id"):
        as_events(pd.DataFrame({"user": [1, 2], "item": [5.0, bad], "timestamp": [1, 2]}))


# -- the numeric fast path (issue 14: as_events on a small DataFrame was ~0.5 ms a call) ------
@settings(deadline=None, max_examples=100)
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.integers(0, 2**40),
            st.floats(-1e15, 1e15),
            st.floats(0, 5),
        ),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["int64", "uint32", "int16"]),
    st.sampled_from(["float64", "float32", "int64"]),
)
def test_numeric_columns_give_what_the_general_path_gives(rows, id_dtype, ts_dtype):
    """A frame of plain numpy columns skips pandas' conversions; the arrays must be those the
    general path (object columns: pandas' inference and to_numeric) makes of the same values."""
    users, items, ts, w = (list(c) for c in zip(*rows, strict=True))
    items = np.asarray(items).astype(id_dtype)
    ts = np.asarray(ts).astype(ts_dtype)
    fast = as_events(pd.DataFrame({"user": users, "item": items, "timestamp": ts, "weight": w}))
    general = as_events(
        pd.DataFrame({"user": users, "item": items, "timestamp": ts, "weight": w}, dtype=object)
    )
    for name in ("users", "items", "timestamps", "weights"):
        a, b = getattr(fast, name), getattr(general, name)
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (  # numeric columns, bad values: the fast path must still name the row
            {"user": [1, 2], "item": [1, 2], "timestamp": np.array([1.0, np.inf])},
            r"row 1: timestamp inf is missing or not a finite number",
        ),
        (
            {"user": [1, 2], "item": [1, 2], "timestamp": [1, 2], "weight": [0.5, np.nan]},
            r"row 1: weight is missing",
        ),
        (  # a nullable int column with a gap is not a numpy column: the general path
            {"user": pd.array([1, None], dtype="Int64"), "item": [1, 2], "timestamp": [1, 2]},
            r"row 1: user id is missing",
        ),
    ],
)
def test_bad_numeric_values_still_name_the_row(frame, message):
    with pytest.raises(DataError, match=message):
        as_events(pd.DataFrame(frame))
