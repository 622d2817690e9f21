r"""EASE, streamed: the closed-form item-item linear model of Steck (WWW 2019), kept exact online.

EASE ("Embarrassingly Shallow Autoencoders for Sparse Data") learns an item-item weight matrix
:math:`B` with a zero diagonal that reconstructs each user's row :math:`x_u` of the binary
user-item matrix :math:`X` from the user's other items, with an L2 penalty :math:`\lambda`:

.. math:: \min_B \|X - XB\|_F^2 + \lambda \|B\|_F^2 \quad \text{s.t. } \mathrm{diag}(B) = 0,

whose solution is :math:`P = (G + \lambda I)^{-1}` with the Gram matrix :math:`G = X^\top X`,
and :math:`B_{ij} = -P_{ij} / P_{jj}` off the diagonal. It is one of the strongest simple
top-N models of the literature (Steck 2019; Anelli et al., RecSys 2022).

Streaming. :math:`G_{ij}` is the number of users who consumed both :math:`i` and :math:`j`
(:math:`G_{ii}`: the users of :math:`i`); an event that gives a user a new item :math:`j`
adds :math:`x_u e_j^\top + e_j x_u^\top + e_j e_j^\top`, so :math:`G` after a batch is the
same however the batch is split, and a repeated item changes nothing. :math:`B` is a function of
:math:`G` alone, solved again at the first read after :math:`G` changed (one
:math:`O(n_{items}^3)` solve per read-after-learn, ~0.1 s at 1,700 items), so a model's scores
never depend on how its events were batched.

Scoring. A user's profile weighs their last ``history_len`` events by ``recency_decay ** age``
(age 0 for the most recent; a repeated item adds its weights), and the score of :math:`j` is
:math:`\sum_i p_{u,i} B_{ij}`: the original EASE is ``recency_decay = 1`` with a long enough
history. Exact ties (a user whose items predict nothing) are broken by all-time popularity,
``1e-9 * n_j / (n_events + 1)``, as in item-kNN.

Size. :math:`G` and :math:`B` are dense ``[n_items, n_items]`` float64 arrays (16 bytes per
pair of items: 45 MB at 1,682 items, 1.6 GB at 10,000): a catalogue over ``max_items`` is
refused with an error that says so. This model is for catalogues of up to a few 10^4 items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from nmrn.config import Config, Int, Real, option
from nmrn.data.events import as_events
from nmrn.errors import ModelFitError
from nmrn.training.contract import Recommender
from nmrn.training.registry import register

TIE_EPS = 1e-9


@dataclass(frozen=True)
class EASEConfig(Config):
    """Options of :class:`EASE` (see its docstring for each one's meaning)."""

    l2: float = option(500.0, Real(low=0.0, low_open=True))
    history_len: int = option(1000, Int(low=1))
    recency_decay: float = option(1.0, Real(low=0.0, high=1.0, low_open=True))
    max_items: int = option(20_000, Int(low=1))
    seed: int = option(0, Int())


@register
class EASE(Recommender):
    r"""EASE over the stream: an item-item linear model solved in closed form from the Gram
    matrix of who consumed what, kept exact under ``learn``.

    See the module docstring for the definitions.

    Parameters
    ----------
    l2
        :math:`\lambda`, the L2 penalty on :math:`B` (> 0; larger shrinks towards popularity-free
        zero weights).
    history_len
        How many of a user's most recent events make their profile when scoring.
    recency_decay
        Weight ``recency_decay ** age`` of a profile event, in ``(0, 1]`` (1: EASE's binary row).
    max_items
        The largest catalogue this model accepts (its arrays grow with the square of it).
    seed
        Unused (no randomness); kept for a uniform constructor.

    Examples
    --------
    >>> rec = EASE(l2=1.0).fit(
    ...     [("a", "x", 0), ("a", "y", 1), ("b", "x", 2), ("b", "y", 3), ("c", "x", 4)])
    >>> rec.recommend("c", k=1).items.tolist()
    ['y']
    """

    config_class = EASEConfig

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        return {
            "default": {"l2": 2.0},
            "recent": {"l2": 0.5, "history_len": 4, "recency_decay": 0.7},
        }

    def __init__(self, config: Any = None, /, **options: Any) -> None:
        super().__init__(config, **options)
        self._n = 0
        self._gram = np.zeros((0, 0))  # capacity >= self._n; only [:n, :n] is meaningful
        self._weights: np.ndarray | None = None  # B for the current Gram matrix, or None

    # -- learning --------------------------------------------------------------------------------
    def _ingest(self, events: Any, method: str) -> None:
        # Refused before the base class grows its id maps, so a refused batch changes nothing.
        batch = as_events(events, where=f"EASE.{method}")
        unseen = self.items.encode(batch.items, missing=-1) < 0
        n_items = len(self.items) + len(np.unique(batch.items[unseen]))
        if n_items > self.config.max_items:
            raise ModelFitError(
                f"EASE: the catalogue would reach {n_items} items, over max_items="
                f"{self.config.max_items} (its dense item-item arrays take 16 bytes per pair of "
                "items); raise max_items or use item-knn"
            )
        super()._ingest(batch, method)

    def _grow(self, n_users: int, n_items: int) -> None:
        if n_items <= self._n:
            return
        if n_items > self.config.max_items:  # a hybrid grows its components directly
            raise ModelFitError(f"EASE: {n_items} items is over max_items={self.config.max_items}")
        cap = len(self._gram)
        if n_items > cap:
            new_cap = min(max(n_items, 2 * cap, 16), self.config.max_items)
            grown = np.zeros((new_cap, new_cap))
            grown[: self._n, : self._n] = self._gram[: self._n, : self._n]
            self._gram = grown
        self._n = n_items
        self._weights = None

    def _add(self, users: np.ndarray, items: np.ndarray) -> None:
        """Add the batch's new (user, item) pairs to the Gram matrix (exact integer counts)."""
        order = np.argsort(users, kind="stable")
        su, si = users[order], items[order]
        cuts = np.flatnonzero(np.diff(su)) + 1
        gram = self._gram
        for s, e in zip(np.concatenate([[0], cuts]).tolist(),
                        np.concatenate([cuts, [len(su)]]).tolist(), strict=True):
            old = np.unique(self.history.items_of(int(su[s])))
            new = np.setdiff1d(np.unique(si[s:e]), old, assume_unique=True)
            if len(new) == 0:
                continue
            gram[np.ix_(new, old)] += 1.0
            gram[np.ix_(old, new)] += 1.0
            gram[np.ix_(new, new)] += 1.0
        self._weights = None

    def _fit(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
             weights: np.ndarray | None) -> None:
        self._add(users, items)

    def _learn(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
               weights: np.ndarray | None) -> None:
        self._add(users, items)

    def item_weights(self) -> np.ndarray:
        """:math:`B` ``[n_items, n_items]`` for the events so far (solved when the Gram matrix
        has changed since the last call; a view of the cached array)."""
        if self._weights is None or len(self._weights) != self._n:
            n = self._n
            system = self._gram[:n, :n] + self.config.l2 * np.eye(n)
            # G + l2 I is symmetric positive definite: a Cholesky inverse (LAPACK potri) halves
            # the work of a general one; potri fills the upper triangle only.
            chol, info = scipy.linalg.lapack.dpotrf(system, lower=False)
            if info == 0:
                inv, info = scipy.linalg.lapack.dpotri(chol, lower=False)
            if info != 0:  # cannot happen for l2 > 0 and finite counts
                raise ModelFitError(f"EASE: the Gram system is not positive definite ({info})")
            inv = np.triu(inv) + np.triu(inv, 1).T
            weights = -inv / np.diag(inv)[None, :]
            np.fill_diagonal(weights, 0.0)
            self._weights = weights
        return self._weights

    # -- scoring ---------------------------------------------------------------------------------
    def _profiles(self, users: np.ndarray) -> sp.csr_matrix:
        size, decay = self.config.history_len, self.config.recency_decay
        tails = [self.history.items_of(int(u))[-size:] for u in users.tolist()]
        lens = np.fromiter((len(t) for t in tails), dtype=np.int64, count=len(tails))
        cols = np.concatenate(tails) if tails else np.empty(0, np.int64)
        rows = np.repeat(np.arange(len(users)), lens)
        age = np.repeat(np.cumsum(lens), lens) - 1 - np.arange(len(cols))  # 0: the last item
        vals = decay ** age.astype(np.float64)
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(users), self._n))

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        weights = self.item_weights()
        tie = TIE_EPS * (self.item_counts / (self.n_events + 1.0))
        out = np.empty((len(users), self._n))
        # one user at a time: a user's scores never depend on who else is scored with them
        for row, user in enumerate(users.tolist()):
            profile = self._profiles(np.array([user]))
            out[row] = profile.data @ weights[profile.indices] + tie
        return out

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"gram": self._gram[: self._n, : self._n].copy()}, {}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        gram = np.asarray(arrays["gram"], dtype=np.float64)
        n = self._n
        if gram.shape != (n, n):
            raise ValueError(f"EASE gram has shape {gram.shape}, expected {(n, n)}")
        if not np.all(np.isfinite(gram)) or (gram < 0).any() or not np.array_equal(gram, gram.T):
            raise ValueError("EASE gram must be a symmetric array of non-negative counts")
        self._gram[:n, :n] = gram
        self._weights = None
