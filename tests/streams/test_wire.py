"""The binary messages of the partitioned consumer (nmrn.streams.wire): every value crosses
exactly, with its type (an int id stays an int, a str id a str)."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmrn.streams import wire

# what parse_event can hand out: int64 ids, or non-empty text without control characters
_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
_ids = st.one_of(st.integers(-(2**63), 2**63 - 1), _text)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_entry = st.tuples(
    _floats, st.integers(0, 2**47), st.integers(0, 2**20), _ids, _ids,
    st.one_of(st.none(), _floats), st.one_of(st.none(), _text),
)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same type; floats by their bits (-0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 15), st.lists(_entry, max_size=8), max_size=4),
       st.lists(st.integers(0, 2**40), max_size=4))
def test_a_message_decodes_to_exactly_what_was_encoded(parts: Any, flags: list[int]) -> None:
    entries = {p: [(ts, p, ms, seq, u, i, w, e) for ts, ms, seq, u, i, w, e in rows]
               for p, rows in parts.items()}
    got_flags, got = wire.decode(wire.encode(flags, entries))
    assert got_flags == flags
    assert sorted(got) == sorted(entries)
    for p, rows in entries.items():
        assert len(got[p]) == len(rows)
        for a, b in zip(got[p], rows, strict=True):
            assert _same(a, b), (a, b)


def test_int_and_str_ids_that_look_alike_stay_apart() -> None:
    rows = [(1.5, 0, 10, 0, 196, "196", None, "e1"), (-0.0, 0, 10, 1, "196", 196, 2.0, None),
            (2.0, 0, 11, 0, "", "é\U0001f600", math.pi, "")]
    _, got = wire.decode(wire.encode([0, 0, 0], {0: rows}))
    assert [(type(r[4]), type(r[5])) for r in got[0]] == [(int, str), (str, int), (str, str)]
    assert all(_same(a, b) for a, b in zip(got[0], rows, strict=True))
    assert wire.entry_id(got[0][1]) == "10-1"


def test_entry_of_and_refusals() -> None:
    e = wire.entry_of(3, "1700000000000-7", {"user": 1, "item": "x", "timestamp": 5.0,
                                              "event_id": "abc"})
    assert e == (5.0, 3, 1700000000000, 7, 1, "x", None, "abc")
    assert wire.entry_id(e) == "1700000000000-7"
    with pytest.raises(ValueError, match="NUL"):
        wire.encode([], {0: [(1.0, 0, 1, 0, "a\x00b", 1, None, None)]})
    with pytest.raises(ValueError, match="not a partitioned"):
        wire.decode(b"\x00" * 64)
