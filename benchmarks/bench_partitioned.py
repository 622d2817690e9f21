"""Events/s of ``nmrn consume --partitions 4`` with R = 1 and R = 2 reader processes.

Starts a private ``redis-server`` on a free loopback port, writes ML-100K (nmrn's loader, cached
in ``~/.cache/nmrn``; ``--events N`` takes the first N in time order) to P = 4 partitioned
streams with :class:`~nmrn.streams.partitioned.PartitionedProducer`, then, for each round and
preset, runs ``python -m nmrn consume --partitions 4 --nproc R --max-events N`` with a fresh
model and a fresh consumer group for R = 1 and R = 2 (alternating, so both see the same load).
Reports the median over rounds of the consumer's own events/s (rank 0's ``elapsed_s``: reading,
all-gather, merge, ``learn`` on every replica, checkpoints) and of the command's wall time
(process start and ``torch`` import included). Prints ``uptime`` before and after: the machine
is shared. Nothing is asserted.

    OMP_NUM_THREADS=1 python benchmarks/bench_partitioned.py --rounds 3

Every replica learns the whole global batch (the split of a batch's gradient across ranks is
the dp branch's), so R = 2 does not divide the learning work; it spreads reading and parsing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None, help="first N events (default all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=["pop", "bpr"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trees", nargs="+", default=None, metavar="SRC",
                        help="source trees to compare (each run with PYTHONPATH=SRC), "
                        "alternated within each round; default: the importing tree")
    args = parser.parse_args()

    import redis

    from nmrn.data.datasets import load_dataset
    from nmrn.streams.partitioned import PartitionedProducer

    batch = load_dataset("ml-100k")
    n = len(batch) if args.events is None else min(args.events, len(batch))
    users, items, times = batch.users[:n].tolist(), batch.items[:n].tolist(), \
        batch.timestamps[:n].tolist()
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout
          .strip(), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_part_"))
    port = _free_port()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        t0 = time.perf_counter()
        producer = PartitionedProducer(url, "ml", 4)
        producer.send({"user": u, "item": i, "timestamp": t}
                      for u, i, t in zip(users, items, times, strict=True))
        produce_s = time.perf_counter() - t0
        print(f"produced {n} events into 4 partitions {producer.sent} in {produce_s:.2f} s "
              f"({n / produce_s:,.0f} events/s)", flush=True)
        producer.close()
        trees = args.trees or [None]
        results: dict[tuple, list[tuple[float, float]]] = {
            (t, p, r): [] for t in trees for p in args.presets for r in args.nproc}
        for rnd in range(args.rounds):
            runs = [(t, r) for r in args.nproc for t in trees]
            for preset in args.presets:
                for tree, nproc in runs if rnd % 2 == 0 else runs[::-1]:
                    env = dict(os.environ)
                    if tree is not None:
                        env["PYTHONPATH"] = tree
                    group = f"g{rnd}-{preset}-{nproc}-{trees.index(tree)}"
                    ckpt = tmp / group
                    cmd = [sys.executable, "-m", "nmrn", "consume", "--checkpoint", str(ckpt),
                           "--model", preset, "--source", url, "--stream", "ml", "--group",
                           group, "--partitions", "4", "--nproc", str(nproc),
                           "--max-events", str(n), "--batch-size", str(args.batch_size),
                           "--checkpoint-every", str(args.checkpoint_every)]
                    t0 = time.perf_counter()
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                         env=env)
                    wall = time.perf_counter() - t0
                    stats = json.loads(out.stdout.strip().splitlines()[-1])
                    assert stats["total_applied"] == n, stats
                    results[tree, preset, nproc].append((stats["events_per_s"], wall))
                    print(f"round {rnd} {tree or ''} {preset} R={nproc}: "
                          f"{stats['events_per_s']:,.0f} "
                          f"events/s, wall {wall:.1f} s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout
          .strip())
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {n} events, P = 4, "
          f"batch {args.batch_size}, checkpoint every {args.checkpoint_every}, "
          f"{args.rounds} rounds (medians)")
    print("| tree | model | R | consume events/s | wall s (incl. start) | / first tree |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        for nproc in args.nproc:
            base = statistics.median(r[0] for r in results[trees[0], preset, nproc])
            for tree in trees:
                eps = statistics.median(r[0] for r in results[tree, preset, nproc])
                wall = statistics.median(r[1] for r in results[tree, preset, nproc])
                print(f"| {tree or 'this'} | {preset} | {nproc} | {eps:,.0f} | {wall:.1f} | "
                      f"{eps / base:.2f} |")


if __name__ == "__main__":
    main()
