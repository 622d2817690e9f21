"""The writer merges small requests into one ``learn`` call (``apply_wait``), in order, never
more than ``apply_batch`` events a call, and never waits once the service is closing."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from nmrn.baselines.popularity import Popularity
from nmrn.errors import ConfigError
from nmrn.serving.service import LiveService


class Recording(Popularity):
    """Popularity that records what each ``learn`` call received."""

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.calls: list[tuple[list[Any], list[Any], list[float] | None]] = []

    def learn(self, events: Any) -> Recording:
        self.calls.append((events.users.tolist(), events.items.tolist(),
                           None if events.weights is None else events.weights.tolist()))
        super().learn(events)
        return self


# The writer waits up to apply_wait for a run to fill; with a wait far longer than the test,
# the queued requests are applied when the service closes (it never waits then), all at once.
FOREVER = 3600.0


def test_small_requests_share_one_learn_call_in_order() -> None:
    model = Recording().fit([(0, "a", 0.0)])
    with LiveService(model, apply_wait=FOREVER) as svc:
        for n in range(5):
            svc.submit([(n, f"i{n}", float(n + 1))])
        assert svc.pending == 5
    assert model.calls == [([0, 1, 2, 3, 4], ["i0", "i1", "i2", "i3", "i4"], None)]


def test_runs_never_exceed_apply_batch_and_split_a_request_between_runs() -> None:
    model = Recording().fit([(0, "a", 0.0)])
    with LiveService(model, apply_batch=3, apply_wait=FOREVER) as svc:
        for n in range(3):  # three requests of two events
            svc.submit([(n, "x", 1.0), (n, "y", 2.0)])
    assert [c[0] for c in model.calls] == [[0, 0, 1], [1, 2, 2]]


def test_ids_of_both_kinds_and_weights_survive_a_merge() -> None:
    model = Recording().fit([(0, "a", 0.0)])
    with LiveService(model, apply_wait=FOREVER) as svc:
        svc.submit([(7, 8, 1.0)])
        svc.submit([("u", "i", 2.0, 2.5)])
    assert model.calls == [([7, "u"], [8, "i"], [1.0, 2.5])]
    assert 7 in model.users and "u" in model.users and 8 in model.items


def test_a_full_run_is_applied_without_waiting() -> None:
    model = Recording().fit([(0, "a", 0.0)])
    with LiveService(model, apply_batch=4, apply_wait=FOREVER) as svc:
        t0 = time.monotonic()
        svc.submit([(n, "x", float(n)) for n in range(4)])
        assert svc.wait_applied(timeout=10)
        assert time.monotonic() - t0 < 10
        svc.submit([(9, "y", 9.0)])  # a short run waits ...
        time.sleep(0.1)
        assert svc.pending == 1 and "y" not in model.items
    # ... but closing applies it at once
    assert "y" in model.items and model.calls[-1][0] == [9]


def test_with_no_wait_each_request_is_applied_alone() -> None:
    model = Recording().fit([(0, "a", 0.0)])
    with LiveService(model, apply_wait=0.0) as svc:
        for n in range(3):
            svc.submit([(n, "x", float(n))])
            assert svc.wait_applied(timeout=10)
    assert [c[0] for c in model.calls] == [[0], [1], [2]]


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), "0.1", True])
def test_bad_apply_wait_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="apply_wait"):
        LiveService(Popularity().fit([(0, "a", 0.0)]), apply_wait=bad)


def test_merged_runs_learn_the_same_counts_as_one_by_one() -> None:
    rng = np.random.default_rng(0)
    events = [(int(u), int(i), float(t)) for t, (u, i) in
              enumerate(rng.integers(0, 20, size=(300, 2)))]
    merged, single = Popularity().fit(events[:10]), Popularity().fit(events[:10])
    for model, wait in ((merged, FOREVER), (single, 0.0)):
        with LiveService(model, apply_batch=64, apply_wait=wait) as svc:
            for lo in range(10, 300, 7):
                svc.submit(events[lo : lo + 7])
    assert merged.items.ids.tolist() == single.items.ids.tolist()
    np.testing.assert_array_equal(merged.item_counts, single.item_counts)
    assert merged.history.to_arrays()[1].tolist() == single.history.to_arrays()[1].tolist()


class Poisoned(Recording):
    """Refuses any batch holding the item "poison" (as a model refusing bad data would)."""

    name = ""

    def learn(self, events: Any) -> Poisoned:
        if "poison" in events.items.tolist():
            raise ValueError("poisoned batch")
        super().learn(events)
        return self


def test_a_failing_request_in_a_merged_run_does_not_take_the_others_with_it() -> None:
    model = Poisoned().fit([(0, "a", 0.0)])
    with LiveService(model, apply_wait=FOREVER) as svc:
        svc.submit([(1, "x", 1.0)])
        svc.submit([(2, "poison", 2.0), (2, "y", 3.0)])
        svc.submit([(3, "z", 4.0)])
    # the merged run failed; each request was then tried on its own, and only the bad one lost
    assert [c[1] for c in model.calls] == [["x"], ["z"]]
    assert svc.applied_seq == 4 and svc.errors == {"learn": 1}
