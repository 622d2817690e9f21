"""``learn`` throughput with the ANN index maintained (retrieval ``ann``, reads between calls)
against retrieval ``exact``, in one process, calls alternated (issue 13: index maintenance must
stay off the write path, target within 10 %).

Two copies of one model (bench_ann.py's ``build``: the preset with **synthetic** clustered
vectors over ``--items`` items, every item known; not fitted) differ only in their retrieval
mode. The same stream (Zipf items over the catalogue, ``--users`` users) is learnt by both in
calls of ``--call`` events, alternately (exact's call ``i``, then ann's call ``i``, the order
swapped every call); after each call ``--reads`` ``recommend(user, k=10)`` go to the same
model, as a service reads between its learn runs. Only ``learn`` is timed (wall clock around
the call); the background index builds run on their own thread meanwhile, as in the service, so
whatever they take from ``learn`` (the GIL, a core) shows in the ratio. The ANN model's index
counters (builds, reads answered from the index, reads that fell back to the exact path, the
delta at the end) say what the reads did.

    OMP_NUM_THREADS=1 python benchmarks/bench_learn_ann.py --json benchmarks/results/learn_ann.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_ann import build  # noqa: E402


def measure(preset: str, n_items: int, n_users: int, calls: int, size: int, reads: int,
            retrieval: dict[str, Any]) -> dict[str, Any]:
    models = {
        "exact": build(preset, n_items, n_users, "clustered", {"mode": "exact"}),
        "ann": build(preset, n_items, n_users, "clustered", {"mode": "ann", **retrieval}),
    }
    ann = models["ann"].retrieval_index
    models["ann"].recommend(0, k=10)  # the first build, waited for (not timed)
    ann.wait()
    models["ann"].recommend(0, k=10)
    rng = np.random.default_rng(7)
    t0 = 10 * n_items  # after the fit's timestamps
    seconds: dict[str, list[float]] = {"exact": [], "ann": []}
    read_s: dict[str, list[float]] = {"exact": [], "ann": []}
    for c in range(calls):
        frame = pd.DataFrame({
            "user": rng.integers(0, n_users, size),
            "item": (rng.zipf(1.3, size) - 1) % n_items,
            "timestamp": np.arange(t0 + c * size, t0 + (c + 1) * size, dtype=float)})
        who = rng.integers(0, n_users, reads).tolist()
        for name in (("exact", "ann") if c % 2 == 0 else ("ann", "exact")):
            model = models[name]
            start = time.perf_counter()
            model.learn(frame)
            seconds[name].append(time.perf_counter() - start)
            for user in who:
                start = time.perf_counter()
                model.recommend(user, k=10)
                read_s[name].append(time.perf_counter() - start)
    row: dict[str, Any] = {"preset": preset, "items": n_items, "users": n_users,
                           "calls": calls, "call_events": size, "reads_per_call": reads}
    for name in ("exact", "ann"):
        row[f"{name}_events_per_s"] = calls * size / sum(seconds[name])
        row[f"{name}_learn_ms_p50"] = 1e3 * float(np.median(seconds[name]))
        row[f"{name}_read_ms_p50"] = 1e3 * float(np.median(read_s[name]))
        row[f"{name}_read_ms_p99"] = 1e3 * float(np.percentile(read_s[name], 99))
    row["ratio"] = row["ann_events_per_s"] / row["exact_events_per_s"]
    row.update(builds=ann.builds, answered=ann.answered, fell_back=ann.fell_back,
               delta_at_end=ann.delta_size(n_items), last_build_s=ann.last_build_seconds)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["nmrn-faithful", "nmrn-memory", "bpr"])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--call", type=int, default=50, help="events per learn call")
    p.add_argument("--reads", type=int, default=10, help="recommend calls after each learn")
    p.add_argument("--retrieval", type=json.loads, default={},
                   help="RetrievalConfig fields, as JSON, for the ann copy")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("uptime:", uptime, flush=True)
    rows = []
    for preset in args.presets:
        row = measure(preset, args.items, args.users, args.calls, args.call, args.reads,
                      args.retrieval)
        row["uptime_after"] = subprocess.run(["uptime"], capture_output=True,
                                             text=True).stdout.strip()
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": date.today().isoformat(), "machine": platform.platform(),
            "command": " ".join(sys.argv), "synthetic": True, "uptime_before": uptime,
            "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
