"""Test-stream figures of presets in the three walks: blocks, chunks of 1,000 and chunks of 100.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_baselines.py --models stan,v-sknn,item-knn
    OMP_NUM_THREADS=1 python benchmarks/bench_baselines.py --models sasrec --seeds 0,1,2

The reference protocol of BENCHMARKS.md: ML-100K, base fraction 0.5 (history = the first 50,000
events, test stream = the rest), 5 blocks or chunks of 1,000 / 100, ranking against all known
items; one torch thread. Each (model, seed, walk) is a fresh model fitted on the history. Prints
a Markdown table (Hits@10 per walk, mean ± std over seeds when there are several, fit seconds and
learn events/s of the chunks-of-1,000 walk) and writes every result to
``benchmarks/results/bench_baselines_<models>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.models import make_model

WALKS = {
    "blocks": {"protocol": "blocks", "n_blocks": 5},
    "chunks1000": {"protocol": "chunks", "chunk_size": 1000},
    "chunks100": {"protocol": "chunks", "chunk_size": 100},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="stan,v-sknn,sasrec")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--walks", default=",".join(WALKS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    seeds = [int(s) for s in args.seeds.split(",")]
    walks = args.walks.split(",")
    results = []
    for name in args.models.split(","):
        for seed in seeds:
            for walk in walks:
                result = evaluate(
                    make_model(name, seed=seed), events, base_fraction=0.5, seed=0,
                    name=name, **WALKS[walk],
                )
                row = {"model": name, "seed": seed, "walk": walk, **result.to_dict()}
                results.append(row)
                print(
                    f"{name} seed {seed} {walk}: Hits@10 {result.metrics['Hits@10']:.4f} "
                    f"fit {result.fit_seconds:.1f} s, learn {result.learn_events_per_s:,.0f} ev/s",
                    flush=True,
                )
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.models.replace(",", "+")
    (args.out / f"bench_baselines_{tag}.json").write_text(json.dumps(results, indent=1))

    print("\n| model | seeds | Hits@10 blocks | chunks 1000 | chunks 100 | fit s | learn ev/s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        cells = []
        for walk in walks:
            values = [r["metrics"]["Hits@10"] for r in results
                      if r["model"] == name and r["walk"] == walk]
            cell = f"{np.mean(values):.4f}"
            if len(values) > 1:
                cell += f" ± {np.std(values):.4f}"
            cells.append(cell)
        timed = walks[min(1, len(walks) - 1)]  # chunks of 1,000 when run
        ref = [r for r in results if r["model"] == name and r["walk"] == timed]
        fit = np.median([r["fit_seconds"] for r in ref])
        learn = np.median([r["learn_events_per_s"] for r in ref])
        print(f"| {name} | {args.seeds} | {' | '.join(cells)} | {fit:.1f} | {learn:,.0f} |")


if __name__ == "__main__":
    main()
