"""Serving throughput and latency over loopback: a real ``nmrn serve`` process, a lean client.

For each (catalogue, model) it measures ``GET /recommendations/{user}?k=10`` in three phases:

* closed loop, no ingest: ``--concurrency`` connections each send the next request as soon as
  the answer arrives (the throughput the server can give);
* closed loop while events are ingested at ``--ingest-rate`` through ``POST /events``
  (fsynced journal, as in production), paced in events over ``--ingest-connections``: a
  connection behind schedule sends every event due in its next, larger POST, so the offered
  event rate holds whatever the POST latency;
* open loop at ``--read-rate`` requests/s (the goal's load) while ingesting: requests are sent
  on a fixed schedule over ``--open-connections`` connections and latency counts from the
  scheduled time, so queueing behind a slow answer is not hidden (no coordinated omission).

The server runs with its production defaults (checkpoint every 10,000 events or 60 s, fsync,
``--apply-wait 0.05``) unless ``--server-arg`` says otherwise. Every phase is bounded in time
and in request count, is repeated ``--repeats`` times (the table shows medians), and the server
is stopped (SIGTERM, final checkpoint) at the end.

The client runs in its own process and speaks HTTP/1.1 over raw asyncio keep-alive connections
(uvloop when installed): a general-purpose client such as httpx costs several times the CPU of
the server's answer, and on a small machine it would take that CPU from the server. The CPU the
client and the server used during each phase is reported (in % of one core), so that the share
of the machine each took is visible next to the throughput.

    .venv/bin/python benchmarks/bench_serve.py                 # ~7 minutes
    .venv/bin/python benchmarks/bench_serve.py --seconds 3 --repeats 1 --quick

Catalogues: ML-100K (nmrn's own cached copy, ``nmrn data fetch ml-100k``, or ``--data``; 943
users, 1,682 items) and a synthetic 100,000-item catalogue (Zipf item popularity, 20,000 users,
300,000 events); ``--million`` adds a synthetic 1,000,000-item one (1.3M events, nmrn-faithful
fitted one epoch). ``--retrieval '{"mode": "ann"}'`` fits the embedding models (NMRN, BPR) with
that retrieval option (it travels in the checkpoint), waits until their index answers, and
reports the share of reads answered from it per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

TOKEN = "bench"
SERVE = """
import argparse, sys
from nmrn.serving.commands import add_serve_command, run_serve
parser = argparse.ArgumentParser()
add_serve_command(parser.add_subparsers(dest="command"))
sys.exit(run_serve(parser.parse_args(sys.argv[1:])))
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- a lean HTTP/1.1 client ------------------------------------------------------------------------
class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.index(b"content-length:") + 15
        stop = head.find(b"\r\n", at)
        length = int(head[at : stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def _connect(port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, "127.0.0.1", port)
    return conn


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def _post(path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


INGEST_CATCH_UP = 20  # the largest POST an ingest connection sends, in --ingest-batch units


async def _phase(port: int, users: list[Any], items: list[Any], *, seconds: float,
                 max_requests: int, concurrency: int, ingest_rate: float, ingest_batch: int,
                 ingest_connections: int, read_rate: float = 0.0) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(users), max_requests).tolist()
    paths = [_get(f"/recommendations/{quote(str(u), safe='')}?k=10") for u in users]
    latencies: list[float] = []
    ingest_lat: list[float] = []
    counts = {"errors": 0, "ingested": 0}
    readers = [await _connect(port) for _ in range(concurrency)]
    ingesters = [await _connect(port) for _ in range(ingest_connections if ingest_rate else 0)]
    counter = iter(range(max_requests))
    stop_at = time.perf_counter() + seconds

    async def reader(conn: _Connection) -> None:
        for j in counter:
            t0 = time.perf_counter()
            if t0 > stop_at:
                return
            status, _ = await conn.request(paths[picks[j]])
            latencies.append(time.perf_counter() - t0)
            counts["errors"] += status != 200

    async def paced_reader(conn: _Connection, offset: float) -> None:
        # open loop: connection r sends at start + (r / n + m) * n / rate; the latency counts
        # from that scheduled time, so time a request spent queued behind a slow one is counted
        interval = concurrency / read_rate
        t_next = start + offset * interval
        for j in counter:
            await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
            if t_next > stop_at:
                return
            status, _ = await conn.request(paths[picks[j]])
            latencies.append(time.perf_counter() - t_next)
            counts["errors"] += status != 200
            t_next += interval

    async def ingester(conn: _Connection, offset: float) -> None:
        # paced (open loop) in events, not in requests: each connection owes
        # ingest_rate / connections events per second from its start; a POST that comes back
        # late is followed at once by one that carries every event due by then (up to
        # INGEST_CATCH_UP batches), so the offered event rate stays --ingest-rate whatever the
        # POST latency (with a fixed batch, two connections at 10 events each could offer only
        # 20 events per POST latency, and a slow POST hid as a low event rate)
        rate = ingest_rate / len(ingesters)
        t_start = time.perf_counter() + offset * ingest_batch / rate
        sent = 0
        while True:
            due_at = t_start + (sent + ingest_batch) / rate
            await asyncio.sleep(max(0.0, due_at - time.perf_counter()))
            now = time.perf_counter()
            if now > stop_at:
                return
            due = int((now - t_start) * rate) - sent
            size = min(max(ingest_batch, due), INGEST_CATCH_UP * ingest_batch)
            events = [{"user": users[int(rng.integers(len(users)))],
                       "item": items[int(rng.integers(len(items)))],
                       "timestamp": time.time()} for _ in range(size)]
            t0 = time.perf_counter()
            status, _ = await conn.request(_post("/events", json.dumps({"events": events})
                                                 .encode()))
            ingest_lat.append(time.perf_counter() - t0)
            sent += size
            if status == 202:
                counts["ingested"] += size
            else:
                counts["errors"] += 1

    cpu0, start = time.process_time(), time.perf_counter()
    if read_rate > 0:
        tasks = [paced_reader(c, r / concurrency) for r, c in enumerate(readers)]
    else:
        tasks = [reader(c) for c in readers]
    tasks += [ingester(c, j / max(1, len(ingesters))) for j, c in enumerate(ingesters)]
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    for conn in readers + ingesters:
        assert conn.transport is not None
        conn.transport.close()
    lat = np.array(latencies) * 1000
    out = {
        "requests": len(latencies), "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": counts["errors"],
        "client_cpu": round(100 * client_cpu / elapsed, 1),
    }
    if ingest_rate > 0:
        il = np.array(ingest_lat) * 1000 if ingest_lat else np.zeros(1)
        out.update({"events_per_s": round(counts["ingested"] / elapsed, 1),
                    "ingest_p99_ms": round(float(np.percentile(il, 99)), 2)})
    return out


def _client_process(queue: Any, kwargs: dict[str, Any]) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    queue.put(asyncio.run(_phase(**kwargs)))


def server_pids(pid: int) -> list[int]:
    """The server's process and its children (reader processes, started from any thread)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def server_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += process_cpu_seconds(pid)
        except OSError:  # exited
            continue
    return total


def run_phase(proc: subprocess.Popen[bytes], port: int, **kwargs: Any) -> dict[str, Any]:
    """One phase: the client in a fresh process; server CPU (the writer and its readers) from
    /proc around it."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    client = ctx.Process(target=_client_process, args=(queue, {"port": port, **kwargs}))
    pids = server_pids(proc.pid)
    server0, wall0 = server_cpu_seconds(pids), time.perf_counter()
    client.start()
    result = queue.get(timeout=kwargs["seconds"] + 120)
    client.join(30)
    wall = time.perf_counter() - wall0
    result["server_cpu"] = round(100 * (server_cpu_seconds(pids) - server0) / wall, 1)
    result["load1"] = round(os.getloadavg()[0], 2)
    return result


def start_server(ckpt: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--checkpoint", str(ckpt), "--port", str(port),
         "--log-level", "warning", *extra],
        env=dict(os.environ, NMRN_TOKEN=TOKEN),
    )
    deadline = time.monotonic() + 300  # a 10^6-item checkpoint loads in tens of seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def _metric(port: int, name: str) -> float:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return next((float(line.split()[1]) for line in text.splitlines()
                 if line.startswith(name + " ")), float("nan"))


def _apply_lag(port: int) -> float:
    return _metric(port, "nmrn_apply_lag_events")


def _staleness(port: int, writer_port: int) -> dict[str, float]:
    """The snapshot's costs: mean publication (writer), a reader's last verification + load,
    and its worst lag from a state being taken to being served, over its last 256 loads."""
    count = _metric(writer_port, "nmrn_snapshot_publish_seconds_count")
    total = _metric(writer_port, "nmrn_snapshot_publish_seconds_sum")
    return {"publish_ms": 1000 * total / count if count else float("nan"),
            "publish_kib": _metric(writer_port, "nmrn_snapshot_publish_bytes") / 1024,
            "load_ms": 1000 * _metric(port, "nmrn_snapshot_load_seconds"),
            "lag_max_ms": 1000 * _metric(port, "nmrn_snapshot_lag_max_seconds")}


EMBEDDING = ("nmrn-faithful", "nmrn-memory", "nmrn", "bpr")  # models with config.retrieval


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _retrieval_counters(port: int) -> dict[str, float]:
    return {name: _metric(port, f"nmrn_retrieval_{name}")
            for name in ("ready", "answered_total", "exact_total", "delta_items")}


def _wait_for_index(proc: subprocess.Popen[bytes], port: int, common: dict[str, Any],
                    timeout: float) -> float:
    """Read (1 s closed-loop phases) until the ANN index answers on ``port`` in 3 scrapes in a
    row (with readers, each scrape may reach another reader); seconds waited."""
    start, ready = time.monotonic(), 0
    while time.monotonic() - start < timeout and ready < 3:
        run_phase(proc, port, seconds=1.0, ingest_rate=0.0, **common)
        ready = ready + 1 if _metric(port, "nmrn_retrieval_ready") == 1.0 else 0
    return time.monotonic() - start


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from nmrn.models import make_model

    setups: list[tuple[str, str, Any]] = []
    if args.data.exists():
        frame = ml100k(args.data)
        setups += [("ml-100k", name, frame)
                   for name in ("pop", "item-knn", "nmrn-faithful", "nmrn-memory", "nmrn")]
    big = synthetic()
    setups += [("100k items", "pop", big)]
    if not args.quick:
        # the memory model on a large catalogue; the hybrid (preset nmrn) scores every item with
        # each of its components per read, which is issue 13's subject, not measured here
        setups += [("100k items", "item-knn", big), ("100k items", "nmrn-memory", big),
                   ("100k items", "nmrn-faithful", big), ("100k items", "bpr", big)]
    if args.million:  # synthetic, 1,000,000 items (every one seen once), fitted one epoch
        huge = synthetic(n_items=1_000_000, n_users=20_000, n_events=1_300_000)
        setups += [("1M items", "nmrn-faithful", huge)]
    if args.only:
        setups = [s for s in setups if f"{s[0]}/{s[1]}" in args.only or s[1] in args.only]
    phases = [("closed", 0.0), ("closed", args.ingest_rate), ("open", args.ingest_rate)]
    results = []
    for catalogue, model_name, frame in setups:
        with tempfile.TemporaryDirectory() as tmp:  # one fit for every --workers
            ckpt = Path(tmp) / "model.ckpt"
            options: dict[str, Any] = {}
            if args.retrieval and model_name in EMBEDDING:
                options["retrieval"] = args.retrieval
            if catalogue == "1M items":
                options["epochs"] = 1
            model = make_model(model_name, **options).fit(frame)
            model.save(ckpt)
            users = model.known_users.tolist()
            items = model.known_items.tolist()
            del model
            runs_of = [(w, m) for w in args.workers
                       for m in (args.snapshot_modes if w else [None])]
            for workers, snapshot_mode in runs_of:
                retrieval_on = bool(args.retrieval) and model_name in EMBEDDING
                port = free_port()
                writer_port = port
                extra = list(args.server_arg)
                if workers:
                    writer_port = free_port()
                    extra += ["--workers", str(workers), "--writer-port", str(writer_port)]
                    if snapshot_mode is not None:
                        extra += ["--snapshot-mode", snapshot_mode]
                proc = start_server(ckpt, port, extra)
                if workers:  # every reader up before measuring
                    deadline = time.monotonic() + 120
                    while len(server_pids(proc.pid)) < workers + 1 and time.monotonic() < deadline:
                        time.sleep(0.2)
                    time.sleep(2.0)
                common = {"users": users, "items": items, "max_requests": args.max_requests,
                          "concurrency": args.concurrency, "ingest_batch": args.ingest_batch,
                          "ingest_connections": args.ingest_connections}
                try:
                    run_phase(proc, port, seconds=1.0, ingest_rate=0.0, **common)  # warm-up
                    waited = (_wait_for_index(proc, port, common, args.index_timeout)
                              if retrieval_on else 0.0)
                    for mode, ingest in phases:
                        runs = []
                        paced = {"read_rate": args.read_rate,
                                 "concurrency": args.open_connections} if mode == "open" else {}
                        for _ in range(args.repeats):
                            before = _retrieval_counters(port) if retrieval_on else {}
                            res = run_phase(proc, port, seconds=args.seconds, ingest_rate=ingest,
                                            **{**common, **paced})
                            res["apply_lag_at_end"] = _apply_lag(writer_port)
                            res["uptime"] = _uptime()
                            if retrieval_on:  # one process's counters (a reader's, with readers)
                                after = _retrieval_counters(port)
                                done = after["answered_total"] - before["answered_total"]
                                exact = after["exact_total"] - before["exact_total"]
                                res["ann_share"] = done / (done + exact) if done + exact else 0.0
                                res["delta_items"] = after["delta_items"]
                                res["index_wait_s"] = waited
                            if workers:
                                res.update(_staleness(port, writer_port))
                            runs.append(res)
                            print(json.dumps({"catalogue": catalogue, "model": model_name,
                                              "workers": workers, "snapshots": snapshot_mode,
                                              "mode": mode, **res}),
                                  flush=True)
                        row = {"catalogue": catalogue, "model": model_name, "items": len(items),
                               "workers": workers, "snapshots": snapshot_mode,
                               "mode": mode if mode == "closed" else f"open@{args.read_rate:g}",
                               "ingest": ingest > 0, "repeats": len(runs),
                               "retrieval": args.retrieval if retrieval_on else None,
                               "uptime": runs[-1]["uptime"],
                               **{key: float(np.median([r[key] for r in runs])) for key in runs[0]
                                  if key != "uptime"}}
                        row["p99_ms_max"] = max(r["p99_ms"] for r in runs)
                        results.append(row)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    return results


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (medians over the repeats)."""
    lines = [
        "| catalogue | model | workers | snapshots | readers | ingest | events/s | req/s "
        "| p50 ms | p99 ms (max) | ingest p99 ms | server CPU | server CPU µs/req | client CPU "
        "| load1 | publish ms | load ms | lag max ms | ANN share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        events = f"{r['events_per_s']:.0f}" if r["ingest"] else "-"
        ingest_p99 = f"{r['ingest_p99_ms']:.1f}" if r["ingest"] else "-"
        snap = (" | ".join(f"{r[k]:.1f}" for k in ("publish_ms", "load_ms", "lag_max_ms"))
                if "publish_ms" in r else "- | - | -")
        lines.append(
            f"| {r['catalogue']} ({r['items']:,} items) | {r['model']} | {r.get('workers', 0)} "
            f"| {r.get('snapshots') or '-'} | {r['mode']} | "
            f"{'yes' if r['ingest'] else 'no'} | {events} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.1f} ({r['p99_ms_max']:.1f}) | {ingest_p99} | "
            f"{r['server_cpu']:.0f}% | {10_000 * r['server_cpu'] / r['rps']:.0f} | "
            f"{r['client_cpu']:.0f}% | {r['load1']:.1f} | {snap} | "
            + (f"{r['ann_share']:.2f} |" if "ann_share" in r else "- |")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="the ML-100K log (default: nmrn's cached copy, fetched if needed)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--repeats", type=int, default=3, help="runs per phase (medians shown)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap per phase")
    parser.add_argument("--concurrency", type=int, default=8, help="reader connections")
    parser.add_argument("--ingest-rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--ingest-batch", type=int, default=10,
                        help="events per POST (more when a connection is behind schedule)")
    parser.add_argument("--ingest-connections", type=int, default=2,
                        help="ingest connections (requests in flight at once)")
    parser.add_argument("--read-rate", type=float, default=1000.0,
                        help="requests per second of the open-loop phase")
    parser.add_argument("--open-connections", type=int, default=32,
                        help="reader connections of the open-loop phase")
    parser.add_argument("--quick", action="store_true",
                        help="skip item-knn and nmrn on 100k items")
    parser.add_argument("--only", nargs="*", default=[],
                        help="setups to run, e.g. 'ml-100k/pop' or 'item-knn'")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for 'nmrn serve' (repeatable)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="nmrn serve --workers values to measure, e.g. 0 1 2 (0: one "
                        "process)")
    parser.add_argument("--snapshot-modes", nargs="+", default=["incremental"],
                        choices=["incremental", "full"],
                        help="with --workers N >= 1: the nmrn serve --snapshot-mode values to "
                        "measure, each with its own server (default: incremental)")
    parser.add_argument("--retrieval", type=json.loads, default=None,
                        help="RetrievalConfig fields as JSON for the embedding models (NMRN, "
                        "BPR), e.g. '{\"mode\": \"ann\"}'; the table then gives the share of "
                        "reads answered from the index")
    parser.add_argument("--index-timeout", type=float, default=120.0,
                        help="seconds to wait for the ANN index before measuring")
    parser.add_argument("--million", action="store_true",
                        help="also a synthetic 1,000,000-item catalogue (nmrn-faithful, 1 epoch)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.data is None:
        from nmrn.data.datasets import fetch

        args.data = fetch("ml-100k").path
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
