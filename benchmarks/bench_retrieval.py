"""Read latency of item-kNN with and without candidate retrieval (issue 13.1, item-kNN part).

`recommend(user, k=10)` of the `item-knn` preset on **synthetic** logs (``nmrn data synth``:
topical sessions, so an item's neighbours are a part of the catalogue) of 10^4-10^5 items, and on
bench_serve's synthetic catalogue (Zipf items drawn independently of each other: neighbour lists
cover nearly the whole catalogue, the worst case for candidates). Both paths are timed in one
process, alternating per user, on the same model; both give the same answer bit for bit
(``tests/baselines/test_itemknn.py``). Medians and p99 over ``--users`` users.

    OMP_NUM_THREADS=1 python benchmarks/bench_retrieval.py --json benchmarks/results/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))


def _synth(items: int, users: int, events: int) -> pd.DataFrame:
    from nmrn.data.synth import SynthConfig, synth_chunks

    chunks = list(synth_chunks(SynthConfig(users=users, items=items, events=events, seed=0)))
    return pd.DataFrame({"user": np.concatenate([c.users for c in chunks]),
                         "item": np.concatenate([c.items for c in chunks]),
                         "timestamp": np.concatenate([c.timestamps for c in chunks])})


def measure(name: str, frame: pd.DataFrame, n_users: int) -> dict[str, Any]:
    from nmrn.models import make_model

    model = make_model("item-knn", seed=0).fit(frame)
    users = model.known_users[:n_users]
    u = model.users.encode(users, missing=-1)
    reach = [int((model._profile_of(int(x), model.config.recency_decay) @ model._main).nnz)
             for x in u] if model.is_sparse else []
    candidate = model._candidate_top_k
    full: list[float] = []
    cand: list[float] = []
    for user in users:  # alternate, so that machine noise hits both alike
        model._candidate_top_k = lambda *a: None  # type: ignore[method-assign]
        t = time.perf_counter()
        a = model.recommend(user, k=10)
        full.append(time.perf_counter() - t)
        model._candidate_top_k = candidate  # type: ignore[method-assign]
        t = time.perf_counter()
        b = model.recommend(user, k=10)
        cand.append(time.perf_counter() - t)
        assert np.array_equal(a.items, b.items)
    row = {
        "data": name, "items": len(model.items), "users": len(model.users),
        "events": len(frame), "sparse": model.is_sparse,
        "reach_median": float(np.median(reach)) if reach else None,
        "full_p50_ms": 1e3 * float(np.median(full)),
        "full_p99_ms": 1e3 * float(np.percentile(full, 99)),
        "cand_p50_ms": 1e3 * float(np.median(cand)),
        "cand_p99_ms": 1e3 * float(np.percentile(cand, 99)),
    }
    print(f"{name:40s} {row['items']:>7,} items  reach {row['reach_median'] or 0:>8,.0f}  "
          f"full p50 {row['full_p50_ms']:.2f} p99 {row['full_p99_ms']:.2f} ms  "
          f"candidates p50 {row['cand_p50_ms']:.2f} p99 {row['cand_p99_ms']:.2f} ms", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=500, help="users timed per setting")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from bench_serve import synthetic

    rows = [
        measure("synth, topical sessions", _synth(10_000, 20_000, 300_000), args.users),
        measure("synth, topical sessions", _synth(100_000, 20_000, 300_000), args.users),
        measure("synth, topical sessions", _synth(100_000, 100_000, 2_000_000), args.users),
        measure("bench_serve (independent Zipf draws)", synthetic(), args.users),
    ]
    if args.json:
        args.json.write_text(json.dumps({
            "date": date.today().isoformat(), "machine": platform.platform(),
            "command": " ".join(sys.argv), "synthetic": True, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
