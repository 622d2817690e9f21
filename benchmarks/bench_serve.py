"""Serving throughput and latency over loopback: a real ``nmrn serve`` process, an async client.

For each (catalogue, model) it measures ``GET /recommendations/{user}?k=10`` throughput and
p50/p99 latency, first alone, then while a second client ingests events at a fixed rate through
``POST /events`` (fsynced journal, as in production). Every phase is bounded in time and in
request count, and the server is stopped (SIGTERM, final checkpoint) at the end.

    .venv/bin/python benchmarks/bench_serve.py                 # ~1 minute
    .venv/bin/python benchmarks/bench_serve.py --seconds 3 --quick

Catalogues: ML-100K (``/work/shared/data/ml-100k/ml-100k.inter`` or ``--data``; 943 users,
1,682 items) and a synthetic 100,000-item catalogue (Zipf item popularity, 20,000 users,
300,000 events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ML100K = Path("/work/shared/data/ml-100k/ml-100k.inter")
SERVE = """
import argparse, sys
from nmrn.serving.commands import add_serve_command, run_serve
parser = argparse.ArgumentParser()
add_serve_command(parser.add_subparsers(dest="command"))
sys.exit(run_serve(parser.parse_args(sys.argv[1:])))
"""


def ml100k(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t")
    frame.columns = ["user", "item", "rating", "timestamp"]
    return frame.sort_values("timestamp", kind="stable")[["user", "item", "timestamp"]]


def synthetic(n_items: int = 100_000, n_users: int = 20_000, n_events: int = 300_000) -> Any:
    rng = np.random.default_rng(0)
    items = (rng.zipf(1.3, n_events) - 1) % n_items
    items[:n_items] = np.arange(n_items)  # every item appears at least once
    return pd.DataFrame({"user": rng.integers(0, n_users, n_events), "item": items,
                         "timestamp": np.arange(n_events, dtype=float)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(ckpt: Path, port: int) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--checkpoint", str(ckpt), "--port", str(port),
         "--log-level", "warning", "--checkpoint-every", "100000", "--checkpoint-seconds", "0"],
        env=dict(os.environ, NMRN_TOKEN="bench"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


async def _phase(base: str, users: list[Any], items: list[Any], *, seconds: float,
                 max_requests: int, concurrency: int, ingest_rate: float, ingest_batch: int
                 ) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(users), max_requests).tolist()
    counter = iter(range(max_requests))
    ingested = 0
    ingest_lat: list[float] = []

    n_conn = concurrency + 2
    limits = httpx.Limits(max_connections=n_conn, max_keepalive_connections=n_conn)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:

        async def reader() -> None:
            nonlocal errors
            for j in counter:
                if time.perf_counter() > stop_at:
                    return
                t0 = time.perf_counter()
                r = await client.get(f"/recommendations/{users[picks[j]]}", params={"k": 10})
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        async def ingester() -> None:
            nonlocal ingested, errors
            interval = ingest_batch / ingest_rate
            t_next = time.perf_counter()
            headers = {"Authorization": "Bearer bench"}
            while time.perf_counter() < stop_at:
                events = [{"user": users[int(rng.integers(len(users)))],
                           "item": items[int(rng.integers(len(items)))],
                           "timestamp": time.time()} for _ in range(ingest_batch)]
                t0 = time.perf_counter()
                r = await client.post("/events", json={"events": events}, headers=headers)
                ingest_lat.append(time.perf_counter() - t0)
                if r.status_code == 202:
                    ingested += ingest_batch
                else:
                    errors += 1
                t_next += interval
                await asyncio.sleep(max(0.0, t_next - time.perf_counter()))

        start = time.perf_counter()
        tasks = [reader() for _ in range(concurrency)]
        if ingest_rate > 0:
            tasks.append(ingester())
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        metrics = (await client.get("/metrics")).text
    lag = next(float(line.split()[1]) for line in metrics.splitlines()
               if line.startswith("nmrn_apply_lag_events "))
    lat = np.array(latencies) * 1000
    out = {
        "requests": len(latencies), "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": errors,
    }
    if ingest_rate > 0:
        il = np.array(ingest_lat) * 1000
        out.update({"events_per_s": round(ingested / elapsed, 1),
                    "ingest_p99_ms": round(float(np.percentile(il, 99)), 2),
                    "apply_lag_at_end": lag})
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from nmrn.models import make_model

    setups: list[tuple[str, str, Any]] = []
    if args.data.exists():
        setups += [("ml-100k", "item-knn", ml100k(args.data)), ("ml-100k", "pop", None)]
    big = synthetic()
    setups += [("100k items", "pop", big)]
    if not args.quick:
        setups += [("100k items", "item-knn", big)]
    results = []
    last_frame = None
    for catalogue, model_name, frame in setups:
        frame = last_frame if frame is None else frame
        last_frame = frame
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "model.ckpt"
            t0 = time.perf_counter()
            model = make_model(model_name).fit(frame)
            fit_s = time.perf_counter() - t0
            model.save(ckpt)
            users = model.known_users.tolist()
            items = model.known_items.tolist()
            port = free_port()
            proc = start_server(ckpt, port)
            try:
                for ingest in (0.0, args.ingest_rate):
                    res = asyncio.run(_phase(
                        f"http://127.0.0.1:{port}", users, items, seconds=args.seconds,
                        max_requests=args.max_requests, concurrency=args.concurrency,
                        ingest_rate=ingest, ingest_batch=args.ingest_batch))
                    row = {"catalogue": catalogue, "model": model_name,
                           "items": len(items), "fit_s": round(fit_s, 2),
                           "ingest": ingest > 0, **res}
                    results.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ML100K)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--max-requests", type=int, default=50_000, help="cap per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ingest-rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--ingest-batch", type=int, default=10, help="events per POST")
    parser.add_argument("--quick", action="store_true", help="skip item-knn on 100k items")
    args = parser.parse_args()
    results = run(args)
    print()
    print(f"{'catalogue':<11} {'model':<9} {'ingest':>6} {'req/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'ev/s':>7} {'lag':>5}")
    for r in results:
        print(f"{r['catalogue']:<11} {r['model']:<9} {str(r['ingest']):>6} {r['rps']:>8} "
              f"{r['p50_ms']:>7} {r['p99_ms']:>7} {r.get('events_per_s', '-'):>7} "
              f"{r.get('apply_lag_at_end', '-'):>5}")


if __name__ == "__main__":
    main()
