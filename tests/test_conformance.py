"""Every model the package ships, in every configuration it names, against the shared
conformance suite (``tests/conformance.py``).

The models are discovered from the registry (``nmrn.training.registry``), and each one names its
own small test configurations (``Recommender._unit_test_params``), so a new model is checked as
soon as its module registers it: no list to keep by hand here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from conformance import CHECKS, Factory

import nmrn.models  # noqa: F401  (imports every model module the package ships)
from nmrn.training.registry import registered_models

SHIPPED = {
    name: cls for name, cls in registered_models().items() if cls.__module__.startswith("nmrn.")
}
FACTORIES: dict[str, Factory] = {
    f"{name}-{label}": partial(cls, **params)
    for name, cls in sorted(SHIPPED.items())
    for label, params in cls._unit_test_params().items()
}


def test_every_shipped_model_is_covered() -> None:
    assert {"Popularity", "RecentPopularity", "ItemKNN", "BPR", "NMRN"} <= set(SHIPPED)
    for name, cls in SHIPPED.items():
        assert cls._unit_test_params(), f"{name} names no test configuration"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("model", sorted(FACTORIES))
def test_conformance(model: str, check: Callable[[Factory], None]) -> None:
    check(FACTORIES[model])
