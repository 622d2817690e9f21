"""A reader process of ``nmrn serve --workers N``: reads answered from the newest published
snapshot, writes forwarded to the writer.

The writer (``nmrn serve``) starts each reader as ``python -m nmrn.serving.reader`` with its
settings in ``$NMRN_READER_CONFIG`` (JSON) and the tokens in ``$NMRN_TOKEN`` /
``$NMRN_READ_TOKEN`` (never on a command line, which other users can read). A reader:

* binds the public address with ``SO_REUSEPORT`` (the writer holds the port bound, without
  listening, so that it stays ours while a reader restarts), and the kernel spreads new
  connections over the readers;
* loads the newest snapshot (:class:`~nmrn.serving.snapshots.SnapshotFollower`, which checks
  the manifest's sizes and hashes and the checkpoint's own validation), polls ``CURRENT`` every
  ``poll_seconds`` and swaps in each new version;
* serves the very app of the single process (:func:`nmrn.serving.app.create_app`, the same
  routes, tokens, limits and refusals) over a :class:`SnapshotService`, and adds
  ``X-Snapshot-Age`` (seconds) and ``X-Snapshot-Seq`` to every answer;
* forwards ``POST /events``, ``POST /checkpoint`` and ``GET /status.json`` to the writer's
  private loopback port after checking the write token and reading the body within the same
  limits (:func:`nmrn.serving.routes.read_body`); the writer then validates it as it validates
  its own requests, and its answer is passed back as it is;
* exits when its parent (the writer) is gone.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nmrn.errors import ConfigError
from nmrn.serving.metrics import ServiceMetrics
from nmrn.serving.reads import ReadPath
from nmrn.serving.service import ServiceUnavailable
from nmrn.serving.snapshots import Manifest, SnapshotFollower
from nmrn.training.contract import Recommender

log = logging.getLogger("nmrn.serving")

CONFIG_VARIABLE = "NMRN_READER_CONFIG"
#: Writes and the writer's status, forwarded to the writer: (method, path).
FORWARDED = {("POST", "/events"), ("POST", "/checkpoint"), ("GET", "/status.json")}
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
               b"proxy-connection", b"host", b"content-length", b"date", b"server"}


class SnapshotService(ReadPath):
    """What the HTTP routes read on a reader: the model of the loaded snapshot, swapped whole.

    It offers the read side of :class:`~nmrn.serving.service.LiveService` (``recommend``,
    ``try_recommend``, ``notify_when_free``, ``model``, the progress fields ``/healthz`` and
    ``/metrics`` show, ``count_error``); writes never reach it (the reader forwards them), and
    calling one raises :class:`~nmrn.serving.service.ServiceUnavailable`. One lock covers a read
    and the swap to a new model (models may fill caches while scoring).
    """

    def __init__(self, follower: SnapshotFollower, model: Recommender, manifest: Manifest
                 ) -> None:
        self.follower = follower
        self.model = model
        self.manifest = manifest
        self.quality = None
        self.replayed = 0
        self.parent_alive = True
        self._init_reads()
        # seconds from a snapshot's state being taken to this reader serving it
        self.lag_seconds: deque[float] = deque(maxlen=256)
        self.metrics = ServiceMetrics(self)
        self.metrics.registry.register(_SnapshotCollector(self))

    # -- progress, as LiveService offers it ---------------------------------------------------
    @property
    def applied_seq(self) -> int:
        return self.manifest.seq

    accepted_seq = applied_seq
    checkpoint_seq = applied_seq
    pending = 0

    @property
    def writer_alive(self) -> bool:
        """Whether this reader can serve: its parent, the writer, is running."""
        return self.parent_alive

    def count_error(self, kind: str) -> None:
        self.metrics.errors.labels(kind=kind).inc()

    def status(self) -> dict[str, Any]:  # forwarded to the writer; kept for completeness
        return {"model": self.model.preset or type(self.model).__name__,
                "snapshot_seq": self.manifest.seq}

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise ServiceUnavailable("a reader does not take writes; send them to the writer")

    submit_once = checkpoint = submit

    # -- the snapshot ---------------------------------------------------------------------------
    def swap(self, model: Recommender, manifest: Manifest) -> None:
        """Serve ``model`` (the snapshot ``manifest`` names) from now on; it keeps the current
        model's retrieval index where it can (compared outside the lock, moved under it)."""
        try:
            handover = model._retrieval_handover(self.model)
        except Exception:  # noqa: BLE001 - the new model then builds its own index
            log.exception("keeping the retrieval index failed")
            handover = None
        self._model_lock.acquire()
        try:
            if handover is not None:
                handover()
            self.model, self.manifest = model, manifest
        finally:
            self._release_model()
        self.lag_seconds.append(max(0.0, time.time() - manifest.taken_at))

    def age(self) -> float:
        """Seconds since the writer's state was last known to equal this snapshot."""
        manifest = self.follower.manifest or self.manifest
        return max(0.0, time.time() - manifest.as_of)


class _SnapshotCollector:
    """The reader's snapshot: its sequence number, age, load time, refusals."""

    def __init__(self, service: SnapshotService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s, f = self.service, self.service.follower
        yield GaugeMetricFamily("nmrn_snapshot_seq", "Last event held by the snapshot this "
                                "reader serves.", s.manifest.seq)
        yield GaugeMetricFamily("nmrn_snapshot_age_seconds", "Seconds since the writer's state "
                                "was last known to equal the snapshot served.", s.age())
        yield GaugeMetricFamily("nmrn_snapshot_load_seconds", "Verification and load of the "
                                "last snapshot loaded.", f.load_seconds)
        yield GaugeMetricFamily("nmrn_snapshot_load_bytes", "Bytes of arrays the last load "
                                "read from files (incremental: the blocks it did not hold).",
                                f.last_read_bytes)
        lags = sorted(s.lag_seconds)
        worst = lags[-1] if lags else math.nan
        yield GaugeMetricFamily("nmrn_snapshot_lag_max_seconds", "Most seconds, over the last "
                                "256 loads, from a snapshot's state being taken to this reader "
                                "serving it (publication + poll + load).", worst)
        yield CounterMetricFamily("nmrn_snapshot_loads", "Snapshots loaded.", f.loads)
        yield CounterMetricFamily("nmrn_snapshot_refused", "Snapshots refused (bad manifest, "
                                  "size, hash or checkpoint).", f.refused)


class ReaderApp:
    """The reader's ASGI app: forwards :data:`FORWARDED` requests to the writer, serves the
    rest with the single process's app, and stamps each answer with the snapshot's age."""

    def __init__(self, service: SnapshotService, app: Any, writer_url: str) -> None:
        import httpx

        self.service = service
        self.app = app
        self.state = app.state
        self.writer_url = writer_url.rstrip("/")
        limits = app.state.limits
        self._client: httpx.AsyncClient | None = None
        self._timeout = httpx.Timeout(limits.body_seconds + 150.0)  # a checkpoint may be slow

    def _stamp(self, send: Any) -> Any:
        service = self.service

        async def stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-snapshot-age", f"{service.age():.4f}".encode()))
                headers.append((b"x-snapshot-seq", str(service.manifest.seq).encode()))
                message = dict(message, headers=headers)
            await send(message)

        return stamped

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] == "http" and (scope["method"], scope["path"]) in FORWARDED:
            await self._forward(scope, receive, self._stamp(send))
            return
        await self.app(scope, receive, self._stamp(send) if scope["type"] == "http" else send)

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        import httpx

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = httpx.AsyncClient(
                    timeout=self._timeout, limits=httpx.Limits(max_connections=64))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.requests import Request

        from nmrn.serving.routes import read_body, refusal

        state = self.app.state
        request = Request(scope, receive)
        body = b""
        try:
            if scope["method"] == "POST":
                # the same checks as the writer's, before anything is forwarded
                state.access.check_write(request.headers.get("authorization"))
                if scope["path"] == "/events":
                    body = bytes(await read_body(request, state.limits))
            assert self._client is not None
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
            path = scope["path"] + (("?" + scope["query_string"].decode("latin-1"))
                                    if scope["query_string"] else "")
            try:
                answer = await self._client.request(
                    scope["method"], self.writer_url + path, headers=headers, content=body)
            except Exception as err:  # noqa: BLE001 - the writer is away: the client retries
                raise ServiceUnavailable(
                    f"writer: not reachable ({type(err).__name__}); retry later") from None
            status, payload = answer.status_code, answer.content
            out = [(k, v) for k, v in answer.headers.raw if k.lower() not in _HOP_BY_HOP]
        except Exception as err:  # noqa: BLE001 - never a stack trace to the client
            status, refused, extra = refusal(self.service, err)  # type: ignore[arg-type]
            payload = json.dumps(refused, ensure_ascii=False, separators=(",", ":")).encode()
            out = [(b"content-type", b"application/json")]
            out += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        out.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})


def _poll(service: SnapshotService, follower: SnapshotFollower, every: float, parent: int,
          stop: threading.Event) -> None:
    """The reader's poller thread: new snapshots in, and a stop when the writer is gone."""
    while not stop.wait(every):
        if os.getppid() != parent:
            log.error("the writer (pid %d) is gone; this reader stops", parent)
            service.parent_alive = False
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful stop
            return
        try:
            found = follower.poll()
        except Exception:  # noqa: BLE001 - a poll must never stop the reader
            log.exception("snapshot poll failed")
            continue
        if found is not None:
            old = service.model
            service.swap(*found)
            del old
            # the new model's objects, as the single process does after loading; collected
            # first: garbage in reference cycles (left by requests, by the load) would be
            # frozen with them, never to be freed, and a reader grew with every swap
            gc.collect()
            gc.freeze()


def reuseport_socket(host: str, port: int, *, listen: bool, backlog: int = 2048
                     ) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (listening if ``listen``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(backlog)
        sock.set_inheritable(True)
    return sock


def main() -> int:
    """The reader process (started by the writer; see the module's docstring)."""
    import uvicorn

    from nmrn.serving.app import create_app
    from nmrn.serving.schemas import Limits

    raw = os.environ.get(CONFIG_VARIABLE)
    if not raw:
        raise ConfigError(f"${CONFIG_VARIABLE} is not set: readers are started by nmrn serve "
                          "--workers N")
    cfg = json.loads(raw)
    logging.basicConfig(level=getattr(logging, cfg["log_level"].upper(), logging.INFO),
                        format=f"reader {os.getpid()}: %(levelname)s %(message)s")
    sys.setswitchinterval(cfg["switch_interval"])
    follower = SnapshotFollower(Path(cfg["snapshot_dir"]))
    deadline = time.monotonic() + cfg.get("start_timeout", 120.0)
    found = None
    while found is None:
        found = follower.poll()
        if found is None:
            if time.monotonic() > deadline or os.getppid() != cfg["parent"]:
                log.error("no snapshot to serve in %s", cfg["snapshot_dir"])
                return 1
            time.sleep(0.01)
    service = SnapshotService(follower, *found)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(cfg["torch_threads"])
    limits = Limits(**cfg["limits"])
    app = create_app(service,  # type: ignore[arg-type]
                     token=os.environ.get("NMRN_TOKEN") or None,
                     read_token=os.environ.get("NMRN_READ_TOKEN") or None, limits=limits)
    asgi = ReaderApp(service, app, cfg["writer_url"])
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    poller = threading.Thread(target=_poll, name="nmrn-snapshot-poll", daemon=True,
                              args=(service, follower, cfg["poll_seconds"], cfg["parent"], stop))
    poller.start()
    http: Any = cfg["http"]
    if http in ("auto", "httptools"):
        import importlib.util

        if importlib.util.find_spec("httptools") is not None:
            from nmrn.serving.protocol import bounded_protocol

            http = bounded_protocol(max_header_bytes=cfg["max_header_bytes"],
                                    request_timeout=cfg["request_timeout"])
    sock = reuseport_socket(cfg["host"], cfg["port"], listen=True)
    config = uvicorn.Config(
        asgi, log_level=cfg["log_level"], lifespan="on", loop=cfg["loop"], http=http,
        limit_concurrency=cfg["max_connections"], timeout_keep_alive=cfg["keep_alive"],
        h11_max_incomplete_event_size=cfg["max_header_bytes"], access_log=False,
        timeout_graceful_shutdown=10, proxy_headers=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
