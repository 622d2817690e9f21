"""Every baseline (and its main variants) against the shared conformance suite."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conformance import CHECKS, Factory

from nmrn.baselines import BPR, ItemKNN, Popularity, RecentPopularity

FACTORIES: dict[str, Factory] = {
    "pop": lambda: Popularity(),
    "recent-pop-window": lambda: RecentPopularity(window=37),
    "recent-pop-half-life": lambda: RecentPopularity(half_life=25.0),
    "item-knn-dense": lambda: ItemKNN(history_len=8, recency_decay=0.8, cooc_decay=0.9),
    # a tiny dense limit: the catalogue outgrows it, so the sparse storage is exercised
    "item-knn-sparse": lambda: ItemKNN(history_len=8, recency_decay=0.8, dense_max_items=10),
    "bpr-adagrad": lambda: BPR(dim=8, epochs=3, batch_size=32, seed=7),
    "bpr-adam": lambda: BPR(dim=8, epochs=2, batch_size=32, optimizer="adam", lr=0.01, seed=7),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("model", sorted(FACTORIES))
def test_conformance(model: str, check: Callable[[Factory], None]) -> None:
    check(FACTORIES[model])
