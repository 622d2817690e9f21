"""Growing row tables: how every embedding table, optimizer state and memory bank gets room for
new users and items (one rule for NMRN, its generator G and BPR).

A table grows by appending rows, never by renumbering: row ``i`` keeps its values, so ids
encoded before the growth stay valid. New rows are zeros (optimizer state, memories, biases) or
``N(0, std^2)`` draws from the caller's private generator (embeddings).

Growth is by capacity, as a vector grows: a table is a view of the first rows of a buffer with
room to spare (:data:`GROWTH` times what was needed, at least :data:`MIN_SPARE` rows), so
appending rows writes them into the spare room and returns a longer view of the same buffer;
only when the room is used up is the table copied into a new, larger buffer. A call that adds
a few users therefore costs what those rows cost, not a copy of every user's row (that copy
made ``learn`` 7x slower at 500,000 users than at 20,000; BENCHMARKS.md, "growth"). The spare
room is allocated, never written, so the operating system gives it pages only when rows land
there. A table's spare room is used only by the holder of its newest view: growing a stale,
shorter view of the same buffer copies instead (it cannot overwrite rows a newer view owns).

Within :func:`nmrn.data.growth.state_follows` (a model rebuilt from a saved state, whose rows
the state overwrites next), :func:`normal_rows` appends zero rows and draws nothing.

Examples
--------
>>> t = torch.ones(2, 3)
>>> grow_rows(t, 4).tolist()
[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
>>> grow_rows(t, 1) is t  # never shrinks
True
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from nmrn.data.growth import restoring

__all__ = [
    "GROWTH", "MIN_SPARE", "capacity", "grow_like", "grow_rows", "normal_rows", "saved_tensor",
]

GROWTH = 1.5
"""A full table moves to a buffer this many times the rows it needs (amortized O(1) per row)."""
MIN_SPARE = 64
"""...and at least this many rows more."""

# the buffers made here, by their storage, and the rows their newest view holds; an entry dies
# with its storage (storages are weak-referenceable and keep one Python object while alive)
_ROWS: weakref.WeakKeyDictionary[torch.UntypedStorage, int] = weakref.WeakKeyDictionary()


def _room(table: Tensor) -> int:
    """Rows in ``table``'s buffer if ``table`` is the newest view of one made here, else 0."""
    if table.dim() == 0 or table.storage_offset() != 0 or not table.is_contiguous():
        return 0
    storage = table.untyped_storage()
    if _ROWS.get(storage) != table.shape[0]:
        return 0
    row_bytes = math.prod(table.shape[1:]) * table.element_size()
    return storage.nbytes() // row_bytes if row_bytes else 0


def capacity(table: Tensor) -> int:
    """Rows ``table`` can grow to without a copy (its own length for a table not grown here).

    >>> t = grow_rows(torch.zeros(2, 3), 3)
    >>> len(t), capacity(t)
    (3, 67)
    """
    return max(table.shape[0] if table.dim() else 0, _room(table))


def grow_rows(table: Tensor, n_rows: int, new_rows: Tensor | None = None) -> Tensor:
    """``table`` with rows appended so that it holds ``n_rows`` (itself if it already does).

    ``new_rows`` are the appended rows (``[n_rows - len(table), ...]``); ``None`` appends zeros.
    The result is detached; it shares rows with ``table`` when the buffer had room (see the
    module's docstring).
    """
    n_old = table.shape[0]
    extra = n_rows - n_old
    if extra <= 0:
        return table
    if new_rows is not None and new_rows.shape[0] != extra:
        raise ValueError(f"grow_rows: {new_rows.shape[0]} new rows for {extra} missing ones")
    rest = tuple(table.shape[1:])
    room = _room(table)
    if room >= n_rows:
        storage = table.untyped_storage()
        full = table.new_empty(0).set_(storage, 0, (room, *rest))
    else:
        full = table.new_empty((max(n_rows, int(n_old * GROWTH) + MIN_SPARE), *rest))
        full[:n_old] = table.detach()
        storage = full.untyped_storage()
    if new_rows is None:
        full[n_old:n_rows] = 0
    else:
        full[n_old:n_rows] = new_rows.to(device=table.device, dtype=table.dtype)
    _ROWS[storage] = n_rows
    return full[:n_rows].detach()


def grow_like(state: Tensor, table: Tensor) -> Tensor:
    """An optimizer state or flag array grown with zeros to as many rows as ``table`` (a 0-d
    state, e.g. of a scalar parameter, is returned as it is)."""
    return state if state.dim() == 0 else grow_rows(state, table.shape[0])


def normal_rows(
    table: Tensor, n_rows: int, std: float, generator: torch.Generator | None
) -> Tensor:
    """``table`` grown to ``n_rows`` with ``N(0, std^2)`` rows drawn from ``generator``; zero
    rows, drawn from nothing (the generator not advanced), within
    :func:`nmrn.data.growth.state_follows` (tests/model/test_tables.py)."""
    extra = n_rows - table.shape[0]
    if extra <= 0:
        return table
    if restoring():
        return grow_rows(table, n_rows)
    new = torch.randn(extra, *table.shape[1:], generator=generator) * std
    return grow_rows(table, n_rows, new)


def saved_tensor(
    arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A table or optimizer state read back from a checkpoint: a fresh ``dtype`` tensor of
    ``arrays[key]``, which must have ``shape`` (a ``ValueError`` naming the array otherwise;
    loading turns it into a ``CheckpointError`` naming the file).

    >>> saved_tensor({"w": np.ones((2, 3))}, "w", (2, 3)).dtype
    torch.float32
    >>> saved_tensor({"w": np.ones(3)}, "w", (2, 3))
    Traceback (most recent call last):
    ...
    ValueError: array 'w' has shape (3,), expected (2, 3)
    """
    if key not in arrays:
        raise ValueError(f"array {key!r} is missing")
    arr = np.asarray(arrays[key])
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"array {key!r} has shape {arr.shape}, expected {tuple(shape)}")
    return torch.from_numpy(arr.copy()).to(dtype)

