"""cProfile of live ``learn`` calls on bench_serve's synthetic 100,000-item catalogue (issue 13):
where a call's fixed cost goes (BENCHMARKS.md, "Where the time goes").

    OMP_NUM_THREADS=1 python benchmarks/profile_learn.py bpr
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_serve as b  # noqa: E402


def main() -> None:
    from nmrn.models import make_model

    name = sys.argv[1] if len(sys.argv) > 1 else "bpr"
    big = b.synthetic()
    model = make_model(name, retrieval={"mode": "ann"}, epochs=1).fit(big)
    model.recommend([0], k=10)  # starts the index build
    time.sleep(3.0)
    model.recommend([0], k=10)  # swaps it in
    for n in (8, 50):
        events = big.iloc[1000 : 1000 + n].copy()
        events["timestamp"] += 1e6
        took = []
        for _ in range(10):
            events["timestamp"] += 1000
            start = time.perf_counter()
            model.learn(events)
            took.append(time.perf_counter() - start)
        print(f"{name}: learn of {n} events, median {1000 * np.median(took):.2f} ms")
    events = big.iloc[1000:1008].copy()
    events["timestamp"] += 2e6
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20):
        events["timestamp"] += 1000
        model.learn(events)
    profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
