"""The HTTP API (TestClient), the live service's consistency, and a real server over loopback."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from live_server import free_port, start_server  # noqa: E402

from nmrn.baselines.popularity import Popularity  # noqa: E402
from nmrn.errors import ConfigError  # noqa: E402
from nmrn.serving.app import create_app  # noqa: E402
from nmrn.serving.commands import add_serve_command, build_app_from_args  # noqa: E402
from nmrn.serving.schemas import Limits  # noqa: E402
from nmrn.serving.service import SEQ_KEY, LiveService, default_journal_path  # noqa: E402
from nmrn.training.contract import Recommender  # noqa: E402
from nmrn.training.registry import register  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# item "a" seen 3 times, "b" twice, "c" once; user 196 saw a, b; user "u1" saw a
HISTORY = [(196, "a", 0), (196, "b", 1), ("u1", "a", 2), (5, "a", 3), (5, "b", 4), (5, "c", 5)]


@pytest.fixture
def service(tmp_path: Path) -> Any:
    model = Popularity().fit(HISTORY)
    svc = LiveService(model, checkpoint_path=tmp_path / "m.ckpt",
                      journal_path=tmp_path / "m.ckpt.journal", checkpoint_every=None,
                      checkpoint_seconds=None)
    yield svc
    svc.close(checkpoint=False)


@pytest.fixture
def client(service: LiveService) -> TestClient:
    return TestClient(create_app(service, token=TOKEN))


def test_ingest_then_recommend_known_answer(client: TestClient, service: LiveService) -> None:
    r = client.post("/events", json={"user": 7, "item": "c", "timestamp": 10}, headers=AUTH)
    assert r.status_code == 202
    assert r.json() == {"accepted": 1, "first_seq": 1, "seq": 1}
    r = client.post("/events", headers=AUTH, json={"events": [
        {"user": 7, "item": "c", "timestamp": 11},
        {"user": "u9", "item": "d", "timestamp": 12, "weight": 2.0},
    ]})
    assert r.json() == {"accepted": 2, "first_seq": 2, "seq": 3}
    assert service.wait_applied(3)
    # counts now a=3, b=2, c=3, d=1; user 196 has seen a and b; ties go to the lower index (a<c)
    body = client.get("/recommendations/196", params={"k": 2}).json()
    assert body == {"user": 196, "items": ["c", "d"], "scores": [3.0, 1.0], "cold": False}
    body = client.get("/recommendations/196?k=2&exclude_seen=false").json()
    assert body["items"] == ["a", "c"]
    body = client.get("/recommendations/stranger?k=3").json()
    assert body == {"user": "stranger", "items": ["a", "c", "b"], "scores": [3.0, 3.0, 2.0],
                    "cold": True}


def test_batch_recommendations_keep_json_types(client: TestClient) -> None:
    r = client.post("/recommendations", json={"users": [196, "196", "u1"], "k": 1})
    assert r.status_code == 200
    rows = r.json()["results"]
    assert [row["user"] for row in rows] == [196, "196", "u1"]
    # a JSON int stays an int id: 196 is known, the text "196" is not (cold)
    assert [row["cold"] for row in rows] == [False, True, False]
    assert rows[0]["items"] == ["c"] and rows[2]["items"] == ["b"]


def test_path_ids_are_text_resolved_to_int_only_when_text_is_unknown(tmp_path: Path) -> None:
    model = Popularity().fit([(7, "x", 0), ("7", "y", 1), (8, "x", 2), ("z", "y", 3)])
    with LiveService(model) as svc:
        client = TestClient(create_app(svc))
        both = client.get("/recommendations/7?exclude_seen=false&k=1").json()
        assert both["user"] == "7" and not both["cold"]  # the text form wins when known
        only_int = client.get("/recommendations/8").json()
        assert only_int["user"] == 8 and only_int["items"] == ["y"] and not only_int["cold"]
        unknown = client.get("/recommendations/9").json()
        assert unknown["user"] == "9" and unknown["cold"]


def test_writes_need_the_token_reads_do_not(client: TestClient, service: LiveService) -> None:
    event = {"user": 1, "item": "a", "timestamp": 1}
    r = client.post("/events", json=event)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "authorization" in r.json()["error"]
    assert client.post("/events", json=event, headers={"Authorization": "Bearer nope"}
                       ).status_code == 403
    assert client.post("/checkpoint").status_code == 401
    assert client.get("/recommendations/196").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert service.accepted_seq == 0  # refused writes were not journalled


def test_reads_need_the_read_token_when_one_is_set(service: LiveService) -> None:
    # issue 11, finding 12: with exclude_seen flipped, the items that vanish from a user's
    # top-k are that user's history; a read token lets an operator close reads (and the schema)
    client = TestClient(create_app(service, token=TOKEN, read_token="r34d"))
    read = {"Authorization": "Bearer r34d"}
    for method, path, body in [("GET", "/recommendations/196", None),
                               ("GET", "/recommendations/196?k=2&exclude_seen=false", None),
                               ("POST", "/recommendations", {"users": [196], "k": 2}),
                               ("GET", "/openapi.json", None)]:
        bare = client.request(method, path, json=body)
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer", path
        wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403 and "not valid for reads" in wrong.json()["error"]
        # the read token and the write token (which holds both scopes) both read
        assert client.request(method, path, json=body, headers=read).status_code == 200, path
        assert client.request(method, path, json=body, headers=AUTH).status_code == 200, path
    assert "/events" in client.get("/openapi.json", headers=read).json()["paths"]
    # the read token does not write
    event = {"user": 1, "item": "a", "timestamp": 1}
    assert client.post("/events", json=event, headers=read).status_code == 403
    assert service.accepted_seq == 0
    # aggregate-only endpoints stay open for probes and scrapers
    for path in ["/healthz", "/metrics", "/status.json", "/"]:
        assert client.get(path).status_code == 200, path
    # without a read token reads and the schema are open, as before
    open_client = TestClient(create_app(service, token=TOKEN))
    assert open_client.get("/openapi.json").status_code == 200
    assert open_client.get("/recommendations/196").status_code == 200


@pytest.mark.parametrize("path", ["%ED%B2%80", "%FF", "a%C3", "%C3%28"])
def test_a_user_path_that_is_not_utf8_is_refused_not_read_as_another_user(
    service: LiveService, path: str
) -> None:
    # found by benchmarks/soak.py: servers decode a path leniently (bad bytes -> U+FFFD), so
    # every such id read as one made-up user "\ufffd" and got a 200
    app = create_app(service)
    for client in (TestClient(app), TestClient(app.app)):  # the fast path and the route
        r = client.get(f"/recommendations/{path}?k=3")
        assert r.status_code == 422 and "not valid UTF-8" in r.json()["error"], r.text
    # percent-encoded valid UTF-8 still reads its user
    ok = TestClient(app).get("/recommendations/u%31")
    assert ok.status_code == 200 and ok.json()["user"] == "u1" and not ok.json()["cold"]


def test_a_read_token_without_a_write_token_is_refused(service: LiveService) -> None:
    # with open writes, anyone could post (user, item) and watch /status.json's live quality
    # (which skips repeats): an oracle for the history the read token is meant to protect
    with pytest.raises(ConfigError, match="a read token needs a write token"):
        create_app(service, read_token="r")


@pytest.mark.parametrize("bad", [" r ", "r\n", "caf\u00e9", "a b", "", "x" * 4097])
def test_a_token_no_client_could_send_is_refused(service: LiveService, bad: str) -> None:
    # the header's token is compared stripped, as ASCII: such a token would never match
    with pytest.raises(ConfigError, match="visible ASCII"):
        create_app(service, token=bad)
    with pytest.raises(ConfigError, match="visible ASCII"):
        create_app(service, token="w", read_token=bad)


def test_a_refused_read_answers_the_same_on_the_fast_path_and_the_route(
    service: LiveService,
) -> None:
    # the fast path in front of FastAPI (ServingApp) and the route call one function
    app = create_app(service, token=TOKEN, read_token="r")
    fast = TestClient(app).get("/recommendations/196", headers={"Authorization": "Bearer q"})
    routed = TestClient(app.app).get("/recommendations/196",
                                     headers={"Authorization": "Bearer q"})
    assert fast.status_code == routed.status_code == 403
    assert fast.json() == routed.json()


def test_checkpoint_endpoint_records_the_sequence_and_truncates_the_journal(
    client: TestClient, service: LiveService, tmp_path: Path
) -> None:
    for t in range(3):
        client.post("/events", json={"user": 1, "item": "z", "timestamp": t}, headers=AUTH)
    service.wait_applied()
    r = client.post("/checkpoint", headers=AUTH)
    assert r.status_code == 200 and r.json()["seq"] == 3
    saved = Recommender.load(tmp_path / "m.ckpt")
    assert saved.extra[SEQ_KEY] == 3 and saved.n_events == len(HISTORY) + 3
    assert (tmp_path / "m.ckpt.journal").read_bytes() == b""
    client.post("/events", json={"user": 1, "item": "z", "timestamp": 9}, headers=AUTH)
    assert len((tmp_path / "m.ckpt.journal").read_bytes().splitlines()) == 1


def test_metrics_and_health(client: TestClient, service: LiveService) -> None:
    client.post("/events", json={"events": [{"user": 1, "item": "a", "timestamp": 0}] * 4},
                headers=AUTH)
    service.wait_applied()
    client.get("/recommendations/196")
    client.get("/recommendations/196?k=0")
    client.post("/events", json={"user": 1})
    text = client.get("/metrics").text
    lines = {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines())
        if not name.startswith("#")
    }
    assert lines["nmrn_events_accepted_total"] == 4
    assert lines["nmrn_events_applied_total"] == 4
    assert lines["nmrn_apply_lag_events"] == 0
    assert lines["nmrn_recommend_seconds_count"] == 1
    assert lines['nmrn_learn_seconds_bucket{le="+Inf"}'] == 1
    assert lines['nmrn_errors_total{kind="invalid"}'] == 1
    assert lines['nmrn_errors_total{kind="unauthorized"}'] == 1
    assert lines["nmrn_known_items"] == len(service.model.items)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["accepted_seq"] == 4 and health["apply_lag"] == 0


@register
class Torn(Recommender):
    """A model whose learn writes two arrays with a pause in between (a torn-read detector)."""

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.a = np.zeros(0)
        self.b = np.zeros(0)

    def _grow(self, n_users: int, n_items: int) -> None:
        for name in ("a", "b"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.zeros(n_items - len(old))]))

    def _fit(self, users: Any, items: Any, timestamps: Any, weights: Any) -> None:
        self._learn(users, items, timestamps, weights)

    def _learn(self, users: Any, items: Any, timestamps: Any, weights: Any) -> None:
        np.add.at(self.a, items, 1.0)
        time.sleep(0.002)
        np.add.at(self.b, items, 1.0)

    def _score_all(self, users: Any) -> np.ndarray:
        return np.tile(self.a - self.b, (len(users), 1))  # all zeros unless a read is torn

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"a": self.a, "b": self.b}, {}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.a, self.b = arrays["a"], arrays["b"]


def test_reads_never_see_a_half_applied_batch() -> None:
    model = Torn().fit([(0, 0, 0.0)])
    with LiveService(model, apply_batch=8) as svc:
        stop = threading.Event()
        torn: list[float] = []

        def reader() -> None:
            while not stop.is_set():
                _, recs = svc.recommend([0], k=1, exclude_seen=False)
                torn.extend(np.abs(recs.scores).ravel().tolist())

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for th in threads:
            th.start()
        for j in range(40):
            svc.submit([(0, j % 5, float(j))] * 4)
        assert svc.wait_applied(timeout=20)
        stop.set()
        for th in threads:
            th.join()
    assert torn and max(torn) == 0.0
    assert model.a.tolist() == model.b.tolist() and model.a.sum() == 161


def test_writer_applies_in_order_in_small_batches(tmp_path: Path) -> None:
    model = Popularity().fit([(0, "x", 0)])
    with LiveService(model, apply_batch=3) as svc:
        first, last = svc.submit([(1, f"i{j}", float(j)) for j in range(10)])
        assert (first, last) == (1, 10)
        assert svc.wait_applied(10)
        assert model.items.to_list() == ["x"] + [f"i{j}" for j in range(10)]
        runs = svc.metrics.learn_seconds.collect()[0].samples
        assert next(x.value for x in runs if x.name == "nmrn_learn_seconds_count") == 4  # 3+3+3+1
        assert model.extra[SEQ_KEY] == 10


# -- the real thing: a uvicorn server in a subprocess ---------------------------------------------
def _start(ckpt: Path, port: int) -> subprocess.Popen[bytes]:
    return start_server(ckpt, port, "--checkpoint-every", "0", "--checkpoint-seconds", "0",
                        "--log-level", "warning", env={"NMRN_TOKEN": TOKEN})


def test_real_server_survives_kill_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    ckpt = tmp_path / "pop.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(ckpt, port)
    try:
        events = [{"user": 50 + j, "item": "new", "timestamp": 100 + j} for j in range(5)]
        r = httpx.post(f"{base}/events", json={"events": events}, headers=AUTH)
        assert r.status_code == 202 and r.json()["seq"] == 5
        assert httpx.post(f"{base}/events", json=events[0]).status_code == 401
    finally:
        proc.kill()  # SIGKILL: no final checkpoint, only the journal knows the 5 events
        proc.wait()
    assert Recommender.load(ckpt).n_events == len(HISTORY)

    proc = _start(ckpt, port)
    try:
        body = httpx.get(f"{base}/recommendations/someone?k=1").json()
        assert body == {"user": "someone", "items": ["new"], "scores": [5.0], "cold": True}
        r = httpx.post(f"{base}/events", json={"user": 1, "item": "new", "timestamp": 200},
                       headers=AUTH)
        assert r.json()["seq"] == 6  # numbering continues after the replayed events
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    saved = Recommender.load(ckpt)
    assert saved.n_events == len(HISTORY) + 6 and saved.extra[SEQ_KEY] == 6
    assert default_journal_path(ckpt).read_bytes() == b""


def test_serve_arguments_build_the_configured_app(tmp_path: Path, monkeypatch: Any) -> None:
    ckpt = tmp_path / "pop.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("NMRN_TOKEN", "from-env")
    args = parser.parse_args(["serve", "--checkpoint", str(ckpt), "--max-batch", "2",
                              "--max-k", "3", "--journal", str(tmp_path / "j.log"),
                              "--apply-wait", "0.2", "--apply-batch", "7"])
    assert args.switch_interval == 0.0005 and args.torch_threads == 1  # the serving defaults
    service, app = build_app_from_args(args)
    try:
        assert service.apply_wait == 0.2 and service.apply_batch == 7
        client = TestClient(app)
        assert app.state.limits == Limits(max_events=2, max_k=3)
        three = {"events": [{"user": 1, "item": 2, "timestamp": 3}] * 3}
        assert client.post("/events", json=three, headers={"Authorization": "Bearer from-env"}
                           ).status_code == 413
        assert client.get("/recommendations/196?k=4").status_code == 422
        assert service.journal is not None and service.journal.path == tmp_path / "j.log"
    finally:
        service.close()
    assert json.loads((ckpt / "meta.json").read_text())["n_events"] == len(HISTORY)


@pytest.mark.parametrize("kind", ["TOKEN", "READ_TOKEN"])
@pytest.mark.parametrize("given", ["", "  ", None])
def test_an_empty_token_is_refused_not_turned_into_open_access(
    tmp_path: Path, monkeypatch: Any, given: str | None, kind: str
) -> None:
    # issue 11: NMRN_TOKEN="" used to turn write authentication off without a word
    ckpt = tmp_path / "pop.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    option = "--" + kind.lower().replace("_", "-")
    monkeypatch.setenv(f"NMRN_{kind}", "")
    args = parser.parse_args(["serve", "--checkpoint", str(ckpt)]
                             + ([] if given is None else [option, given]))
    with pytest.raises(ConfigError, match=f"({option}|NMRN_{kind}) is empty"):
        build_app_from_args(args)


def test_the_read_token_comes_from_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    ckpt = tmp_path / "pop.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("NMRN_READ_TOKEN", "env-read")
    monkeypatch.setenv("NMRN_TOKEN", "env-write")
    service, app = build_app_from_args(parser.parse_args(["serve", "--checkpoint", str(ckpt)]))
    try:
        client = TestClient(app)
        assert client.get("/recommendations/196").status_code == 401
        assert client.get("/recommendations/196",
                          headers={"Authorization": "Bearer env-read"}).status_code == 200
    finally:
        service.close(checkpoint=False)
