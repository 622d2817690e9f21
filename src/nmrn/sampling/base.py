"""The negative-sampler interface shared by the uniform, popularity and adversarial samplers.

Shapes: B events, n negatives per event, N known items (indices ``0..N-1``).

A sampler works on dense item *indices* and draws from the items the model knows
(:meth:`NegativeSampler.grow` tells it how many). All randomness comes from the ``generator``
passed by the caller (the recommender's private one), so a sampler holds no RNG of its own and
a seeded model is reproducible.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from torch import Generator, Tensor


class Proposal(NamedTuple):
    """What a sampler proposes for one mini-batch (:meth:`BaseSampler.propose`).

    Attributes
    ----------
    candidates
        ``[B, T]`` long item indices: the T candidates of each event. They serve the rank
        estimate of the loss, so every sampler of this package draws them from its own
        distribution (uniform for the uniform and adversarial samplers).
    chosen
        ``[B]`` long column of ``candidates`` the sampler picked as *the* negative, or ``None``
        (the recommender picks the hardest candidate itself).
    use_chosen
        Whether the recommender should train on ``chosen`` (``False`` during a warm-up: the
        sampler learns from its pick, the recommender still trains on the hardest candidate).
    """

    candidates: Tensor
    chosen: Tensor | None = None
    use_chosen: bool = False


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

    def propose(
        self,
        users: Tensor,
        positives: Tensor,
        n_candidates: int,
        *,
        generator: Generator,
        exclude: Tensor | None = None,
    ) -> Proposal:
        """The T candidates of each event and, for a learned sampler, its pick among them."""
        ...

    def grow(
        self, n_items: int, *, n_users: int | None = None, generator: Generator | None = None
    ) -> None:
        """The model now knows ``n_items`` items and ``n_users`` users (never fewer)."""
        ...

    def observe(self, users: Tensor, items: Tensor) -> None:
        """New events arrived (once per event, before training on them)."""
        ...

    def update(
        self,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        reward: Tensor | None = None,
        *,
        chosen: Tensor | None = None,
        violating: Tensor | None = None,
    ) -> dict[str, float]:
        """Learn from a training step.

        Parameters
        ----------
        users, positives
            ``[B]`` long.
        negatives
            ``[B, T]`` long: the candidates of the step (``Proposal.candidates``).
        reward
            ``[B, T]`` float, detached: the recommender's reward of each candidate,
            ``-d_D(u, v')`` for NMRN.
        chosen
            ``[B]`` long: the sampler's pick (``Proposal.chosen``), if any.
        violating
            ``[B, T]`` bool: which candidates violate the margin (``m + d_pos - d_neg > 0``);
            used for diagnostics only.

        Returns
        -------
        dict
            Diagnostics of the step (also appended to ``stats``).
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """Arrays (numpy) and JSON-serialisable values to checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


class BaseSampler:
    """Convenience base: item count, ``propose`` from ``sample``, diagnostics, a trivial state.

    Subclasses implement :meth:`sample` and extend ``state_dict``/``load_state_dict`` when they
    have state of their own. ``update`` records, per step, the fraction of candidates that
    violate the margin (``violation_rate``), so that samplers can be compared on how hard their
    negatives are; ``stats`` keeps the last ``stats_window`` steps.

    Parameters
    ----------
    n_items
        Items known at construction.
    options
        A :class:`~nmrn.config.SamplerConfig` (``None``: the defaults).
    generator
        Torch generator for any initialisation a sampler needs (the recommender's private one);
        samplers without parameters ignore it.
    """

    name = ""

    def __init__(
        self, n_items: int = 0, options: Any = None, generator: Generator | None = None
    ) -> None:
        from nmrn.config import SamplerConfig

        self.n_items = int(n_items)
        self.options: SamplerConfig = SamplerConfig() if options is None else options
        #: Per-step diagnostics (dicts of floats), the most recent last.
        self.stats: deque[dict[str, float]] = deque(maxlen=self.options.stats_window)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_items={self.n_items})"

    def sample(
        self,
        users: Tensor,
        positives: Tensor,
        n: int,
        *,
        generator: Generator,
        exclude: Tensor | None = None,
    ) -> Tensor:
        raise NotImplementedError

    def propose(
        self,
        users: Tensor,
        positives: Tensor,
        n_candidates: int,
        *,
        generator: Generator,
        exclude: Tensor | None = None,
    ) -> Proposal:
        """``n_candidates`` draws of :meth:`sample` per event; no pick (the hardest is used)."""
        cands = self.sample(users, positives, n_candidates, generator=generator, exclude=exclude)
        return Proposal(cands)

    def grow(
        self, n_items: int, *, n_users: int | None = None, generator: Generator | None = None
    ) -> None:
        self.n_items = max(self.n_items, int(n_items))

    def observe(self, users: Tensor, items: Tensor) -> None:  # noqa: B027 - optional hook
        """New events arrived; a no-op unless the sampler learns from the stream's counts."""

    def update(
        self,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        reward: Tensor | None = None,
        *,
        chosen: Tensor | None = None,
        violating: Tensor | None = None,
    ) -> dict[str, float]:
        stats: dict[str, float] = {}
        if violating is not None and violating.numel():
            stats["violation_rate"] = float(violating.float().mean())
        if stats:
            self.stats.append(stats)
        return stats

    def diagnostics(self, last: int | None = None) -> dict[str, float]:
        """Mean of each statistic over the ``last`` recorded steps (all kept ones if ``None``).

        Returns
        -------
        dict
            Statistic name -> mean, plus ``steps`` (how many steps were averaged); empty
            before the first recorded step.
        """
        rows = list(self.stats)[-last:] if last else list(self.stats)
        if not rows:
            return {}
        keys = sorted({k for row in rows for k in row})
        out = {k: float(np.mean([row[k] for row in rows if k in row])) for k in keys}
        out["steps"] = float(len(rows))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"n_items": np.asarray(self.n_items, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_items = int(np.asarray(state["n_items"]))
