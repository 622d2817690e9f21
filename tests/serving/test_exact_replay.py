"""Exact replay after SIGKILL, for every model: the journal's run markers make the replay repeat
the writer's learn calls, so the state after a crash and a restart is the state the runs the
journal records produce, whatever the model (NMRN and BPR take one gradient step per
mini-batch, so their state depends on how events were grouped).

A real ``nmrn serve`` process takes requests from several client threads (so that the writer
merges them into runs), is killed with SIGKILL at a seeded point, restarted (journal replay) and
sent the rest; requests whose answer was lost in the kill are retried with their idempotency
key. The final checkpoint must equal, array for array, the base model with the journal's runs
applied in order, offline; and every event must be applied exactly once.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from live_server import free_port, start_server

import nmrn.models  # noqa: F401  (every shipped model registered)
from nmrn.data.events import EventBatch
from nmrn.io import read_checkpoint
from nmrn.models import load_model
from nmrn.serving.journal import Journal
from nmrn.serving.service import default_journal_path
from nmrn.training.registry import registered_models

TOKEN = "replay"
MODELS = sorted(n for n, c in registered_models().items() if c.__module__.startswith("nmrn."))


def _log(n: int, seed: int) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 12, n)
    items = (users % 3) * 7 + rng.integers(0, 9, n)  # some structure, some new items later
    return [(int(u), int(i), float(t)) for t, (u, i) in enumerate(zip(users, items, strict=True))]


def _start(ckpt: Path, port: int) -> subprocess.Popen[bytes]:
    return start_server(ckpt, port, "--checkpoint-every", "0", "--checkpoint-seconds", "0",
                        "--apply-wait", "0.02", "--apply-batch", "16", "--log-level", "warning",
                        env={"NMRN_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}, timeout=60)


def _send(base: str, requests: list[tuple[str, list[tuple[Any, ...]]]], answered: set[str],
          threads: int = 3) -> None:
    """Post the requests from several threads; an answer lost to a kill is simply missing."""
    todo = list(requests)
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=5) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    key, events = todo.pop(0)
                body = {"events": [{"user": u, "item": i, "timestamp": t} for u, i, t in events]}
                try:
                    r = client.post(f"{base}/events", json=body, headers={
                        "Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key})
                except httpx.TransportError:
                    continue
                if r.status_code == 202:
                    with lock:
                        answered.add(key)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)


@pytest.mark.parametrize("model_name", MODELS)
def test_replay_after_sigkill_reproduces_the_recorded_runs(model_name: str, tmp_path: Path) -> None:
    cls = registered_models()[model_name]
    params = next(iter(cls._unit_test_params().values()))
    history, stream = _log(120, 0), _log(200, 1)
    stream = [(u, i, t + 1000.0) for u, i, t in stream]
    base, ckpt = tmp_path / "base.ckpt", tmp_path / "model.ckpt"
    cls(**params).fit(history).save(base)
    shutil.copytree(base, ckpt)
    rng = random.Random(model_name)
    requests, at = [], 0
    while at < len(stream):
        n = rng.randint(1, 5)
        requests.append((f"r{len(requests)}", stream[at : at + n]))
        at += n
    kill_after = rng.randint(len(requests) // 4, len(requests) // 2)
    answered: set[str] = set()

    port = free_port()
    proc = _start(ckpt, port)
    try:
        _send(f"http://127.0.0.1:{port}", requests[:kill_after], answered)
        proc.send_signal(signal.SIGKILL)  # mid-stream: runs may be half applied
        proc.wait(10)
        port = free_port()
        proc = _start(ckpt, port)  # replays the journal
        _send(f"http://127.0.0.1:{port}", requests, answered)  # everything, keyed: retries
        assert answered == {key for key, _ in requests}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            if health["apply_lag"] == 0:
                break
            time.sleep(0.05)
        journal = default_journal_path(ckpt).read_bytes()  # every run, before the final rotation
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    # exactly once: the final checkpoint holds every event of the stream once
    served = load_model(ckpt)
    assert served.n_events == len(history) + len(stream)
    # the reference: the base model with the journal's runs applied, in order, offline
    copy = tmp_path / "journal.copy"
    copy.write_bytes(journal)
    replayed_journal = Journal(copy)
    rows = [row for entry in replayed_journal.entries() for row in entry.events]
    runs = list(replayed_journal.runs())
    replayed_journal.close()
    assert runs and [r.first for r in runs] == [1] + [r.last + 1 for r in runs[:-1]]
    assert runs[-1].last == len(rows) == len(stream)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs (serve --torch-threads 1): same rounding
    try:
        reference = load_model(base)  # the very model the server started from
        for run in runs:
            part = rows[run.first - 1 : run.last]
            reference.learn(EventBatch(
                np.array([r[0] for r in part]), np.array([r[1] for r in part]),
                np.array([r[2] for r in part], dtype=np.float64), None))
    finally:
        torch.set_num_threads(threads)
    got_meta, got = read_checkpoint(ckpt)
    want_meta, want = read_checkpoint(reference.save(tmp_path / "reference.ckpt"))
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{model_name}: {name}")
    assert got_meta["model_meta"] == want_meta["model_meta"]
    assert len(runs) < len(requests)  # the writer did merge requests into runs
