"""The binary form in which the ranks of a partitioned consumer exchange their new entries.

One rank's message per step is a few flat numpy arrays, not one JSON object per event:

- a header of int64: a magic number, the number of flags and the flags (rejected entries, stop,
  idle), the number of partitions sent, then each partition's number and its count of entries;
- the columns of all entries, partition after partition, each one contiguous: the Redis entry id
  as two int64 (milliseconds, sequence), the timestamp as float64, the weight as float64 (NaN
  where the event has none: a valid weight is finite), user and item as int64 values;
- one uint8 "kind" per user, item and event id: 0 an int id (the int64 column holds it), 1 a str
  id (the next string of the column's text), 2 no event id;
- the str ids of each column as UTF-8, separated by NUL (validated ids hold no control
  character, so the split is exact; the encoder checks it).

Every value crosses exactly: float64 bits, int64 ids (the validated range), strings byte for byte,
and an int id stays an int and a str id a str (``196`` and ``"196"`` are different ids). A
decoded entry is the tuple ``(timestamp, partition, ms, seq, user, item, weight, event_id)``:
its first four fields are the merge key ``(timestamp, partition, entry id)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["WireEntry", "decode", "encode", "entry_of", "entry_id"]

MAGIC = 0x4E4D524E57495245  # "NMRNWIRE"
_INT, _STR, _NONE = 0, 1, 2
_SEP = "\x00"

WireEntry = tuple[float, int, int, int, Any, Any, "float | None", "str | None"]


def entry_of(partition: int, entry_id_text: str, event: Mapping[str, Any]) -> WireEntry:
    """The wire tuple of one parsed event read from ``partition`` at ``entry_id_text``."""
    ms, _, seq = entry_id_text.partition("-")
    weight = event.get("weight")
    return (float(event["timestamp"]), partition, int(ms), int(seq or 0), event["user"],
            event["item"], None if weight is None else float(weight), event.get("event_id"))


def entry_id(entry: WireEntry) -> str:
    """The Redis entry id of a wire tuple (``"<ms>-<seq>"``, as Redis writes it)."""
    return f"{entry[2]}-{entry[3]}"


def _ids(values: list[Any], *, optional: bool = False) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(kinds, int64 values, NUL-joined UTF-8 text) of one id column."""
    n = len(values)
    if all(type(v) is int for v in values):
        return np.zeros(n, np.uint8), np.array(values, dtype=np.int64), b""
    kinds = np.empty(n, np.uint8)
    ints = np.zeros(n, np.int64)
    texts: list[str] = []
    for k, v in enumerate(values):
        if type(v) is str:
            kinds[k] = _STR
            texts.append(v)
        elif v is None and optional:
            kinds[k] = _NONE
        else:
            kinds[k] = _INT
            ints[k] = int(v)
    text = _SEP.join(texts).encode("utf-8", "surrogatepass")
    if text.count(b"\x00") != max(len(texts) - 1, 0):
        raise ValueError("an id holds a NUL character; it cannot be sent")
    return kinds, ints, text


def encode(flags: Sequence[int], parts: Mapping[int, Sequence[WireEntry]]) -> bytes:
    """One rank's message: ``flags`` (small ints) and the new entries of each partition."""
    order = sorted(parts)
    rows = [e for p in order for e in parts[p]]
    head = [MAGIC, len(flags), *map(int, flags), len(order)]
    for p in order:
        head += [p, len(parts[p])]
    if rows:
        _ts, _p, ms, seq, users, items, weights, eids = zip(*rows, strict=True)
    else:
        ms = seq = _ts = weights = ()  # type: ignore[assignment]
        users = items = eids = ()
    u_kind, u_int, u_text = _ids(list(users))
    i_kind, i_int, i_text = _ids(list(items))
    if any(e is not None and type(e) is not str for e in eids):
        raise TypeError("an event_id is a str (parse_event makes it one)")
    e_kind, _e_int, e_text = _ids(list(eids), optional=True)
    w = np.array([math.nan if x is None else x for x in weights], dtype=np.float64)
    texts = (u_text, i_text, e_text)
    head += [len(t) for t in texts]
    return b"".join([
        np.array(head, dtype=np.int64).tobytes(),
        np.array(ms, dtype=np.int64).tobytes(), np.array(seq, dtype=np.int64).tobytes(),
        np.array(_ts, dtype=np.float64).tobytes(), w.tobytes(),
        u_int.tobytes(), i_int.tobytes(),
        u_kind.tobytes(), i_kind.tobytes(), e_kind.tobytes(), *texts,
    ])


def _column(kinds: np.ndarray, ints: np.ndarray, text: bytes) -> list[Any]:
    if not kinds.any():
        return ints.tolist()
    strs = iter(text.decode("utf-8", "surrogatepass").split(_SEP) if text or
                (kinds == _STR).any() else [])
    out: list[Any] = []
    for kind, value in zip(kinds.tolist(), ints.tolist(), strict=True):
        out.append(value if kind == _INT else next(strs) if kind == _STR else None)
    return out


def decode(payload: bytes) -> tuple[list[int], dict[int, list[WireEntry]]]:
    """``(flags, {partition: entries})`` of one message written by :func:`encode`."""
    view = memoryview(payload)
    off = 0

    def ints(n: int, dtype: Any = np.int64) -> np.ndarray:
        nonlocal off
        size = np.dtype(dtype).itemsize * n
        arr = np.frombuffer(view[off : off + size], dtype=dtype)
        off += size
        return arr

    magic, n_flags = ints(2).tolist()
    if magic != MAGIC:
        raise ValueError("not a partitioned consumer's message")
    flags = ints(n_flags).tolist()
    (n_parts,) = ints(1).tolist()
    pc = ints(2 * n_parts).tolist()
    parts, counts = pc[0::2], pc[1::2]
    lengths = ints(3).tolist()
    n = sum(counts)
    ms, seq = ints(n).tolist(), ints(n).tolist()
    ts = ints(n, np.float64).tolist()
    w = ints(n, np.float64)
    weights: list[Any] = [None if x != x else x for x in w.tolist()] if np.isnan(w).any() \
        else w.tolist()
    u_int, i_int = ints(n), ints(n)
    u_kind, i_kind, e_kind = ints(n, np.uint8), ints(n, np.uint8), ints(n, np.uint8)
    texts = []
    for length in lengths:
        texts.append(bytes(view[off : off + length]))
        off += length
    if off != len(payload):
        raise ValueError("a partitioned consumer's message has trailing bytes")
    users = _column(u_kind, u_int, texts[0])
    items = _column(i_kind, i_int, texts[1])
    eids = _column(e_kind, np.zeros(n, np.int64), texts[2]) if (e_kind != _NONE).any() \
        else [None] * n
    out: dict[int, list[WireEntry]] = {}
    lo = 0
    for p, count in zip(parts, counts, strict=True):
        hi = lo + count
        out[p] = list(zip(ts[lo:hi], [p] * count, ms[lo:hi], seq[lo:hi], users[lo:hi],
                          items[lo:hi], weights[lo:hi], eids[lo:hi], strict=True))
        lo = hi
    return flags, out
