"""Top-k selection and cached rankings: how every model turns a score row into a top-k.

:func:`top_k` picks the ``k`` best entries of each row of a score matrix, best first, ties broken
by the lower column index (so results are deterministic). :class:`Ranking` ranks one score row
once, for the rows many users share (popularity, the cold-user fallback), so that a user's
answer costs ``O(size + seen)`` instead of a pass over every item.

Examples
--------
>>> import numpy as np
>>> idx, vals = top_k(np.array([[0.5, 2.0, 2.0, -1.0]]), 2)
>>> idx.tolist(), vals.tolist()
([[1, 2]], [[2.0, 2.0]])
"""

from __future__ import annotations

import numpy as np

__all__ = ["RANKING_PREFIX", "TOPK_LONG_ROW", "TOPK_SAMPLE", "Ranking", "top_k"]

# How many of the best items a cached ranking keeps (see Ranking); reads that need more fall
# back to scoring every item.
RANKING_PREFIX = 2048
# Rows at least this long take top_k's sampled-threshold path; TOPK_SAMPLE is the sample size.
TOPK_LONG_ROW = 8192
TOPK_SAMPLE = 1024


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest entries of each row, best first.

    ``scores`` is ``[n, m]``; returns ``([n, k], [n, k])`` with ``k <= m``. Ties are broken by
    the lower column index, so results are deterministic.
    """
    n, m = scores.shape
    k = min(k, m)
    if k == 0:
        return np.empty((n, 0), np.int64), np.empty((n, 0), scores.dtype)
    if k < m and m >= TOPK_LONG_ROW:
        idx = np.empty((n, k), dtype=np.int64)
        for r in range(n):
            found = _top_k_long_row(scores[r], k)
            idx[r] = found if found is not None else _top_k_rows(scores[r : r + 1], k)[0]
        return idx, np.take_along_axis(scores, idx, axis=1)
    idx = _top_k_rows(scores, k)
    return idx, np.take_along_axis(scores, idx, axis=1)


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_k`'s indices, vectorised over rows (``1 <= k <= m``)."""
    n, m = scores.shape
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # argpartition keeps an arbitrary subset of the items tied with the k-th best score;
        # the rule is the lowest indices, so a row with more such ties than slots is redone.
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
        crowded = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
        for r in crowded.tolist():
            row, t = scores[r], kth[r]
            above = np.flatnonzero(row > t)
            part[r] = np.concatenate([above, np.flatnonzero(row == t)[: k - len(above)]])
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    # sort by (-score, index): lexsort keys go last-first
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def _top_k_long_row(row: np.ndarray, k: int) -> np.ndarray | None:
    """:func:`top_k`'s indices for one long row, or ``None`` if NaN in the row gets in the way.

    The ``k``-th best of an evenly spaced sample of the row is at most the row's own ``k``-th
    best, so every item scoring at least that much is a candidate and the top ``k`` (ties
    included) are among them; the candidates are few, so ranking them is cheap. A select over
    the whole row (``argpartition``) costs about 10x more on 100,000 items, and numpy's
    selection slows down further on rows with many equal scores (popularity counts).
    """
    cand = _at_least_kth(row, row[:: max(1, len(row) // TOPK_SAMPLE)], k)
    if cand is None or len(cand) < k:
        return None
    # cand is in index order, so a stable sort by -score breaks ties by the lower index
    return cand[np.argsort(-row[cand], kind="stable")[:k]]


def _at_least_kth(row: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray | None:
    """Indices (in order) of the items of ``row`` scoring at least the ``k``-th best of
    ``sample`` (a subset of ``row``), hence a superset of ``row``'s top ``k``; ``None`` if the
    sample is shorter than ``k`` or its ``k``-th best is NaN."""
    if len(sample) < k:
        return None
    t = np.sort(sample)[len(sample) - k]  # a sort of the sample: no selection worst case
    if np.isnan(t):
        return None
    return np.flatnonzero(row >= t)


class Ranking:
    """The best ``size`` items of one score row, ranked once: best first, ties by lower index.

    Serves models whose row is shared by many users (popularity for every known user, the
    popularity fallback for every unknown one): a user's top-k is the first ``k`` ranked items
    they have not seen, so a read costs ``O(size + seen)`` instead of a pass over every item.
    Everything outside the prefix ranks below everything in it, so an answer found inside the
    prefix is exactly :func:`top_k`'s.
    """

    __slots__ = ("complete", "items", "scores", "version")

    def __init__(self, row: np.ndarray, size: int, version: int) -> None:
        n = len(row)
        cand = None
        if size < n:
            # Estimate the size-th best score from a sample (with a margin), take every item
            # scoring at least that, and check that there are at least `size` of them: then
            # they include the best `size`, ties and all. (numpy's selection is slow on rows
            # with many equal scores, such as popularity counts: 12 ms on 100,000 items.)
            sample = row[:: max(1, n // 8192)]
            want = min(len(sample), int(np.ceil(1.25 * size * len(sample) / n)) + 1)
            cand = _at_least_kth(row, sample, want)
            if cand is not None and len(cand) < size:
                cand = None  # the estimate fell short: rank everything
        if cand is None:
            cand = np.arange(n)
        # cand is in index order: a stable sort by -score breaks ties by the lower index
        ranked = cand[np.argsort(-row[cand], kind="stable")]
        self.items = ranked[:size].astype(np.int64)
        self.scores = row[self.items].astype(np.float64)
        self.complete = len(self.items) >= n
        self.version = version

    def top(self, k: int, seen: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The first ``k`` ranked items not in ``seen``, or ``None`` if the prefix runs out."""
        if seen is None or len(seen) == 0:
            keep = slice(0, k)
            if k <= len(self.items):
                return self.items[keep], self.scores[keep]
        else:
            # at most len(seen) of the first k + len(seen) ranked items are seen, so the answer
            # lies among them when the prefix holds that many
            head = k + len(seen)
            if head < len(self.items):
                idx = np.flatnonzero(~_member(self.items[:head], seen))[:k]
                return self.items[idx], self.scores[idx]
            mask = ~np.isin(self.items, seen)
            idx = np.flatnonzero(mask)[:k]
            if len(idx) == k:
                return self.items[idx], self.scores[idx]
            keep = idx  # type: ignore[assignment]
        if not self.complete:
            return None
        return self.items[keep], self.scores[keep]  # every candidate, fewer than k


def _member(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``np.isin(values, pool)`` for short arrays by a sorted lookup (4 µs where ``np.isin``
    takes 18-30 µs on 100-element arrays: its setup dominates at these sizes)."""
    ordered = np.sort(pool)
    pos = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return ordered[pos] == values  # type: ignore[no-any-return]
