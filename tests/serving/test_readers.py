"""Reader processes over a published snapshot (``nmrn serve --workers N``).

The snapshot tests run the publisher and the follower in this process on a real
:class:`LiveService`; the others start a real writer with two readers on loopback and stop
everything by PID.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from live_server import free_port, start_server, stop_server  # noqa: E402

from nmrn.baselines.popularity import Popularity  # noqa: E402
from nmrn.io import ARRAYS_FILE, META_FILE  # noqa: E402
from nmrn.models import load_model  # noqa: E402
from nmrn.serving.schemas import recommendation_rows  # noqa: E402
from nmrn.serving.service import LiveService  # noqa: E402
from nmrn.serving.snapshots import (  # noqa: E402
    CURRENT,
    SnapshotFollower,
    SnapshotPublisher,
    read_manifest,
)

TOKEN = "w-token"
READ = "r-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HISTORY = [(196, "a", 0), (196, "b", 1), ("u1", "a", 2), (5, "a", 3), (5, "b", 4), (5, "c", 5)]


# -- snapshots, in process (full versions; incremental ones: test_incremental_snapshots.py) ------
@pytest.fixture
def published(tmp_path: Path) -> Any:
    service = LiveService(Popularity().fit(HISTORY), checkpoint_every=None,
                          checkpoint_seconds=None, apply_wait=0)
    publisher = SnapshotPublisher(service, tmp_path / "snap", publish_every=3600, mode="full")
    publisher.publish()
    yield service, publisher
    publisher.close()
    service.close(checkpoint=False)


def _answers(model: Any) -> list[list[Any]]:
    recs = model.recommend([196, "u1", 5, "stranger"], k=4)
    return [list(row) for row in recs.items]


def test_follower_loads_what_was_published(published: Any) -> None:
    service, publisher = published
    follower = SnapshotFollower(publisher.directory)
    model, manifest = follower.poll()
    assert manifest.seq == 0 and _answers(model) == _answers(service.model)
    assert follower.poll() is None  # nothing new
    service.submit([(7, "c", 10), (8, "c", 11), (9, "d", 12)])
    assert service.wait_applied()
    publisher.publish()
    model, manifest = follower.poll()
    assert manifest.seq == 3
    # c now 3, a 3, b 2, d 1: the follower's model answers as the live one does
    assert _answers(model) == _answers(service.model)
    assert _answers(model)[3] == ["a", "c", "b", "d"]


def _publish_tampered(service: Any, publisher: Any, damage: Any) -> None:
    """Publish a new version, then damage it in place (after its hashes were taken)."""
    service.submit([(7, "d", 10), (8, "d", 11), (9, "d", 12), (10, "d", 13)])
    assert service.wait_applied()
    manifest = publisher.publish()
    damage(publisher.directory / manifest.version)


def _swap_items(version: Path) -> None:
    """A changed snapshot the checkpoint's own checks cannot tell: item ids swapped in
    meta.json (valid JSON, valid checkpoint, wrong answers)."""
    meta = json.loads((version / META_FILE).read_text())
    meta["items"] = list(reversed(meta["items"]))
    (version / META_FILE).write_text(json.dumps(meta))


def _truncate_arrays(version: Path) -> None:
    """A half-written snapshot: arrays.npz cut in the middle."""
    data = (version / ARRAYS_FILE).read_bytes()
    (version / ARRAYS_FILE).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_swap_items, _truncate_arrays])
def test_follower_refuses_a_tampered_or_half_written_snapshot(published: Any, damage: Any
                                                              ) -> None:
    service, publisher = published
    follower = SnapshotFollower(publisher.directory)
    good, first = follower.poll()
    expected = _answers(good)
    _publish_tampered(service, publisher, damage)
    assert read_manifest(publisher.directory).seq == 4  # CURRENT names the damaged version
    assert follower.poll() is None
    assert follower.refused == 1 and follower.manifest == first
    assert "manifest" in follower.last_error or "SHA-256" in follower.last_error
    assert _answers(good) == expected  # still serving the previous one
    os.utime(publisher.directory / CURRENT)  # touched again: not retried
    assert follower.poll() is None and follower.refused == 1
    # the next good publication is taken
    service.submit([(11, "a", 14)])
    assert service.wait_applied()
    publisher.publish()
    model, manifest = follower.poll()
    assert manifest.seq == 5 and _answers(model) == _answers(service.model)


def test_publisher_keeps_the_newest_versions(published: Any) -> None:
    service, publisher = published
    for i in range(6):
        service.submit([(100 + i, "a", 20 + i)])
        assert service.wait_applied()
        publisher.publish()
    versions = sorted(p.name for p in publisher.directory.iterdir() if p.name.startswith("v"))
    assert versions == ["v4-5", "v5-6", "v6-7"]
    assert read_manifest(publisher.directory).version == "v6-7"


def test_the_poller_freezes_no_garbage_when_it_swaps(published: Any) -> None:
    """After each swap the reader's poller ``gc.freeze()``s the new model's objects; what was
    garbage in reference cycles then (left by requests, by the load) was frozen with them and
    never freed: the reader's memory grew with every snapshot it loaded."""
    import gc
    import threading

    from nmrn.serving.reader import SnapshotService, _poll

    service, publisher = published
    follower = SnapshotFollower(publisher.directory)
    reading = SnapshotService(follower, *follower.poll())
    stop = threading.Event()
    enabled = gc.isenabled()
    gc.disable()  # no collection but the poller's own: the garbage below is there to freeze
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    poller = threading.Thread(target=_poll, args=(reading, follower, 0.001, os.getppid(), stop))
    poller.start()
    try:
        for i in range(10):
            for _ in range(200):  # garbage in cycles, as request handling leaves it
                cycle: list[Any] = []
                cycle.append(cycle)
            del cycle
            service.submit([(300 + i, "a", 30 + i)])
            assert service.wait_applied()
            publisher.publish()
            deadline = time.monotonic() + 10
            while reading.manifest.seq != service.applied_seq:
                assert time.monotonic() < deadline, follower.last_error
                time.sleep(0.001)
        grown = gc.get_freeze_count() - frozen
    finally:
        stop.set()
        poller.join(10)
        gc.unfreeze()
        if enabled:
            gc.enable()
    assert follower.loads == 11
    assert grown < 1000, f"{grown} more objects frozen after 10 swaps"


# -- a real writer with two readers ------------------------------------------------------------
def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (of any of its threads: the writer restarts readers
    from a thread)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            continue
    return {c for c in found if not _zombie(c)}


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    ckpt = tmp_path / "m.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    port, writer_port = free_port(), free_port()
    proc = start_server(ckpt, port, "--workers", "2", "--writer-port", str(writer_port),
                        "--token", TOKEN, "--read-token", READ, "--snapshot-dir",
                        str(tmp_path / "snap"), "--checkpoint-seconds", "0", "--apply-wait",
                        "0", timeout=90.0)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield proc, ckpt, port, writer_port
    finally:
        readers = _children(proc.pid)
        if proc.poll() is None:
            stop_server(proc)
        for pid in readers:  # by PID, in case the writer could not stop them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _get(port: int, path: str, **kw: Any) -> httpx.Response:
    # a new connection each time: the kernel spreads connections over the readers
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, **kw)


def _post(port: int, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}{path}", timeout=30, **kw)


def _wait_seq(port: int, seq: int, timeout: float = 20.0) -> None:
    """Until 20 answers in a row come from snapshots holding event ``seq``."""
    deadline = time.monotonic() + timeout
    row = 0
    while row < 20:
        assert time.monotonic() < deadline, f"readers did not reach event {seq}"
        r = _get(port, "/healthz")
        row = row + 1 if int(r.headers["x-snapshot-seq"]) >= seq else 0


def test_readers_answer_as_the_model_does(cluster: Any) -> None:
    proc, ckpt, port, writer_port = cluster
    events = [{"user": f"n{i}", "item": "c", "timestamp": 10 + i} for i in range(5)]
    events += [{"user": 196, "item": "e", "timestamp": 20}]
    r = _post(port, "/events", json={"events": events}, headers=AUTH)  # forwarded
    assert r.status_code == 202 and r.json()["seq"] == 6
    checkpoint = _post(port, "/checkpoint", headers=AUTH).json()
    assert checkpoint["seq"] == 6
    _wait_seq(port, 6)
    model = load_model(ckpt)  # what the writer holds, loaded directly
    users = [196, "u1", 5, "n0", "nobody"]
    recs = model.recommend(users, k=3)
    want = json.loads(json.dumps(recommendation_rows(users, recs.items, recs.scores, recs.cold)))
    readers = set()
    for _ in range(12):
        got = _post(port, "/recommendations", json={"users": users, "k": 3},
                    headers={"Authorization": f"Bearer {READ}"})
        assert got.status_code == 200
        assert got.json()["results"] == want
        one = _get(port, "/recommendations/196?k=3", headers={"Authorization": f"Bearer {READ}"})
        assert one.json() == want[0]
        assert float(one.headers["x-snapshot-age"]) >= 0
        readers.add(_get(port, "/metrics").text.count("nmrn_snapshot_seq 6.0"))
    assert readers == {1}


def test_an_event_becomes_visible_on_the_readers(cluster: Any) -> None:
    proc, ckpt, port, writer_port = cluster
    auth = {"Authorization": f"Bearer {READ}"}
    before = _get(port, "/recommendations/stranger?k=1", headers=auth).json()["items"]
    assert before == ["a"]
    # "z" becomes the most popular item: visible to a stranger once the snapshot holds it
    events = [{"user": f"p{i}", "item": "z", "timestamp": 30 + i} for i in range(5)]
    posted = time.monotonic()
    assert _post(port, "/events", json={"events": events}, headers=AUTH).status_code == 202
    deadline = posted + 20
    while _get(port, "/recommendations/stranger?k=1", headers=auth).json()["items"] != ["z"]:
        assert time.monotonic() < deadline, "the event never became visible on a reader"
        time.sleep(0.005)
    text = _get(port, "/metrics").text
    assert "nmrn_snapshot_age_seconds" in text and "nmrn_snapshot_lag_max_seconds" in text
    assert "nmrn_snapshot_publish_seconds_count" in _get(writer_port, "/metrics").text


BAD = [
    ("GET", "/recommendations/196", {}, None),  # no read token: 401
    ("GET", "/recommendations/196?k=0", {"Authorization": f"Bearer {READ}"}, None),
    ("GET", "/recommendations/196?k=100000", {"Authorization": f"Bearer {READ}"}, None),
    ("GET", "/recommendations/196", {"Authorization": "Bearer wrong"}, None),
    ("POST", "/recommendations", {"Authorization": f"Bearer {READ}"}, b'{"users": [1.5]}'),
    ("POST", "/recommendations", {"Authorization": f"Bearer {READ}",
                                  "Content-Type": "application/json"}, b'{"users": [1.5]}'),
    ("POST", "/recommendations", {"Authorization": f"Bearer {READ}",
                                  "Content-Type": "application/json"},
     json.dumps({"users": list(range(5000))}).encode()),
    ("POST", "/events", {}, b'{"user": 1, "item": 2, "timestamp": 3}'),
    ("POST", "/events", {"Authorization": f"Bearer {READ}"}, b"{}"),  # a read token: 403
    ("POST", "/events", AUTH, b'{"user": 1}'),  # no content type: 415
    ("POST", "/events", dict(AUTH, **{"Content-Type": "application/json"}), b"not json"),
    ("POST", "/events", dict(AUTH, **{"Content-Type": "application/json"}),
     b'{"user": 1.5, "item": 2, "timestamp": 3}'),
    ("POST", "/events", dict(AUTH, **{"Content-Type": "application/json"}), b"x" * 2_000_000),
    ("POST", "/events", dict(AUTH, **{"Content-Type": "application/json",
                                      "Idempotency-Key": "has space"}),
     b'{"user": 1, "item": 2, "timestamp": 3}'),
    ("POST", "/checkpoint", {}, None),
    ("GET", "/nope", {}, None),
    ("DELETE", "/events", AUTH, None),
]


def test_bad_input_gets_the_same_answer_on_a_reader(cluster: Any) -> None:
    proc, ckpt, port, writer_port = cluster
    for method, path, headers, body in BAD:
        answers = [httpx.request(method, f"http://127.0.0.1:{p}{path}", headers=headers,
                                 content=body, timeout=30) for p in (port, writer_port)]
        reader, writer = answers
        assert reader.status_code == writer.status_code, (method, path, reader.text)
        assert 400 <= reader.status_code < 500, (method, path, reader.text)
        assert reader.json() == writer.json(), (method, path)
        assert "x-snapshot-seq" in reader.headers and "x-snapshot-seq" not in writer.headers


def test_a_killed_reader_is_restarted_and_nothing_is_lost(cluster: Any) -> None:
    proc, ckpt, port, writer_port = cluster
    first = _children(proc.pid)
    assert len(first) == 2
    acknowledged: dict[str, int] = {}
    victim = min(first)
    for i in range(60):
        if i == 20:
            os.kill(victim, signal.SIGKILL)
        key = str(uuid.uuid4())
        body = {"user": f"k{i}", "item": "q", "timestamp": 100 + i}
        for _attempt in range(50):  # retried with the same key until answered
            try:
                r = _post(port, "/events", json=body, headers=dict(AUTH, **{"Idempotency-Key":
                                                                            key}))
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if r.status_code == 202:
                acknowledged[key] = r.json()["seq"]
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"event {i} was never acknowledged")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _children(proc.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the killed reader was not replaced: {now}")
    assert "nmrn_reader_restarts_total 1.0" in _get(writer_port, "/metrics").text
    assert sorted(acknowledged.values()) == list(range(1, 61))  # each once, none lost
    stop_server(proc)
    assert proc.returncode == 0
    model = load_model(ckpt)
    assert model.extra["journal_seq"] == 60
    assert model.item_counts[model.items.get("q")] == 60
    for pid in now | first:  # the writer stopped its readers
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), pid


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
