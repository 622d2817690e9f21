"""Popularity baselines: all-time counts and counts over the recent past.

Both ignore the user: every known user gets the same ranking, minus the items they have already
consumed (``exclude_seen``). They are the floor any personalised model must clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nmrn.config import Config, Int, Maybe, Real, option
from nmrn.data.growth import grow_array
from nmrn.errors import ConfigError
from nmrn.training.contract import Recommender
from nmrn.training.registry import register

DEFAULT_WINDOW = 1000
# Decayed scores are rescaled once the running inflation factor passes this (see RecentPopularity).
_RESCALE_AT = 1e200
# In "half_life" mode, near-ties closer than this are broken by all-time popularity.
DECAY_TIE_EPS = 1e-9


@dataclass(frozen=True)
class RecentPopularityConfig(Config):
    """Options of :class:`RecentPopularity` (see its docstring): ``window`` or ``half_life``."""

    window: int | None = option(None, Maybe(Int(low=1)))
    half_life: float | None = option(None, Maybe(Real(low=0.0, low_open=True)))
    seed: int = option(0, Int())

    def _validate(self) -> None:
        if self.window is not None and self.half_life is not None:
            raise ConfigError(
                f"RecentPopularity: give window or half_life, not both (got window={self.window}, "
                f"half_life={self.half_life})"
            )


@register
class Popularity(Recommender):
    """Global popularity: the score of an item is its number of events so far.

    ``fit`` and ``learn`` both count; event weights are ignored (every event counts 1). There is
    no smoothing, so ties (equal counts) keep the base class's order: the lower item index, i.e.
    the item seen first, wins.

    Parameters
    ----------
    seed
        Unused (the model has no randomness); kept for a uniform constructor.

    Examples
    --------
    >>> rec = Popularity().fit([("a", 1, 0.0), ("b", 2, 1.0), ("c", 2, 2.0)])
    >>> items, scores = rec.recommend("a", k=2, exclude_seen=False)
    >>> items.tolist(), scores.tolist()
    ([2, 1], [2.0, 1.0])
    """

    def _fit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        # The base class keeps ``item_counts``; that is this model's whole state.
        pass

    def _learn(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        pass

    def _shared_scores(self) -> np.ndarray:
        return self.item_counts

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_counts, (len(users), len(self.item_counts)))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        pass


@register
class RecentPopularity(Recommender):
    r"""Popularity over the recent past: a sliding window, or an exponential decay.

    Two ways to say "recent", chosen by which argument is given:

    - ``window=W`` (the default, with ``W = 1000``): the score of an item is its number of events
      among the last ``W`` events, counted exactly (a ring buffer of item indices; an event's
      count is removed when it leaves the window).
    - ``half_life=H``: each event of the item counts :math:`2^{-a/H}`, where :math:`a` is the
      number of events that arrived after it (its age in events), so an event counts half after
      ``H`` further events.

    Ties are broken by all-time popularity, so the model is never worse than chance inside a
    tie (e.g. items absent from the window). With a window the score is
    ``count_in_window + n_item / (n_events + 1)``: the added fraction is below 1, so it only
    orders items with equal window counts. With a half-life it is
    ``decayed + 1e-9 * n_item / (n_events + 1)`` (near-ties closer than ``1e-9`` are broken
    by all-time popularity).

    Parameters
    ----------
    window
        Length of the sliding window in events; ``None`` (default) means 1000 unless
        ``half_life`` is given.
    half_life
        Half-life of the exponential decay, in events. Give ``window`` or ``half_life``, not
        both.
    seed
        Unused (no randomness); kept for a uniform constructor.

    Examples
    --------
    >>> rec = RecentPopularity(window=3)
    >>> _ = rec.fit([("a", 1, 0), ("b", 1, 1), ("c", 2, 2), ("d", 3, 3), ("e", 3, 4)])
    >>> rec.recommend("a", k=3, exclude_seen=False).items.tolist()  # 1 has left the window
    [3, 2, 1]
    """

    config_class = RecentPopularityConfig

    @classmethod
    def _unit_test_params(cls) -> dict[str, dict[str, Any]]:
        return {"window": {"window": 37}, "half-life": {"half_life": 25.0}}

    def __init__(self, config: Any = None, /, **options: Any) -> None:
        super().__init__(config, **options)
        window, half_life = self.config.window, self.config.half_life
        self._decay = half_life is not None
        self._size = int(window) if window is not None else DEFAULT_WINDOW
        # window mode: exact counts and a ring buffer (-1 = empty slot)
        self._counts = np.zeros(0, dtype=np.int64)
        self._ring = np.full(0 if self._decay else self._size, -1, dtype=np.int64)
        self._pos = 0
        # decay mode: scores are stored inflated, ``_mass[j] * gamma ** _clock`` is the score
        self._gamma = 2.0 ** (-1.0 / float(half_life)) if half_life is not None else 1.0
        self._mass = np.zeros(0, dtype=np.float64)
        self._clock = 0  # events since the last rescale

    def _grow(self, n_users: int, n_items: int) -> None:
        if n_items > len(self._counts):
            self._counts = grow_array(self._counts, n_items)
            self._mass = grow_array(self._mass, n_items)

    def _fit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._update(items)

    def _learn(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        weights: np.ndarray | None,
    ) -> None:
        self._update(items)

    def _update(self, items: np.ndarray) -> None:
        n_items = len(self._counts)
        if self._decay:
            self._update_decay(items, n_items)
            return
        size, n = self._size, len(items)
        if n >= size:  # the batch alone fills the window
            self._ring[:] = items[n - size :]
            self._pos = 0
            self._counts = np.bincount(self._ring, minlength=n_items).astype(np.int64)
            return
        slots = (self._pos + np.arange(n)) % size
        leaving = self._ring[slots]
        leaving = leaving[leaving >= 0]
        self._counts -= np.bincount(leaving, minlength=n_items)
        self._ring[slots] = items
        self._counts += np.bincount(items, minlength=n_items)
        self._pos = int((self._pos + n) % size)

    def _update_decay(self, items: np.ndarray, n_items: int) -> None:
        # An event at clock t is stored as gamma ** -t; reading multiplies by gamma ** clock.
        n = len(items)
        log_gamma = np.log(self._gamma)
        if -log_gamma * (self._clock + n) > np.log(_RESCALE_AT):
            self._mass *= self._gamma**self._clock
            self._clock = 0
        if -log_gamma * n > np.log(_RESCALE_AT):  # a huge batch: only its tail matters
            keep = max(1, int(np.log(_RESCALE_AT) / -log_gamma))
            self._mass *= self._gamma ** (n - keep)
            items = items[n - keep :]
            n = keep
        # ages are counted so that the newest event has weight 1 after the update
        inflation = np.exp(-log_gamma * (self._clock + 1 + np.arange(n, dtype=np.float64)))
        self._mass += np.bincount(items, weights=inflation, minlength=n_items)
        self._clock += n

    def recent_scores(self) -> np.ndarray:
        """The recency score of every known item, without the tie-break, shape ``[n_items]``."""
        if self._decay:
            return self._mass * self._gamma**self._clock
        return self._counts.astype(np.float64)

    def _shared_scores(self) -> np.ndarray:
        share = self.item_counts / (self.n_events + 1.0)
        eps = DECAY_TIE_EPS if self._decay else 1.0
        return self.recent_scores() + eps * share

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        row = self._shared_scores()
        return np.broadcast_to(row, (len(users), len(row)))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"counts": self._counts, "ring": self._ring, "mass": self._mass}
        return arrays, {"pos": self._pos, "clock": self._clock}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._counts = arrays["counts"].astype(np.int64)
        self._ring = arrays["ring"].astype(np.int64)
        self._mass = arrays["mass"].astype(np.float64)
        self._pos = int(meta["pos"])
        self._clock = int(meta["clock"])
        n_items = len(self.items)
        if len(self._counts) != n_items or len(self._mass) != n_items:
            raise ValueError("recent-pop counts do not match the item ids")
        if len(self._ring) != (0 if self._decay else self._size):
            raise ValueError("recent-pop ring buffer does not match the window")
