"""What two processes can give on this machine at all: the same ``learn`` run alone, then as two
independent processes at once (no process group, no communication), one torch thread each.

The ratio ``2 x alone / together`` bounds what any 2-rank data-parallel run can reach here
(cores that share caches, memory bandwidth or a host's other tenants give less than 2x); the
data-parallel figures of bench_distributed.py are read against it (BENCHMARKS.md, issue 14).

    OMP_NUM_THREADS=1 python benchmarks/bench_parallel_ceiling.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any


def _learn_once(name: str, n_fit: int, n_stream: int, out: Any) -> None:
    import torch

    from nmrn.data.datasets import load_dataset
    from nmrn.models import make_model

    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    model = make_model(name, batch_size=1024, epochs=1, learn_passes=1).fit(data[:n_fit])
    start = time.perf_counter()
    model.learn(data[n_fit : n_fit + n_stream])
    out.put(time.perf_counter() - start)


def _run(name: str, copies: int, n_fit: int, n_stream: int) -> list[float]:
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    procs = [spawn.Process(target=_learn_once, args=(name, n_fit, n_stream, queue))
             for _ in range(copies)]
    for p in procs:
        p.start()
    times = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nmrn-memory,nmrn-faithful,bpr")
    parser.add_argument("--fit", type=int, default=50_000)
    parser.add_argument("--stream", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| model | learn alone s | two at once, s each | two processes / one |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        alone, pair = [], []
        for _ in range(args.rounds):  # alternate, so that drift in the machine's load hits both
            alone += _run(name, 1, args.fit, args.stream)
            pair += _run(name, 2, args.fit, args.stream)
        a, b = statistics.median(alone), statistics.median(pair)
        print(f"| {name} | {a:.3f} | {b:.3f} | {2 * a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
