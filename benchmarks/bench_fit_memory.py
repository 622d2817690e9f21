"""Fit time, streaming learn rate and peak RSS of one model preset on ML-100K.

Usage::

    python benchmarks/bench_fit_memory.py nmrn-faithful

Fits the preset on all 100,000 events (time, one torch thread), then, in a fresh model, fits the
first half and learns the rest in chunks of 1,000 (events/s of the learn calls), and prints the
process's peak resident set size.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from nmrn.data.datasets import load_dataset
from nmrn.models import make_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    events = load_dataset("ml-100k")
    model = make_model(args.model)
    start = time.perf_counter()
    model.fit(events)
    fit_s = time.perf_counter() - start
    stream = make_model(args.model).fit(events[:50_000])
    start = time.perf_counter()
    for lo in range(50_000, len(events), 1000):
        stream.learn(events[lo : lo + 1000])
    rate = 50_000 / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.model}: fit on {len(events):,} events {fit_s:.1f} s; learn in chunks of "
        f"1,000: {rate:,.0f} events/s; peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
