"""Soak test of ``nmrn serve``: ingest, reads, hostile requests and kills, for bounded minutes.

For each model in ``--models`` the script fits the preset on the first ``--base-events`` of
ML-100K (nmrn's own cached copy), saves a checkpoint and starts a real ``nmrn serve`` process on
a free loopback port (a write token; ``--checkpoint-every 2000 --checkpoint-seconds 5``, so that
checkpoints and journal truncation happen during the soak; ``--request-timeout`` and
``--body-timeout`` of 2 s, so that slow clients are answered within a server life). For
``--minutes`` it then runs, in threads of this one process:

* two ingest clients posting the rest of the log in requests of 1-20 events (each event with a
  unique timestamp, ``base + its index``; each request with its own ``Idempotency-Key``), paced
  at ``--ingest-rate`` events/s in all; on a connection error, a timeout or a 503 a request is
  sent again, same key and same bytes, until it is answered 202;
* two readers (``GET /recommendations/{user}?k=10`` and ``POST /recommendations`` for a few
  users), paced at ``--read-rate`` requests/s in all;
* a hostile client cycling through malformed requests (bad JSON, nesting 10,000 deep, huge
  headers, a request line too long, bodies over the limit, slow and silent connections, missing
  and wrong tokens, lone surrogates, k = 10^9, NaN, reads over the work budget, idempotency
  conflicts, ...) over raw sockets, at ``--hostile-rate`` requests/s; each case has the answer
  it must get (a 4xx, except: an unknown user gets the cold answer, 200, and a replayed key its
  first answer, 202, applying nothing);
* a killer that SIGKILLs the server every ``--kill-every`` seconds (the restart time counts)
  and restarts it on the same port (every ``--kill-starting``-th restart is killed once more at
  a random moment of its start: mid journal replay), until the last ``--calm`` share of the
  minutes, which is one long server life (to see the RSS of a life that lasts);
* a monitor sampling the server's RSS (``/proc``) and ``/healthz`` every 0.5 s; RSS is
  reported per life (after a 1 s warm-up vs its max), as the first life's warm RSS, the overall
  max and the drift (the last life's max minus the first life's warm RSS).

At the end the server is stopped with SIGTERM (the queue is applied, a final checkpoint
written), the checkpoint is loaded and compared with what was acknowledged, exactly: the
multiset of (user, item) pairs in the model's history must be the base log's plus the
acknowledged events' (ML-100K holds each pair once), so ``lost`` (acknowledged, not in the
model), ``doubled`` (in the model more often than sent) and ``unexpected`` (in the model, never
acknowledged: a hostile request applied) are counted event by event; the sequence numbers the
202s carried must tile ``1..acknowledged`` (no gap, no overlap).

Every answer with a status >= 500 is a "5xx", except a 503 with ``Retry-After`` (counted apart).
Connection errors are expected while a kill is in progress (a request begun before a kill, or
while the server was down); any other client-side error is counted by kind. The script prints
one Markdown table per model (and a hostile-case table), writes everything to ``--out`` and
exits non-zero if any model lost, doubled or applied unexpected events, left a gap or an
overlap in the sequence numbers, answered a 5xx, or did not restart or stop cleanly.

Loopback only; every request has a timeout, every phase a deadline; the server process is
killed by PID on any exit (Ctrl-C included) and the temporary directory removed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py                 # ~7 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --minutes 0.3 --models pop
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only
TOKEN = "soak-write-token"
MAX_HEADER_BYTES = 32_768  # passed to the server (its defaults), and exceeded by the hostile client
MAX_BODY_BYTES = 1_048_576
SLOW_SECONDS = 2.0  # the server's --request-timeout and --body-timeout: slow clients get 408
CLIENT_TIMEOUT = 10.0  # seconds per request, every client
MIN_UPTIME = 0.5  # a server life lasts at least this long after it answers /healthz
WARMUP = 1.0  # a life's "warm" RSS: the first sample this long after it answered /healthz
GRACE = 60.0  # seconds to finish the requests in flight, to start, and to stop
MAX_EXAMPLES = 10  # examples kept of each kind of failure
HOSTILE_USER = "soak-hostile"  # the user of every event the hostile client sends
REPLAYED = re.compile(r"replayed (\d+) journalled events after an unclean stop")

try:
    import psutil  # type: ignore[import-untyped]
except ImportError:  # not a dependency: /proc has the same figure
    psutil = None


def rss_mib(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MiB (``None`` once it is gone)."""
    try:
        if psutil is not None:
            return float(psutil.Process(pid).memory_info().rss) / 2**20
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except Exception:  # noqa: BLE001 - the process ended between two samples
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- the server --------------------------------------------------------------------------------
@dataclass
class Life:
    """One server process: from its start to its kill (or its SIGTERM)."""

    number: int
    pid: int
    started: float  # time.monotonic()
    healthy: float | None = None
    ended: float | None = None
    end: str = "running"  # killed [while starting] | terminated | died | did not start | ...
    exit_code: int | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, MiB)

    def summary(self) -> dict[str, Any]:
        up = [(t, m) for t, m in self.rss if self.healthy is not None and t >= self.healthy]
        warm = next((m for t, m in up if t >= (self.healthy or 0) + WARMUP), None)
        if warm is None and up:
            warm = up[-1][1]
        return {
            "life": self.number, "pid": self.pid, "end": self.end, "exit_code": self.exit_code,
            "startup_s": None if self.healthy is None else round(self.healthy - self.started, 2),
            "uptime_s": None if self.healthy is None or self.ended is None
            else round(self.ended - self.healthy, 2),
            "rss_warm_mib": None if warm is None else round(warm, 1),
            "rss_max_mib": round(max(m for _, m in self.rss), 1) if self.rss else None,
            "rss_samples": len(self.rss),
        }


class ServerFailed(RuntimeError):
    """The server did not start (or restart) within the deadline."""


class Server:
    """The ``nmrn serve`` process of one model: started, killed and restarted on one port.

    ``life`` is bumped at every kill, before the signal, and ``up`` is true only while a process
    that answered ``/healthz`` runs: a client that saw either change during a request knows that
    a kill explains its connection error (:meth:`interrupted`).
    """

    def __init__(self, ckpt: Path, port: int, log_path: Path) -> None:
        self.ckpt, self.port, self.log_path = ckpt, port, log_path
        self.base = f"http://{HOST}:{port}"
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.life = 0
        self.up = False
        self.lives: list[Life] = []

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "nmrn", "serve", "--checkpoint", str(self.ckpt),
            "--host", HOST, "--port", str(self.port),
            "--checkpoint-every", "2000", "--checkpoint-seconds", "5",
            "--max-header-bytes", str(MAX_HEADER_BYTES),
            "--max-body-bytes", str(MAX_BODY_BYTES),
            "--request-timeout", str(SLOW_SECONDS), "--body-timeout", str(SLOW_SECONDS),
            "--log-level", "warning",
        ]

    def start(self, kill_after: float | None = None) -> bool:
        """Start a process and wait until it answers ``/healthz`` (:class:`ServerFailed` if it
        does not within :data:`GRACE` seconds). With ``kill_after``, a process that has not
        answered that many seconds after its start is SIGKILLed mid-start: ``False``."""
        env = dict(os.environ, NMRN_TOKEN=TOKEN, OMP_NUM_THREADS="1")
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        life = Life(len(self.lives) + 1, proc.pid, time.monotonic())
        with self.lock:
            self.proc = proc
            self.lives.append(life)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and proc.poll() is None:
            if kill_after is not None and time.monotonic() >= life.started + kill_after:
                self.kill()
                life.end = "killed while starting"
                return False
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    with self.lock:
                        life.healthy = time.monotonic()
                        self.up = True
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        life.end = "did not start"
        self.cleanup()
        raise ServerFailed(f"life {life.number} (pid {proc.pid}) did not answer /healthz within "
                           f"{GRACE:.0f} s (exit code {proc.poll()})")

    def kill(self) -> None:
        """SIGKILL the running process and wait for it."""
        with self.lock:
            self.up = False
            self.life += 1
            proc, life = self.proc, self.lives[-1]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        life.exit_code = proc.wait(GRACE)
        life.ended, life.end = time.monotonic(), "killed"

    def terminate(self) -> int | None:
        """SIGTERM (graceful: the queue applied, a final checkpoint); the exit code, or
        ``None`` if it did not stop within :data:`GRACE` seconds (then it is killed)."""
        with self.lock:
            self.up = False
            self.life += 1
            proc, life = self.proc, self.lives[-1]
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        try:
            life.exit_code = proc.wait(GRACE)
            life.end = "terminated"
        except subprocess.TimeoutExpired:
            life.end = "hung after SIGTERM"
            self.cleanup()
        life.ended = time.monotonic()
        return None if life.end != "terminated" else life.exit_code

    def cleanup(self) -> None:
        """Kill the process if it still runs (by PID, via its Popen)."""
        with self.lock:
            self.up = False
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(GRACE)
            if self.lives and self.lives[-1].ended is None:
                self.lives[-1].ended, self.lives[-1].end = time.monotonic(), "killed at cleanup"

    def snapshot(self) -> tuple[int, bool]:
        with self.lock:
            return self.life, self.up

    def interrupted(self, before: tuple[int, bool]) -> bool:
        """Whether a kill explains a failure of a request begun at ``before``."""
        life, up = before
        with self.lock:
            return not up or life != self.life or not self.up

    def pid(self) -> int | None:
        with self.lock:
            proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None


class LifeClient:
    """An ``httpx.Client`` renewed at every server life: no pooled connection of a killed
    process is ever reused."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.life = -1
        self.client: httpx.Client | None = None

    def get(self) -> httpx.Client:
        life = self.server.snapshot()[0]
        if self.client is None or life != self.life:
            self.close()
            self.client = httpx.Client(base_url=self.server.base, timeout=CLIENT_TIMEOUT)
            self.life = life
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


# -- raw requests (the hostile client) ---------------------------------------------------------
def raw(method: str, path: str, body: bytes | None = None, headers: tuple[str, ...] = (),
        json_type: bool = True, token: str | None = TOKEN) -> bytes:
    """An HTTP/1.1 request as bytes, ``Connection: close`` (with a Content-Length if there is
    a body); hostile requests are built by hand since no client library sends them."""
    lines = [f"{method} {path} HTTP/1.1", "Host: soak", "Connection: close"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if json_type and body is not None:
        lines.append("Content-Type: application/json")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def pieces(data: bytes, size: int = 65_536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def exchange(port: int, chunks: list[bytes], timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Send ``chunks`` (stopping early if the server answers first or closes), then read the
    answer. Raises ``OSError`` or ``http.client.HTTPException`` when there is none."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered (or closed) before the request was complete
            try:
                sock.sendall(chunk)
            except OSError:
                break  # refused and closed mid-send: the answer may still be there
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@dataclass(frozen=True)
class Case:
    """A hostile request: the bytes to send (``build``; ``None`` to skip this round), the
    statuses it must get and, optionally, a check of the answer."""

    name: str
    expect: frozenset[int]
    build: Callable[[], list[bytes] | None]
    check: Callable[[dict[str, str], bytes], bool] | None = None
    slow: bool = False  # answered only after the server's timeout: runs in a thread of its own

    @property
    def refusal(self) -> bool:
        return all(400 <= s < 500 for s in self.expect)


def hostile_cases(soak: Soak) -> list[Case]:
    """The hostile client's cycle (see the module docstring)."""
    event = json.dumps({"user": HOSTILE_USER, "item": 1, "timestamp": 1}).encode()
    known = soak.read_users
    pst = "/events"

    def post(body: bytes, path: str = pst, **kw: Any) -> Callable[[], list[bytes]]:
        return lambda: [raw("POST", path, body, **kw)]

    def get(path: str, **kw: Any) -> Callable[[], list[bytes]]:
        return lambda: [raw("GET", path, **kw)]

    def acked_key(same: bool) -> list[bytes] | None:
        pick = soak.random_acked()
        if pick is None:
            return None
        key, body = pick
        if not same:
            body = json.dumps({"events": [{"user": HOSTILE_USER, "item": 2, "timestamp": 2}]})\
                .encode()
        return [raw("POST", pst, body, headers=(f"Idempotency-Key: {key}",))]

    def cold(headers: dict[str, str], body: bytes) -> bool:
        return json.loads(body).get("cold") is True

    def replayed(headers: dict[str, str], body: bytes) -> bool:
        return headers.get("idempotent-replayed") == "true"

    big_body = b" " * (MAX_BODY_BYTES + 65_536)
    chunk = b" " * 65_536
    chunked = (raw("POST", pst, headers=("Content-Type: application/json",
                                         "Transfer-Encoding: chunked"))
               + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                          for _ in range(MAX_BODY_BYTES // len(chunk) + 2)) + b"0\r\n\r\n")
    many_events = json.dumps({"events": [{"user": HOSTILE_USER, "item": j, "timestamp": j}
                                         for j in range(10_001)]}).encode()
    budget = json.dumps({"users": known[:50], "k": 1000}).encode()
    s4 = frozenset
    return [
        Case("malformed JSON", s4({400}), post(b'{"events": [{"user": 1, "item": ')),
        Case("nesting 10,000 deep", s4({400}), post(b"[" * 10_000)),
        Case("nesting 10,000 deep (read)", s4({400}),
             post(b'{"users": ' + b"[" * 10_000, "/recommendations")),
        Case("header > max-header-bytes", s4({431}),
             get("/healthz", headers=("X-Big: " + "a" * (MAX_HEADER_BYTES + 1024),))),
        Case("150 header fields", s4({431}),
             get("/healthz", headers=tuple(f"X-H{j}: v" for j in range(150)))),
        Case("request line > max-header-bytes", s4({414}),
             get("/recommendations/" + "x" * (MAX_HEADER_BYTES + 1024))),
        Case("body > max-body-bytes", s4({413}), lambda: pieces(raw("POST", pst, big_body))),
        Case("chunked body > max-body-bytes", s4({413}), lambda: pieces(chunked)),
        Case("missing token", s4({401}), post(event, token=None)),
        Case("wrong token", s4({403}), post(event, token="not-the-token")),
        Case("wrong scheme", s4({401}), post(event, token=None,
                                             headers=("Authorization: Basic c29hazo=",))),
        Case("checkpoint, wrong token", s4({403}), post(b"{}", "/checkpoint", token="nope")),
        Case("lone surrogate id (event)", s4({422}),
             post(b'{"user": "\\udc80", "item": 1, "timestamp": 1}')),
        Case("lone surrogate id (read)", s4({422}),
             post(b'{"users": ["\\udc80"], "k": 3}', "/recommendations")),
        Case("lone surrogate id (path)", s4({422}), get("/recommendations/%ED%B2%80")),
        Case("invalid UTF-8 body", s4({400}),
             post(b'{"user": "\xff\xfe", "item": 1, "timestamp": 1}')),
        Case("k = 10^9", s4({422}), get(f"/recommendations/{known[0]}?k=1000000000")),
        Case("k = 10^9 (POST)", s4({422}),
             post(json.dumps({"users": known[:2], "k": 10**9}).encode(), "/recommendations")),
        Case("unknown user (cold answer)", s4({200}), get("/recommendations/soak-nobody?k=10"),
             check=cold),
        Case("NaN timestamp", s4({400}),
             post(f'{{"user": "{HOSTILE_USER}", "item": 1, "timestamp": NaN}}'.encode())),
        Case("timestamp 1e400", s4({422}),
             post(f'{{"user": "{HOSTILE_USER}", "item": 1, "timestamp": 1e400}}'.encode())),
        Case("users x k over max-work", s4({413}), post(budget, "/recommendations")),
        Case("1,001 users", s4({413}),
             post(json.dumps({"users": list(range(1001))}).encode(), "/recommendations")),
        Case("10,001 events", s4({413}), post(many_events)),
        Case("id 2^70", s4({422}),
             post(json.dumps({"user": 2**70, "item": 1, "timestamp": 1}).encode())),
        Case("5,000-digit number", s4({400}),
             post(f'{{"user": "{HOSTILE_USER}", "item": 1, "timestamp": {"9" * 5000}}}'
                  .encode())),
        Case("text/plain body", s4({415}), post(event, json_type=False,
                                                headers=("Content-Type: text/plain",))),
        Case("empty body", s4({400}), post(b"")),
        Case("Content-Length: abc", s4({400}),
             lambda: [raw("POST", pst, headers=("Content-Length: abc",)) + event]),
        Case("not HTTP", s4({400}), lambda: [b"\x16\x03\x01\x02\x00garbage\r\n\r\n"]),
        Case("unknown route", s4({404}), get("/no/such/route")),
        Case("wrong method", s4({405}), lambda: [raw("DELETE", pst)]),
        Case("idempotency key with a space", s4({400}),
             post(event, headers=("Idempotency-Key: has space",))),
        Case("idempotency key reused, other events", s4({422}), lambda: acked_key(False)),
        Case("idempotency key replayed (same events)", s4({202}), lambda: acked_key(True),
             check=replayed),
        Case("silent connection", s4({408}), lambda: [], slow=True),
        Case("slow-loris headers", s4({408}),
             lambda: [b"POST /events HTTP/1.1\r\nHost: soak\r\nContent-Le"], slow=True),
        Case("slow body", s4({408}),
             lambda: [raw("POST", pst).replace(b"\r\n\r\n", b"\r\nContent-Type: application/"
                                               b"json\r\nContent-Length: 100\r\n\r\n{\"ev")],
             slow=True),
    ]


# -- one model's soak --------------------------------------------------------------------------
class Soak:
    """The load on one server, its tallies and its end checks."""

    def __init__(self, name: str, server: Server, stream: dict[str, np.ndarray],
                 read_users: list[int], args: argparse.Namespace) -> None:
        self.name, self.server, self.args = name, server, args
        self.users, self.items, self.weights, self.times = (
            stream["users"], stream["items"], stream["weights"], stream["timestamps"])
        self.read_users = read_users
        self.lock = threading.Lock()
        self.cursor = 0  # next stream event to send
        self.acked: list[tuple[str, int, int, int, int]] = []  # key, lo, hi, first_seq, seq
        self.acked_bodies: dict[str, bytes] = {}
        self.uncertain: list[tuple[int, int]] = []  # sent, never answered 202 (lo, hi)
        self.refused: list[tuple[int, int]] = []  # valid events answered 4xx (lo, hi)
        self.statuses: dict[str, Counter[int]] = {w: Counter() for w in
                                                  ("ingest", "read", "hostile", "monitor")}
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # client errors no kill explains, by kind
        self.examples: dict[str, list[str]] = {}
        self.hostile: dict[str, Counter[str]] = {}
        self.hostile_statuses: dict[str, Counter[int]] = {}
        self.checkpoint_seqs: set[int] = set()
        self.run_id = uuid.uuid4().hex[:8]
        self.stop_load = threading.Event()  # readers, hostile client, killer
        self.stop_ingest = threading.Event()  # ingest clients send no new request
        self.stop_monitor = threading.Event()
        self.ingest_deadline = math.inf  # monotonic: give up retrying after this
        self.fatal: str | None = None
        self.slow_slots = threading.Semaphore(3)

    # tallies
    def example(self, kind: str, text: str) -> None:
        with self.lock:
            kept = self.examples.setdefault(kind, [])
            if len(kept) < MAX_EXAMPLES:
                kept.append(text)

    def note(self, who: str, status: int, headers: Any, request: str, body: bytes) -> None:
        """Count an answer; a 5xx (other than a 503 with Retry-After) is kept as an example."""
        with self.lock:
            self.statuses[who][status] += 1
            if status == 503 and headers.get("retry-after") is not None:
                self.counts["503"] += 1
                return
            if status < 500:
                return
            self.counts["5xx"] += 1
        self.example("5xx", f"{who}: {request} -> {status} {body[:300]!r}")

    def note_error(self, who: str, err: BaseException, before: tuple[int, bool],
                   request: str) -> None:
        """Count a request that got no answer: expected if a kill explains it."""
        if self.server.interrupted(before):
            with self.lock:
                self.counts[f"{who} interrupted by a kill"] += 1
            return
        kind = f"{who}: {type(err).__name__}"
        with self.lock:
            self.errors[kind] += 1
        self.example("client errors", f"{kind}: {request}: {err}")

    def random_acked(self) -> tuple[str, bytes] | None:
        with self.lock:
            if not self.acked:
                return None
            key = random.choice(self.acked)[0]
            return key, self.acked_bodies[key]

    # ingest
    def ingest(self, seed: int) -> None:
        rng = random.Random(seed)
        http = LifeClient(self.server)
        per_event = self.args.ingest_clients / self.args.ingest_rate
        due = time.monotonic()
        try:
            while not self.stop_ingest.is_set():
                n = rng.randint(1, 20)
                with self.lock:
                    lo = self.cursor
                    hi = self.cursor = min(lo + n, len(self.users))
                if lo >= hi:
                    return  # the log is used up
                events = [{"user": int(self.users[j]), "item": int(self.items[j]),
                           "timestamp": float(self.times[j]), "weight": float(self.weights[j])}
                          for j in range(lo, hi)]
                key = f"soak-{self.run_id}-{lo}"
                body = json.dumps({"events": events}).encode()
                self.post_until_acked(http, key, body, lo, hi)
                due = max(due + (hi - lo) * per_event, time.monotonic() - 1.0)
                self.stop_ingest.wait(max(0.0, due - time.monotonic()))
        finally:
            http.close()

    def post_until_acked(self, http: LifeClient, key: str, body: bytes, lo: int, hi: int) -> None:
        """POST the request, same key and same bytes, until it is answered 202."""
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                   "Idempotency-Key": key}
        what = f"POST /events (key {key}, events {lo}..{hi - 1})"
        failures = 0
        while True:
            if time.monotonic() > self.ingest_deadline or failures > 50:
                with self.lock:
                    self.uncertain.append((lo, hi))
                self.example("unacknowledged", f"{what}: gave up after {failures} answers >= 500")
                return
            before = self.server.snapshot()
            try:
                r = http.get().post("/events", content=body, headers=headers)
            except httpx.HTTPError as err:
                self.note_error("ingest", err, before, what)
                time.sleep(0.05)
                continue
            self.note("ingest", r.status_code, r.headers, what, r.content)
            if r.status_code == 202:
                answer = r.json()
                with self.lock:
                    self.acked.append((key, lo, hi, int(answer["first_seq"]), int(answer["seq"])))
                    self.acked_bodies[key] = body
                    self.counts["ingest replayed"] += r.headers.get("idempotent-replayed") == "true"
                if answer["accepted"] != hi - lo:
                    self.example("ingest answers", f"{what}: accepted {answer['accepted']}")
                return
            if r.status_code >= 500:
                failures += r.status_code != 503
                time.sleep(min(1.0, float(r.headers.get("retry-after", 0.2))))
                continue
            with self.lock:
                self.refused.append((lo, hi))
            self.example("valid events refused", f"{what} -> {r.status_code} {r.text[:300]}")
            return

    # reads
    def read(self, seed: int) -> None:
        rng = random.Random(seed)
        http = LifeClient(self.server)
        per_read = self.args.readers / self.args.read_rate
        due = time.monotonic()
        try:
            while not self.stop_load.is_set():
                if rng.random() < 0.7:
                    user = rng.choice(self.read_users)
                    what, one = f"GET /recommendations/{user}?k=10", True
                    method, path, payload = "GET", f"/recommendations/{user}", None
                else:
                    users = rng.sample(self.read_users, rng.randint(1, 5))
                    what, one = f"POST /recommendations {users} k=10", False
                    method, path, payload = "POST", "/recommendations", {"users": users, "k": 10}
                before = self.server.snapshot()
                try:
                    r = http.get().request(method, path, json=payload,
                                           params={"k": 10} if one else None)
                except httpx.HTTPError as err:
                    self.note_error("read", err, before, what)
                    time.sleep(0.05)
                    continue
                self.note("read", r.status_code, r.headers, what, r.content)
                if r.status_code == 200:
                    rows = [r.json()] if one else r.json()["results"]
                    ok = all(isinstance(row["items"], list) and len(row["items"]) <= 10
                             for row in rows)
                    with self.lock:
                        self.counts["reads served" if ok else "reads malformed"] += 1
                    if not ok:
                        self.example("reads malformed", f"{what} -> {r.text[:300]}")
                elif r.status_code < 500:
                    self.example("reads refused", f"{what} -> {r.status_code} {r.text[:300]}")
                due = max(due + per_read, time.monotonic() - 1.0)
                self.stop_load.wait(max(0.0, due - time.monotonic()))
        finally:
            http.close()

    # hostile requests
    def hostile_loop(self) -> None:
        cases = hostile_cases(self)
        interval = 1.0 / self.args.hostile_rate
        due = time.monotonic()
        j = 0
        while not self.stop_load.is_set():
            case = cases[j % len(cases)]
            j += 1
            if case.slow:
                if self.slow_slots.acquire(blocking=False):
                    threading.Thread(target=self.hostile_slow, args=(case,), daemon=True).start()
            else:
                self.hostile_one(case)
            due = max(due + interval, time.monotonic() - 1.0)
            self.stop_load.wait(max(0.0, due - time.monotonic()))

    def hostile_slow(self, case: Case) -> None:
        try:
            self.hostile_one(case)
        finally:
            self.slow_slots.release()

    def hostile_one(self, case: Case) -> None:
        chunks = case.build()
        if chunks is None:
            return
        before = self.server.snapshot()
        if not before[1]:
            return  # the server is down: a connection error would say nothing
        with self.lock:
            outcomes = self.hostile.setdefault(case.name, Counter())
            statuses = self.hostile_statuses.setdefault(case.name, Counter())
        timeout = SLOW_SECONDS + 5 if case.slow else CLIENT_TIMEOUT
        try:
            status, headers, body = exchange(self.server.port, chunks, timeout)
        except (OSError, http.client.HTTPException) as err:
            interrupted = self.server.interrupted(before)
            with self.lock:
                outcomes["sent"] += 1
                outcomes["interrupted by a kill" if interrupted else "no answer"] += 1
            if not interrupted:
                self.example("hostile, no answer", f"{case.name}: {type(err).__name__}: {err}")
            return
        self.note("hostile", status, headers, case.name, body)
        ok = status in case.expect
        if ok and case.check is not None:
            try:
                ok = case.check(headers, body)
            except ValueError:
                ok = False
        if ok:
            outcome = "expected"
        elif case.refusal and 400 <= status < 500:
            outcome = "other 4xx"
        else:
            outcome = "bad"
            self.example("hostile, bad answer", f"{case.name}: {chunks[0][:120]!r} -> {status} "
                                                f"{body[:300]!r}")
        with self.lock:
            outcomes["sent"] += 1
            outcomes[outcome] += 1
            outcomes["4xx"] += case.refusal and 400 <= status < 500
            statuses[status] += 1

    # kills and monitoring
    def killer(self, kill_until: float) -> None:
        """SIGKILL every ``--kill-every`` seconds (at least :data:`MIN_UPTIME` after the server
        answered) and restart; every ``--kill-starting``-th restart is itself killed at a
        random moment of its start (journal replay, first checkpoint) before it answers."""
        rng = random.Random(self.args.seed)
        due = time.monotonic() + self.args.kill_every
        kills = 0
        while True:
            healthy = self.server.lives[-1].healthy or time.monotonic()
            at = max(due, healthy + MIN_UPTIME)
            if at > kill_until or self.stop_load.wait(max(0.0, at - time.monotonic())):
                return
            self.server.kill()
            kills += 1
            try:
                started = False
                if self.args.kill_starting and kills % self.args.kill_starting == 0:
                    startups = [x.healthy - x.started for x in self.server.lives if x.healthy]
                    started = self.server.start(
                        kill_after=rng.uniform(0.3, 1.0) * float(np.mean(startups)))
                if not started:
                    self.server.start()
            except ServerFailed as err:
                self.fatal = f"restart failed: {err}"
                self.stop_load.set()
                self.stop_ingest.set()
                return
            due += self.args.kill_every

    def monitor(self) -> None:
        http = LifeClient(self.server)
        try:
            while not self.stop_monitor.wait(0.5):
                with self.server.lock:
                    life, proc = self.server.lives[-1], self.server.proc
                    # up, yet exited: not our kill (kill and terminate clear ``up`` first)
                    died = self.server.up and proc is not None and proc.poll() is not None
                    if died:
                        self.server.up = False
                if died:
                    assert proc is not None
                    life.ended, life.end, life.exit_code = time.monotonic(), "died", proc.poll()
                    self.fatal = f"the server died by itself (exit code {proc.poll()})"
                    self.stop_load.set()
                    self.stop_ingest.set()
                    return
                if proc is not None and life.ended is None:
                    mib = rss_mib(proc.pid)
                    if mib is not None:
                        life.rss.append((time.monotonic(), mib))
                before = self.server.snapshot()
                if not before[1]:
                    continue
                try:
                    r = http.get().get("/healthz")
                except httpx.HTTPError as err:
                    self.note_error("monitor", err, before, "GET /healthz")
                    continue
                self.note("monitor", r.status_code, r.headers, "GET /healthz", r.content)
                if r.status_code == 200:
                    with self.lock:
                        self.checkpoint_seqs.add(int(r.json()["checkpoint_seq"]))
        finally:
            http.close()

    def wait_applied(self) -> bool:
        """Wait (bounded) until the server has applied every accepted event."""
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.server.base}/healthz", timeout=CLIENT_TIMEOUT).json()
                if health["apply_lag"] == 0:
                    return True
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        return False


# -- the end checks ----------------------------------------------------------------------------
def pair_counts(users: np.ndarray, items: np.ndarray) -> Counter[tuple[int, int]]:
    return Counter(zip(users.tolist(), items.tolist(), strict=True))


def model_pairs(model: Any) -> Counter[tuple[Any, Any]]:
    """The (user, item) multiset of a model's history, in external ids."""
    out: Counter[tuple[Any, Any]] = Counter()
    ids = model.users.decode(np.arange(len(model.users))).tolist()
    for index, user in enumerate(ids):
        out.update((user, item) for item in model.items.decode(model.history.items_of(index))
                   .tolist())
    return out


def check_final(model: Any, soak: Soak, base_pairs: Counter[tuple[int, int]]) -> dict[str, Any]:
    """Compare the final model with the acknowledged events, event by event (module docs)."""
    expected = Counter(base_pairs)
    maybe: Counter[tuple[int, int]] = Counter()  # never answered: in the model at most once
    for _, lo, hi, _, _ in soak.acked:
        expected.update(pair_counts(soak.users[lo:hi], soak.items[lo:hi]))
    for lo, hi in soak.uncertain:
        maybe.update(pair_counts(soak.users[lo:hi], soak.items[lo:hi]))
    got = model_pairs(model)
    lost = expected - got
    extra = got - expected
    doubled = sum(n for pair, n in extra.items() if pair in expected)
    unexpected = sum(max(0, n - maybe[pair]) for pair, n in extra.items() if pair not in expected)
    # the sequence numbers of the 202s must tile 1..acknowledged
    ranges = sorted({(first, last) for _, _, _, first, last in soak.acked})
    gaps = overlaps = 0
    at = 0
    for first, last in ranges:
        gaps += first > at + 1
        overlaps += first <= at
        at = max(at, last)
    acked = sum(hi - lo for _, lo, hi, _, _ in soak.acked)
    acked_times = [float(soak.times[hi - 1]) for _, lo, hi, _, _ in soak.acked]
    return {
        "events_acknowledged": acked,
        "requests_acknowledged": len(soak.acked),
        "events_unacknowledged": sum(hi - lo for lo, hi in soak.uncertain),
        "events_refused": sum(hi - lo for lo, hi in soak.refused),
        "lost": sum(lost.values()),
        "doubled": doubled,
        "unexpected": unexpected,
        "lost_examples": [list(p) for p in list(lost)[:MAX_EXAMPLES]],
        "doubled_examples": [list(p) for p, _ in list(extra.items())[:MAX_EXAMPLES]],
        "n_events_expected": sum(base_pairs.values()) + acked,
        "n_events_in_model": int(model.n_events),
        "history_length": int(len(model.history)),
        "seq_last_acknowledged": at,
        "seq_gaps": gaps,
        "seq_overlaps": overlaps,
        "last_timestamp_ok": bool(not acked_times or model.last_timestamp >= max(acked_times)),
    }


# -- running one model -------------------------------------------------------------------------
def soak_model(name: str, log: Any, args: argparse.Namespace) -> dict[str, Any]:
    from nmrn.models import load_model, make_model

    base = log[: args.base_events]
    rest = log[args.base_events :]
    t0 = math.floor(float(base.timestamps.max())) + 1
    stream = {"users": rest.users, "items": rest.items,
              "weights": rest.weights if rest.weights is not None else np.ones(len(rest)),
              "timestamps": t0 + np.arange(len(rest), dtype=np.float64)}  # unique timestamps
    read_users = sorted({int(u) for u in base.users.tolist()})
    with tempfile.TemporaryDirectory(prefix="nmrn-soak-") as tmp:
        ckpt = Path(tmp) / "model.ckpt"
        start = time.perf_counter()
        make_model(name).fit(base).save(ckpt)
        fit_s = time.perf_counter() - start
        print(f"\n## {name}: fit on {len(base):,} events in {fit_s:.1f} s", flush=True)
        server = Server(ckpt, free_port(), Path(tmp) / "server.log")
        soak = Soak(name, server, stream, read_users, args)
        exit_code: int | None = None
        applied = False
        try:
            run_load(soak, server, args)
            if soak.fatal is None:
                applied = soak.wait_applied()
                soak.stop_monitor.set()
                exit_code = server.terminate()
        finally:
            soak.stop_load.set()
            soak.stop_ingest.set()
            soak.stop_monitor.set()
            server.cleanup()
        log_text = server.log_path.read_text(errors="replace")
        final: dict[str, Any] = {}
        if soak.fatal is None and exit_code == 0:
            final = check_final(load_model(ckpt), soak, pair_counts(base.users, base.items))
    lives = [life.summary() for life in server.lives]
    warm = [x["rss_warm_mib"] for x in lives if x["rss_warm_mib"] is not None]
    peaks = [x["rss_max_mib"] for x in lives if x["rss_max_mib"] is not None]
    hostile_total: Counter[str] = Counter()
    for outcomes in soak.hostile.values():
        hostile_total.update(outcomes)
    startups = [x["startup_s"] for x in lives if x["startup_s"] is not None]
    return {
        "model": name,
        "minutes": args.minutes,
        "fit_seconds": round(fit_s, 2),
        "kills": sum(life.end.startswith("killed") for life in server.lives),
        "kills_while_starting": sum(life.end == "killed while starting" for life in server.lives),
        "lives": lives,
        "startup_s_mean": round(float(np.mean(startups)), 2) if startups else None,
        "startup_s_max": max(startups) if startups else None,
        "final_exit_code": exit_code,
        "applied_before_sigterm": applied,
        "fatal": soak.fatal,
        "events_acknowledged": sum(hi - lo for _, lo, hi, _, _ in soak.acked),
        **final,
        "5xx": soak.counts["5xx"],
        "503": soak.counts["503"],
        "reads_served": soak.counts["reads served"],
        "reads_malformed": soak.counts["reads malformed"],
        "ingest_replayed": soak.counts["ingest replayed"],
        "interrupted_by_kills": {k: v for k, v in soak.counts.items() if "interrupted" in k},
        "client_errors": dict(soak.errors),
        "threads_still_running": soak.counts["threads still running"],
        "statuses": {who: {str(s): n for s, n in sorted(c.items())}
                     for who, c in soak.statuses.items()},
        "hostile_sent": hostile_total["sent"],
        "hostile_4xx": hostile_total["4xx"],
        "hostile_expected": hostile_total["expected"],
        "hostile_bad": hostile_total["bad"],
        "hostile_other_4xx": hostile_total["other 4xx"],
        "hostile_no_answer": hostile_total["no answer"],
        "hostile_cases": {name: {"outcomes": dict(soak.hostile[name]),
                                 "statuses": {str(s): n for s, n in
                                              sorted(soak.hostile_statuses[name].items())}}
                          for name in soak.hostile},
        "checkpoints_seen": len(soak.checkpoint_seqs - {0}),
        "rss_start_mib": warm[0] if warm else None,
        "rss_max_mib": max(peaks) if peaks else None,
        "rss_last_life_warm_mib": lives[-1]["rss_warm_mib"] if lives else None,
        "rss_last_life_max_mib": lives[-1]["rss_max_mib"] if lives else None,
        "rss_drift_mib": round(lives[-1]["rss_max_mib"] - warm[0], 1)
        if warm and lives[-1]["rss_max_mib"] is not None else None,
        "rss_last_life_series": last_life_series(server.lives[-1]) if server.lives else [],
        "server_replayed_events": sum(int(n) for n in REPLAYED.findall(log_text)),
        "server_log_tracebacks": log_text.count("Traceback"),
        "server_log_errors": [line for line in log_text.splitlines()
                              if "ERROR" in line or "Traceback" in line][:MAX_EXAMPLES],
        "server_log_tail": log_text[-5000:] if soak.fatal or exit_code != 0 else "",
        "examples": soak.examples,
    }


def run_load(soak: Soak, server: Server, args: argparse.Namespace) -> None:
    """Start the server and the load, run for the minutes, then stop the load (the requests
    in flight are finished: answered 202, or given up after :data:`GRACE` seconds)."""
    try:
        server.start()
    except ServerFailed as err:
        soak.fatal = f"start failed: {err}"
        return
    began = time.monotonic()
    end = began + args.minutes * 60
    kill_until = began + args.minutes * 60 * (1 - args.calm)
    threads = [threading.Thread(target=soak.monitor, daemon=True)]
    threads += [threading.Thread(target=soak.ingest, args=(args.seed + j,), daemon=True)
                for j in range(args.ingest_clients)]
    threads += [threading.Thread(target=soak.read, args=(args.seed + 100 + j,), daemon=True)
                for j in range(args.readers)]
    threads += [threading.Thread(target=soak.hostile_loop, daemon=True),
                threading.Thread(target=soak.killer, args=(kill_until,), daemon=True)]
    for t in threads:
        t.start()
    next_report = began + 15
    while time.monotonic() < end and soak.fatal is None:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        if time.monotonic() >= next_report:
            next_report += 15
            progress(soak, time.monotonic() - began)
    soak.stop_load.set()
    soak.stop_ingest.set()
    # finish the requests in flight, unless the server is gone for good
    soak.ingest_deadline = time.monotonic() + (GRACE if soak.fatal is None else 0.0)
    for t in threads[1:]:
        t.join(GRACE + CLIENT_TIMEOUT)
    soak.counts["threads still running"] = sum(t.is_alive() for t in threads[1:])


def last_life_series(life: Life, points: int = 60) -> list[list[float]]:
    """The RSS samples of a life as ``[seconds since it answered, MiB]``, at most ``points``."""
    if life.healthy is None:
        return []
    samples = [(t - life.healthy, m) for t, m in life.rss if t >= life.healthy]
    step = max(1, math.ceil(len(samples) / points))
    return [[round(t, 1), round(m, 1)] for t, m in samples[::step]]


def progress(soak: Soak, elapsed: float) -> None:
    with soak.lock:
        acked = sum(hi - lo for _, lo, hi, _, _ in soak.acked)
        hostile = sum(c["sent"] for c in soak.hostile.values())
        counts = dict(soak.counts)
        errors = sum(soak.errors.values())
    rss = next((m for _, m in reversed(soak.server.lives[-1].rss)), float("nan"))
    print(f"  {elapsed:5.0f} s: life {len(soak.server.lives)}, {acked:,} events acknowledged, "
          f"{counts.get('reads served', 0):,} reads, {hostile:,} hostile, "
          f"5xx {counts.get('5xx', 0)}, 503 {counts.get('503', 0)}, client errors {errors}, "
          f"RSS {rss:.0f} MiB", flush=True)


# -- output ------------------------------------------------------------------------------------
def failed(r: dict[str, Any]) -> list[str]:
    """Why a model's soak failed (empty: it passed)."""
    why = [f"{key} {r[key]}" for key in ("lost", "doubled", "unexpected", "5xx", "seq_gaps",
                                         "seq_overlaps") if r.get(key)]
    if r["fatal"]:
        why.append(r["fatal"])
    if r["final_exit_code"] != 0:
        why.append(f"final exit code {r['final_exit_code']}")
    if "lost" not in r:
        why.append("no final check")
    return why


def fmt(x: Any, spec: str = ",") -> str:
    return "-" if x is None else format(x, spec)


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | minutes | kills | events acked | lost | doubled | 5xx | 503s | hostile sent "
        "| hostile 4xx | reads served | RSS start MiB | RSS max MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['minutes']:g} | {r['kills']} | "
            f"{fmt(r.get('events_acknowledged'))} | {fmt(r.get('lost'))} | "
            f"{fmt(r.get('doubled'))} | {r['5xx']} | {r['503']} | {r['hostile_sent']:,} | "
            f"{r['hostile_4xx']:,} | {r['reads_served']:,} | {fmt(r['rss_start_mib'], '.0f')} | "
            f"{fmt(r['rss_max_mib'], '.0f')} |"
        )
    return "\n".join(lines)


def details(r: dict[str, Any]) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in r["client_errors"].items()) or "none"
    interrupted = ", ".join(f"{k} {v}" for k, v in r["interrupted_by_kills"].items()) or "none"
    lines = [
        f"- exactness: n_events expected {fmt(r.get('n_events_expected'))}, in the model "
        f"{fmt(r.get('n_events_in_model'))} (history {fmt(r.get('history_length'))}); "
        f"unexpected {fmt(r.get('unexpected'))}; seq gaps {fmt(r.get('seq_gaps'))}, overlaps "
        f"{fmt(r.get('seq_overlaps'))}; unacknowledged {fmt(r.get('events_unacknowledged'))}, "
        f"refused {fmt(r.get('events_refused'))}; idempotent replays {r['ingest_replayed']:,}; "
        f"events replayed from the journal at restarts {r['server_replayed_events']:,}",
        f"- server: {len(r['lives'])} lives ({r['kills_while_starting']} killed mid-start), "
        f"startup {fmt(r['startup_s_mean'], '.2f')} s mean / "
        f"{fmt(r['startup_s_max'], '.2f')} s max; checkpoints seen {r['checkpoints_seen']}; "
        f"final SIGTERM exit code {r['final_exit_code']}; log tracebacks "
        f"{r['server_log_tracebacks']}",
        f"- RSS: first life warm {fmt(r['rss_start_mib'], '.1f')} MiB, max "
        f"{fmt(r['rss_max_mib'], '.1f')}; last life ({fmt(r['lives'][-1]['uptime_s'], '.0f')} s) "
        f"warm {fmt(r['rss_last_life_warm_mib'], '.1f')}, max "
        f"{fmt(r['rss_last_life_max_mib'], '.1f')}; drift {fmt(r['rss_drift_mib'], '+.1f')} MiB",
        "- RSS per life, warm/max MiB: " + ", ".join(
            f"{fmt(x['rss_warm_mib'], '.0f')}/{fmt(x['rss_max_mib'], '.0f')}"
            for x in r["lives"] if x["rss_max_mib"] is not None),
        f"- no answer, a kill in between: {interrupted}; client errors otherwise: {errors}; "
        f"hostile answers not as expected: {r['hostile_bad']} not a 4xx (or not the answer "
        f"due), {r['hostile_other_4xx']} another 4xx, {r['hostile_no_answer']} no answer",
    ]
    if r["fatal"]:
        lines.append(f"- FATAL: {r['fatal']}")
    rows = ["| hostile case | sent | as expected | statuses | interrupted by a kill |",
            "|---|---|---|---|---|"]
    for name, case in r["hostile_cases"].items():
        o = case["outcomes"]
        statuses = ", ".join(f"{s}: {n}" for s, n in case["statuses"].items()) or "-"
        if o.get("no answer"):
            statuses += f", no answer: {o['no answer']}"
        rows.append(f"| {name} | {o.get('sent', 0)} | {o.get('expected', 0)} | {statuses} | "
                    f"{o.get('interrupted by a kill', 0)} |")
    return "\n".join(lines) + "\n\n" + "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="pop,item-knn,nmrn-faithful",
                        help="comma-separated model presets (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=2.0,
                        help="soak length per model, fractions allowed (default: %(default)s)")
    parser.add_argument("--base-events", type=int, default=20_000,
                        help="events of ML-100K the model is fitted on before serving; the "
                        "rest is ingested live (default: %(default)s)")
    parser.add_argument("--kill-every", type=float, default=None,
                        help="seconds between SIGKILLs, restart time included (default: the "
                        "kill phase / 30, at least 1: 3.4 s for 2 minutes; a restart takes 3-5 "
                        "s on 2 busy cores, so that is 20-28 kills)")
    parser.add_argument("--kill-starting", type=int, default=4,
                        help="every Nth restart is also killed mid-start, before it answers "
                        "(0: never; default: %(default)s)")
    parser.add_argument("--calm", type=float, default=0.15,
                        help="share of the minutes, at the end, without kills: one long server "
                        "life (default: %(default)s)")
    parser.add_argument("--ingest-rate", type=float, default=400.0,
                        help="events per second posted, all ingest clients together "
                        "(default: %(default)s)")
    parser.add_argument("--ingest-clients", type=int, default=2,
                        help="ingest threads (default: %(default)s)")
    parser.add_argument("--read-rate", type=float, default=100.0,
                        help="reads per second, all readers together (default: %(default)s)")
    parser.add_argument("--readers", type=int, default=2,
                        help="reader threads (default: %(default)s)")
    parser.add_argument("--hostile-rate", type=float, default=20.0,
                        help="hostile requests per second (default: %(default)s)")
    parser.add_argument("--min-kills", type=int, default=20,
                        help="warn when a model got fewer kills (slow restarts on a busy "
                        "machine; then give more --minutes) (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="nmrn's data cache root (default: nmrn's own; ML-100K is fetched "
                        "if needed)")
    parser.add_argument("--seed", type=int, default=0, help="client seed (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"),
                        help="JSON results (default: %(default)s)")
    args = parser.parse_args()
    if not 0 <= args.calm < 1:
        parser.error("--calm must be in [0, 1)")
    if args.kill_every is None:
        args.kill_every = max(1.0, args.minutes * 60 * (1 - args.calm) / 30)
    from nmrn.data.datasets import load_dataset

    log = load_dataset("ml-100k", data_dir=args.data_dir)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"soak: {', '.join(models)}; {args.minutes:g} min each, a kill every "
          f"{args.kill_every:.1f} s for the first {100 * (1 - args.calm):.0f}%; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for name in models:
        r = soak_model(name, log, args)
        results.append(r)
        print()
        print(markdown([r]))
        print()
        print(details(r))
        why = failed(r)
        print(f"\n{name}: {'FAILED: ' + '; '.join(why) if why else 'passed'}", flush=True)
        if r["kills"] < args.min_kills:
            print(f"warning: {r['kills']} kills, fewer than {args.min_kills}: restarts took "
                  f"{fmt(r['startup_s_mean'], '.1f')} s on average; give more --minutes",
                  flush=True)
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print("\n# all models\n")
    print(markdown(results))
    print(f"\nwritten: {args.out}")
    return 1 if any(failed(r) for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the server was killed and the temporary directory removed
        print("interrupted", file=sys.stderr)
        sys.exit(130)
