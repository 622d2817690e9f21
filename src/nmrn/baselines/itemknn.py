r"""Streaming item-to-item nearest neighbours over co-occurrence counts.

When user :math:`u` consumes item :math:`j`, :math:`j` co-occurs with each of the last
``history_len`` items :math:`i` of :math:`u` (earlier events of the same batch included), and the
symmetric count :math:`c_{ij} = c_{ji}` grows by :math:`\delta^{a}`, where :math:`a` is the age of
:math:`i` (0 for the user's most recent item) and :math:`\delta` is ``cooc_decay`` (1 counts every
pair fully). Repeated consumption of the same item never pairs an item with itself.

The similarity of a history item :math:`i` to a candidate :math:`j` normalises the count by the
item counts :math:`n` (events so far):

.. math:: \mathrm{sim}(i, j) = \frac{c_{ij}}{n_i^{\alpha}\, n_j^{1-\alpha}}

(cosine for :math:`\alpha = 1/2`; :math:`\alpha = 1` is the conditional probability
:math:`P(j \mid i)`). The score of :math:`j` for :math:`u` sums over the user's last
``history_len`` items :math:`h_0, h_1, \dots` (:math:`h_0` the most recent):

.. math:: s(u, j) = \sum_a \rho^{a}\, \mathrm{sim}(h_a, j)

with :math:`\rho` = ``recency_decay`` (1 weighs the history uniformly). With ``directed=True``
the counts are not symmetric: :math:`c_{ij}` counts :math:`j` *following* :math:`i` (a
transition model: "what do people consume after the items this user just consumed", the
sequential rules of Ludewig & Jannach, UMUAI 2018, with recency weights). A user's own items score
like any other (``exclude_seen`` removes them). Exact ties, e.g. a user whose items co-occur
with nothing, are broken by all-time popularity: ``1e-9 * n_j / (n_events + 1)`` is added.

Storage. Counts are float32. Up to ``dense_max_items`` items they live in a dense square array
(grown by doubling). Beyond, the model switches, for good, to a sparse CSR matrix plus a second
CSR matrix of pending increments, to which each batch's increments are added (O(its pairs +
the pending non-zeros)); the pending matrix is merged into the main one (O(all non-zeros)) once
it holds more than a quarter of the main one's non-zeros. A growing catalogue only widens both
matrices (O(items)); it never forces a merge. Scores are ``profile @ main + profile @
pending`` (float32 products, added in float32).

Batching. With ``cooc_decay=1`` every count is an integer, exact in float32 up to
:math:`2^{24}` per pair, so the counts (:meth:`cooccurrence`) after a stream are bit for bit the
same however the stream was split into ``learn`` calls. With sparse counts the scores are not:
which counts are still pending depends on the calls, and ``(a + b) w`` differs from ``a w + b w``
in the last bit (a relative 1e-7; ties may then break otherwise). Adding each profile item's
main and pending rows before the product would remove that, at 1.8-2.3x the cost of a
single-user read at 100,000 items (measured; BENCHMARKS.md, "Item-kNN growth without merges"). Dense
counts are exact for any split. With ``cooc_decay < 1`` the counts are float32 sums whose last
bit depends on how the increments were grouped, as for any float accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from nmrn.config import Bool, Config, Int, Real, option
from nmrn.training.contract import Recommender
from nmrn.training.ranking import RANKING_PREFIX, Ranking, top_k
from nmrn.training.registry import register

TIE_EPS = 1e-9
# Pairs generated per slice of a large batch (bounds the memory of fit on a long history).
_PAIRS_PER_SLICE = 1 << 21
_MIN_MERGE = 1 << 16
# A user whose neighbours reach more than 1/_DENSE_SHARE of the items is scored over every item
# (dense numpy passes beat indexing that many candidates; BENCHMARKS.md, "item-kNN candidates").
_DENSE_SHARE = 8


@dataclass(frozen=True)
class ItemKNNConfig(Config):
    """Options of :class:`ItemKNN` (see its docstring for each one's meaning)."""

    history_len: int = option(100, Int(low=1))
    alpha: float = option(1.0, Real(low=0.0, high=1.0))
    recency_decay: float = option(0.9, Real(low=0.0, high=1.0, low_open=True))
    cooc_decay: float = option(1.0, Real(low=0.0, high=1.0, low_open=True))
    dense_max_items: int = option(4096, Int(low=0))
    directed: bool = option(False, Bool())
    seed: int = option(0, Int())


@register
class ItemKNN(Recommender):
    """Streaming item-kNN with a recency-weighted user profile.

    See the module docstring for the exact definitions.

    Parameters
    ----------
    history_len
        How many of a user's most recent items count, both when updating the co-occurrences
        and when scoring (bounds the update cost to ``history_len`` pairs per event).
    alpha
        Normalisation exponent in ``c_ij / (n_i**alpha * n_j**(1 - alpha))``, in ``[0, 1]``.
        The default 1 (the conditional probability ``P(j | i)``) beat the cosine (0.5) on a
        validation tail of the MovieLens-100K history (``docs/tuning.md``).
    recency_decay
        Weight ``recency_decay ** age`` of a history item when scoring, in ``(0, 1]``
        (``1.0``, the unweighted profile, scored 0.0663 in the check above against 0.0725 for
        the default 0.9).
    cooc_decay
        Weight ``cooc_decay ** age`` of a co-occurrence increment, in ``(0, 1]``.
    dense_max_items
        Largest catalogue kept in a dense ``[n_items, n_items]`` float32 array; above it the
        counts are sparse.
    directed
        Count ``i -> j`` (``j`` after ``i``) only: scores are what tends to follow the user's
        recent items, instead of what co-occurs with them.
    seed
        Unused (no randomness); kept for a uniform constructor.

    Examples
    --------
    >>> rec = ItemKNN(recency_decay=1.0).fit(
    ...     [("a", "x", 0), ("a", "y", 1), ("b", "x", 2), ("b", "y", 3), ("c", "x", 4)])
    >>> rec.recommend("c", k=1).items.tolist()
    ['y']
    """

    config_class = ItemKNNConfig

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        return {
            "dense": {"history_len": 8, "recency_decay": 0.8, "cooc_decay": 0.9},
            # a tiny dense limit: the catalogue outgrows it, so the sparse storage is exercised
            "sparse": {"history_len": 8, "recency_decay": 0.8, "dense_max_items": 10},
            "directed": {"history_len": 5, "directed": True, "dense_max_items": 10},
        }

    def __init__(self, config: Any = None, /, **options: Any) -> None:
        super().__init__(config, **options)
        self._n = 0
        self._dense: np.ndarray | None = np.zeros((0, 0), dtype=np.float32)
        self._main: sp.csr_matrix | None = None
        self._pending: sp.csr_matrix | None = None  # increments not yet merged into _main
        self._factors: tuple[int, np.ndarray, np.ndarray] | None = None  # see _column_factors

    # -- storage ---------------------------------------------------------------------------------
    @property
    def is_sparse(self) -> bool:
        """Whether the co-occurrence counts are stored sparse (the catalogue outgrew dense)."""
        return self._dense is None

    def _grow(self, n_users: int, n_items: int) -> None:
        if n_items <= self._n:
            return
        if self._dense is not None and n_items > self.config.dense_max_items:
            block = self._dense[: self._n, : self._n]
            self._main = sp.csr_matrix(block, dtype=np.float32)
            self._pending = _empty(self._n)
            self._dense = None
        if self._dense is not None:
            cap = len(self._dense)
            if n_items > cap:
                new_cap = min(max(n_items, 2 * cap, 16), self.config.dense_max_items)
                grown = np.zeros((new_cap, new_cap), dtype=np.float32)
                grown[: self._n, : self._n] = self._dense[: self._n, : self._n]
                self._dense = grown
        else:
            assert self._main is not None and self._pending is not None
            # new rows and columns are empty: O(n_items), whatever the number of counts
            self._main.resize((n_items, n_items))
            self._pending.resize((n_items, n_items))
        self._n = n_items

    def _add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Add ``vals`` at ``(rows, cols)`` and (unless directed) at ``(cols, rows)``;
        duplicates accumulate."""
        if len(rows) == 0:
            return
        if self._dense is not None and (vals == 1.0).all():  # cooc_decay 1: integer counts
            self._add_ones(rows, cols)
        else:
            self._add_grouped(rows, cols, vals)

    def _add_grouped(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """:meth:`_add` with the pairs' weights summed per pair first."""
        n = self._n
        if self.config.directed:
            keys, weights = rows * n + cols, vals
        else:
            keys = np.concatenate([rows * n + cols, cols * n + rows])
            weights = np.concatenate([vals, vals])
        uniq, inv = np.unique(keys, return_inverse=True)
        sums = np.bincount(inv, weights=weights).astype(np.float32)
        r, c = np.divmod(uniq, n)
        if self._dense is not None:
            self._dense[r, c] += sums
            return
        assert self._main is not None and self._pending is not None
        # the keys are sorted: (row, column) order, so the CSR arrays are built directly
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
        batch = sp.csr_matrix((sums, c, indptr), shape=(n, n))
        self._pending = (self._pending + batch).tocsr()
        if self._pending.nnz > max(_MIN_MERGE, self._main.nnz // 4):
            self._merge()

    def _add_ones(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """:meth:`_add` of weight 1 at each pair, into the dense counts, without grouping the
        pairs first: every count is an integer, exact in float32 (up to ``2**24``), so adding
        ones one at a time gives the very bits that summing them first does (~10x cheaper
        than the sort that grouping takes)."""
        assert self._dense is not None
        assert self._dense.flags.c_contiguous  # so that the flat view below is no copy
        flat = self._dense.reshape(-1)
        cap = len(self._dense)
        one = np.float32(1.0)
        np.add.at(flat, rows * cap + cols, one)
        if not self.config.directed:
            np.add.at(flat, cols * cap + rows, one)

    def _merge(self) -> None:
        assert self._main is not None and self._pending is not None
        if self._pending.nnz:
            self._main = (self._main + self._pending).tocsr()
            self._pending = _empty(self._n)

    def _sparse_counts(self) -> sp.csr_matrix:
        """Main plus pending counts (O(non-zeros); ``_main`` itself when nothing is pending)."""
        assert self._main is not None and self._pending is not None
        if not self._pending.nnz:
            return self._main
        return (self._main + self._pending).tocsr()

    def _raw_sparse(self, profile: sp.csr_matrix) -> np.ndarray:
        """``profile @ main + profile @ pending`` as a dense float32 array ``[n, n_items]``.

        Two float32 products, the pending one added in float32. A sparse product sums each
        row in the order of its profile's columns, so a user's raw scores do not depend on who
        else is in ``profile``; they do depend, in the last bits, on which counts were still
        pending (``(a + b) w`` against ``a w + b w``). Adding each profile item's main and
        pending rows before the product removes that dependence, but cost a single-user read
        at 100,000 items 1.8-2.3x (BENCHMARKS.md, "Item-kNN growth without merges"), so it is
        not done.
        """
        assert self._main is not None and self._pending is not None
        raw = (profile @ self._main).toarray()
        if self._pending.nnz:
            raw += (profile @ self._pending).toarray()
        return raw

    def cooccurrence(self) -> sp.csr_matrix:
        """The symmetric co-occurrence counts ``[n_items, n_items]`` (a float32 copy)."""
        if self._dense is not None:
            return sp.csr_matrix(self._dense[: self._n, : self._n])
        return self._sparse_counts().copy()

    # -- learning --------------------------------------------------------------------------------
    def _fit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._update(users, items)

    def _learn(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._update(users, items)

    def _update(self, users: np.ndarray, items: np.ndarray) -> None:
        size = self.config.history_len
        # One sequence per user: their last `size` earlier items, then this batch's items.
        order = np.argsort(users, kind="stable")
        su, si = users[order], items[order]
        cuts = np.flatnonzero(np.diff(su)) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        ends = np.concatenate([cuts, [len(su)]]).tolist()
        seqs, first, pos = [], [], []
        offset = 0
        for s, e in zip(starts, ends, strict=True):
            tail = self.history.items_of(int(su[s]))[-size:]
            seqs.append(tail)
            seqs.append(si[s:e])
            first.append(np.full(e - s, offset, dtype=np.int64))
            pos.append(offset + len(tail) + np.arange(e - s, dtype=np.int64))
            offset += len(tail) + (e - s)
        seq = np.concatenate(seqs)
        seq_first = np.concatenate(first)  # [n] where each event's user sequence starts
        event_pos = np.concatenate(pos)  # [n] where each event sits in `seq`
        age_weight = self.config.cooc_decay ** np.arange(size, dtype=np.int64)
        step = max(1, _PAIRS_PER_SLICE // size)
        for lo in range(0, len(event_pos), step):
            g = event_pos[lo : lo + step]
            # each event pairs with its user's items at ages 0 .. n_prev - 1 before it: the
            # pairs event by event, ages ascending (without a [b, size] mask)
            n_prev = np.minimum(g - seq_first[lo : lo + step], size)
            at = np.repeat(g, n_prev)
            age = np.arange(len(at)) - np.repeat(np.cumsum(n_prev) - n_prev, n_prev)
            prev = seq[at - 1 - age]
            cur = seq[at]
            keep = prev != cur
            self._add(prev[keep], cur[keep], age_weight[age[keep]])

    # -- scoring ---------------------------------------------------------------------------------
    def _profile(self, users: np.ndarray, decay: float) -> sp.csr_matrix:
        """User profiles ``[n, n_items]``: ``decay ** age / n_i ** alpha`` per item."""
        size = self.config.history_len
        inv_norm = np.maximum(self.item_counts, 1.0) ** -self.config.alpha
        tails = [self.history.items_of(int(u))[-size:] for u in users.tolist()]
        lens = np.fromiter((len(t) for t in tails), dtype=np.int64, count=len(tails))
        cols = np.concatenate(tails) if tails else np.empty(0, np.int64)
        rows = np.repeat(np.arange(len(users)), lens)
        # age 0 is the last item of each tail
        ends = np.repeat(np.cumsum(lens), lens)
        age = ends - 1 - np.arange(len(cols))
        vals = decay ** age.astype(np.float64) * inv_norm[cols]
        return sp.csr_matrix(
            (vals.astype(np.float32), (rows, cols)), shape=(len(users), self._n), dtype=np.float32
        )

    def _raw_dense(self, user: int, decay: float) -> np.ndarray:
        """``sum_a rho**a c[h_a, :] / n_{h_a}**alpha`` for one user (``rho = decay``), from the
        dense counts.

        Profile weights are rounded to float32 (the counts' precision); an item that occurs
        more than once in the tail has its weights summed in float32 in ascending order; the
        weighted rows are summed in float64 in ascending item order. The result is a function
        of the user's history alone (never of who else is scored alongside).
        """
        assert self._dense is not None
        tail = self.history.items_of(user)[-self.config.history_len :]
        n = len(tail)
        if n == 0:
            return np.zeros(self._n)
        age = np.arange(n - 1, -1, -1, dtype=np.float64)  # 0 for the most recent item
        inv_norm = np.maximum(self.item_counts[tail], 1.0) ** -self.config.alpha
        vals = (decay**age * inv_norm).astype(np.float32)
        order = np.lexsort((vals, tail))
        cols, vals = tail[order], vals[order]
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(cols[1:], cols[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        weights = np.add.reduceat(vals, starts).astype(np.float64)
        # reducing over axis 0 adds the rows one after the other, in item order
        return (weights[:, None] * self._dense[cols[starts], : self._n]).sum(axis=0)

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return self.scores_with_decay(users, self.config.recency_decay)

    def scores_with_decay(self, users: np.ndarray, decay: float) -> np.ndarray:
        """:meth:`_score_all` with another ``recency_decay`` (the same counts): ``[n, n_items]``
        for known user indices. A hybrid reads the same counts at several recencies."""
        if self._dense is not None:
            raw = np.empty((len(users), self._n))
            for row, user in enumerate(users.tolist()):
                raw[row] = self._raw_dense(user, decay)
        else:
            raw = self._raw_sparse(self._profile(users, decay)).astype(np.float64)
        # computed on every call: a hybrid drives this model's _learn and counts directly, so
        # its state version does not track them (the cached copy is for recommend only)
        col_norm, tie = self._factors_of(self.item_counts, self.n_events)
        return raw * col_norm[None, :] + tie[None, :]

    def _factors_of(self, counts: np.ndarray, n_events: int) -> tuple[np.ndarray, np.ndarray]:
        """``n_j ** (alpha - 1)`` and the tie-breaker ``TIE_EPS * share_j`` of every item."""
        return (np.maximum(counts, 1.0) ** (self.config.alpha - 1.0),
                TIE_EPS * (counts / (n_events + 1.0)))

    def _column_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_factors_of` the model's own counts, kept until it learns (a pass of ``**``
        over 100,000 items costs ~0.5 ms a read). For :meth:`recommend` only: every ingest
        bumps the state version, which a hybrid's direct calls do not."""
        cached = self._factors
        if cached is None or cached[0] != self._state_version:
            cached = self._factors = (self._state_version,
                                      *self._factors_of(self.item_counts, self.n_events))
        return cached[1], cached[2]

    def _candidate_top_k(
        self, u: np.ndarray, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k from the neighbours of each user's items, never a pass over the catalogue.

        With sparse counts, a user's raw score is non-zero only on the columns of the sparse
        product ``profile @ counts`` (the neighbours of their last items); every other item
        scores exactly the popularity tie-breaker ``TIE_EPS * share``, whose ranking is shared
        by everyone (cached per model state). So the top-k is the best of the candidates, scored
        as :meth:`scores_with_decay` scores them (the same float32 products and float64
        arithmetic, column by column), merged with the first items of that ranking outside the
        candidates and the user's seen items. ``None`` (score every item) with dense counts,
        for an unknown user, or when fewer than ``k`` items are left to recommend. (Where the
        neighbours cover most of the catalogue, this costs about what scoring every item
        costs: the sparse product is the same; BENCHMARKS.md, "item-kNN candidates".)
        """
        if self._dense is not None or self._main is None or (u < 0).any():
            return None
        n = self._n
        width = min(k, n)
        col_norm, tie = self._column_factors()
        found = self._rankings.get("knn-ties")
        if found is None or found.version != self._state_version:
            found = self._rankings["knn-ties"] = Ranking(tie, RANKING_PREFIX, self._state_version)
        idx = np.zeros((len(u), width), dtype=np.int64)
        vals = np.zeros((len(u), width))
        for row, user in enumerate(u.tolist()):
            seen = self.history.items_of(user) if exclude_seen else np.empty(0, np.int64)
            if n - len(seen) < width:
                return None  # fewer items left than asked: the full path pads with -inf
            # raw scores as the full path makes them: float32 products, the pending counts'
            # product added in float32; candidates = the columns either product reaches, in
            # item order (so top_k's tie rule, the lower index, holds among them)
            profile = self._profile_of(user, self.config.recency_decay)
            main = profile @ self._main
            pending = profile @ self._pending if self._pending.nnz else None
            reach = main.nnz + (pending.nnz if pending is not None else 0)  # >= the candidates
            if reach * _DENSE_SHARE > n:
                # the neighbours may cover much of the catalogue: finish as the full path does
                raw = main.toarray()[0]
                if pending is not None:
                    raw += pending.toarray()[0]
                scores = raw.astype(np.float64) * col_norm + tie
                scores[seen] = -np.inf
                found_idx, found_vals = top_k(scores[None], width)
                idx[row], vals[row] = found_idx[0], found_vals[0]
                continue
            raw = np.zeros(n, dtype=np.float32)
            reached = np.zeros(n, dtype=bool)
            raw[main.indices] = main.data
            reached[main.indices] = True
            if pending is not None:
                raw[pending.indices] += pending.data
                reached[pending.indices] = True
            excluded = reached.copy()  # candidates and seen items leave the tie ranking
            if len(seen):
                excluded[seen] = True
                reached[seen] = False
            cand = np.flatnonzero(reached)
            score = raw[cand].astype(np.float64) * col_norm[cand] + tie[cand]
            if len(cand) > width:
                pick = top_k(score[None], width)[0][0]
                cand, score = cand[pick], score[pick]
            # the best of the rest: every other item scores TIE_EPS * share (raw 0)
            free = np.flatnonzero(~excluded[found.items])[:width]
            if len(free) == width or found.complete:
                rest_idx, rest_val = found.items[free], found.scores[free]
            else:  # the shared ranking's prefix ran out: rank the other items here
                left = np.flatnonzero(~excluded)
                pick = top_k(tie[left][None], min(width, len(left)))[0][0]
                rest_idx, rest_val = left[pick], tie[left][pick]
            all_idx = np.concatenate([cand, rest_idx])
            all_vals = np.concatenate([score, rest_val])
            best = np.lexsort((all_idx, -all_vals))[:width]  # top_k's order: ties by lower index
            if len(best) < width:
                return None
            idx[row], vals[row] = all_idx[best], all_vals[best]
        return idx, vals

    def _profile_of(self, user: int, decay: float) -> sp.csr_matrix:
        """:meth:`_profile` of one user, computing the item norms of their tail only."""
        tail = self.history.items_of(user)[-self.config.history_len :]
        age = np.arange(len(tail) - 1, -1, -1, dtype=np.float64)
        inv_norm = np.maximum(self.item_counts[tail], 1.0) ** -self.config.alpha
        vals = decay**age * inv_norm
        return sp.csr_matrix(
            (vals.astype(np.float32), (np.zeros(len(tail), np.int64), tail)),
            shape=(1, self._n), dtype=np.float32,
        )

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # main and pending counts apart (pending as linear keys row * n + column): a loaded
        # model computes the same float32 products as the saved one
        pend_keys, pend_vals = np.empty(0, np.int64), np.empty(0, np.float32)
        if self._dense is not None:
            main = sp.csr_matrix(self._dense[: self._n, : self._n])
        else:
            assert self._main is not None and self._pending is not None
            main = self._main
            if self._pending.nnz:
                pending = self._pending.tocoo()
                pend_keys = pending.row.astype(np.int64) * self._n + pending.col
                pend_vals = pending.data.astype(np.float32)
        arrays = {
            "cooc_indptr": main.indptr.astype(np.int64),
            "cooc_indices": main.indices.astype(np.int64),
            "cooc_data": main.data.astype(np.float32),
            "pending_keys": pend_keys,
            "pending_vals": pend_vals,
        }
        return arrays, {"sparse": self._dense is None}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        n = self._n
        main = sp.csr_matrix(
            (arrays["cooc_data"], arrays["cooc_indices"], arrays["cooc_indptr"]),
            shape=(n, n),
            dtype=np.float32,
        )
        if bool(meta["sparse"]) != (n > self.config.dense_max_items):
            raise ValueError("item-knn storage kind does not match the catalogue size")
        if self._dense is not None:
            self._dense[:n, :n] = main.toarray()
        else:
            self._main = main
            # linear keys row * n + column of counts not merged when the checkpoint was written
            r, c = np.divmod(arrays["pending_keys"].astype(np.int64), max(n, 1))
            self._pending = sp.csr_matrix(
                (arrays["pending_vals"].astype(np.float32), (r, c)), shape=(n, n),
                dtype=np.float32,
            )


def _empty(n: int) -> sp.csr_matrix:
    return sp.csr_matrix((n, n), dtype=np.float32)
