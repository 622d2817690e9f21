"""Ranking metrics with ties, as pure vectorised functions.

A test event is summarised by two counts over its candidate items (the target excluded):
``n_greater``, the candidates scored strictly above the target, and ``n_tied``, the candidates
scored exactly like it. With ``g = n_greater`` and ``t = n_tied`` the target's rank is
``g + 1`` when no score ties it, and otherwise any of ``g + 1, ..., g + t + 1``.

Ties are resolved by **expectation under uniformly random tie-breaking**: the target is equally
likely to land at each of the ``t + 1`` tied positions, and a metric is the average of its
values at those positions,

.. math::

    \\mathbb{E}[f] = \\frac{1}{t + 1} \\sum_{r = g + 1}^{g + t + 1} f(r).

So a constant scorer over ``m`` candidates gets ``Hits@k = k / m`` (the chance of a random
ranking), never a free hit, and with no ties (``t = 0``) every metric is its plain value at
rank ``g + 1``. (The other reading, the metric at the expected rank ``g + 1 + t / 2``, is not
what these functions compute: it would still hand a constant scorer ``Hits@k = 1`` for
``m <= 2k - 1``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["expected_hits", "expected_ndcg", "expected_rr", "rank_counts"]

# Below this, harmonic numbers come from an exact table; above it, from the asymptotic series,
# whose first omitted term (1 / (252 n^6)) is below 1e-16 there.
_HARMONIC_TABLE_SIZE = 256
_EULER_GAMMA = 0.57721566490153286061
_HARMONIC_TABLE = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, _HARMONIC_TABLE_SIZE))])


def _counts(n_greater: Any, n_tied: Any) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(n_greater)
    t = np.asarray(n_tied)
    for name, arr in (("n_greater", g), ("n_tied", t)):
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
                continue
            raise TypeError(f"{name} must hold integer counts, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} must be >= 0, got {arr.min()}")
    g, t = np.broadcast_arrays(g.astype(np.int64), t.astype(np.int64))
    return g, t


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return int(k)


def expected_hits(n_greater: Any, n_tied: Any, k: int) -> np.ndarray:
    """Expected Hits@k under uniformly random tie-breaking.

    .. math::

        \\mathbb{E}[\\mathrm{Hits@}k] = \\frac{\\min(g + t + 1, k) - \\min(g, k)}{t + 1}

    Parameters
    ----------
    n_greater, n_tied
        Integer counts, broadcastable to a common shape ``[n]``.
    k
        Cut-off, ``>= 1``.

    Returns
    -------
    numpy.ndarray
        float64 ``[n]`` in ``[0, 1]``.

    Examples
    --------
    >>> expected_hits([0, 9, 10, 4], [0, 0, 0, 3], 10).tolist()
    [1.0, 1.0, 0.0, 1.0]
    >>> expected_hits(4, 3, 5).item()  # ranks 5..8 equally likely: only rank 5 is a hit
    0.25
    """
    g, t = _counts(n_greater, n_tied)
    k = _check_k(k)
    return (np.minimum(g + t + 1, k) - np.minimum(g, k)) / (t + 1.0)


def _dcg_prefix(k: int) -> np.ndarray:
    """``D[r] = sum_{i=1..r} 1 / log2(i + 1)`` for ``r = 0..k``, shape ``[k + 1]``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])


def expected_ndcg(n_greater: Any, n_tied: Any, k: int) -> np.ndarray:
    """Expected NDCG@k of a single relevant item under uniformly random tie-breaking.

    With one relevant item the ideal DCG is 1, so NDCG@k at rank ``r`` is
    ``1 / log2(r + 1)`` if ``r <= k`` and 0 otherwise; this returns its average over the tied
    ranks ``g + 1 .. g + t + 1``.

    Parameters
    ----------
    n_greater, n_tied
        Integer counts, broadcastable to a common shape ``[n]``.
    k
        Cut-off, ``>= 1``.

    Returns
    -------
    numpy.ndarray
        float64 ``[n]`` in ``[0, 1]``.

    Examples
    --------
    >>> expected_ndcg([0, 1, 10], [0, 0, 0], 10).round(4).tolist()
    [1.0, 0.6309, 0.0]
    >>> expected_ndcg(0, 1, 10).round(4).item()  # (1 + 1/log2(3)) / 2
    0.8155
    """
    g, t = _counts(n_greater, n_tied)
    k = _check_k(k)
    prefix = _dcg_prefix(k)
    return (prefix[np.minimum(g + t + 1, k)] - prefix[np.minimum(g, k)]) / (t + 1.0)


def _harmonic(n: np.ndarray) -> np.ndarray:
    """Harmonic numbers ``H(n) = sum_{i=1..n} 1/i`` for integer ``n >= 0`` (float64)."""
    n = np.asarray(n, dtype=np.int64)
    out = np.empty(n.shape, dtype=np.float64)
    small = n < _HARMONIC_TABLE_SIZE
    out[small] = _HARMONIC_TABLE[n[small]]
    x = n[~small].astype(np.float64)
    inv2 = 1.0 / (x * x)
    out[~small] = np.log(x) + _EULER_GAMMA + 0.5 / x - inv2 / 12.0 + inv2 * inv2 / 120.0
    return out


def expected_rr(n_greater: Any, n_tied: Any) -> np.ndarray:
    """Expected reciprocal rank under uniformly random tie-breaking (its mean is the MRR).

    .. math::

        \\mathbb{E}[1/r] = \\frac{H(g + t + 1) - H(g)}{t + 1},

    with ``H`` the harmonic numbers; ``1 / (g + 1)`` when ``t = 0``.

    Parameters
    ----------
    n_greater, n_tied
        Integer counts, broadcastable to a common shape ``[n]``.

    Returns
    -------
    numpy.ndarray
        float64 ``[n]`` in ``(0, 1]``.

    Examples
    --------
    >>> expected_rr([0, 1, 3], [0, 0, 0]).tolist()
    [1.0, 0.5, 0.25]
    >>> expected_rr(0, 1).item()  # (1 + 1/2) / 2
    0.75
    """
    g, t = _counts(n_greater, n_tied)
    no_tie = t == 0
    out = np.empty(g.shape, dtype=np.float64)
    out[no_tie] = 1.0 / (g[no_tie] + 1.0)
    gt, tt = g[~no_tie], t[~no_tie]
    out[~no_tie] = (_harmonic(gt + tt + 1) - _harmonic(gt)) / (tt + 1.0)
    return out


def rank_counts(
    scores: Any, target_col: Any, excluded_mask: Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Count the candidates scored above and level with each row's target.

    Parameters
    ----------
    scores
        ``[n, m]`` scores, higher is better (``-inf`` is allowed, NaN is not).
    target_col
        ``[n]`` column of each row's target item.
    excluded_mask
        Optional bool ``[n, m]``: candidates left out of the ranking (e.g. items the user has
        already consumed). The target's own column is never excluded, whatever the mask says.

    Returns
    -------
    n_greater, n_tied
        int64 ``[n]`` each; the target itself is not counted among the ties.

    Raises
    ------
    ValueError
        If the shapes disagree, a target column is out of range, or a score is NaN.

    Examples
    --------
    >>> scores = [[0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]]
    >>> g, t = rank_counts(scores, [1, 3])
    >>> g.tolist(), t.tolist()
    ([1, 0], [1, 3])
    >>> g, t = rank_counts(scores, [1, 3], [[True, False, False, False], [False] * 4])
    >>> g.tolist(), t.tolist()
    ([0, 0], [1, 3])
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n, m], got shape {scores.shape}")
    n, m = scores.shape
    target_col = np.asarray(target_col, dtype=np.int64).reshape(-1)
    if target_col.shape != (n,):
        raise ValueError(f"target_col must be [{n}], got shape {target_col.shape}")
    if n and (target_col.min() < 0 or target_col.max() >= m):
        raise ValueError(
            f"target_col must lie in [0, {m}), got {target_col.min()}..{target_col.max()}"
        )
    if np.isnan(scores).any():
        row = int(np.flatnonzero(np.isnan(scores).any(axis=1))[0])
        raise ValueError(f"scores contain NaN (first in row {row}); a ranking needs real numbers")
    rows = np.arange(n)
    target = scores[rows, target_col][:, None]  # [n, 1]
    above = scores > target  # [n, m]
    level = scores == target  # [n, m]; includes the target's own column
    if excluded_mask is not None:
        keep = ~np.asarray(excluded_mask, dtype=bool)
        if keep.shape != (n, m):
            raise ValueError(f"excluded_mask must be [{n}, {m}], got shape {keep.shape}")
        keep[rows, target_col] = True
        above &= keep
        level &= keep
    return above.sum(axis=1).astype(np.int64), level.sum(axis=1).astype(np.int64) - 1
