"""Rolling-origin validation: the folds it cuts, what each model sees, the interval it reports."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from nmrn.baselines.popularity import Popularity
from nmrn.data.events import as_events
from nmrn.errors import ConfigError, DataError
from nmrn.evaluation.selection import RollingOrigin, mean_ci, validate

LOG = as_events([(u % 7, (u * 3) % 11, float(t)) for t, u in enumerate(range(400))])


class Recording(Popularity):
    """Popularity that records how many events it was fitted on and the last one it learned."""

    seen: list[tuple[int, float]] = []

    def fit(self, events: Any) -> Recording:
        super().fit(events)
        Recording.seen.append((len(events), float(np.max(events.timestamps))))
        return self

    def learn(self, events: Any) -> Recording:
        super().learn(events)
        Recording.seen[-1] = (Recording.seen[-1][0], float(np.max(events.timestamps)))
        return self


def test_each_fold_fits_before_its_cut_and_ends_at_its_window() -> None:
    plan = RollingOrigin(cuts=(0.5, 0.75), horizon=0.2, settings=(("chunks", 30),), seeds=(0, 1))
    Recording.seen = []
    report = validate(lambda seed: Recording(seed=seed), LOG, plan)
    # (fit on [0, cut), last event learned = the window's last one), per cut and seed
    assert Recording.seen == [(200, 279.0), (200, 279.0), (300, 379.0), (300, 379.0)]
    assert report.n_folds == 4 and len(report.settings["chunks 30"]) == 4


def test_nothing_after_the_history_is_read() -> None:
    plan = RollingOrigin(cuts=(0.9,), horizon=0.5, settings=(("blocks", 2),), seeds=(0,))
    Recording.seen = []
    validate(lambda seed: Recording(seed=seed), LOG[:300], plan)
    assert Recording.seen == [(270, 299.0)]  # the window is clipped at the history's end


def test_report_figures_are_the_fold_means_with_a_t_interval() -> None:
    settings = (("blocks", 2), ("chunks", 25))
    plan = RollingOrigin(cuts=(0.4, 0.6, 0.8), horizon=0.2, settings=settings, seeds=(0,))
    report = validate(lambda seed: Popularity(seed=seed), LOG, plan)
    summary = report.summary()
    blocks = report.settings["blocks"]
    assert summary["blocks"]["mean"] == pytest.approx(np.mean(blocks))
    paired = report.paired_objective()
    chunks = report.settings["chunks 25"]
    assert paired == pytest.approx([(a + b) / 2 for a, b in zip(blocks, chunks, strict=True)])
    assert report.objective == pytest.approx(np.mean(paired))
    assert summary["objective"]["ci95"] >= 0


def test_mean_ci_known_values() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([5.0])[0] == 5.0


@pytest.mark.parametrize(
    ("options", "error"),
    [({"cuts": (1.0,)}, ConfigError), ({"seeds": ()}, ConfigError),
     ({"settings": (("stream", 5),)}, ConfigError), ({"settings": (("chunks", 0),)}, ConfigError)],
)
def test_bad_plans_are_refused(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        RollingOrigin(**options)


def test_a_fold_without_a_window_is_refused() -> None:
    with pytest.raises(DataError, match="no test window"):
        RollingOrigin(cuts=(0.5,), horizon=0.001).folds(100)
