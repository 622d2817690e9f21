"""Popularity negatives: items drawn in proportion to their event count raised to a power."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Generator, Tensor

from nmrn.sampling.base import BaseSampler
from nmrn.sampling.uniform import SamplingError

_MAX_ROUNDS = 1000


class PopularitySampler(BaseSampler):
    r"""Draw negatives with probability proportional to ``max(count_v, 1) ** beta``.

    .. math:: P(v) \propto \max(c_v, 1)^{\beta}

    ``c_v`` counts the events of item ``v`` seen so far (:meth:`observe`, called by the
    recommender once per event, so the distribution follows the stream online); the floor of 1
    keeps a chance for an item that has no event yet. ``beta = 0`` is uniform, ``beta = 1``
    proportional to popularity, and the default 0.75 sits between them (as word2vec's unigram
    table). Draws use inverse-CDF sampling on a cached float64 cumulative sum (rebuilt when
    counts change), so one draw costs ``O(log N)``; the positive and excluded items are avoided
    by redrawing the colliding entries (an item holding nearly all the mass raises
    :class:`~nmrn.sampling.SamplingError` after 1000 rounds).

    Examples
    --------
    >>> from nmrn.config import SamplerConfig
    >>> s = PopularitySampler(n_items=3, options=SamplerConfig(beta=1.0))
    >>> s.observe(torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]))
    >>> s.probabilities().tolist()  # counts (0, 3, 0) floored at 1: 1 : 3 : 1
    [0.2, 0.6, 0.2]
    >>> g = torch.Generator().manual_seed(0)
    >>> neg = s.sample(torch.tensor([0]), torch.tensor([1]), 5, generator=g)
    >>> bool((neg != 1).all())
    True
    """

    name = "popularity"

    def __init__(
        self, n_items: int = 0, options: Any = None, generator: Generator | None = None
    ) -> None:
        super().__init__(n_items, options)
        self.beta = float(self.options.beta)
        self.counts = torch.zeros(self.n_items, dtype=torch.float64)  # [N]
        self._cdf: Tensor | None = None  # cache, None = stale

    def __repr__(self) -> str:
        return f"PopularitySampler(n_items={self.n_items}, beta={self.beta})"

    def grow(
        self, n_items: int, *, n_users: int | None = None, generator: Generator | None = None
    ) -> None:
        super().grow(n_items)
        if self.n_items > len(self.counts):
            extra = self.counts.new_zeros(self.n_items - len(self.counts))
            self.counts = torch.cat([self.counts, extra])
            self._cdf = None

    def observe(self, users: Tensor, items: Tensor) -> None:
        items = torch.as_tensor(items, dtype=torch.long).cpu()
        if items.numel() == 0:
            return
        self.grow(int(items.max()) + 1)
        self.counts.index_add_(0, items, torch.ones(items.shape[0], dtype=torch.float64))
        self._cdf = None

    def probabilities(self) -> Tensor:
        """``[N]`` float64: the probability of each known item before exclusions."""
        weights = self.counts[: self.n_items].clamp_min(1.0) ** self.beta
        return weights / weights.sum()

    def _draw(self, shape: tuple[int, ...], generator: Generator) -> Tensor:
        if self._cdf is None:
            self._cdf = torch.cumsum(self.probabilities(), 0)
        cdf = self._cdf
        r = torch.rand(shape, generator=generator, dtype=torch.float64) * cdf[-1]
        return torch.searchsorted(cdf, r, right=True).clamp_(max=self.n_items - 1)

    def sample(
        self,
        users: Tensor,
        positives: Tensor,
        n: int,
        *,
        generator: Generator,
        exclude: Tensor | None = None,
    ) -> Tensor:
        if self.n_items < 2:
            raise SamplingError(
                f"popularity negatives need at least 2 known items, the sampler knows "
                f"{self.n_items}"
            )
        positives = positives.to("cpu", torch.long)
        rows = positives.shape[0]
        avoid = positives[:, None]  # [B, 1]
        if exclude is not None and exclude.numel():
            avoid = torch.cat([avoid, exclude.to("cpu", torch.long)], dim=1)  # [B, 1 + k]
        draw = self._draw((rows, n), generator)  # [B, n]
        for _ in range(_MAX_ROUNDS):
            bad = (draw[:, :, None] == avoid[:, None, :]).any(dim=-1)  # [B, n]
            if not bad.any():
                return draw
            draw[bad] = self._draw((int(bad.sum()),), generator)
        raise SamplingError(
            f"could not draw popularity negatives avoiding the positive and exclusions after "
            f"{_MAX_ROUNDS} rounds ({self.n_items} known items, beta={self.beta}); lower beta"
        )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["counts"] = self.counts.numpy().copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts = torch.from_numpy(np.asarray(state["counts"], dtype=np.float64).copy())
        self._cdf = None
