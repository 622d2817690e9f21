"""Fixtures of the stream tests: a private redis-server, and a tiny order-sensitive model."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from live_server import free_port

from nmrn.training.contract import Recommender
from nmrn.training.registry import register

REDIS_SERVER = shutil.which("redis-server")
MISSING_REDIS = (
    "redis-server binary NOT FOUND on PATH: the Redis stream tests cannot run "
    "(install it: apt-get install redis-server)"
)


@register
class OrderModel(Recommender):
    """A model whose state depends on every event and on their order (and records its batches).

    ``w[i] <- 0.5 * w[i] + 1 + 0.001 * user_index + 1e-6 * timestamp`` per event, in order: an
    event lost, applied twice or reordered changes ``w``.
    """

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.w = np.zeros(0)
        self.batch_sizes: list[int] = []

    def _grow(self, n_users: int, n_items: int) -> None:
        if n_items > len(self.w):
            self.w = np.concatenate([self.w, np.zeros(n_items - len(self.w))])

    def _fit(self, users: Any, items: Any, timestamps: Any, weights: Any) -> None:
        self._learn(users, items, timestamps, weights)

    def _learn(self, users: Any, items: Any, timestamps: Any, weights: Any) -> None:
        self.batch_sizes.append(len(users))
        for u, i, t in zip(users.tolist(), items.tolist(), timestamps.tolist(), strict=True):
            self.w[i] = 0.5 * self.w[i] + 1.0 + 0.001 * u + 1e-6 * t

    def _score_all(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.w, (len(users), len(self.w)))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"w": self.w, "batch_sizes": np.asarray(self.batch_sizes, dtype=np.int64)}, {}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.w = arrays["w"].astype(np.float64)
        self.batch_sizes = arrays["batch_sizes"].tolist()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server started for this test session on a free loopback port."""
    if REDIS_SERVER is None:
        if os.environ.get("CI"):  # CI installs it: a missing server must fail, not skip
            pytest.fail(MISSING_REDIS)
        pytest.skip(MISSING_REDIS)
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    for _attempt in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        if proc.poll() is None:
            break
    else:  # pragma: no cover - five ports taken in a row
        pytest.fail("could not start redis-server on a free port")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server
