"""Named model presets, and loading any model the package ships.

A preset is a model class and the options it is built with: what ``nmrn evaluate --models ...``
and ``nmrn train --model`` build. The defaults of the baselines were chosen on a validation
tail of the ML-100K history (never on the test stream): see ``docs/tuning.md``. Any option can
be overridden by the caller. A model built from a preset remembers the preset's name
(``model.preset``), and so do its checkpoints.

This module sits above every model module (it imports them all), so it is also where a
checkpoint of any of them can be loaded: :func:`load_model`.

Examples
--------
>>> model = make_model("item-knn")
>>> type(model).__name__, model.preset, model.config.history_len
('ItemKNN', 'item-knn', 400)
>>> make_model("nmrn-faithfull")
Traceback (most recent call last):
...
nmrn.errors.ConfigError: unknown model 'nmrn-faithfull'; did you mean 'nmrn-faithful'? ...
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from nmrn.baselines.bpr import BPR
from nmrn.baselines.ease import EASE
from nmrn.baselines.itemknn import ItemKNN
from nmrn.baselines.popularity import Popularity, RecentPopularity
from nmrn.baselines.sasrec import SASRec
from nmrn.baselines.sknn import STAN
from nmrn.baselines.sknn import VALIDATED as STAN_VALIDATED
from nmrn.errors import ConfigError
from nmrn.training.contract import Recommender
from nmrn.training.hybrid import NMRNHybrid
from nmrn.training.nmrn import NMRN

__all__ = ["PRESETS", "load_model", "make_model", "model_names"]

# the memory-only optimum of the rolling-origin search (docs/tuning.md): preset `nmrn-memory`,
# and (with a personal offset) the memory inside the `nmrn` hybrid
MEMORY_BEST: dict[str, Any] = {
    "addressing": "neg_dist",
    "temperature": 0.678,
    "per_user_memory": True,
    "context_len": 10,
    "context_decay": 0.618,
    "margin": 0.411,
    "epochs": 10,
    "lr": 0.0746,
    "n_candidates": 10,
}

PRESETS: dict[str, tuple[type[Recommender], dict[str, Any]]] = {
    "pop": (Popularity, {}),
    "recent-pop": (RecentPopularity, {"window": 10_000}),
    "item-knn": (ItemKNN, {"history_len": 400, "recency_decay": 0.7, "alpha": 1.0}),
    "bpr": (BPR, {"dim": 32}),
    # EASE (Steck 2019): the best of a rolling-origin Optuna search (docs/tuning.md, 16 trials
    # over l2, recency_decay, history_len; objective 0.0732 +- 0.0076 against 0.0561 for EASE's
    # own binary profile at l2 500); values rounded to 4 digits
    "ease": (EASE, {"l2": 4242.0, "recency_decay": 0.8614, "history_len": 1000}),
    # STAN and V-SKNN: the best of Optuna searches on the validation split of docs/baselines.md
    # (fit on 40,000 events, test-then-train on the next 10,000; blocks, chunks of 1,000 and
    # of 100). Validation removed the time cut of sessions (a gap of 5.5 years never occurs in
    # ML-100K): a "session" is a piece of at most max_session_len items of a user's history.
    "stan": (STAN, dict(STAN_VALIDATED)),
    # V-SKNN: STAN with linear position weights, the dot product, and no time or
    # in-neighbour weight
    "v-sknn": (
        STAN,
        {
            "session_gap": 1.9e8,
            "max_session_len": 500,
            "n_neighbours": 288,
            "sample_size": 500,
            "position_weighting": "linear",
            "lambda_position": None,
            "similarity": "dot",
            "lambda_time": None,
            "lambda_neighbour": None,
        },
    ),
    # the best of an Optuna search on the same split, confirmed on seeds 0-2; online steps at a
    # small learning rate (larger ones lost accuracy in chunks of 100)
    "sasrec": (
        SASRec,
        {
            "max_len": 100,
            "dropout": 0.46,
            "epochs": 43,
            "lr": 5.9e-4,
            "learn_steps": 1,
            "learn_lr": 6e-5,
        },
    ),
    # the paper's model as DESIGN §1 specifies it: dot addressing, global value memory, plain
    # Euclidean distance, uniform negatives; every variant off
    "nmrn-faithful": (NMRN, {}),
    # the best memory-only NMRN on rolling-origin validation of the history (docs/tuning.md,
    # "Rolling-origin selection": Optuna TPE, 20 trials over addressing, temperature, per-user
    # memory, context-addressed reads, item memory, margin, epochs, lr and candidates; objective
    # 0.0674 +- 0.011 against 0.0512 for the faithful configuration)
    "nmrn-memory": (NMRN, dict(MEMORY_BEST)),
    # the best NMRN-family model on rolling-origin validation of the history (docs/tuning.md,
    # "Rolling-origin selection"): the memory meets the neighbourhood, NMRN's read,
    # co-occurrence, transitions, sessions and popularity weighed by a gate (training/hybrid.py).
    # Stacked: the components fit the first half of the history with their own epochs and the
    # gate learns from the second half, replayed (gate_fraction 0.5); the memory inside is the
    # memory-only optimum with a personal offset; the online gate steps are small (learn_lr).
    # The gate and neighbourhood options are the earlier search's best with the transition
    # component at item-kNN's own optimum (directed, 100 items, decay 0.881, counts forgetting
    # 1e-4 per event); values rounded to 4 digits. Objective 0.0859 +- 0.0175 (seed 0), against
    # 0.0835 for the unstacked hybrid and 0.0828 for item-kNN tuned the same way.
    # One online gate pass per batch (learn_passes 1, was 2): the best mean of a paired
    # rolling-origin comparison of 2/1/0 passes (6 folds: 0.0850 against 0.0847 for 2, a
    # difference inside noise, +0.0003 +- 0.0013) and ~17 % cheaper to learn (BENCHMARKS.md,
    # "fewer online gate passes").
    "nmrn": (
        NMRNHybrid,
        {
            "knn_decay": 0.8316,
            "knn_slow_decay": 0.8009,
            "follow_history": 100,
            "follow_decay": 0.8811,
            "follow_cooc_decay": 0.9999,
            "hidden": 8,
            "lr": 0.01173,
            "fit_epochs": 5,
            "learn_passes": 1,
            "gate_fraction": 0.5,
            "learn_lr": 0.002,
            "memory": {**MEMORY_BEST, "personal_offset": True},
        },
    ),
    # the hybrid with its class defaults: the starting point of the searches of docs/tuning.md
    # (their commands and result files use this name)
    "nmrn-hybrid": (NMRNHybrid, {}),
}


def model_names() -> list[str]:
    """Every preset name, in table order."""
    return list(PRESETS)


def make_model(name: str, *, seed: int = 0, **overrides: Any) -> Recommender:
    """Build the preset ``name`` with ``overrides`` applied (and ``seed``).

    Raises
    ------
    ConfigError
        For an unknown preset or an option the model does not take (with a suggestion).
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(PRESETS)})")
    cls, params = PRESETS[name]
    accepted = cls.config_class.param_names()
    for key in overrides:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"model {name!r} has no parameter {key!r}{hint} "
                f"(it takes: {', '.join(sorted(accepted))})"
            )
    options = {**params, **overrides}
    if "seed" in accepted and "seed" not in overrides:
        options["seed"] = seed
    try:
        model = cls(**options)
    except ConfigError as err:
        raise ConfigError(f"model {name!r}: {err}") from None
    model.preset = name
    return model


def load_model(path: str | os.PathLike[str], *, device: str | None = None) -> Recommender:
    """Load a checkpoint of any model the package ships (the class is read from it);
    ``device`` overrides a torch model's device (see :meth:`Recommender.load`)."""
    return Recommender.load(path, device=device)
