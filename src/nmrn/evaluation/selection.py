"""Model selection on the history only: rolling-origin validation with several cuts and seeds.

One validation tail chose a preset that lost on the test stream (docs/tuning.md): a single cut
of the history is one draw of a noisy figure. Rolling-origin validation (forecasting's
"evaluation on a rolling forecasting origin") asks the question the test stream asks, several
times, inside the history: for each cut point ``t_k`` the model is fitted on the events before
``t_k`` and evaluated test-then-train on the next ``horizon`` events, in every protocol setting
(blocks, chunks of each size), for every seed. The figure to select on is the mean over the folds
(cuts x seeds) of each setting, averaged over the settings, reported with a 95 % confidence
interval (Student's t over the folds) so that two candidates closer than their intervals are not
ranked by noise.

Nothing after the history is read: the caller passes the history (e.g. the first half of a log
whose second half is the test stream), and every fold ends inside it.

Examples
--------
>>> from nmrn.baselines.popularity import Popularity
>>> from nmrn.data.events import as_events
>>> log = as_events([(u % 7, (u * 3) % 11, t) for t, u in enumerate(range(400))])
>>> plan = RollingOrigin(cuts=(0.5, 0.7), horizon=0.2, settings=(("blocks", 2), ("chunks", 20)),
...                      seeds=(0,))
>>> [(f.fit, f.stop) for f in plan.folds(len(log))]
[(200, 280), (280, 360)]
>>> report = validate(lambda seed: Popularity(seed=seed), log, plan)
>>> sorted(report.settings), report.n_folds
(['blocks', 'chunks 20'], 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nmrn.config import Int, Real
from nmrn.data.events import EventBatch, as_events
from nmrn.errors import ConfigError, DataError
from nmrn.evaluation.protocol import PROTOCOLS, StreamingModel, evaluate

__all__ = ["Fold", "RollingOrigin", "ValidationReport", "mean_ci", "validate"]

METRIC = "Hits@10"


@dataclass(frozen=True)
class Fold:
    """One cut of the history: fit on ``[0, fit)``, test-then-train on ``[fit, stop)``."""

    fit: int
    stop: int


@dataclass(frozen=True)
class RollingOrigin:
    """The folds and settings of a rolling-origin validation.

    Parameters
    ----------
    cuts
        Fractions of the history where the folds' test windows start (each in (0, 1)).
    horizon
        Length of each test window, as a fraction of the history (a window ends at the
        history's end at the latest).
    settings
        ``(protocol, size)`` pairs: ``("blocks", n_blocks)`` or ``("chunks", chunk_size)``.
    seeds
        Seeds of the models (and of the protocol's sampled candidates).
    """

    cuts: tuple[float, ...] = (0.55, 0.7, 0.85)
    horizon: float = 0.15
    settings: tuple[tuple[str, int], ...] = (("blocks", 5), ("chunks", 100), ("chunks", 1000))
    seeds: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        if not self.cuts or not self.seeds or not self.settings:
            raise ConfigError("RollingOrigin needs at least one cut, one seed and one setting")
        for cut in self.cuts:
            Real(low=0.0, high=1.0, low_open=True, high_open=True)("RollingOrigin.cuts", cut)
        Real(low=0.0, high=1.0, low_open=True)("RollingOrigin.horizon", self.horizon)
        for seed in self.seeds:
            Int()("RollingOrigin.seeds", seed)
        for protocol, size in self.settings:
            if protocol not in PROTOCOLS:
                raise ConfigError(f"RollingOrigin.settings: unknown protocol {protocol!r}")
            Int(low=1)(f"RollingOrigin.settings[{protocol}]", size)

    def folds(self, n_events: int) -> list[Fold]:
        """The folds of a history of ``n_events`` events."""
        folds = []
        for cut in self.cuts:
            fit = int(math.floor(cut * n_events))
            stop = min(n_events, fit + int(math.floor(self.horizon * n_events)))
            if fit < 1 or stop <= fit:
                raise DataError(
                    f"cut {cut} with horizon {self.horizon} of {n_events} events leaves no "
                    "history or no test window"
                )
            folds.append(Fold(fit, stop))
        return folds


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its ``level`` confidence interval (Student's t; NaN half-width
    for fewer than two values).

    >>> mean_ci([1.0, 2.0, 3.0])
    (2.0, 2.4841...)
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, half


@dataclass
class ValidationReport:
    """What :func:`validate` measured.

    Attributes
    ----------
    settings
        Setting label (``"blocks"``, ``"chunks 100"``) -> one value of the metric per fold and
        seed, in the order (cut, seed).
    new_users
        The same for the tested events of new users (NaN where a fold had none).
    seconds
        Fit and learn seconds over every run.
    """

    settings: dict[str, list[float]] = field(default_factory=dict)
    new_users: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    n_folds: int = 0

    @property
    def objective(self) -> float:
        """The mean over settings of each setting's mean over folds (what selection maximises)."""
        return float(np.mean([np.mean(v) for v in self.settings.values()]))

    def paired_objective(self) -> list[float]:
        """The objective of each (cut, seed) fold, averaged over the settings: values that can
        be compared fold by fold with another candidate's (a paired comparison)."""
        return np.mean(np.array(list(self.settings.values())), axis=0).tolist()

    def summary(self) -> dict[str, Any]:
        """Mean and 95 % CI half-width per setting and of the objective, JSON-friendly."""
        out: dict[str, Any] = {}
        for label, values in self.settings.items():
            mean, half = mean_ci(values)
            out[label] = {"mean": mean, "ci95": half, "values": values}
        mean, half = mean_ci(self.paired_objective())
        out["objective"] = {"mean": mean, "ci95": half}
        out["seconds"] = self.seconds
        return out


def validate(
    make: Callable[[int], StreamingModel],
    history: Any,
    plan: RollingOrigin | None = None,
    *,
    metric: str = METRIC,
) -> ValidationReport:
    """Rolling-origin validation of the model ``make(seed)`` on ``history``.

    Parameters
    ----------
    make
        Builds a fresh, untrained model for a seed.
    history
        The events selection may look at (anything :func:`~nmrn.data.events.as_events` takes),
        in time order. Nothing else is read.
    plan
        Folds, settings and seeds (default :class:`RollingOrigin`).
    metric
        The metric collected (default Hits@10 over all items).
    """
    plan = RollingOrigin() if plan is None else plan
    events: EventBatch = as_events(history, where="validation history")
    report = ValidationReport()
    folds = plan.folds(len(events))
    report.n_folds = len(folds) * len(plan.seeds)
    for protocol, size in plan.settings:
        label = protocol if protocol == "blocks" else f"chunks {size}"
        values, new = [], []
        for fold in folds:
            window = events[: fold.stop]
            for seed in plan.seeds:
                result = evaluate(
                    make(seed),
                    window,
                    protocol=protocol,
                    # the protocol takes floor(fraction * n) events: aim at the middle of the
                    # event so that rounding cannot move the cut
                    base_fraction=(fold.fit + 0.5) / fold.stop,
                    n_blocks=size,
                    chunk_size=size,
                    seed=seed,
                )
                values.append(result.metrics[metric])
                new.append(result.new_user_metrics.get(metric, math.nan))
                report.seconds += result.fit_seconds + result.learn_seconds
        report.settings[label] = values
        report.new_users[label] = new
    return report
