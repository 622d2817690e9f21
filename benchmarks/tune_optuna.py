"""Optuna search for the STAN / V-SKNN / SASRec presets, on the history only.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/tune_optuna.py stan --trials 60
    OMP_NUM_THREADS=1 python benchmarks/tune_optuna.py stan-factors --trials 40
    OMP_NUM_THREADS=1 python benchmarks/tune_optuna.py sasrec --trials 20 --confirm 3 --seeds 0,1,2

The reference runs use base fraction 0.5 on ML-100K, so the test stream is the second half of the
log; this script never reads it. It takes the first half (50,000 events), fits on its first 80 %
(40,000 events) and runs the test-then-train protocol on the other 20 % (10,000 events) three
ways: 5 blocks, chunks of 1,000 and chunks of 100. The objective is Hits@10 over all items,
averaged over the three. The model is fitted once per trial (and seed) and copied through a
checkpoint for each protocol, so the three runs start from the same fitted state.

The sampler is Optuna's TPE with a fixed seed; the search runs on seed 0 of the model. With
``--confirm N`` the N best trials are rerun on every seed of ``--seeds`` and the best mean wins.
Everything goes to ``benchmarks/results/tune_<model>-optuna.json``. ``--grid`` runs a small grid
instead (``tune_<model>-grid-<tag>.json``), to check the edge of a search.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.models import make_model
from nmrn.training.contract import Recommender

HISTORY = 50_000  # the base of the reference runs (base fraction 0.5 of ML-100K)
FIT_FRACTION = 0.8
PROTOCOLS = (("blocks", {"n_blocks": 5}), ("chunks", {"chunk_size": 1000}),
             ("chunks", {"chunk_size": 100}))
LABELS = ("blocks", "chunks1000", "chunks100")


def space_stan(trial: optuna.Trial, *, factors: str = "optional") -> dict[str, Any]:
    params: dict[str, Any] = {
        "session_gap": trial.suggest_float("session_gap", 300.0, 3e8, log=True),
        "max_session_len": trial.suggest_categorical("max_session_len", [50, 100, 200, 500, 1000]),
        "n_neighbours": trial.suggest_int("n_neighbours", 10, 1000, log=True),
        "sample_size": trial.suggest_categorical("sample_size", [250, 500, 1000, 2000]),
        "similarity": trial.suggest_categorical("similarity", ["cosine", "dot"]),
    }
    for key, low, high in (
        ("lambda_position", 1.0, 1000.0),
        ("lambda_time", 3600.0, 3e7),
        ("lambda_neighbour", 1.0, 1000.0),
    ):
        on = factors == "on" or trial.suggest_categorical(f"use_{key}", [True, False])
        params[key] = trial.suggest_float(key, low, high, log=True) if on else None
    return params


def space_stan_factors(trial: optuna.Trial) -> dict[str, Any]:
    """STAN with its three weights on (a finite lambda each): what the paper's factors cost."""
    return space_stan(trial, factors="on")


def space_v_sknn(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "session_gap": trial.suggest_float("session_gap", 300.0, 3e8, log=True),
        "max_session_len": trial.suggest_categorical("max_session_len", [50, 100, 200, 500, 1000]),
        "n_neighbours": trial.suggest_int("n_neighbours", 10, 1000, log=True),
        "sample_size": trial.suggest_categorical("sample_size", [250, 500, 1000, 2000]),
    }


def space_sasrec(trial: optuna.Trial) -> dict[str, Any]:
    # dim stays 64 (the paper uses 50); learn_steps >= 1: the model is updated online
    return {
        "max_len": trial.suggest_categorical("max_len", [50, 100]),
        "dropout": trial.suggest_float("dropout", 0.2, 0.7),
        "epochs": trial.suggest_int("epochs", 5, 60, log=True),
        "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
        "learn_lr": trial.suggest_float("learn_lr", 1e-5, 1e-3, log=True),
        "learn_steps": trial.suggest_int("learn_steps", 1, 3),
    }


# search name -> (preset it overrides, search space)
SPACES = {
    "stan": ("stan", space_stan),
    "stan-factors": ("stan", space_stan_factors),
    "v-sknn": ("v-sknn", space_v_sknn),
    "sasrec": ("sasrec", space_sasrec),
}


class _Fitted:
    """A fitted model the protocol must not refit: ``fit`` checks it was given the same events."""

    def __init__(self, model: Recommender, n_base: int) -> None:
        self.model = model
        self.n_base = n_base
        self.name = model.preset or type(model).__name__

    def fit(self, events: Any) -> None:
        if len(events) != self.n_base:
            raise ValueError(f"fitted on {self.n_base} events, the protocol has {len(events)}")

    def learn(self, events: Any) -> None:
        self.model.learn(events)

    def score(self, users: Any, items: Any) -> np.ndarray:
        return self.model.score(users, items)

    def get_params(self) -> dict[str, Any]:
        return self.model.get_params()


def run(model_name: str, params: dict[str, Any], seed: int, events: Any) -> dict[str, Any]:
    """Fit once, then each protocol on a copy of the fitted model; Hits@10 and timings."""
    n_base = int(FIT_FRACTION * len(events))
    model = make_model(model_name, seed=seed, **params)
    start = time.perf_counter()
    model.fit(events[:n_base])
    fit_s = time.perf_counter() - start
    out: dict[str, Any] = {"fit_s": fit_s}
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "fitted")
        for label, (protocol, options) in zip(LABELS, PROTOCOLS, strict=True):
            copy = Recommender.load(path)
            result = evaluate(
                _Fitted(copy, n_base), events, protocol=protocol, base_fraction=FIT_FRACTION,
                seed=seed, **options,
            )
            out[label] = result.metrics["Hits@10"]
            out[f"{label}_learn_ev_s"] = result.learn_events_per_s
    out["objective"] = float(np.mean([out[label] for label in LABELS]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SPACES))
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--confirm", type=int, default=0, help="rerun the N best on --seeds")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--grid",
        default=None,
        help="instead of Optuna: a JSON object {'base': {...}, 'grid': {param: [values]}}, "
        "every point run on every seed of --seeds (a follow-up check of a search's edge)",
    )
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    args = parser.parse_args()
    if args.grid is not None:
        grid_search(args)
        return
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")[:HISTORY]
    preset, space = SPACES[args.model]
    rows: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = space(trial)
        start = time.perf_counter()
        row = {"trial": trial.number, "params": params, **run(preset, params, 0, events)}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(json.dumps(row), flush=True)
        return float(row["objective"])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=args.trials)

    confirmed: list[dict[str, Any]] = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for row in sorted(rows, key=lambda r: -r["objective"])[: args.confirm]:
        runs = [run(preset, row["params"], seed, events) for seed in seeds]
        summary = {
            "trial": row["trial"],
            "params": row["params"],
            "seeds": seeds,
            **{label: float(np.mean([r[label] for r in runs])) for label in LABELS},
            "objective": float(np.mean([r["objective"] for r in runs])),
            "objective_std": float(np.std([r["objective"] for r in runs])),
            "fit_s": float(np.mean([r["fit_s"] for r in runs])),
        }
        confirmed.append(summary)
        print("confirm", json.dumps(summary), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"tune_{args.model}-optuna{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(
        {
            "search": args.model,
            "preset": preset,
            "history": HISTORY,
            "fit_fraction": FIT_FRACTION,
            "protocols": LABELS,
            "sampler": "TPE(seed=0)",
            "search_seed": 0,
            "rows": sorted(rows, key=lambda r: -r["objective"]),
            "confirmed": sorted(confirmed, key=lambda r: -r["objective"]),
        },
        indent=1,
    ))
    best = (confirmed or rows)
    best = sorted(best, key=lambda r: -r["objective"])[0]
    print(f"\nbest: {json.dumps(best['params'])} objective {best['objective']:.4f}\nwrote {out}")


def grid_search(args: argparse.Namespace) -> None:
    """Every point of a small grid on every seed; rows sorted by the mean objective."""
    torch.set_num_threads(1)
    spec = json.loads(args.grid)
    preset, _ = SPACES[args.model]
    events = load_dataset("ml-100k")[:HISTORY]
    seeds = [int(s) for s in args.seeds.split(",")]
    keys = sorted(spec["grid"])
    rows = []
    for values in itertools.product(*(spec["grid"][k] for k in keys)):
        params = {**spec["base"], **dict(zip(keys, values, strict=True))}
        runs = [run(preset, params, seed, events) for seed in seeds]
        row = {
            "params": params,
            "seeds": seeds,
            **{label: float(np.mean([r[label] for r in runs])) for label in LABELS},
            "objective": float(np.mean([r["objective"] for r in runs])),
            "objective_std": float(np.std([r["objective"] for r in runs])),
            "fit_s": float(np.mean([r["fit_s"] for r in runs])),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"tune_{args.model}-grid{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(
        {"search": args.model, "preset": preset, "history": HISTORY, "fit_fraction": FIT_FRACTION,
         "protocols": LABELS, "spec": spec, "rows": sorted(rows, key=lambda r: -r["objective"])},
        indent=1,
    ))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
