"""Growing numpy arrays by capacity, as a vector grows (the torch tables: ``nmrn.model.tables``).

Per-user and per-item arrays (counts, last-seen times, session pointers) get rows whenever a call
meets new users or items. Concatenating copies every row each time, so a call that meets one new
user costs O(users). :func:`grow_array` instead returns a view of the first rows of a buffer
with spare room (:data:`GROWTH` times what was needed, at least :data:`MIN_SPARE` rows more) and
appends into that room; the copy happens only when it is used up (amortized O(1) per row). Only
the newest view of a buffer may use its room: growing a stale, shorter view copies.

>>> a = grow_array(np.zeros(2, dtype=np.int64), 3, fill=7)
>>> a.tolist()
[0, 0, 7]
>>> b = grow_array(a, 5, fill=1)
>>> b.tolist(), np.shares_memory(a, b)
([0, 0, 7, 1, 1], True)
>>> grow_array(a, 4, fill=9).tolist(), b.tolist()  # a is stale: copied, b untouched
([0, 0, 7, 9], [0, 0, 7, 1, 1])

A model rebuilt from a saved state (:meth:`~nmrn.training.contract.Recommender.from_state`)
grows its tables to the saved sizes, then overwrites every row with the saved values: rows
drawn at random for them would be thrown away (at 100,000 items, most of a snapshot reader's
load). It grows them within :func:`state_follows`, where the torch tables' random rows
(:func:`nmrn.model.tables.normal_rows`) are zero rows and nothing is drawn; everywhere else
growth draws exactly as it always did.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["GROWTH", "MIN_SPARE", "grow_array", "restoring", "state_follows"]

GROWTH = 1.5
MIN_SPARE = 64

# id(buffer) -> (weak reference to the buffer, rows its newest view holds)
_ROWS: dict[int, tuple[weakref.ref[np.ndarray], int]] = {}


def _forget(key: int, ref: weakref.ref[np.ndarray]) -> None:
    entry = _ROWS.get(key)
    if entry is not None and entry[0] is ref:
        del _ROWS[key]


def _room(arr: np.ndarray) -> int:
    base = arr.base
    if not isinstance(base, np.ndarray) or arr.ndim == 0:
        return 0
    entry = _ROWS.get(id(base))
    if entry is None or entry[0]() is not base or entry[1] != arr.shape[0]:
        return 0
    if arr.dtype != base.dtype or arr.shape[1:] != base.shape[1:] or not arr.flags.c_contiguous \
            or arr.__array_interface__["data"][0] != base.__array_interface__["data"][0]:
        return 0
    return int(base.shape[0])


def grow_array(arr: np.ndarray, n: int, fill: Any = 0) -> np.ndarray:
    """``arr`` with rows appended (each set to ``fill``) so that it holds ``n`` rows; ``arr``
    itself if it already does. Shares rows with ``arr`` when its buffer had room."""
    n_old = arr.shape[0]
    if n <= n_old:
        return arr
    room = _room(arr)
    if room >= n:
        base = arr.base
        assert isinstance(base, np.ndarray)
    else:
        base = np.empty((max(n, int(n_old * GROWTH) + MIN_SPARE), *arr.shape[1:]), arr.dtype)
        base[:n_old] = arr
        key = id(base)
        ref = weakref.ref(base, lambda r, key=key: _forget(key, r))  # type: ignore[misc]
        _ROWS[key] = (ref, n_old)
    base[n_old:n] = fill
    _ROWS[id(base)] = (_ROWS[id(base)][0], n)
    return base[:n]


_LOCAL = threading.local()  # .restoring: inside state_follows() on this thread


@contextmanager
def state_follows() -> Iterator[None]:
    """Within (on this thread), growth may leave new rows at zero instead of drawing random
    ones: every grown row is overwritten by a saved state next (``from_state``).

    >>> with state_follows():
    ...     restoring()
    True
    >>> restoring()
    False
    """
    before = restoring()
    _LOCAL.restoring = True
    try:
        yield
    finally:
        _LOCAL.restoring = before


def restoring() -> bool:
    """Whether this thread is within :func:`state_follows`."""
    return bool(getattr(_LOCAL, "restoring", False))
