"""Per-user interaction histories (item indices in arrival order).

Used for exclusions ("do not recommend what the user has already consumed") and by models that
read a user's recent items. Every user's items live in one block of a shared int64 *arena*; a
block that is full moves to the end of the arena with twice the room (the old block is left
behind), so appending is amortised O(1) per event, a batch is appended with a few vectorised
numpy operations whatever the number of users in it, and a user costs three int64s (start,
length, room: 24 bytes) plus their block. The arena holds at most about four times the events
(abandoned blocks included); a checkpoint stores the compact CSR form.
"""

from __future__ import annotations

import numpy as np

from nmrn.data.growth import grow_array

_MIN_CAP = 4


class History:
    """Append-only sequences of item indices per user index.

    Examples
    --------
    >>> h = History()
    >>> h.append([0, 1, 0], [5, 6, 7])
    >>> h.items_of(0).tolist(), h.items_of(1).tolist(), h.items_of(9).tolist()
    ([5, 7], [6], [])
    >>> len(h), h.n_users
    (3, 2)
    """

    def __init__(self) -> None:
        self._arena = np.zeros(0, dtype=np.int64)  # every block; grown by capacity
        self._used = 0  # arena[:_used] is allocated to blocks (live or abandoned)
        self._start = np.zeros(0, dtype=np.int64)  # per user: block start, length, room
        self._lens = np.zeros(0, dtype=np.int64)
        self._cap = np.zeros(0, dtype=np.int64)
        self._n_events = 0

    def __len__(self) -> int:
        return self._n_events

    def __repr__(self) -> str:
        return f"History(n_users={self.n_users}, n_events={len(self)})"

    @property
    def n_users(self) -> int:
        """Number of user rows (highest user index appended + 1)."""
        return len(self._lens)

    def _ensure_users(self, n: int) -> None:
        if n > len(self._lens):
            self._start = grow_array(self._start, n)
            self._lens = grow_array(self._lens, n)
            self._cap = grow_array(self._cap, n)

    def append(self, users: np.ndarray | list[int], items: np.ndarray | list[int]) -> None:
        """Append events ``(users[t], items[t])`` in order; both ``[n]`` non-negative ints."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"users {users.shape} and items {items.shape} must be equal 1-D")
        if len(users) == 0:
            return
        if users.min() < 0 or items.min() < 0:
            raise ValueError("user and item indices must be non-negative")
        self._ensure_users(int(users.max()) + 1)
        order = np.argsort(users, kind="stable")  # each user's events together, in order
        su, si = users[order], items[order]
        # each user's run in the sorted users: what np.unique(return_index, return_counts)
        # gives, without its own sort (a third of the call for a batch of 10)
        first = np.flatnonzero(np.concatenate(([True], su[1:] != su[:-1])))
        uniq = su[first]
        counts = np.diff(np.append(first, len(su)))
        old = self._lens[uniq]
        need = old + counts
        full = need > self._cap[uniq]
        if full.any():  # these users' blocks move to the end of the arena, with room to spare
            movers, kept = uniq[full], old[full]
            room = np.maximum(np.maximum(need[full], 2 * self._cap[movers]), _MIN_CAP)
            starts = self._used + np.cumsum(room) - room
            self._arena = grow_array(self._arena, self._used + int(room.sum()))
            if kept.sum():
                # element j of a mover's old block goes to its new block, same offset
                offset = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
                src = np.repeat(self._start[movers], kept) + offset
                self._arena[np.repeat(starts, kept) + offset] = self._arena[src]
            self._start[movers] = starts
            self._cap[movers] = room
            self._used += int(room.sum())
        rank = np.arange(len(su)) - np.repeat(first, counts)  # earlier events of the user here
        self._arena[np.repeat(self._start[uniq] + old, counts) + rank] = si
        self._lens[uniq] = need
        self._n_events += len(users)

    def items_of(self, user: int) -> np.ndarray:
        """The items of ``user`` in arrival order (a read-only view; empty if unseen)."""
        if user < 0 or user >= len(self._lens):
            return np.empty(0, dtype=np.int64)
        start = int(self._start[user])
        view = self._arena[start : start + int(self._lens[user])]
        view.flags.writeable = False
        return view

    def length(self, user: int) -> int:
        """Number of events of ``user``."""
        return int(self._lens[user]) if 0 <= user < len(self._lens) else 0

    def lengths(self) -> np.ndarray:
        """Events per user index, shape ``[n_users]``."""
        return self._lens.copy()

    def recent(self, users: np.ndarray | list[int], length: int) -> np.ndarray:
        """The last ``length`` items of each user, most recent first, ``-1`` where a user has
        fewer: ``[n, length]`` int64 (unknown users, index < 0, get a row of ``-1``).

        >>> h = History()
        >>> h.append([0, 0, 0, 1], [5, 6, 7, 8])
        >>> h.recent([0, 1, 2], 2).tolist()
        [[7, 6], [8, -1], [-1, -1]]
        """
        users = np.asarray(users, dtype=np.int64)
        out = np.full((len(users), length), -1, dtype=np.int64)
        if length == 0:
            return out
        for row, u in enumerate(users.tolist()):
            tail = self.items_of(u)[-length:]
            out[row, : len(tail)] = tail[::-1]
        return out

    def contexts(
        self, users: np.ndarray | list[int], items: np.ndarray | list[int], length: int
    ) -> np.ndarray:
        """For each event of a time-ordered batch *not yet appended*, the last ``length`` items
        its user consumed before it, most recent first: the user's earlier events in the batch,
        then the stored history; ``-1`` where there are fewer. ``[n, length]`` int64.

        The answer does not depend on how a stream is cut into batches: appending a batch and
        asking about the next one gives the same rows as asking about both at once.

        >>> h = History()
        >>> h.append([0], [5])
        >>> h.contexts([0, 1, 0], [6, 9, 7], 3).tolist()
        [[5, -1, -1], [-1, -1, -1], [6, 5, -1]]
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        n = len(users)
        out = np.full((n, length), -1, dtype=np.int64)
        if n == 0 or length == 0:
            return out
        order = np.argsort(users, kind="stable")
        su, si = users[order], items[order]
        first = np.r_[True, su[1:] != su[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        rank = np.arange(n) - group_start  # earlier events of the same user in the batch
        uniq, row_of = np.unique(su, return_inverse=True)
        stored = self.recent(uniq, length)  # [U, length]
        ctx = np.empty((n, length), dtype=np.int64)
        for lag in range(1, length + 1):
            in_batch = rank >= lag
            from_batch = si[np.maximum(np.arange(n) - lag, 0)]
            from_stored = stored[row_of, np.clip(lag - rank - 1, 0, length - 1)]
            ctx[:, lag - 1] = np.where(in_batch, from_batch, from_stored)
        out[order] = ctx
        return out

    def seen_pairs(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(rows, items)`` of every item seen by each of ``users``.

        ``rows[j]`` indexes into ``users``; handy for masking a ``[n, n_items]`` score matrix
        with ``scores[rows, items] = -inf``. Unknown users (index < 0) contribute nothing.
        """
        users = np.asarray(users, dtype=np.int64)
        parts = [self.items_of(int(u)) for u in users.tolist()]
        counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        rows = np.repeat(np.arange(len(users), dtype=np.int64), counts)
        cols = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return rows, cols.astype(np.int64, copy=False)

    # -- serialisation (CSR) -------------------------------------------------------------------
    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr [n_users+1], items [n_events])``: CSR form, users in index order."""
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(self._lens, out=indptr[1:])
        offset = np.arange(int(indptr[-1])) - np.repeat(indptr[:-1], self._lens)
        items = self._arena[np.repeat(self._start, self._lens) + offset]
        return indptr, items

    @classmethod
    def from_arrays(cls, indptr: np.ndarray, items: np.ndarray) -> History:
        """Inverse of :meth:`to_arrays`."""
        indptr = np.asarray(indptr, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(items):
            raise ValueError("inconsistent history arrays (indptr does not match items)")
        if np.any(np.diff(indptr) < 0):
            raise ValueError("inconsistent history arrays (indptr decreases)")
        h = cls()
        h._arena = items.copy()  # compact: each block exactly full (it moves on its next event)
        h._used = len(items)
        h._start = indptr[:-1].copy()
        h._lens = np.diff(indptr)
        h._cap = h._lens.copy()
        h._n_events = len(items)
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        a, b = self.to_arrays(), other.to_arrays()
        return bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))


class SeenPairs:
    """The set of (user, item) index pairs seen so far, for vectorised membership tests when
    sampling negatives (BPR, SASRec): int64 keys ``user << 32 | item`` in a hash table.

    >>> seen = SeenPairs()
    >>> seen.add(np.array([0, 1, 0]), np.array([5, 6, 5]))
    >>> seen.contains(np.array([0, 0, 1]), np.array([5, 6, 6])).tolist()
    [True, False, True]
    >>> len(SeenPairs(seen.keys))
    2

    The table is ``[buckets, BUCKET]`` keys (``-1``: empty). A key lives in its home bucket
    (Fibonacci hashing of the key) or, when that bucket was full as it arrived, in the next
    bucket that had room; keys are never removed, so a lookup stops at the first bucket that
    holds it or is not full. A test costs one gather of a 128-byte bucket per pair (a second
    for the few whose home bucket is full) whatever the number of pairs; a sorted array cost
    a binary search whose cache misses grew with it (BENCHMARKS.md, "Growth"). The table
    doubles when it is ``MAX_LOAD`` full: amortised O(1) per pair, 14 to 28 bytes per pair
    (slots and fill counts).
    The sorted keys a checkpoint stores are kept apart, built on the first read of
    :attr:`keys` and brought up to date on the next reads with the pairs added since.
    """

    BUCKET = 16
    """Keys per bucket (two 64-byte cache lines)."""
    MIN_BUCKETS = 1024
    """Buckets of an empty table (a power of two)."""
    MAX_LOAD = 0.6
    """The table doubles before more than this share of its slots would be used."""

    _MULT = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self._count = 0
        self._alloc(self.MIN_BUCKETS)
        # the sorted keys (what ``keys`` returns) and the arrays of keys added since
        self._sorted: np.ndarray | None = None
        self._since: list[np.ndarray] = []
        if keys is not None:
            self._sorted = np.unique(np.asarray(keys, dtype=np.int64))
            self._insert(self._sorted)

    def _alloc(self, n_buckets: int) -> None:
        self._table = np.full((n_buckets, self.BUCKET), -1, dtype=np.int64)
        self._fill = np.zeros(n_buckets, dtype=np.int64)  # used slots per bucket
        self._shift = np.uint64(64 - (n_buckets.bit_length() - 1))

    @property
    def keys(self) -> np.ndarray:
        """Every key, sorted (what a checkpoint stores)."""
        if self._sorted is None:
            self._sorted = np.sort(self._table[self._table >= 0])
            self._since = []
        elif self._since:
            new = np.sort(np.concatenate(self._since))
            self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)
            self._since = []
        return self._sorted

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def _key(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (np.asarray(users).astype(np.int64) << 32) | np.asarray(items).astype(np.int64)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        """The home bucket of each key."""
        return ((keys.view(np.uint64) * self._MULT) >> self._shift).view(np.int64)

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` (int64, contiguous) is in the table: ``[n]`` bool."""
        mask = len(self._fill) - 1
        bucket = self._home(keys)
        rows = self._table[bucket]  # [n, BUCKET]
        found = _any_row(rows == keys[:, None])
        # slots fill in order, so a bucket is full when its last slot is used
        more = np.flatnonzero(~found & (rows[:, -1] >= 0))
        while len(more):  # the home bucket was full: the key may sit further on
            bucket[more] = (bucket[more] + 1) & mask
            rows = self._table[bucket[more]]
            hit = _any_row(rows == keys[more, None])
            found[more[hit]] = True
            more = more[~hit & (rows[:, -1] >= 0)]
        return found

    def _insert(self, keys: np.ndarray) -> None:
        """Insert ``keys`` (unique, none of them in the table yet)."""
        if len(keys) == 0:
            return
        need = self._count + len(keys)
        n_buckets = len(self._fill)
        while need > self.MAX_LOAD * n_buckets * self.BUCKET:
            n_buckets *= 2
        if n_buckets != len(self._fill):  # rehash every key into a table twice as big (or more)
            old = self._table[self._table >= 0]
            self._alloc(n_buckets)
            self._count = 0
            keys = np.concatenate([old, keys])
        mask = n_buckets - 1
        bucket = self._home(keys)
        while len(keys):
            order = np.argsort(bucket, kind="stable")
            keys, bucket = keys[order], bucket[order]
            first = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
            rank = np.arange(len(keys)) - np.repeat(first, np.diff(np.r_[first, len(keys)]))
            slot = self._fill[bucket] + rank
            ok = slot < self.BUCKET
            self._table[bucket[ok], slot[ok]] = keys[ok]
            np.maximum.at(self._fill, bucket[ok], slot[ok] + 1)
            self._count += int(ok.sum())
            keys, bucket = keys[~ok], (bucket[~ok] + 1) & mask  # full: try the next bucket

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        """Add the pairs ``(users[t], items[t])`` (amortised O(pairs added) per call)."""
        keys = np.unique(self._key(users, items))
        keys = keys[~self._find(keys)]
        if len(keys):
            self._insert(keys)
            if self._sorted is not None:
                self._since.append(keys)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each pair ``(users[t], items[t])`` was added: ``[n]`` bool."""
        return self._find(np.ascontiguousarray(self._key(users, items)))


def _any_row(eq: np.ndarray) -> np.ndarray:
    """``eq.any(axis=1)`` for a C-contiguous bool ``[n, m]``: as 8-byte words where ``m`` is a
    multiple of 8 (``any`` over a short axis costs several times more)."""
    n, m = eq.shape
    if m % 8 or n == 0:
        return eq.any(axis=1)  # type: ignore[no-any-return]
    words = eq.view(np.uint64)  # [n, m // 8]
    if m == 8:
        return words[:, 0] != 0  # type: ignore[no-any-return]
    return np.bitwise_or.reduce(words, axis=1) != 0  # type: ignore[no-any-return]
