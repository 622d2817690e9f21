"""NMRN-Hybrid: the evidence it sees, what it learns from, and that it learns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from nmrn.errors import ConfigError
from nmrn.training.hybrid import FEATURES, NMRNHybrid

SMALL_MEMORY = {"dim": 4, "memory_slots": 2, "epochs": 1, "batch_size": 32}


def _cycle_log(n_users: int = 12, n_items: int = 8, steps: int = 30) -> list[tuple[Any, ...]]:
    """Each user walks the items in a cycle from their own start; item 0 is also consumed by a
    crowd of one-off users, so it is by far the most popular and never what comes next."""
    log, t = [], 0
    for step in range(steps):
        for u in range(n_users):
            log.append((f"u{u}", (u + step) % n_items + 1, t))
            t += 1
        log.append((f"crowd{step}", 0, t))
        log.append((f"crowd{step}b", 0, t + 0.5))
        t += 1
    return log


def test_a_learned_gate_finds_the_informative_evidence() -> None:
    log = _cycle_log()
    rec = NMRNHybrid(features=["pop", "follows"], fit_chunk=50, fit_epochs=8, lr=0.05,
                     follow_history=1, seed=0).fit(log)
    hits = 0
    for u in range(12):
        last = [i for uu, i, _ in log if uu == f"u{u}"][-1]
        nxt = last % 8 + 1
        hits += rec.recommend(f"u{u}", k=1, exclude_seen=False).items.tolist() == [nxt]
    assert hits >= 11
    # popularity alone (a plain sum) recommends the crowd's item to everyone instead
    plain = NMRNHybrid(features=["pop"], gate="sum", fit_chunk=50).fit(log)
    assert plain.recommend("u0", k=1, exclude_seen=False).items.tolist() == [0]


def test_the_plain_sum_of_one_feature_is_that_feature_by_hand() -> None:
    log = [("a", "x", 0), ("b", "x", 1), ("c", "y", 2), ("a", "z", 3)]
    rec = NMRNHybrid(features=["pop"], gate="sum").fit(log)
    counts = {"x": 2, "y": 1, "z": 1}
    want = [math.log1p(counts[i]) / math.log1p(2) for i in ("x", "y", "z")]
    share = [counts[i] / 5 for i in ("x", "y", "z")]
    # the evidence is kept in float32
    np.testing.assert_allclose(rec.score(["b"], ["x", "y", "z"])[0],
                               np.array(want) + 1e-9 * np.array(share), rtol=1e-7)


def test_the_gate_trains_on_evidence_from_before_each_batch(monkeypatch: Any) -> None:
    # the rows of a batch are built before any component or count has seen it
    seen_counts: list[np.ndarray] = []
    original = NMRNHybrid._rows

    def spy(self: NMRNHybrid, users: Any, items: Any, history: Any, counts: Any,
            n_seen: int) -> Any:
        seen_counts.append((counts.copy(), n_seen, len(history)))
        return original(self, users, items, history, counts, n_seen)

    monkeypatch.setattr(NMRNHybrid, "_rows", spy)
    log = _cycle_log(steps=6)
    rec = NMRNHybrid(features=["pop", "knn"], fit_chunk=20).fit(log[:60])
    for lo in range(0, 60, 20):  # during fit: the counts of the chunks before this one only
        counts, n_seen, n_history = seen_counts[lo // 20]
        assert n_seen == lo and n_history == lo and counts.sum() == lo
    rec.learn(log[60:70])
    counts, n_seen, n_history = seen_counts[-1]
    assert n_seen == 60 and n_history == 60 and counts.sum() == 60


def test_the_components_share_the_hybrids_ids_and_history(tmp_path: Any) -> None:
    rec = NMRNHybrid(memory=SMALL_MEMORY, fit_chunk=30).fit(_cycle_log(steps=5))
    for component in rec.components.values():
        assert component.users is rec.users and component.items is rec.items
    loaded = NMRNHybrid.load(rec.save(tmp_path / "h"))
    for component in loaded.components.values():
        assert component.users is loaded.users and component.history is loaded.history


@pytest.mark.parametrize(
    ("options", "message"),
    [({"features": []}, "non-empty list"), ({"features": ["pop", "pop"]}, "twice"),
     ({"features": ["recent-pop"]}, "did you mean 'recent_pop'"), ({"gate": "max"}, "gate"),
     ({"memory": {"dim": 0}}, "ModelConfig.dim must be >= 1")],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NMRNHybrid(**options)


def test_every_feature_is_documented_and_buildable() -> None:
    from nmrn.training import hybrid

    for name in FEATURES:
        assert f"``{name}``" in (hybrid.__doc__ or "")
    assert NMRNHybrid(features=list(FEATURES)).config.features == FEATURES
