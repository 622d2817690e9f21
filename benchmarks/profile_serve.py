"""Where a single ``nmrn serve`` process's time goes while it reads and ingests (issue 13).

Fits one preset on bench_serve's synthetic 100,000-item catalogue (retrieval ``ann``), starts
``nmrn serve`` on loopback, waits for the index, then (``--profile OUT``) records the server
with py-spy (``pip install py-spy``; raw collapsed stacks, per thread) during a closed-loop
phase with ingest at 1,000 events/s, and/or (``--apply-batch N ...``) runs one such phase per
``--apply-batch`` value on the same checkpoint, with the mean ``learn`` call from /metrics.

    OMP_NUM_THREADS=1 python benchmarks/profile_serve.py nmrn-memory --profile /tmp/mem.txt
    OMP_NUM_THREADS=1 python benchmarks/profile_serve.py bpr --apply-batch 256 32 16 8
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import bench_serve as b  # noqa: E402

PY_SPY = str(Path(sys.executable).parent / "py-spy")
CATEGORIES = [  # first match wins: (name, substrings of a stack)
    ("idle: writer waiting for events", ["Condition.wait", "Queue.get"]),
    ("journal fsync", ["Journal.sync"]),
    ("read: IVF refresh of changed items", ["CandidateIndex._refresh"]),
    ("read: the user's query", ["query_of"]),
    ("read: IVF search", ["CandidateIndex.candidates"]),
    ("read: exact re-rank", ["score_of"]),
    ("read: rest of recommend", ["Recommender.recommend"]),
    ("learn (under the model lock)", ["Recommender.learn"]),
    ("ingest POST (FastAPI)", ["FastAPI.__call__"]),
    ("read: HTTP and JSON", ["ServingApp.__call__"]),
    ("event loop idle", ["Runner.run"]),
]


def breakdown(path: Path) -> list[tuple[str, int, float]]:
    """Samples per category of a py-spy raw profile: ``(name, samples, share)``."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        name = next((c for c, keys in CATEGORIES if any(k in stack for k in keys)), "other")
        counts[name] += int(n)
    total = sum(counts.values())
    return [(k, v, v / total) for k, v in counts.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--apply-batch", type=int, nargs="*", default=[])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    from nmrn.models import make_model

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.ckpt"
        model = make_model(args.model, retrieval={"mode": "ann"}).fit(b.synthetic())
        model.save(ckpt)
        common: dict[str, Any] = {"users": model.known_users.tolist(),
                                  "items": model.known_items.tolist(), "max_requests": 100_000,
                                  "concurrency": 8, "ingest_batch": 10, "ingest_connections": 2}
        del model
        runs = ([None] if args.profile else []) + list(args.apply_batch)
        for apply_batch in runs:
            port = b.free_port()
            extra = [] if apply_batch is None else ["--apply-batch", str(apply_batch)]
            proc = b.start_server(ckpt, port, extra)
            try:
                b.run_phase(proc, port, seconds=1.0, ingest_rate=0.0, **common)
                b._wait_for_index(proc, port, common, 120.0)
                spy = None
                if apply_batch is None:
                    spy = subprocess.Popen(
                        [PY_SPY, "record", "--pid", str(proc.pid),
                         "-d", str(int(args.seconds + 2)), "-r", "200", "-t", "-f", "raw",
                         "-o", str(args.profile)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                count0 = b._metric(port, "nmrn_learn_seconds_count")
                sum0 = b._metric(port, "nmrn_learn_seconds_sum")
                res = b.run_phase(proc, port, seconds=args.seconds, ingest_rate=1000.0, **common)
                calls = b._metric(port, "nmrn_learn_seconds_count") - count0
                learn = b._metric(port, "nmrn_learn_seconds_sum") - sum0
                if spy is not None:
                    spy.wait()
                print(json.dumps({
                    "model": args.model, "apply_batch": apply_batch or 256,
                    "profiled": spy is not None, "rps": res["rps"], "p50_ms": res["p50_ms"],
                    "p99_ms": res["p99_ms"], "events_per_s": res["events_per_s"],
                    "server_cpu": res["server_cpu"], "learn_calls": calls,
                    "learn_ms_mean": round(1000 * learn / max(calls, 1), 2),
                    "uptime": b._uptime()}), flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        if args.profile:
            for name, n, share in breakdown(args.profile):
                print(f"{100 * share:5.1f}%  {n:6d}  {name}")


if __name__ == "__main__":
    main()
