"""Speed of every model preset on MovieLens-100K: ``learn`` events/s and ``recommend`` latency.

Usage::

    python benchmarks/bench_speed.py [--models pop,recent-pop,item-knn,bpr] [--repeats 3]

For each model: fit on the first half of the time-sorted log, then ``learn`` the rest in chunks
of ``--chunk`` events (median throughput over chunks, and over repeats), then time
``recommend(user, k=10)`` for single users drawn at random (p50/p99 over ``--calls`` calls).
With ``--big-catalogue N`` the recommend latency is also measured after the model has learned
synthetic events that bring the catalogue to N items. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from nmrn.data.datasets import load_dataset
from nmrn.data.events import EventBatch
from nmrn.models import make_model, model_names


def learn_rate(name: str, events: EventBatch, chunk: int, seed: int) -> tuple[float, float, object]:
    model = make_model(name, seed=seed)
    half = len(events) // 2
    t0 = time.perf_counter()
    model.fit(events[:half])
    fit_s = time.perf_counter() - t0
    rates = []
    for start in range(half, len(events), chunk):
        part = events[start : start + chunk]
        t0 = time.perf_counter()
        model.learn(part)
        rates.append(len(part) / (time.perf_counter() - t0))
    return fit_s, float(np.median(rates)), model


def recommend_latency(model: object, calls: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    users = model.known_users  # type: ignore[attr-defined]
    picks = users[rng.integers(0, len(users), calls)]
    model.recommend(picks[0], k=10)  # type: ignore[attr-defined]  # warm-up
    times = []
    for u in picks:
        t0 = time.perf_counter()
        model.recommend(u, k=10)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def grow_catalogue(model: object, n_items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    have = len(model.known_items)  # type: ignore[attr-defined]
    n_new = max(0, n_items - have)
    if n_new == 0:
        return
    users = model.known_users  # type: ignore[attr-defined]
    items = np.arange(n_new, dtype=np.int64) + 10_000_000  # ids not used by the real log
    batch = EventBatch(users[rng.integers(0, len(users), n_new)], items, np.full(n_new, 2e9), None)
    for start in range(0, n_new, 20_000):
        model.learn(batch[start : start + 20_000])  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(model_names()))
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-catalogue", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    events = load_dataset("ml-100k")
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}"
    )
    print()
    kitems = args.big_catalogue // 1000
    print(
        f"| model | fit s (50k ev) | learn ev/s (chunks of {args.chunk}) | recommend p50 ms "
        f"| p99 ms | p50 ms @{kitems}k items | p99 ms @{kitems}k items |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        fits, rates, p50s, p99s = [], [], [], []
        model = None
        for r in range(args.repeats):
            fit_s, rate, model = learn_rate(name, events, args.chunk, args.seed + r)
            p50, p99 = recommend_latency(model, args.calls, args.seed + r)
            fits.append(fit_s)
            rates.append(rate)
            p50s.append(p50)
            p99s.append(p99)
        big = ("n/a", "n/a")
        if args.big_catalogue:
            grow_catalogue(model, args.big_catalogue, args.seed)
            b50, b99 = recommend_latency(model, args.calls, args.seed)
            big = (f"{b50:.2f}", f"{b99:.2f}")
        print(
            f"| {name} | {np.median(fits):.2f} | {np.median(rates):,.0f} | "
            f"{np.median(p50s):.2f} | {np.median(p99s):.2f} | {big[0]} | {big[1]} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
