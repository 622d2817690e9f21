"""Speed of NMRN on MovieLens-100K: learn throughput, recommend latency, fit time, memory.

Usage::

    python benchmarks/bench_nmrn_speed.py [--data /path/to/ml-100k.inter] [--threads 1]

Prints medians (nothing is asserted). ``learn`` events/s are measured with the history's first
half fitted, then the rest learned in calls of ``batch`` events (one mini-batch per call):
"model" counts the model's own time (``learn_seconds``), "end-to-end" the whole ``learn()``
call (id encoding, history, counters included).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nmrn.data.datasets import load_dataset
from nmrn.training.nmrn import NMRN


def read_ml100k(path: str | None) -> pd.DataFrame:
    """The log as a time-sorted DataFrame: a given .inter file, else nmrn's own ml-100k fetch."""
    if path is None:
        return load_dataset("ml-100k").to_frame()
    df = pd.read_csv(path, sep="\t")
    df.columns = ["user", "item", "rating", "timestamp"]
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)


def bench_learn(base: NMRN, rest: pd.DataFrame, batch: int, repeats: int) -> tuple[float, float]:
    """Median events/s (model-only, end-to-end) of learning ``rest`` in calls of ``batch``."""
    model_rates, wall_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = base.save(Path(tmp) / "base")
        for _ in range(repeats):
            rec = NMRN.load(ckpt)
            assert isinstance(rec, NMRN)
            rec.batch_size = batch  # one mini-batch per learn() call
            rec.learn_seconds = 0.0
            start = time.perf_counter()
            for lo in range(0, len(rest), batch):
                rec.learn(rest.iloc[lo : lo + batch])
            wall = time.perf_counter() - start
            model_rates.append(len(rest) / rec.learn_seconds)
            wall_rates.append(len(rest) / wall)
    return statistics.median(model_rates), statistics.median(wall_rates)


def bench_recommend(rec: NMRN, n_items: int, n_calls: int) -> tuple[float, float, int]:
    """p50/p99 latency (ms) of ``recommend(user, k=10)`` once the catalogue has ``n_items``."""
    missing = n_items - len(rec.known_items)
    if missing > 0:  # grow the catalogue: one event per new item, by one synthetic user
        new = pd.DataFrame(
            {
                "user": ["catalogue-bot"] * missing,
                "item": [f"synthetic-{j}" for j in range(missing)],
                "timestamp": np.full(missing, rec.last_timestamp + 1.0),
            }
        )
        rec.learn(new)
    user = rec.known_users[0]
    rec.recommend(user, k=10)  # warm the score cache
    times = []
    for _ in range(n_calls):
        start = time.perf_counter()
        rec.recommend(user, k=10)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], times[int(0.99 * (len(times) - 1))], len(rec.known_items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a RecBole .inter file (default: fetch)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit-epochs", type=int, default=10)
    parser.add_argument("--batches", default="64,128,256,512,1024")
    parser.add_argument("--catalogue", type=int, default=100_000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    df = read_ml100k(args.data)
    half = len(df) // 2
    history, rest = df.iloc[:half], df.iloc[half:]

    fit_times = []
    for _ in range(args.repeats):
        rec = NMRN(dim=64, memory_slots=20, epochs=args.fit_epochs, batch_size=256)
        start = time.perf_counter()
        rec.fit(history)
        fit_times.append(time.perf_counter() - start)
    fit_s = statistics.median(fit_times)
    print(
        f"fit: {len(history)} events x {args.fit_epochs} epochs in {fit_s:.2f} s "
        f"({len(history) * args.fit_epochs / fit_s:,.0f} events/s)"
    )

    base = NMRN(dim=64, memory_slots=20, epochs=1, batch_size=256).fit(history)
    print(f"learn ({len(rest)} events after fitting {len(history)}; d=64, H=20, uniform):")
    for batch in [int(b) for b in args.batches.split(",")]:
        model_rate, wall_rate = bench_learn(base, rest, batch, args.repeats)
        print(
            f"  batch {batch:5d}: {model_rate:9,.0f} events/s (model)  "
            f"{wall_rate:9,.0f} events/s (end-to-end)"
        )

    p50, p99, n_items = bench_recommend(base, args.catalogue, n_calls=300)
    print(f"recommend(user, k=10) over {n_items:,} items: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    sizes = base.bytes_per_row()
    print(f"bytes per user: {sizes['user']}, per item: {sizes['item']} (tables + Adagrad state)")


if __name__ == "__main__":
    main()
