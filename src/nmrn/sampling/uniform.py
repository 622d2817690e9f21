"""Uniform negatives over the known items."""

from __future__ import annotations

import torch
from torch import Generator, Tensor

from nmrn.errors import NMRNError
from nmrn.sampling.base import BaseSampler

_MAX_ROUNDS = 1000


class SamplingError(NMRNError, ValueError):
    """Negatives cannot be drawn (too few items left once exclusions are applied)."""


class UniformSampler(BaseSampler):
    """Draw negatives uniformly from the known items, never the event's own positive.

    The positive is avoided exactly and without a loop: a draw ``r`` from ``N - 1`` values is
    shifted by one when ``r >= positive``, which is uniform over the other ``N - 1`` items.
    Items in ``exclude`` are avoided by resampling the colliding entries.

    Examples
    --------
    >>> s = UniformSampler(n_items=3)
    >>> g = torch.Generator().manual_seed(0)
    >>> neg = s.sample(torch.tensor([0, 1]), torch.tensor([0, 2]), 4, generator=g)
    >>> tuple(neg.shape), bool((neg[0] != 0).all()), bool((neg[1] != 2).all())
    ((2, 4), True, True)
    """

    name = "uniform"

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
                f"uniform negatives need at least 2 known items, the model knows {self.n_items}"
            )
        positives = positives.to("cpu", torch.long)
        rows = positives.shape[0]
        draw = torch.randint(0, self.n_items - 1, (rows, n), generator=generator)  # [B, n]
        draw += (draw >= positives[:, None]).long()  # skip the positive
        if exclude is None or exclude.numel() == 0:
            return draw
        exclude = exclude.to("cpu", torch.long)
        for _ in range(_MAX_ROUNDS):
            bad = (draw[:, :, None] == exclude[:, None, :]).any(dim=-1)  # [B, n]
            if not bad.any():
                return draw
            k = int(bad.sum())
            redraw = torch.randint(0, self.n_items - 1, (k,), generator=generator)
            pos = positives[:, None].expand(rows, n)[bad]
            draw[bad] = redraw + (redraw >= pos).long()
        raise SamplingError(
            f"could not draw negatives avoiding the exclusions after {_MAX_ROUNDS} rounds "
            f"({self.n_items} known items); exclude fewer items"
        )
