"""Hyper-parameter search on the history only: a validation tail of the base, not the test stream.

Usage::

    python benchmarks/tune.py item-knn --grid '{"recency_decay": [0.8, 1.0], "alpha": [0.5, 1.0]}'

The reference runs use base fraction 0.5 on ML-100K: the test stream is the second half of the
log, and this script never reads it. It takes the first half (the base), fits on its first
``--fit-fraction`` (default 0.6) and evaluates on the rest of the base — in block mode (5 blocks)
and chunk mode (chunks of 1,000) — for every point of the grid and every seed. The objective is
Hits@10 over all items, averaged over the two protocols and the seeds. Results go to
``benchmarks/results/tune_<model>.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.models import make_model

BASE_FRACTION = 0.5  # of the whole log: the history of the reference runs


def validation_split(events, fit_fraction: float):
    base = events[: int(BASE_FRACTION * len(events))]
    return base, fit_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--grid", default="{}", help="JSON object: parameter -> list of values")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--fit-fraction", type=float, default=0.6)
    parser.add_argument("--protocols", default="blocks,chunks")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    args = parser.parse_args()
    grid = json.loads(args.grid)
    seeds = [int(s) for s in args.seeds.split(",")]
    protocols = args.protocols.split(",")
    events = load_dataset("ml-100k")
    base, fit_fraction = validation_split(events, args.fit_fraction)
    keys = sorted(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        scores: dict[str, list[float]] = {p: [] for p in protocols}
        start = time.perf_counter()
        for seed in seeds:
            for protocol in protocols:
                model = make_model(args.model, seed=seed, **params)
                result = evaluate(
                    model,
                    base,
                    protocol=protocol,
                    base_fraction=fit_fraction,
                    n_blocks=5,
                    chunk_size=1000,
                    seed=seed,
                )
                scores[protocol].append(result.metrics["Hits@10"])
        row = {
            "params": params,
            **{p: float(np.mean(v)) for p, v in scores.items()},
            "objective": float(np.mean([np.mean(v) for v in scores.values()])),
            "spread": float(np.std([x for v in scores.values() for x in v])),
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: -r["objective"])
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"tune_{args.model}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "grid": grid,
                "seeds": seeds,
                "fit_fraction": fit_fraction,
                "protocols": protocols,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"\n| params | {' | '.join(protocols)} | objective |")
    print("|---|" + "---|" * (len(protocols) + 1))
    for r in rows:
        cells = " | ".join(f"{r[p]:.4f}" for p in protocols)
        print(f"| {json.dumps(r['params'])} | {cells} | {r['objective']:.4f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
