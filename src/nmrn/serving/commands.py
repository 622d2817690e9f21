"""``nmrn serve``: run a checkpoint live over HTTP (argument parsing and wiring only).

::

    nmrn serve --checkpoint model.ckpt --port 8000 --token "$NMRN_TOKEN"

The service loads the checkpoint, replays the journal (``<checkpoint>.journal`` by default)
past the checkpoint's sequence number, and serves until SIGTERM or SIGINT, which stop the
server gracefully: queued events are applied and a final checkpoint is written.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nmrn.argtypes import (
    int_at_least,
    non_negative_number,
    non_negative_seconds,
    port,
    positive_seconds,
)
from nmrn.errors import ConfigError

log = logging.getLogger("nmrn.serving")


def add_serve_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to an ``argparse`` sub-parsers object; returns it."""
    p = subparsers.add_parser("serve", help="serve a checkpoint live over HTTP")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="checkpoint directory to serve (and to write checkpoints to)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=port, default=8000,
                   help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--token", default=None,
                   help="bearer token required for writes (default: $NMRN_TOKEN; none: open)")
    p.add_argument("--read-token", default=None,
                   help="bearer token required for reads of recommendations and the API schema "
                   "(needs --token; the write token also reads; default: $NMRN_READ_TOKEN; "
                   "none: open, and open reads reveal what users consumed)")
    p.add_argument("--journal", type=Path, default=None,
                   help="journal file (default: <checkpoint>.journal)")
    p.add_argument("--checkpoint-every", type=int_at_least(0), default=10_000, metavar="N",
                   help="checkpoint after N applied events (0: never; default %(default)s)")
    p.add_argument("--checkpoint-seconds", type=non_negative_seconds, default=60.0, metavar="S",
                   help="checkpoint every S seconds if events arrived (0: never; default "
                   "%(default)s)")
    p.add_argument("--apply-batch", type=int_at_least(1), default=256, metavar="N",
                   help="most events per learn call (bounds how long a read waits)")
    p.add_argument("--apply-wait", type=non_negative_seconds, default=0.05, metavar="S",
                   help="wait up to S seconds to gather more events into one learn call "
                   "(0: apply at once; default %(default)s)")
    p.add_argument("--max-batch", type=int_at_least(1), default=10_000, metavar="N",
                   help="most events per POST /events (default %(default)s)")
    p.add_argument("--max-body-bytes", type=int_at_least(1), default=1_048_576, metavar="N",
                   help="largest request body; larger ones get 413 (default %(default)s)")
    p.add_argument("--max-k", type=int_at_least(1), default=1_000, metavar="N",
                   help="largest k a read may ask for (default %(default)s)")
    p.add_argument("--max-work", type=int_at_least(1), default=20_000, metavar="N",
                   help="most users x k in one read; more is a 413 (default %(default)s)")
    p.add_argument("--max-users", type=int_at_least(1), default=1_000, metavar="N",
                   help="most users per POST /recommendations (default %(default)s)")
    p.add_argument("--max-connections", type=int_at_least(1), default=1000, metavar="N",
                   help="most open connections; more are answered 503 (default %(default)s)")
    p.add_argument("--max-header-bytes", type=int_at_least(1024), default=32_768, metavar="N",
                   help="largest request line plus headers; larger ones get 431 (default "
                   "%(default)s)")
    p.add_argument("--request-timeout", type=positive_seconds, default=10.0, metavar="S",
                   help="a connection that sends no request, or a request whose headers do not "
                   "arrive, within S seconds is answered 408 and closed (default %(default)s)")
    p.add_argument("--body-timeout", type=positive_seconds, default=30.0, metavar="S",
                   help="a request body that has not arrived within S seconds is answered 408 "
                   "(default %(default)s)")
    p.add_argument("--keep-alive", type=positive_seconds, default=5.0, metavar="S",
                   help="an idle kept-alive connection is closed after S seconds (default "
                   "%(default)s)")
    p.add_argument("--max-pending", type=int_at_least(1), default=1_000_000, metavar="N",
                   help="most accepted-but-unapplied events before ingest answers 503")
    p.add_argument("--live-quality", type=non_negative_number, default=10.0, metavar="N",
                   help="incoming events per second (on average) ranked against what their "
                   "users would have been recommended just before (the status page's and "
                   "/metrics' live Hits@10 and NDCG@10); each costs a read under the model "
                   "lock; 0: off (default %(default)s)")
    p.add_argument("--no-fsync", action="store_true",
                   help="do not fsync the journal per request (loses events on a machine crash)")
    p.add_argument("--torch-threads", type=int_at_least(1), default=1, metavar="N",
                   help="threads torch may use for one operation (NMRN, BPR; default "
                   "%(default)s: the event loop and the writer need the other cores)")
    p.add_argument("--switch-interval", type=positive_seconds, default=0.0005, metavar="S",
                   help="Python's thread switch interval while serving (default %(default)s s; "
                   "Python's own is 0.005)")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="event loop (auto: uvloop when installed)")
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                   help="HTTP/1.1 parser (auto: httptools when installed)")
    p.add_argument("--workers", type=int_at_least(0), default=0, metavar="N",
                   help="reader processes answering reads from a published snapshot, sharing "
                   "the port (0: one process does everything; default %(default)s; "
                   "docs/serving.md#9-reader-processes)")
    p.add_argument("--publish-every", type=positive_seconds, default=0.05, metavar="S",
                   help="with --workers: publish a snapshot every S seconds when the model "
                   "changed (default %(default)s)")
    p.add_argument("--snapshot-mode", default="incremental", choices=["incremental", "full"],
                   help="with --workers: incremental (a version holds the blocks of the arrays "
                   "that changed, readers patch what they hold) or full (each version is a "
                   "whole checkpoint); default %(default)s")
    p.add_argument("--snapshot-dir", type=Path, default=None,
                   help="with --workers: where snapshots are published (default: under "
                   "/dev/shm, else <checkpoint>.snapshots)")
    p.add_argument("--poll-every", type=positive_seconds, default=0.005, metavar="S",
                   help="with --workers: how often readers look for a new snapshot (default "
                   "%(default)s)")
    p.add_argument("--writer-port", type=port, default=0,
                   help="with --workers: the writer's private loopback port, where readers "
                   "forward writes (default: a free one)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="the HTTP server's log level (default: %(default)s)")
    return p


def _token(given: str | None, option: str, variable: str, what: str) -> str | None:
    """The token from ``option`` or else ``$variable``; an empty one is refused, never taken as
    "no token" (that would silently open ``what``)."""
    token = given if given is not None else os.environ.get(variable)
    if token is not None and not token.strip():
        where = option if given is not None else variable
        raise ConfigError(f"{where} is empty; give a token or unset it ({what} are then open)")
    return token


def build_app_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(service, app)`` from parsed ``serve`` arguments (no server started)."""
    from nmrn.serving.app import create_app
    from nmrn.serving.schemas import Limits
    from nmrn.serving.service import LiveService

    token = _token(args.token, "--token", "NMRN_TOKEN", "writes")
    read_token = _token(args.read_token, "--read-token", "NMRN_READ_TOKEN", "reads")
    args.resolved_token, args.resolved_read_token = token, read_token  # for reader processes
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_events=args.max_batch,
        max_users=args.max_users,
        max_k=args.max_k,
        max_work=args.max_work,
        body_seconds=args.body_timeout,
    )
    service = LiveService.open(
        args.checkpoint,
        journal=args.journal,
        checkpoint_every=args.checkpoint_every or None,
        checkpoint_seconds=args.checkpoint_seconds or None,
        apply_batch=args.apply_batch,
        apply_wait=args.apply_wait,
        max_pending=args.max_pending,
        fsync=not args.no_fsync,
        live_quality=args.live_quality,
    )
    try:
        app = create_app(service, token=token, read_token=read_token, limits=limits,
                         close_on_shutdown=True)
    except BaseException:
        service.close(checkpoint=False)
        raise
    return service, app


def run_serve(args: argparse.Namespace) -> int:
    """Run ``nmrn serve`` until SIGTERM/SIGINT; returns the exit status (0 after a clean stop).

    Errors a user can cause (a bad checkpoint, a damaged journal, a bad option) propagate as
    :class:`~nmrn.errors.NMRNError` for the CLI to report in one line.
    """
    import uvicorn

    # The writer thread and the event loop share the GIL. With Python's default switch interval
    # (5 ms) the writer, holding the model lock, waits up to 5 ms for the GIL each time numpy or
    # torch hands it back, and every read waits with it; a short interval keeps a batch short
    # (docs/serving.md#8-performance has the measurements).
    sys.setswitchinterval(args.switch_interval)
    service, app = build_app_from_args(args)
    if "torch" in sys.modules:  # the checkpoint's model uses torch
        # One thread per op: the ops of one read or one small batch are too small to gain
        # from more, and extra threads compete with the event loop for the same cores.
        sys.modules["torch"].set_num_threads(args.torch_threads)
    # The model's ids and tables live as long as the process: keep the cyclic garbage
    # collector from walking them on every full collection (a pause of milliseconds to tens
    # of milliseconds per collection on a 100k-item catalogue, seen in the read p99).
    gc.collect()
    gc.freeze()
    if service.replayed:
        log.warning("replayed %d journalled events after an unclean stop", service.replayed)
    http: Any = args.http
    if args.http in ("auto", "httptools") and importlib.util.find_spec("httptools") is not None:
        from nmrn.serving.protocol import bounded_protocol

        http = bounded_protocol(max_header_bytes=args.max_header_bytes,
                                request_timeout=args.request_timeout)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
        loop=args.loop, http=http, limit_concurrency=args.max_connections,
        timeout_keep_alive=args.keep_alive,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=args.max_header_bytes,  # the h11 parser's own bound
        access_log=False, timeout_graceful_shutdown=10,
        # the service never uses client addresses: no X-Forwarded-* rewriting layer per request
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    if args.workers:
        return _run_with_readers(args, service, server)
    # uvicorn re-raises the signal that stopped it once it is done; a handler that only records
    # it keeps the process alive for the return below (the lifespan has already checkpointed).
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind the address
        raise ConfigError(
            f"could not start the server on {args.host}:{args.port} (see the log above)"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        service.close()  # no-op after the lifespan closed it; covers a failed start-up
    if not server.started:
        raise ConfigError(f"could not start the server on {args.host}:{args.port}")
    log.info("stopped after signal(s) %s; last checkpoint at event %d", received,
             service.checkpoint_seq)
    return 0


def _reader_config(args: argparse.Namespace, port: int, writer_port: int,
                   snapshot_dir: Path) -> dict[str, Any]:
    return {
        "host": args.host, "port": port, "writer_url": f"http://127.0.0.1:{writer_port}",
        "snapshot_dir": str(snapshot_dir), "poll_seconds": args.poll_every,
        "parent": os.getpid(), "log_level": args.log_level, "loop": args.loop,
        "http": args.http, "max_connections": args.max_connections,
        "keep_alive": args.keep_alive, "max_header_bytes": args.max_header_bytes,
        "request_timeout": args.request_timeout, "switch_interval": args.switch_interval,
        "torch_threads": args.torch_threads,
        "limits": {"max_body_bytes": args.max_body_bytes, "max_events": args.max_batch,
                   "max_users": args.max_users, "max_k": args.max_k, "max_work": args.max_work,
                   "body_seconds": args.body_timeout},
    }


class Readers:
    """The writer's reader processes: started, restarted when one exits, stopped by PID.

    A reader that exits while the writer runs (killed, crashed) is started again, at most once
    a second per slot (a reader that cannot start does not spin the writer)."""

    RESTART_SECONDS = 1.0

    def __init__(self, n: int, config: dict[str, Any], env: dict[str, str]) -> None:
        import threading

        self.n = n
        self.env = dict(env, NMRN_READER_CONFIG=json.dumps(config))
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.started_at = [0.0] * n
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="nmrn-readers", daemon=True)

    def _spawn(self, slot: int) -> None:
        self.procs[slot] = subprocess.Popen(
            [sys.executable, "-m", "nmrn.serving.reader"], env=self.env, close_fds=True)
        self.started_at[slot] = time.monotonic()
        log.info("reader %d started (pid %d)", slot, self.procs[slot].pid)  # type: ignore[union-attr]

    def start(self) -> Readers:
        for slot in range(self.n):
            self._spawn(slot)
        self._thread.start()
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for slot, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None:
                    continue
                if time.monotonic() - self.started_at[slot] < self.RESTART_SECONDS:
                    continue
                log.warning("reader %d (pid %d) exited with %s; starting it again", slot,
                            proc.pid, proc.returncode)
                self.restarts += 1
                if not self._stop.is_set():
                    self._spawn(slot)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each reader by its PID, then SIGKILL those still running after
        ``timeout`` seconds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _run_with_readers(args: argparse.Namespace, service: Any, server: Any) -> int:
    """``nmrn serve --workers N``: this process is the writer (journal, ingest, learn,
    checkpoints) on a private loopback port, publishes snapshots, and supervises N reader
    processes on the public port (docs/serving.md#9-reader-processes)."""
    from nmrn.serving.reader import reuseport_socket
    from nmrn.serving.snapshots import SnapshotPublisher, default_snapshot_dir

    # the public port stays ours while readers come and go: bound here, never listened on
    # (connections go to listening sockets only)
    try:
        public = reuseport_socket(args.host, args.port, listen=False)
        private = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        private.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        private.bind(("127.0.0.1", args.writer_port))
        private.listen(2048)
    except OSError as err:
        service.close()
        raise ConfigError(f"could not bind {args.host}:{args.port} or the writer's port "
                          f"{args.writer_port}: {err.strerror}") from None
    port = public.getsockname()[1]
    writer_port = private.getsockname()[1]
    snapshot_dir = args.snapshot_dir or default_snapshot_dir(args.checkpoint)
    publisher = SnapshotPublisher(service, snapshot_dir, publish_every=args.publish_every,
                                  mode=args.snapshot_mode).start()
    env = dict(os.environ)
    for variable, value in (("NMRN_TOKEN", args.resolved_token),
                            ("NMRN_READ_TOKEN", args.resolved_read_token)):
        env.pop(variable, None)
        if value is not None:
            env[variable] = value
    readers = Readers(args.workers, _reader_config(args, port, writer_port, snapshot_dir), env)
    service.metrics.registry.register(_ReaderCollector(readers))
    log.info("writer on 127.0.0.1:%d, %d readers on %s:%d, snapshots in %s", writer_port,
             args.workers, args.host, port, snapshot_dir)
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    readers.start()
    try:
        server.run(sockets=[private])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        readers.stop()
        publisher.close(remove=args.snapshot_dir is None)
        service.close()
        private.close()
        public.close()
    log.info("stopped after signal(s) %s; last checkpoint at event %d", received,
             service.checkpoint_seq)
    return 0


class _ReaderCollector:
    def __init__(self, readers: Readers) -> None:
        self.readers = readers

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("nmrn_readers_running", "Reader processes running.",
                                len(self.readers.pids()))
        yield CounterMetricFamily("nmrn_reader_restarts", "Reader processes started again "
                                  "after they exited.", self.readers.restarts)
