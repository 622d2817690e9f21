"""Does ``learn`` slow down as users pile up? (issue 13, "growth that does not slow down").

Streams a **synthetic** log (``nmrn data synth``: Zipf items, sessions, users arriving all the
time) into a fresh model with ``learn`` in calls of ``--call`` events and records each call's
time against the number of users the model knew before it. For every threshold of
``--at`` users it reports the median events/s of the ``--calls`` calls that follow the moment the
model first knew that many users, the ratio to the first threshold, each model's peak RSS (every
model runs in its own process) and the bytes the model keeps per user and per item (arrays whose
first dimension is the number of users or items, over that number).

    OMP_NUM_THREADS=1 python benchmarks/bench_growth.py --json benchmarks/results/growth.json

``--cpu-time`` times each call with the process's CPU time instead of the wall clock (on a
machine shared with other jobs a call's wall time also counts the time it waited for a core).

Synthetic data: the figures say how fast and how big, never how accurate.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np


def _arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's arrays as it would save them, without copies where it can."""
    arrays, _ = model._state()
    return {k: np.asarray(v) for k, v in arrays.items()}


def _bytes_per(model: Any, n: int) -> float:
    """Bytes of the model arrays with ``n`` rows, per row (per user or per item)."""
    total = sum(a.nbytes for a in _arrays(model).values() if a.ndim and a.shape[0] == n)
    return total / n if n else float("nan")


def run_model(name: str, args: argparse.Namespace, out: Any) -> None:
    import torch

    from nmrn.data.synth import SynthConfig, synth_chunks
    from nmrn.models import make_model

    torch.set_num_threads(1)
    cfg = SynthConfig(users=args.users, items=args.items, events=args.events, seed=args.seed,
                      initial_users=args.initial_users, session_mean=args.session_mean)
    model = make_model(name, seed=0)
    limit = args.limit.get(name, args.events)
    clock = time.process_time if args.cpu_time else time.perf_counter
    calls: list[tuple[int, int, float]] = []  # (users before, events, seconds)
    done = 0
    for chunk in synth_chunks(cfg):
        for start in range(0, len(chunk), args.call):
            part = chunk[start : start + args.call]
            before = len(model.users)
            t0 = clock()
            if done == 0:
                model.fit(part)  # a small history: the stream does the rest
            else:
                model.learn(part)
            calls.append((before, len(part), clock() - t0))
            done += len(part)
            if done >= limit:
                break
        if done >= limit:
            break
    rows = []
    for at in args.at:
        idx = [i for i, c in enumerate(calls) if c[0] >= at and i > 0][: args.calls]
        if len(idx) < args.calls:
            rows.append({"users": at, "events_per_s": None, "calls": len(idx)})
            continue
        rates = [calls[i][1] / calls[i][2] for i in idx]
        rows.append({"users": at, "events_per_s": statistics.median(rates), "calls": len(idx)})
    out.put({
        "model": name, "events": done, "users": len(model.users), "items": len(model.items),
        "rows": rows,
        "bytes_per_user": _bytes_per(model, len(model.users)),
        "bytes_per_item": _bytes_per(model, len(model.items)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="pop,item-knn,stan,bpr,nmrn-faithful,nmrn-memory,nmrn")
    p.add_argument("--users", type=int, default=1_200_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--events", type=int, default=4_000_000)
    p.add_argument("--initial-users", type=float, default=0.01)
    p.add_argument("--session-mean", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--call", type=int, default=10_000, help="events per learn call")
    p.add_argument("--calls", type=int, default=10, help="calls per threshold (median)")
    p.add_argument("--at", default="20000,100000,500000,1000000",
                   help="user counts at which to measure")
    p.add_argument("--limit", default="", help="events per model, e.g. nmrn=1500000")
    p.add_argument("--cpu-time", action="store_true",
                   help="time calls with the process's CPU time (a shared machine)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.at = [int(x) for x in args.at.split(",")]
    args.limit = {k: int(v) for k, v in (kv.split("=") for kv in args.limit.split(",") if kv)}
    results = []
    ctx = mp.get_context("spawn")  # a fresh process per model: its own peak RSS
    for name in args.models.split(","):
        q = ctx.Queue()
        proc = ctx.Process(target=run_model, args=(name, args, q))
        proc.start()
        res = q.get()
        proc.join()
        results.append(res)
        first = res["rows"][0]["events_per_s"]
        cells = []
        for row in res["rows"]:
            rate = row["events_per_s"]
            cells.append("-" if rate is None else
                         f"{rate:,.0f}" + (f" ({rate / first:.2f})" if first else ""))
        print(f"{name:14s} " + "  ".join(f"{c:>16s}" for c in cells)
              + f"  {res['bytes_per_user']:8.0f} B/user {res['bytes_per_item']:8.0f} B/item"
              f"  {res['peak_rss_mib']:7.0f} MiB  ({res['events']:,} events, "
              f"{res['users']:,} users)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "date": date.today().isoformat(), "machine": platform.platform(),
            "python": sys.version.split()[0], "command": " ".join(sys.argv),
            "synthetic": True, "args": {k: v for k, v in vars(args).items() if k != "json"},
            "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
