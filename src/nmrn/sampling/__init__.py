"""Negative samplers: the interface and the registry of samplers by name.

``uniform`` (the default), ``popularity`` (counts to the power ``beta``, online) and
``adversarial`` (the generator G of NMRN, trained by REINFORCE); see ``docs/sampling.md``.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import Generator

from nmrn.errors import ConfigError
from nmrn.sampling.adversarial import (
    AdversarialSampler,
    GeneratorNetwork,
    generator_probabilities,
    reinforce_objective,
)
from nmrn.sampling.base import BaseSampler, NegativeSampler, Proposal
from nmrn.sampling.popularity import PopularitySampler
from nmrn.sampling.uniform import SamplingError, UniformSampler

#: Sampler classes by name (``NMRNConfig.sampler``).
SAMPLERS: dict[str, type[BaseSampler]] = {
    "uniform": UniformSampler,
    "popularity": PopularitySampler,
    "adversarial": AdversarialSampler,
}


def make_sampler(
    name: str, n_items: int = 0, options: Any = None, generator: Generator | None = None
) -> BaseSampler:
    """Build the sampler registered as ``name``.

    Parameters
    ----------
    name
        A key of :data:`SAMPLERS`.
    n_items
        Items known at construction.
    options
        A :class:`~nmrn.config.SamplerConfig` or a mapping of its fields (``None``: defaults).
    generator
        Torch generator for the sampler's initialisation (the adversarial sampler's G).

    Examples
    --------
    >>> make_sampler("uniform", 5)
    UniformSampler(n_items=5)
    >>> make_sampler("popularity", 5, {"beta": 0.5})
    PopularitySampler(n_items=5, beta=0.5)
    """
    from nmrn.config import SamplerConfig

    if name not in SAMPLERS:
        close = difflib.get_close_matches(name, list(SAMPLERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown sampler {name!r}; known: {sorted(SAMPLERS)}{hint}")
    if options is not None and not isinstance(options, SamplerConfig):
        options = SamplerConfig.from_dict(options)
    return SAMPLERS[name](n_items, options, generator)


__all__ = [
    "SAMPLERS",
    "AdversarialSampler",
    "BaseSampler",
    "GeneratorNetwork",
    "NegativeSampler",
    "PopularitySampler",
    "Proposal",
    "SamplingError",
    "UniformSampler",
    "generator_probabilities",
    "make_sampler",
    "reinforce_objective",
]
