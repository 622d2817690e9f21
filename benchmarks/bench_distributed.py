"""Data-parallel training: fit and learn events/s with 1 and 2 ranks (docs/scaling.md, issue 14).

``--model bpr`` (the default), ``nmrn-faithful`` (one shared memory: contiguous slices, the
recurrence composed across ranks) or ``nmrn-memory`` (per-user memories: whole users per rank).

Each configuration runs as real ranks started by ``nmrn.training.distributed.launch`` (gloo on
loopback, one torch thread per rank). A rank times ``fit`` (``--epochs`` passes over ML-100K's
first ``--fit`` events) and then one ``learn`` call on the next ``--stream`` events
(``learn_passes`` 1), each between barriers, so the figure is the group's wall time; process
start-up and the data load are not timed. 1 and 2 ranks alternate ``--rounds`` times in one
run, and the ratio is of the medians. The machine's load average is printed with the figures.

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def rank_main(out: str, name: str, options: dict[str, Any], n_fit: int, n_stream: int) -> int:
    import torch
    import torch.distributed as dist

    from nmrn.data.datasets import load_dataset
    from nmrn.models import make_model

    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    head, tail = data[:n_fit], data[n_fit : n_fit + n_stream]
    model = make_model(name, **options)

    def barrier() -> None:
        if dist.is_initialized():
            dist.barrier()

    barrier()
    start = time.perf_counter()
    model.fit(head)
    barrier()
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    model.learn(tail)
    barrier()
    learn_s = time.perf_counter() - start
    # the step's one collective alone: an all-gather of the padded buffer BPR sends at this size
    # (per rank: ceil(B/R) user rows and 2 ceil(B/R) item rows, int64 index + float32 values)
    gather_ms = float("nan")
    if dist.is_initialized() and name == "bpr":
        world = dist.get_world_size()
        most = -(-options["batch_size"] // world)
        dim = options["dim"]
        n_bytes = 8 * (2 + 3 * most) + 4 * (1 + most * dim + 2 * most * (dim + 1))
        buf = torch.zeros(n_bytes, dtype=torch.uint8)
        outs = [torch.empty_like(buf) for _ in range(world)]
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            dist.all_gather(outs, buf)
            times.append(time.perf_counter() - t0)
        gather_ms = 1000 * statistics.median(times)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        Path(out).write_text(json.dumps({"fit_s": fit_s, "learn_s": learn_s,
                                         "gather_ms": gather_ms}))
    return 0


def main() -> None:
    from nmrn.training.distributed import launch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bpr", choices=["bpr", "nmrn-faithful", "nmrn-memory"])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--fit", type=int, default=80_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--stream", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    options = {"dim": args.dim, "batch_size": args.batch, "epochs": args.epochs,
               "learn_passes": 1}
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for nproc in (1, 2):
                out = Path(tmp, f"r{rnd}n{nproc}.json")
                codes = launch(rank_main, nproc,
                               (str(out), args.model, options, args.fit, args.stream),
                               deadline_s=600)
                if codes != [0] * nproc:
                    raise SystemExit(f"{nproc} ranks exited with {codes}")
                runs[nproc].append(json.loads(out.read_text()))
                loads.append(os.getloadavg()[0])
    print(f"{args.model} dim {args.dim}, mini-batch {args.batch}, "
          f"fit {args.epochs} x {args.fit:,} events,"
          f" learn {args.stream:,} events; {args.rounds} alternating rounds; 1 thread per rank")
    print("| ranks | fit events/s | learn events/s |")
    print("|---|---|---|")
    med = {}
    for nproc, rows in runs.items():
        fit = statistics.median(args.epochs * args.fit / r["fit_s"] for r in rows)
        learn = statistics.median(args.stream / r["learn_s"] for r in rows)
        med[nproc] = (fit, learn)
        print(f"| {nproc} | {fit:,.0f} | {learn:,.0f} |")
    print(f"| 2 / 1 | {med[2][0] / med[1][0]:.2f}x | {med[2][1] / med[1][1]:.2f}x |")
    steps = args.fit / args.batch
    print(f"ms per fit step: 1 rank {1000 / med[1][0] * args.batch:.2f}, 2 ranks "
          f"{1000 / med[2][0] * args.batch:.2f} ({steps:.0f} steps/epoch)")
    if args.model == "bpr":
        print("the all-gather alone at 2 ranks (median of 50): "
              f"{statistics.median(r['gather_ms'] for r in runs[2]):.2f} ms")
    print("1-minute load average after each run: " + ", ".join(f"{x:.2f}" for x in loads))


if __name__ == "__main__":
    main()
