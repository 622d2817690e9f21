"""The fast paths of the service: group commit in the journal, reads on the event loop, and the
framework-free ``GET /recommendations/{user}``. None of them may weaken a guarantee: an event
is durable before it is acknowledged and before a read can see it, and the fast read answers
exactly what the FastAPI route answers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nmrn.baselines.popularity import Popularity
from nmrn.serving.journal import Journal, JournalError
from nmrn.serving.service import LiveService, ServiceUnavailable

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from nmrn.serving.app import create_app  # noqa: E402

HISTORY = [(196, "a", 0), (196, "b", 1), ("u1", "a", 2), (5, "a", 3), (5, "b", 4), (5, "c", 5)]


class SlowFsync:
    """``os.fsync`` stand-in that records how much of the file each call covered."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        self.covered: list[int] = []  # file size (bytes) when each fsync started
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, fd: int) -> None:
        self.covered.append(os.fstat(fd).st_size)
        self.gate.wait(10)
        time.sleep(self.seconds)


# -- group commit ------------------------------------------------------------------------------
def test_concurrent_appends_share_fsyncs_and_each_returns_only_when_covered(
    tmp_path: Path, monkeypatch: Any
) -> None:
    path = tmp_path / "j"
    journal = Journal(path)
    fake = SlowFsync(path, seconds=0.02)
    monkeypatch.setattr(os, "fsync", fake)
    done: dict[int, tuple[int, int, int]] = {}  # thread -> (first, last, fsyncs before return)

    def client(n: int) -> None:
        first, last = journal.append([(n, "i", float(n))])
        # when append returns, an fsync that started after this line was written has finished
        done[n] = (first, last, len(fake.covered))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(first for first, _, _ in done.values()) == list(range(1, 17))
    assert 1 <= journal.syncs == len(fake.covered) < 16  # shared: fewer fsyncs than appends
    assert journal.durable_seq == 16
    lines = path.read_bytes().splitlines(keepends=True)
    ends = {}  # seq -> byte offset where its line ends
    offset = 0
    for line in lines:
        offset += len(line)
        ends[int(line.split(b'"seq":')[1].split(b",")[0])] = offset
    for first, _, n_syncs in done.values():
        assert any(size >= ends[first] for size in fake.covered[:n_syncs])


def test_write_is_not_durable_until_sync(tmp_path: Path, monkeypatch: Any) -> None:
    journal = Journal(tmp_path / "j")
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    assert journal.write([(1, "a", 0.0), (2, "b", 1.0)]) == (1, 2)
    assert journal.durable_seq == 0 and calls == []
    journal.sync(1)
    assert journal.durable_seq == 2 and len(calls) == 1  # one fsync covers all written
    journal.sync(2)
    assert len(calls) == 1  # already durable: no second fsync


def test_a_failed_fsync_refuses_the_request_and_every_later_write(
    tmp_path: Path, monkeypatch: Any
) -> None:
    journal = Journal(tmp_path / "j")
    journal.append([(1, "a", 0.0)])

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(JournalError, match="could not fsync"):
        journal.append([(2, "b", 1.0)])
    assert journal.failed and journal.durable_seq == 1
    monkeypatch.undo()
    with pytest.raises(JournalError, match="takes no more events"):
        journal.append([(3, "c", 2.0)])


def test_the_service_applies_nothing_before_it_is_durable_and_answers_503_on_failure(
    tmp_path: Path, monkeypatch: Any
) -> None:
    model = Popularity().fit(HISTORY)
    svc = LiveService(model, journal_path=tmp_path / "j", checkpoint_every=None,
                      checkpoint_seconds=None)
    try:
        fake = SlowFsync(tmp_path / "j", seconds=0.0)
        fake.gate.clear()  # the fsync blocks until the gate opens
        monkeypatch.setattr(os, "fsync", fake)
        result: list[Any] = []
        th = threading.Thread(target=lambda: result.append(svc.submit([(9, "new", 9.0)])))
        th.start()
        deadline = time.monotonic() + 10
        while not fake.covered and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # the writer had every chance to apply it
        assert svc.applied_seq == 0 and "new" not in model.items and not result
        fake.gate.set()
        th.join(10)
        assert result == [(1, 1)] and svc.wait_applied(1) and "new" in model.items

        def broken(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(ServiceUnavailable, match="could not fsync"):
            svc.submit([(9, "lost", 10.0)])
        with pytest.raises(ServiceUnavailable, match="takes no more events"):
            svc.submit([(9, "lost", 11.0)])
        time.sleep(0.05)
        assert "lost" not in model.items and svc.pending == 0  # never acknowledged, dropped
        assert svc.writer_alive
    finally:
        monkeypatch.undo()
        svc.close(checkpoint=False)


# -- reads -------------------------------------------------------------------------------------
def test_try_recommend_never_waits_for_the_writer() -> None:
    with LiveService(Popularity().fit(HISTORY)) as svc:
        users, recs = svc.try_recommend([196], k=1)  # type: ignore[misc]
        assert users == [196] and recs.items.tolist() == [["c"]]
        with svc._model_lock:  # the writer inside a batch
            t0 = time.perf_counter()
            assert svc.try_recommend([196], k=1) is None
            assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("url", [
    "/recommendations/196?k=2", "/recommendations/196", "/recommendations/196?exclude_seen=0",
    "/recommendations/stranger?k=3&k=1", "/recommendations/u1?k=0", "/recommendations/u1?k=x",
    "/recommendations/u1?top=3", "/recommendations/" + "x" * 300, "/recommendations/a%20b",
    "/recommendations/", "/recommendations/a/b", "/recommendations/196/",
])
def test_the_fast_read_answers_exactly_as_the_fastapi_route(url: str) -> None:
    with LiveService(Popularity().fit(HISTORY)) as svc:
        fast = TestClient(create_app(svc))
        slow = TestClient(create_app(svc).app)  # the FastAPI application alone
        a = fast.get(url, follow_redirects=False)
        b = slow.get(url, follow_redirects=False)
        assert (a.status_code, a.content, a.headers.get("content-type")) == (
            b.status_code, b.content, b.headers.get("content-type"))


def test_fast_read_refusals_are_counted(tmp_path: Path) -> None:
    with LiveService(Popularity().fit(HISTORY)) as svc:
        client = TestClient(create_app(svc))
        assert client.get("/recommendations/196?k=0").status_code == 422
        assert client.get("/recommendations/196?k=1").json()["items"] == ["c"]
        assert svc.errors == {"invalid": 1}
        reads = svc.metrics.recommend_seconds.collect()[0].samples
        assert next(x.value for x in reads if x.name == "nmrn_recommend_seconds_count") == 1


class GatedPopularity(Popularity):
    """Popularity whose ``learn`` blocks until ``gate`` opens: a writer stuck inside a batch."""

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()

    def _learn(self, users: Any, items: Any, timestamps: Any, weights: Any) -> None:
        self.inside.set()
        assert self.gate.wait(10)


def test_a_read_during_a_batch_waits_for_it_while_the_loop_keeps_serving() -> None:
    model = GatedPopularity().fit(HISTORY)
    # one event loop for every request (a TestClient outside `with` starts one per request)
    with LiveService(model) as svc, TestClient(create_app(svc)) as client:
        model.gate.clear()
        svc.submit([(7, "b", 6.0), (8, "b", 7.0)])  # "b" becomes the most popular item
        assert model.inside.wait(10)  # the writer is inside the batch, holding the model
        answers: list[Any] = []
        reader = threading.Thread(
            target=lambda: answers.append(client.get("/recommendations/u1?k=1").json())
        )
        reader.start()
        time.sleep(0.2)
        assert not answers  # the read waits for the batch ...
        health = client.get("/healthz").json()  # ... while the event loop still answers
        assert health["applied_seq"] == 0 and health["accepted_seq"] == 2
        model.gate.set()
        reader.join(10)
        # it saw the state after the whole batch: "b" has 4 events, "c" 1 ("a" is seen by u1)
        assert answers == [{"user": "u1", "items": ["b"], "scores": [4.0], "cold": False}]


def test_a_missed_wake_up_costs_a_retry_not_a_hung_read(monkeypatch: Any) -> None:
    with LiveService(Popularity().fit(HISTORY)) as svc:
        client = TestClient(create_app(svc))
        svc._model_lock.acquire()  # held, and released below without waking anyone
        monkeypatch.setattr(svc, "notify_when_free", lambda callback: True)
        timer = threading.Timer(0.1, svc._model_lock.release)
        timer.start()
        t0 = time.perf_counter()
        assert client.get("/recommendations/196?k=1").json()["items"] == ["c"]
        assert time.perf_counter() - t0 < 5
        timer.join()


def test_notify_when_free_never_misses_a_release() -> None:
    with LiveService(Popularity().fit(HISTORY)) as svc:
        assert svc.notify_when_free(lambda: None) is False  # free now: nothing registered
        woken: list[int] = []
        for n in range(200):  # registration racing a release in another thread
            svc._model_lock.acquire()
            releaser = threading.Thread(target=svc._release_model)
            releaser.start()
            registered = svc.notify_when_free(lambda n=n: woken.append(n))
            releaser.join()
            # either the lock was already free (retry at once) or the release woke us
            assert (not registered) or woken[-1:] == [n]


def test_reads_go_on_while_a_checkpoint_is_written(tmp_path: Path, monkeypatch: Any) -> None:
    import nmrn.serving.service as service_module

    writing, gate = threading.Event(), threading.Event()
    real_write = service_module.write_checkpoint

    def slow_write(*args: Any) -> Any:
        writing.set()
        assert gate.wait(10)
        return real_write(*args)

    monkeypatch.setattr(service_module, "write_checkpoint", slow_write)
    with LiveService(Popularity().fit(HISTORY), checkpoint_path=tmp_path / "ck",
                     checkpoint_every=None, checkpoint_seconds=None) as svc:
        done: list[Any] = []
        th = threading.Thread(target=lambda: done.append(svc.checkpoint()))
        th.start()
        assert writing.wait(10)
        found = svc.try_recommend([196], k=1)  # the model is free while the disk is written
        assert found is not None and found[1].items.tolist() == [["c"]]
        gate.set()
        th.join(10)
        assert done and done[0]["seq"] == 0 and (tmp_path / "ck" / "meta.json").exists()


def test_cancelling_one_waiting_read_leaves_the_others_waiting(monkeypatch: Any) -> None:
    import asyncio

    import nmrn.serving.routes as routes_module

    monkeypatch.setattr(routes_module, "WAKE_TIMEOUT", 60.0)  # both reads await the same wake-up
    model = GatedPopularity().fit(HISTORY)
    with LiveService(model) as svc:
        app = create_app(svc)

        async def get(path: str) -> tuple[int, bytes]:
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "GET", "path": path, "query_string": b"k=1",
                     "headers": [], "root_path": ""}
            await app(scope, receive, send)
            return sent[0]["status"], sent[1]["body"]

        async def scenario() -> tuple[int, bytes]:
            model.gate.clear()
            svc.submit([(7, "b", 6.0), (8, "b", 7.0)])
            while not model.inside.is_set():
                await asyncio.sleep(0.01)
            first = asyncio.create_task(get("/recommendations/u1"))
            second = asyncio.create_task(get("/recommendations/u1"))
            await asyncio.sleep(0.1)
            assert not first.done() and not second.done()  # both wait for the run
            first.cancel()
            await asyncio.sleep(0.05)
            model.gate.set()
            return await asyncio.wait_for(second, 10)

        status, body = asyncio.run(scenario())
        assert status == 200 and b'"items":["b"]' in body
