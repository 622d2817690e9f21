"""Model selection that transfers: an Optuna search on rolling-origin validation of the history.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/select_model.py item-knn \
        --space '{"history_len": [50, 100, 200, 400], "recency_decay": {"low": 0.3, "high": 1.0}}' \
        --trials 30 --seeds 0,1

The test stream of the reference runs is the second half of ML-100K; this script reads only the
first half (the history). Each trial builds the preset with the sampled options and runs
:func:`nmrn.evaluation.selection.validate` on the history (default: cuts at 0.55, 0.7 and 0.85
of it, windows of 0.15, in blocks and chunks of 100 and 1,000, for each seed); the objective is
the mean Hits@10 over the settings and folds. The space is JSON: a list is a categorical choice,
``{"low": a, "high": b}`` a float (``"log": true`` for a log scale, ``"int": true`` for an
integer). The search is Optuna's TPE sampler, seeded. Results go to
``benchmarks/results/select_<preset>[-<tag>].json``: every trial with its per-setting means and
95 % intervals, and the best one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.selection import RollingOrigin, validate
from nmrn.models import make_model

BASE_FRACTION = 0.5  # of the whole log: the history of the reference runs


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            params[name] = trial.suggest_categorical(name, spec)
        elif spec.get("int"):
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]),
                                             log=bool(spec.get("log")))
        else:
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               log=bool(spec.get("log")))
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--space", default="{}", help="JSON search space (see the docstring)")
    parser.add_argument("--fixed", default="{}", help="JSON options applied to every trial")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--cuts", default="0.55,0.7,0.85")
    parser.add_argument("--horizon", type=float, default=0.15)
    parser.add_argument("--settings", default="blocks:5,chunks:100,chunks:1000")
    parser.add_argument("--study-seed", type=int, default=0)
    parser.add_argument("--enqueue", default="[]", help="JSON list of trials to run first")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space, fixed = json.loads(args.space), json.loads(args.fixed)
    plan = RollingOrigin(
        cuts=tuple(float(c) for c in args.cuts.split(",")),
        horizon=args.horizon,
        settings=tuple(
            (p, int(n)) for p, n in (s.split(":") for s in args.settings.split(","))
        ),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
    )
    events = load_dataset("ml-100k")
    history = events[: int(BASE_FRACTION * len(events))]  # the test stream is never read
    rows: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = {**fixed, **suggest(trial, space)}
        start = time.perf_counter()
        report = validate(lambda seed: make_model(args.preset, seed=seed, **params), history,
                          plan)
        row = {"trial": trial.number, "params": params, **report.summary(),
               "new_users": report.new_users, "wall_s": time.perf_counter() - start}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("trial", "params", "objective")}), flush=True)
        return report.objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.study_seed)
    )
    for params in json.loads(args.enqueue):
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=args.trials)
    best = max(rows, key=lambda r: r["objective"]["mean"])
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"select_{args.preset}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({
        "preset": args.preset, "space": space, "fixed": fixed,
        "plan": {"cuts": plan.cuts, "horizon": plan.horizon, "settings": plan.settings,
                 "seeds": plan.seeds},
        "trials": rows, "best": best,
    }, indent=1))
    labels = [k for k in best if k not in ("trial", "params", "objective", "seconds",
                                            "new_users", "wall_s")]
    print(f"\n| params | {' | '.join(labels)} | objective (95% CI) |")
    print("|---|" + "---|" * (len(labels) + 1))
    for r in sorted(rows, key=lambda r: -r["objective"]["mean"])[:10]:
        cells = " | ".join(f"{r[k]['mean']:.4f}" for k in labels)
        o = r["objective"]
        print(f"| {json.dumps(r['params'])} | {cells} | {o['mean']:.4f} ± {o['ci95']:.4f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
