"""Negative samplers: the interface and the registry of samplers by name."""

from __future__ import annotations

import difflib

from nmrn.errors import ConfigError
from nmrn.sampling.base import BaseSampler, NegativeSampler
from nmrn.sampling.uniform import SamplingError, UniformSampler

#: Sampler classes by name (``NMRNConfig.sampler``).
SAMPLERS: dict[str, type[BaseSampler]] = {"uniform": UniformSampler}


def make_sampler(name: str, n_items: int = 0) -> BaseSampler:
    """Build the sampler registered as ``name``.

    Examples
    --------
    >>> make_sampler("uniform", 5)
    UniformSampler(n_items=5)
    """
    if name not in SAMPLERS:
        close = difflib.get_close_matches(name, list(SAMPLERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown sampler {name!r}; known: {sorted(SAMPLERS)}{hint}")
    return SAMPLERS[name](n_items)


__all__ = [
    "SAMPLERS",
    "BaseSampler",
    "NegativeSampler",
    "SamplingError",
    "UniformSampler",
    "make_sampler",
]
