"""External ids <-> dense indices.

External ids are what users of the library see (``int`` or ``str``; a log may mix them). Dense
indices ``0..n-1`` are what tables and tensors see. Ids are numbered in order of first appearance,
so growing the map never renumbers an existing id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from nmrn.errors import DataError, UnknownIdError

# What an int id typed as text looks like (ASCII only: str.isdigit() accepts "²", int() not).
_DECIMAL = re.compile(r"-?[0-9]{1,30}")
# pandas.api.types.infer_dtype results that are acceptable as ids.
_ID_KINDS = {"integer", "string", "mixed-integer", "empty"}


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _is_id(x: Any) -> bool:
    """An int (not a bool) or a str, numpy scalars included."""
    return isinstance(x, (int, str, np.integer, np.str_)) and not isinstance(x, (bool, np.bool_))


def as_id_array(ids: Any, what: str) -> np.ndarray:
    """Return ``ids`` as a 1-D numpy array of python-hashable ids, checking their types.

    Only ``int`` and ``str`` ids are accepted: a float id such as ``3.0`` would silently collide
    with the int ``3`` in a hash table, and a bool with ``0``/``1``.
    """
    # one plain id (every read of one user): the answer the general path gives, without it
    if type(ids) is list and len(ids) == 1 and type(ids[0]) in (int, str):
        ids = ids[0]
    if type(ids) is int and _INT64_MIN <= ids <= _INT64_MAX:
        return np.array([ids], dtype=np.int64)
    if type(ids) is str:
        one = np.empty(1, dtype=object)
        one[0] = ids
        return one
    if isinstance(ids, (str, bytes)) or np.isscalar(ids) or ids is None:
        ids = [ids]
    if isinstance(ids, np.ndarray):
        arr = ids.reshape(-1)
    else:
        # never np.asarray(list): it would turn [1, "1"] into ["1", "1"]
        values = list(ids)
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "U":
        return arr.astype(object)
    if arr.dtype.kind == "O":
        kind = pd.api.types.infer_dtype(arr, skipna=False)
        if kind not in ("integer", "string"):
            # pandas calls [1, True, 1.0] "mixed-integer", and in a dict those three are one
            # key: check every element of a mixed array, not just the inferred kind
            bad = next((x for x in arr.tolist() if not _is_id(x)), None)
            if bad is not None or kind not in _ID_KINDS:
                raise DataError(
                    f"{what} id {bad!r} has type {type(bad).__name__}; ids must be int or str"
                )
        if kind == "integer":
            try:
                return arr.astype(np.int64)
            except OverflowError:
                return arr
        return arr
    example = arr[0] if len(arr) else None
    raise DataError(f"{what} ids have dtype {arr.dtype} (e.g. {example!r}); ids must be int or str")


def _py(x: Any) -> int | str:
    """A numpy scalar as the plain python int/str it stands for."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.str_):
        return str(x)
    return x  # type: ignore[no-any-return]


class IdMap:
    """A growing bijection between external ids and dense indices ``0..len-1``.

    Parameters
    ----------
    ids
        Initial ids, numbered in order (duplicates are an error).
    what
        What the ids are ("user", "item"); used in error messages.

    Examples
    --------
    >>> m = IdMap(what="item")
    >>> m.encode(["b", "a", "b"], grow=True).tolist()
    [0, 1, 0]
    >>> m.decode([1, 0]).tolist()
    ['a', 'b']
    >>> m.encode([7, "a"], missing=-1).tolist()
    [-1, 1]
    """

    def __init__(self, ids: Iterable[int | str] = (), *, what: str = "id") -> None:
        self.what = what
        self._index: dict[int | str, int] = {}
        self._ids: list[int | str] = []
        self._all_int = True
        start = list(ids)
        if start:
            arr = as_id_array(start, what)
            values = [_py(x) for x in arr.tolist()]
            if len(set(values)) != len(values):
                raise DataError(f"duplicate {what} ids in the initial list of an IdMap")
            self._add(values)

    # -- size and membership ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, x: object) -> bool:
        return (
            isinstance(x, (int, str, np.integer, np.str_))
            and not isinstance(x, bool)
            and (_py(x) in self._index)
        )

    def __repr__(self) -> str:
        return f"IdMap(what={self.what!r}, n={len(self)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._ids == other._ids and self.what == other.what

    @property
    def ids(self) -> np.ndarray:
        """Every id, in index order (int64 if all ids are ints, else object)."""
        return self.decode(np.arange(len(self), dtype=np.int64))

    # -- encode / decode ---------------------------------------------------------------------
    def _add(self, new: list[int | str]) -> None:
        new = [_py(x) for x in new]  # numpy scalars would not survive JSON
        base = len(self._ids)
        for offset, x in enumerate(new):
            self._index[x] = base + offset
        self._ids.extend(new)
        if self._all_int and any(not isinstance(x, int) for x in new):
            self._all_int = False

    def encode(self, ids: Any, *, grow: bool = False, missing: int | None = None) -> np.ndarray:
        """Map external ids to indices, shape ``[n]`` int64.

        Parameters
        ----------
        ids
            One id or a sequence/array of ids.
        grow
            Give unseen ids the next free indices, in order of first appearance.
        missing
            When not growing, the index reported for an unseen id (e.g. ``-1``); when ``None``
            an unseen id raises :class:`~nmrn.errors.UnknownIdError`.
        """
        arr = as_id_array(ids, self.what)
        values = arr.tolist()
        get = self._index.get
        out = np.fromiter((get(x, -1) for x in values), dtype=np.int64, count=len(values))
        unseen = out < 0
        if unseen.any():
            if grow:
                new = list(dict.fromkeys(values[j] for j in np.flatnonzero(unseen)))
                self._add(new)
                out[unseen] = [self._index[values[j]] for j in np.flatnonzero(unseen)]
            elif missing is not None:
                out[unseen] = missing
            else:
                first = values[int(np.flatnonzero(unseen)[0])]
                raise UnknownIdError(f"unknown {self.what} {first!r}")
        return out

    def resolve_text(self, text: str) -> int | str:
        """The id that ``text``, typed as text (a URL path, a command line), stands for.

        The text itself if the map knows it; else the int it spells (ASCII digits with an
        optional leading ``-``, surrounding spaces ignored) if the map knows that int; else the
        text unchanged (an unknown id). The one rule for every text entry point.

        Examples
        --------
        >>> ids = IdMap([196, "alice", "7"])
        >>> ids.resolve_text("196"), ids.resolve_text("alice"), ids.resolve_text("7")
        (196, 'alice', '7')
        >>> ids.resolve_text("²"), ids.resolve_text("+196"), ids.resolve_text("unknown")
        ('²', '+196', 'unknown')
        """
        if not isinstance(text, str) or text in self:
            return text
        spelled = text.strip()
        if _DECIMAL.fullmatch(spelled):
            as_int = int(spelled)
            if as_int in self:
                return as_int
        return text

    def get(self, x: int | str, default: int = -1) -> int:
        """The index of one id, or ``default``."""
        return self._index.get(_py(x), default)

    def decode(self, idx: Any) -> np.ndarray:
        """Map indices back to external ids (int64 array if all ids are ints, else object)."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))][0]
            raise IndexError(f"{self.what} index {int(bad)} out of range [0, {len(self)})")
        ids = self._ids
        if self._all_int:
            flat = np.fromiter((ids[j] for j in idx.ravel().tolist()), np.int64, count=idx.size)
        else:
            flat = np.empty(idx.size, dtype=object)
            flat[:] = [ids[j] for j in idx.ravel().tolist()]
        return flat.reshape(idx.shape)

    # -- serialisation -------------------------------------------------------------------------
    def to_list(self) -> list[int | str]:
        """The ids as a JSON-serialisable list (index order)."""
        return list(self._ids)

    @classmethod
    def from_list(cls, ids: list[int | str], *, what: str = "id") -> IdMap:
        """Inverse of :meth:`to_list`."""
        return cls(ids, what=what)

    def extended(self, ids: list[int | str]) -> IdMap | None:
        """:meth:`from_list` of ``ids`` when they start with this map's ids (a snapshot's
        next version): a copy of this map with the rest added, without rebuilding the index
        of the ids already known; ``None`` when ``ids`` do not start with them."""
        n = len(self._ids)
        if len(ids) < n or ids[:n] != self._ids:
            return None
        # ``==`` takes 1 == 1.0 == True; the ids known are all int or str, and so must these be
        if not set(map(type, ids[:n])) <= {int, str}:
            return None
        rest = ids[n:]
        if rest:
            values = [_py(x) for x in as_id_array(rest, self.what).tolist()]
            if len(set(values)) != len(values) or any(x in self._index for x in values):
                raise DataError(f"duplicate {self.what} ids in the initial list of an IdMap")
        out = IdMap(what=self.what)
        out._index = dict(self._index)
        out._ids = list(self._ids)
        out._all_int = self._all_int
        if rest:
            out._add(values)
        return out
