"""Bounded resources against a real server: silent and slow clients, huge headers, too many
connections, slow bodies, and reads too large or too many at once (issue 11: 3, 4, 5)."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from live_server import free_port, start_server, stop_server

from nmrn.baselines.popularity import Popularity
from nmrn.serving.app import create_app
from nmrn.serving.schemas import Limits
from nmrn.serving.service import LiveService

HISTORY = [(u, f"i{u % 7}", float(u)) for u in range(40)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("bounds")
    ckpt = tmp / "pop.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    port = free_port()
    proc = start_server(ckpt, port, "--request-timeout", "0.5", "--body-timeout", "0.5",
                        "--max-connections", "6", "--max-header-bytes", "4096",
                        "--log-level", "error")
    yield port
    stop_server(proc)


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def test_a_silent_connection_is_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        start = time.monotonic()
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 4


def test_headers_that_trickle_in_are_cut_off(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and never the end
        assert _read_all(sock).startswith(b"HTTP/1.1 408")


def test_a_huge_header_is_refused_without_being_read(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431") and b"more than 4096 bytes" in answer
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 414")
    assert httpx.get(f"http://127.0.0.1:{server}/healthz", timeout=5).status_code == 200


def test_a_slow_body_is_answered_408(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /recommendations HTTP/1.1\r\nHost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: 100\r\n\r\n{\"users\": [")
        answer = _read_all(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in answer


def test_connections_beyond_the_cap_are_answered_503(server: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", server)) for _ in range(6)]
    try:
        time.sleep(0.1)
        r = httpx.get(f"http://127.0.0.1:{server}/healthz", timeout=5)
        assert r.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"http://127.0.0.1:{server}/healthz", timeout=5).status_code == 200


def test_a_read_too_large_is_refused_and_large_reads_go_in_slices() -> None:
    model = Popularity().fit(HISTORY)
    with LiveService(model) as service:
        client = TestClient(create_app(service, limits=Limits(max_work=100, max_k=50)))
        r = client.post("/recommendations", json={"users": list(range(40)), "k": 5})
        assert r.status_code == 413 and "40 x 5 = 200 exceeds the limit of 100" in r.json()["error"]
        sizes: list[int] = []
        original = service.recommend

        def spy(users: Any, *args: Any, **kwargs: Any) -> Any:
            sizes.append(len(users))
            return original(users, *args, **kwargs)

        service.recommend = spy  # type: ignore[method-assign]
        r = client.post("/recommendations", json={"users": list(range(20)), "k": 5})
        assert r.status_code == 200 and [row["user"] for row in r.json()["results"]] == list(
            range(20))
        assert sizes == [8, 8, 4]  # the lock is free between slices: small reads get in
