"""Per-block / per-fifth Hits@10 of NMRN with each negative sampler (plots for BENCHMARKS.md).

Usage::

    python benchmarks/sampler_segments.py [--preset nmrn] [--seed 0]

Runs the reference protocol (ML-100K, base 0.5; 5 blocks, and chunks of 1,000) for the preset
with the uniform, popularity and adversarial samplers, and writes
``benchmarks/plots/samplers_hits10_{blocks,chunks}.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nmrn.data.datasets import load_dataset
from nmrn.evaluation.protocol import evaluate
from nmrn.evaluation.report import plot_segments
from nmrn.models import make_model

SAMPLERS = ("uniform", "popularity", "adversarial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nmrn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "plots")
    args = parser.parse_args()
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    for protocol in ("blocks", "chunks"):
        results = []
        for sampler in SAMPLERS:
            model = make_model(args.preset, seed=args.seed, sampler=sampler)
            result = evaluate(
                model,
                events,
                name=f"{args.preset} + {sampler}",
                protocol=protocol,
                base_fraction=0.5,
                n_blocks=5,
                chunk_size=1000,
                seed=args.seed,
            )
            results.append(result)
            print(f"{protocol} {sampler}: Hits@10 {result.metrics['Hits@10']:.4f}", flush=True)
        path = args.out / f"samplers_hits10_{protocol}.png"
        plot_segments(results, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
