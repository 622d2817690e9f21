"""The negative-sampler interface shared by the uniform, popularity and adversarial samplers.

Shapes: B events, n negatives per event, N known items (indices ``0..N-1``).

A sampler works on dense item *indices* and draws from the items the model knows
(:meth:`NegativeSampler.grow` tells it how many). All randomness comes from the ``generator``
passed by the caller (the recommender's private one), so a sampler holds no RNG of its own and
a seeded model is reproducible.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import Generator, Tensor


@runtime_checkable
class NegativeSampler(Protocol):
    """What a recommender needs from a negative sampler."""

    n_items: int

    def sample(
        self,
        users: Tensor,
        positives: Tensor,
        n: int,
        *,
        generator: Generator,
        exclude: Tensor | None = None,
    ) -> Tensor:
        """Draw ``n`` negatives per event.

        Parameters
        ----------
        users
            ``[B]`` long user indices.
        positives
            ``[B]`` long item indices; never returned in their own row.
        n
            Negatives per event.
        generator
            The caller's torch generator (CPU).
        exclude
            Optional ``[B, k]`` long: further items to avoid in each row (pad with ``-1``).

        Returns
        -------
        Tensor
            ``[B, n]`` long item indices in ``[0, N)``.
        """
        ...

    def grow(self, n_items: int) -> None:
        """The model now knows ``n_items`` items (never fewer than before)."""
        ...

    def update(
        self,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        reward: Tensor | None = None,
    ) -> dict[str, float]:
        """Learn from a training step (``reward [B, n]`` from the recommender, detached)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Arrays (numpy) and JSON-serialisable values to checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


class BaseSampler:
    """Convenience base: item count, a no-op ``update`` and a trivial state.

    Subclasses implement :meth:`sample` and extend ``state_dict``/``load_state_dict`` when they
    have state of their own.
    """

    name = ""

    def __init__(self, n_items: int = 0) -> None:
        self.n_items = int(n_items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_items={self.n_items})"

    def grow(self, n_items: int) -> None:
        self.n_items = max(self.n_items, int(n_items))

    def update(
        self,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        reward: Tensor | None = None,
    ) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"n_items": np.asarray(self.n_items, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_items = int(np.asarray(state["n_items"]))
