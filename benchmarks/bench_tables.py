"""The test-stream tables of BENCHMARKS.md and README: every model in the three walks, seeds,
the new-user view and the training cost.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --models pop,item-knn,stan --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --models nmrn-faithful,nmrn --seeds 0,1,2 \
        --variant 'nmrn-no-memory=nmrn:{"features": ["knn", "pop"]}'

The reference protocol: ML-100K, base fraction 0.5 (history = the first 50,000 events, the test
stream = the rest), 5 blocks, chunks of 1,000 and chunks of 100, ranking against all known
items; one torch thread. Each (model, seed, walk) is a fresh model fitted on the history; the
protocol's sampled negatives use seed 0 whatever the model's seed. A ``--variant`` is a name for
a preset with options (``NAME=PRESET:JSON``), for ablations. Prints Markdown: Hits@10 per walk
(mean ± standard deviation over the seeds), Hits@10 over the tested events of new users (fewer
than 5 earlier events) in chunks of 100, fit seconds, learn events/s in chunks of 1,000, and
fit and learn seconds per event relative to ``--cost-reference`` (nmrn-faithful). Writes every
result to ``benchmarks/results/tables_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

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


def parse_variant(text: str) -> tuple[str, str, dict[str, Any]]:
    name, _, spec = text.partition("=")
    preset, _, options = spec.partition(":")
    return name, preset, json.loads(options) if options else {}


def cell(values: list[float], digits: int = 4) -> str:
    text = f"{np.mean(values):.{digits}f}"
    return text + (f" ± {np.std(values):.{digits}f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated presets")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=PRESET:JSON options (repeatable)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--walks", default=",".join(WALKS))
    parser.add_argument("--cost-reference", default="nmrn-faithful",
                        help="the model whose fit/learn seconds per event the costs divide by "
                        "(only when it is among the models)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    seeds = [int(s) for s in args.seeds.split(",")]
    walks = args.walks.split(",")
    specs = [(m, m, {}) for m in args.models.split(",") if m]
    specs += [parse_variant(v) for v in args.variant]
    results: list[dict[str, Any]] = []
    for name, preset, options in specs:
        for seed in seeds:
            for walk in walks:
                start = time.perf_counter()
                result = evaluate(make_model(preset, seed=seed, **options), events,
                                  base_fraction=0.5, seed=0, name=name, **WALKS[walk])
                results.append({"model": name, "preset": preset, "options": options, "seed": seed,
                                "walk": walk, **result.to_dict()})
                print(f"{name} seed {seed} {walk}: Hits@10 {result.metrics['Hits@10']:.4f} "
                      f"new {result.new_user_metrics.get('Hits@10', float('nan')):.4f} "
                      f"(n={result.n_tested_new}) fit {result.fit_seconds:.1f} s learn "
                      f"{result.learn_events_per_s:,.0f} ev/s, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or "+".join(name for name, _, _ in specs)
    (args.out / f"tables_{tag}.json").write_text(json.dumps(results, indent=1, default=str))

    def of(name: str, walk: str) -> list[dict[str, Any]]:
        return [r for r in results if r["model"] == name and r["walk"] == walk]

    ref = args.cost_reference
    ref_fit = ref_learn = None
    if any(r["model"] == ref for r in results):
        timed = "chunks1000" if "chunks1000" in walks else walks[0]
        ref_fit = np.median([r["fit_seconds"] for r in of(ref, timed)])
        ref_learn = np.median([r["learn_seconds"] for r in of(ref, timed)])
    head = ["model", "seeds"] + [f"Hits@10 {w}" for w in walks]
    head += ["new users, chunks 100 (n)", "fit s", "learn ev/s", f"cost vs {ref} (fit / learn)"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, _, _ in specs:
        cells = [name, args.seeds]
        cells += [cell([r["metrics"]["Hits@10"] for r in of(name, w)]) for w in walks]
        new_walk = "chunks100" if "chunks100" in walks else walks[0]
        new = of(name, new_walk)
        cells.append(f"{cell([r['new_user_metrics'].get('Hits@10', float('nan')) for r in new], 3)}"
                     f" ({new[0]['n_tested_new']})")
        timed = of(name, "chunks1000" if "chunks1000" in walks else walks[0])
        fit = np.median([r["fit_seconds"] for r in timed])
        learn_s = np.median([r["learn_seconds"] for r in timed])
        cells += [f"{fit:.1f}", f"{np.median([r['learn_events_per_s'] for r in timed]):,.0f}"]
        if ref_fit and ref_learn:
            cells.append(f"{fit / ref_fit:.2f} / {learn_s / ref_learn:.2f}")
        else:
            cells.append("-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
