"""Cost of one step's exchange in the partitioned consumer: encode + decode, JSON vs binary.

"json" is what the consumer did before (every rank's whole read-ahead buffers, P x batch events,
as one JSON object per step, decoded by every rank); "binary" is :mod:`nmrn.streams.wire` on the
same P x batch events; "binary delta" is what the consumer now sends in a steady state: only
the entries read since the last step, about ``batch`` events in all. Ids are ints (ML-100K-like)
or strings (UUID-like, with an event_id each). Rounds alternate the three; medians. No Redis,
no process group: the collective itself is not timed (its bytes are printed).

    OMP_NUM_THREADS=1 python benchmarks/bench_partition_wire.py --partitions 4 --batch 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import uuid

import numpy as np

from nmrn.streams import wire


def _events(n: int, strings: bool, seed: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        u, i = int(rng.integers(1, 944)), int(rng.integers(1, 1683))
        ev: dict = {"user": f"user-{u}" if strings else u, "item": f"item-{i}" if strings else i,
                    "timestamp": float(880_000_000 + k)}
        if strings:
            ev["event_id"] = str(uuid.UUID(int=int(rng.integers(0, 2**62))))
        out.append((f"1700000000{k:03d}-{k % 3}", ev))
    return out


def _json_step(buffers: dict[int, list]) -> tuple[int, list]:
    payload = {"buffers": {str(p): [[eid, ev] for eid, ev in rows] for p, rows in
                           buffers.items()}, "rejected": 0, "stop": False, "idle": False}
    raw = json.dumps(payload).encode()
    return len(raw), json.loads(raw)["buffers"]


def _wire_step(parts: dict[int, list]) -> tuple[int, dict]:
    raw = wire.encode([0, 0, 0], parts)
    return len(raw), wire.decode(raw)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=20, help="steps timed per round")
    args = parser.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"P = {args.partitions}, batch = {args.batch}, {args.rounds} rounds x {args.reps} "
          "steps, medians (ms per step: encode + decode)")
    print("| ids | json P x batch | binary P x batch | binary delta (batch) | json bytes | "
          "binary bytes | delta bytes |")
    print("|---|---|---|---|---|---|---|")
    for strings in (False, True):
        evs = _events(args.partitions * args.batch, strings, 0)
        buffers = {p: evs[p * args.batch:(p + 1) * args.batch] for p in range(args.partitions)}
        parts = {p: [wire.entry_of(p, eid, ev) for eid, ev in rows]
                 for p, rows in buffers.items()}
        share = args.batch // args.partitions
        delta = {p: rows[:share] for p, rows in parts.items()}
        times: dict[str, list[float]] = {"json": [], "wire": [], "delta": []}
        sizes = {}
        for rnd in range(args.rounds):
            order = [("json", _json_step, buffers), ("wire", _wire_step, parts),
                     ("delta", _wire_step, delta)]
            for name, fn, data in order if rnd % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    sizes[name], _ = fn(data)
                times[name].append((time.perf_counter() - t0) / args.reps * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {'str + event_id' if strings else 'int'} | {med['json']:.2f} | "
              f"{med['wire']:.2f} | {med['delta']:.2f} | {sizes['json']:,} | "
              f"{sizes['wire']:,} | {sizes['delta']:,} |")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
