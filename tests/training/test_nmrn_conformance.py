"""NMRN (and its main variants) against the shared conformance suite."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conformance import CHECKS, Factory

from nmrn.training.nmrn import NMRN

_SMALL = {"dim": 8, "memory_slots": 4, "batch_size": 32, "epochs": 2, "n_candidates": 5, "seed": 7}

FACTORIES: dict[str, Factory] = {
    "nmrn": lambda: NMRN(**_SMALL),
    "nmrn-per-user-memory": lambda: NMRN(**_SMALL, per_user_memory=True),
    "nmrn-variants": lambda: NMRN(
        **_SMALL,
        addressing="neg_dist",
        learn_temperature=True,
        personal_offset=True,
        item_bias=True,
        squared_distance=True,
        cold_user_init="item_mean",
        learn_passes=2,
    ),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("model", sorted(FACTORIES))
def test_conformance(model: str, check: Callable[[Factory], None]) -> None:
    check(FACTORIES[model])
