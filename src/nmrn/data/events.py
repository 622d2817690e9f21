"""The event batch: what every model consumes and every reader produces.

An event is one interaction ``(user, item, timestamp[, weight])`` with *external* ids. A batch
keeps them as parallel numpy arrays; models encode the ids once, on the way in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nmrn.data.idmap import as_id_array
from nmrn.errors import DataError

COLUMNS = ("user", "item", "timestamp")


@dataclass(frozen=True)
class EventBatch:
    """Events as parallel arrays, in the order they are to be applied.

    Attributes
    ----------
    users, items
        External ids, shape ``[n]`` (int64, or object for str ids).
    timestamps
        Shape ``[n]`` float64 (seconds, or whatever unit the log uses; only order matters to
        the models, except windows expressed in time).
    weights
        Optional ``[n]`` float64 (a rating or strength); ``None`` means every event counts 1.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "timestamps"):
            if len(getattr(self, name)) != n:
                raise DataError(
                    f"EventBatch: {name} has {len(getattr(self, name))} rows, users {n}"
                )
        if self.weights is not None and len(self.weights) != n:
            raise DataError(f"EventBatch: weights has {len(self.weights)} rows, users {n}")

    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        return f"<EventBatch {len(self)} events>"

    def __getitem__(self, key: slice | np.ndarray) -> EventBatch:
        """Rows selected by a slice, an index array or a boolean mask."""
        return EventBatch(
            self.users[key],
            self.items[key],
            self.timestamps[key],
            None if self.weights is None else self.weights[key],
        )

    def to_frame(self) -> pd.DataFrame:
        """A DataFrame with columns user, item, timestamp (and weight)."""
        data: dict[str, Any] = {
            "user": self.users,
            "item": self.items,
            "timestamp": self.timestamps,
        }
        if self.weights is not None:
            data["weight"] = self.weights
        return pd.DataFrame(data)

    def sorted_by_time(self) -> EventBatch:
        """A copy sorted by timestamp; stable, so ties keep their order."""
        order = np.argsort(self.timestamps, kind="stable")
        return self[order]

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        """Concatenate batches in order (one batch is returned as it is)."""
        if not batches:
            return empty_batch()
        if len(batches) == 1:
            return batches[0]
        weights = None
        if any(b.weights is not None for b in batches):
            weights = np.concatenate(
                [b.weights if b.weights is not None else np.ones(len(b)) for b in batches]
            )
        return EventBatch(
            _concat_ids([b.users for b in batches]),
            _concat_ids([b.items for b in batches]),
            np.concatenate([b.timestamps for b in batches]),
            weights,
        )


def _concat_ids(parts: list[np.ndarray]) -> np.ndarray:
    if all(p.dtype.kind == "i" for p in parts):
        return np.concatenate(parts)
    return np.concatenate([p.astype(object) for p in parts])


def empty_batch() -> EventBatch:
    """A batch of zero events."""
    return EventBatch(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64), None)


def _numpy_kind(column: Any) -> str:
    """The numpy kind of a column held as a plain numpy dtype ("" for pandas' own dtypes:
    nullable, categorical, Arrow-backed, which may hold missing values)."""
    dtype = getattr(column, "dtype", None)
    return dtype.kind if isinstance(dtype, np.dtype) else ""


def _timestamps(values: Any, where: str) -> np.ndarray:
    if _numpy_kind(values) in ("i", "u", "f"):  # what to_numeric would return, without pandas
        ts = values.astype(np.float64)
    else:
        ts = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(ts)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raw = np.asarray(values, dtype=object)[j]
        raise DataError(f"{where}: row {j}: timestamp {raw!r} is missing or not a finite number")
    return ts


def _ids(values: Any, what: str, where: str) -> np.ndarray:
    if _numpy_kind(values) in ("i", "u"):  # a numpy int column has no missing values: the
        return np.asarray(values).astype(np.int64, copy=False)  # answer as_id_array gives it
    s = pd.Series(values)
    if s.isna().any():
        j = int(np.flatnonzero(s.isna().to_numpy())[0])
        raise DataError(f"{where}: row {j}: {what} id is missing")
    if s.dtype.kind == "f":  # e.g. an int column read with a NaN somewhere, or true floats
        arr = s.to_numpy()
        # integral and inside int64 (inf and 1e20 would wrap around in the cast)
        ok = (arr == np.round(arr)) & (np.abs(arr) < 2.0**63)
        if ok.all():
            return arr.astype(np.int64)
        j = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{where}: row {j}: {what} id {float(arr[j])!r} is not an int or a string")
    try:
        return as_id_array(s.to_numpy(), what)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def as_events(
    events: Any,
    *,
    columns: Mapping[str, str] | None = None,
    where: str = "events",
) -> EventBatch:
    """Validate and convert events to an :class:`EventBatch`.

    Parameters
    ----------
    events
        An :class:`EventBatch`; a pandas DataFrame with columns ``user``, ``item``,
        ``timestamp`` (and optionally ``weight``); a mapping of those names to arrays; or a
        sequence of ``(user, item, timestamp)`` tuples.
    columns
        Maps the canonical names (``user``, ``item``, ``timestamp``, ``weight``) to the
        DataFrame's own column names, e.g. ``{"user": "user_id", "item": "movie_id"}``.
    where
        Where the events came from, for error messages.

    Examples
    --------
    >>> b = as_events([("u1", 10, 3.0), ("u2", 11, 1.0)])
    >>> b.users.tolist(), b.items.tolist(), b.timestamps.tolist()
    (['u1', 'u2'], [10, 11], [3.0, 1.0])
    """
    if isinstance(events, EventBatch):
        return events
    if isinstance(events, pd.DataFrame):
        frame = events
    elif isinstance(events, Mapping):
        frame = pd.DataFrame(dict(events))
    elif isinstance(events, (list, tuple)):
        if len(events) == 0:
            return empty_batch()
        width = {len(e) for e in events}
        if not width <= {3, 4}:
            raise DataError(f"{where}: events must be (user, item, timestamp[, weight]) tuples")
        names = ["user", "item", "timestamp", "weight"][: max(width)]
        frame = pd.DataFrame(list(events), columns=names)
    else:
        raise TypeError(
            f"{where}: expected a DataFrame, a mapping of arrays, a list of tuples or an "
            f"EventBatch, got {type(events).__name__}"
        )
    mapping = {"user": "user", "item": "item", "timestamp": "timestamp", "weight": "weight"}
    if columns:
        unknown = set(columns) - set(mapping)
        if unknown:
            raise DataError(
                f"{where}: unknown column role(s) {sorted(unknown)}; use {sorted(mapping)}"
            )
        mapping.update(columns)
    missing = [mapping[c] for c in COLUMNS if mapping[c] not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found {list(frame.columns)} "
            f"(map your names with columns={{'user': ..., 'item': ..., 'timestamp': ...}})"
        )
    weights = None
    if mapping["weight"] in frame.columns:
        column = frame[mapping["weight"]]
        if _numpy_kind(column) in ("i", "u", "f"):
            w = column.to_numpy().astype(np.float64)
        else:
            w = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
        if not np.all(np.isfinite(w)):
            j = int(np.flatnonzero(~np.isfinite(w))[0])
            raise DataError(f"{where}: row {j}: weight is missing or not a finite number")
        weights = w
    return EventBatch(
        _ids(frame[mapping["user"]], "user", where),
        _ids(frame[mapping["item"]], "item", where),
        _timestamps(frame[mapping["timestamp"]].to_numpy(), where),
        weights,
    )
