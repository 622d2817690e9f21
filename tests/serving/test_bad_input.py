"""A corpus of malformed requests and checkpoints: each gets its own status and a message that
names the problem; the service keeps serving and keeps every event it accepted before."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from nmrn.baselines.popularity import Popularity  # noqa: E402
from nmrn.errors import CheckpointError  # noqa: E402
from nmrn.serving.app import create_app  # noqa: E402
from nmrn.serving.schemas import Limits  # noqa: E402
from nmrn.serving.service import LiveService  # noqa: E402
from nmrn.training.contract import Recommender  # noqa: E402

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = Limits(max_body_bytes=20_000, max_events=5, max_users=3, max_k=50, max_id_length=16)
GOOD = [{"user": 1, "item": "a", "timestamp": 1}, {"user": "u", "item": 2, "timestamp": 2}]


def ev(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"user": 1, "item": "a", "timestamp": 5}
    event.update(fields)
    return {k: v for k, v in event.items() if v is not ...}


def raw(text: str | bytes, ctype: str = "application/json", **headers: str) -> dict[str, Any]:
    return {"content": text, "headers": {"content-type": ctype, **AUTH, **headers}}


def js(obj: Any) -> dict[str, Any]:
    return {"json": obj, "headers": AUTH}


# (method, url, request keyword arguments, status, words the error message must contain)
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", "/events", raw("{bad json"), 400, "body: not valid JSON"),
    ("POST", "/events", raw(""), 400, "body: is empty"),
    ("POST", "/events", raw(b"\xff\xfe{"), 400, "body:"),
    ("POST", "/events", raw("[" * 5000 + "]" * 5000), 400, "nested 5000 deep; the limit is 32"),
    ("POST", "/events", raw('{"user": 1, "item": "a", "timestamp": NaN}'), 400, "NaN"),
    ("POST", "/events", js([GOOD[0]]), 422, "body: must be a JSON object"),
    ("POST", "/events", js("event"), 422, "body: must be a JSON object"),
    ("POST", "/events", js(ev(user=...)), 422, "event.user: missing"),
    ("POST", "/events", js(ev(item=...)), 422, "event.item: missing"),
    ("POST", "/events", js(ev(timestamp=...)), 422, "event.timestamp: missing"),
    ("POST", "/events", js(ev(user=3.5)), 422, "event.user: must be an int or a string, got float"),
    ("POST", "/events", js(ev(user=3.0)), 422, "event.user: must be an int or a string, got float"),
    ("POST", "/events", js(ev(user=True)), 422, "event.user: must be an int or a string, got bool"),
    ("POST", "/events", js(ev(item=None)), 422, "event.item: must be an int or a string, got null"),
    ("POST", "/events", js(ev(user={"id": 1})), 422, "event.user: must be an int or a string, "
                                                     "got object"),
    ("POST", "/events", js(ev(item=[1, 2])), 422, "event.item: must be an int or a string, "
                                                  "got array"),
    ("POST", "/events", js(ev(user="")), 422, "event.user: must not be an empty string"),
    ("POST", "/events", js(ev(user=2**70)), 422, "event.user: int id"),
    ("POST", "/events", js(ev(item="x" * 17)), 422, "event.item: text id is 17 characters"),
    ("POST", "/events", js(ev(timestamp="yesterday")), 422, "event.timestamp: must be a number"),
    ("POST", "/events", js(ev(timestamp=True)), 422, "event.timestamp: must be a number"),
    ("POST", "/events", raw('{"user": 1, "item": "a", "timestamp": 1e400}'), 422,
     "event.timestamp: must be a finite number"),
    ("POST", "/events", js(ev(weight="heavy")), 422, "event.weight: must be a number"),
    ("POST", "/events", js(ev(time=5)), 422, "unknown field 'time'"),
    # issue 11: each of these was a 500 or was accepted and later broke reads
    ("POST", "/events", raw('{"user": 1, "item": "a", "timestamp": ' + "9" * 5000 + "}"), 400,
     "body: not acceptable JSON (Exceeds the limit (4300 digits)"),
    ("POST", "/events", raw('{"user": "u", "item": "\\udc80", "timestamp": 1}'), 422,
     "event.item: is not valid Unicode text (a lone surrogate at 0)"),
    ("POST", "/events", js(ev(user="a\x1bb")), 422, "event.user: contains the control character"),
    ("POST", "/recommendations", raw('{"users": ["\\udc80"], "k": 3}'), 422,
     "users[0]: is not valid Unicode text"),
    ("GET", "/recommendations/1?k=" + "9" * 5000, {}, 422, "k: must be a whole number"),
    ("GET", "/recommendations/1?k=%C2%B2", {}, 422, "k: must be a whole number, got '\\xb2'"),
    ("GET", "/recommendations/1?k=+-5", {}, 422, "k: must be >= 1, got -5"),  # + is a space
    ("GET", "/recommendations/%0Aevil", {}, 422, "user: contains the control character"),
    ("POST", "/events", js({"events": GOOD[0]}), 422, "events: must be an array"),
    ("POST", "/events", js({"events": []}), 422, "events: is empty"),
    ("POST", "/events", js({"events": [1]}), 422, "events[0]: an event must be a JSON object"),
    ("POST", "/events", js({"events": [GOOD[0], ev(item=1.5)]}), 422, "events[1].item"),
    ("POST", "/events", js({"events": GOOD * 3}), 413, "events: 6 events in one request; the "
                                                       "limit is 5"),
    ("POST", "/events", js({"events": GOOD, "user": 1}), 422, "unknown field 'user' next to"),
    ("POST", "/events", raw(json.dumps(GOOD[0]), ctype="text/plain"), 415,
     "content-type: must be application/json, got text/plain"),
    ("POST", "/events", {"content": json.dumps(GOOD[0]), "headers": AUTH}, 415, "content-type"),
    ("POST", "/events", raw(json.dumps({"events": [ev(item="y" * 16)] * 500})), 413,
     "the limit is 20000"),
    ("POST", "/events", {"json": GOOD[0]}, 401, "authorization: missing"),
    ("POST", "/events", {"json": GOOD[0], "headers": {"Authorization": "Bearer nope"}}, 403,
     "token is not valid"),
    ("POST", "/events", {"json": GOOD[0], "headers": {"Authorization": "Basic dG9rOg=="}}, 401,
     "expected 'Bearer <token>'"),
    ("POST", "/checkpoint", {"headers": {"Authorization": "Bearer tok2"}}, 403, "token"),
    ("GET", "/recommendations/1?k=abc", {}, 422, "k: must be a whole number, got 'abc'"),
    ("GET", "/recommendations/1?k=-1", {}, 422, "k: must be >= 1, got -1"),
    ("GET", "/recommendations/1?k=0", {}, 422, "k: must be >= 1, got 0"),
    ("GET", "/recommendations/1?k=1.5", {}, 422, "k: must be a whole number"),
    ("GET", "/recommendations/1?k=100000", {}, 422, "k: 100000 is larger than the limit 50"),
    ("GET", "/recommendations/1?exclude_seen=maybe", {}, 422,
     "exclude_seen: must be true or false"),
    ("GET", "/recommendations/1?K=5", {}, 422, "unknown parameter 'K'"),
    ("GET", "/recommendations/" + "z" * 40, {}, 422, "user: text id is 40 characters"),
    ("POST", "/recommendations", {"json": {"users": 1}}, 422, "users: must be an array"),
    ("POST", "/recommendations", {"json": {"user": [1]}}, 422, "unknown field 'user'"),
    ("POST", "/recommendations", {"json": {"k": 3}}, 422, "users: missing"),
    ("POST", "/recommendations", {"json": {"users": []}}, 422, "users: is empty"),
    ("POST", "/recommendations", {"json": {"users": [1, 2, 3, 4]}}, 413,
     "users: 4 users in one request; the limit is 3"),
    ("POST", "/recommendations", {"json": {"users": [1, 1.5]}}, 422,
     "users[1]: must be an int or a string, got float"),
    ("POST", "/recommendations", {"json": {"users": [False]}}, 422, "users[0]:"),
    ("POST", "/recommendations", {"json": {"users": [1], "k": "10"}}, 422, "k: must be an int"),
    ("POST", "/recommendations", {"json": {"users": [1], "k": -3}}, 422, "k: must be >= 1"),
    ("POST", "/recommendations", {"json": {"users": [1], "exclude_seen": "yes"}}, 422,
     "exclude_seen: must be true or false"),
    ("POST", "/recommendations?k=3", {"json": {"users": [1]}}, 422, "query:"),
    ("GET", "/no/such/route", {}, 404, "/no/such/route: not found"),
    ("DELETE", "/events", {}, 405, "method not allowed"),
    ("GET", "/events", {}, 405, "method not allowed"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("serve")
    model = Popularity().fit([(1, "a", 0), (2, "b", 1)])
    svc = LiveService(model, checkpoint_path=tmp / "m.ckpt", journal_path=tmp / "j",
                      checkpoint_every=None, checkpoint_seconds=None)
    client = TestClient(create_app(svc, token=TOKEN, limits=LIMITS), raise_server_exceptions=True)
    assert client.post("/events", json={"events": GOOD}, headers=AUTH).status_code == 202
    yield svc, client, tmp
    svc.close(checkpoint=False)


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("method", "url", "kwargs", "status", "words"), CASES,
                         ids=[f"{c[0]} {c[1][:30]} {c[4][:30]}" for c in CASES])
def test_bad_request(setup: Any, method: str, url: str, kwargs: dict[str, Any], status: int,
                     words: str) -> None:
    svc, client, _ = setup
    r = client.request(method, url, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert words in body["error"], body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert svc.accepted_seq == 2  # nothing malformed was journalled


def test_the_service_still_serves_and_kept_every_accepted_event(setup: Any) -> None:
    # runs after the corpus above (same module-scoped service); one more malformed request
    # keeps it meaningful when selected alone
    svc, client, tmp = setup
    assert client.post("/events", json={"user": 1}, headers=AUTH).status_code == 422
    assert client.get("/healthz").status_code == 200
    r = client.post("/events", json=GOOD[0], headers=AUTH)
    assert r.status_code == 202 and r.json()["seq"] == 3
    assert svc.wait_applied()
    body = client.get("/recommendations/zz?k=5").json()
    assert body["cold"] and body["items"] == ["a", "b", 2] and body["scores"] == [3.0, 1.0, 1.0]
    logged = [line.split(b" ", 1)[1] for line in (tmp / "j").read_bytes().splitlines()]
    entries = [json.loads(line) for line in logged]
    events = [ev for entry in entries if "events" in entry for ev in entry["events"]]
    assert all("run" in entry for entry in entries if "events" not in entry)  # run markers
    assert events == [[1, "a", 1.0], ["u", 2, 2.0], [1, "a", 1.0]]
    metrics = client.get("/metrics").text
    assert 'nmrn_errors_total{kind="invalid"}' in metrics


# -- malformed checkpoints -----------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``path``: proof that code from the file ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def _good(tmp: Path) -> Path:
    return Popularity().fit([(1, "a", 0), (2, "b", 1)]).save(tmp / "good.ckpt")


def _open_and_serve(path: Path) -> None:
    LiveService.open(path).close()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not an nmrn checkpoint"):
        _open_and_serve(tmp_path / "x")
    with pytest.raises(CheckpointError, match="missing or not a directory"):
        _open_and_serve(tmp_path / "nothing-here")


def test_someone_elses_json_and_a_newer_version(tmp_path: Path) -> None:
    path = _good(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        _open_and_serve(path)
    (path / "meta.json").write_text(json.dumps({"format": "keras", "weights": []}))
    with pytest.raises(CheckpointError, match="format field"):
        _open_and_serve(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        _open_and_serve(path)


def test_corrupt_arrays(tmp_path: Path) -> None:
    path = _good(tmp_path)
    (path / "arrays.npz").write_bytes(b"PK\x03\x04 this is not a zip archive" * 10)
    with pytest.raises(CheckpointError, match="unreadable or unsafe"):
        _open_and_serve(path)


def test_a_pickled_object_array_does_not_execute(tmp_path: Path) -> None:
    path = _good(tmp_path)
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["base.item_counts"] = evil
    with open(path / "arrays.npz", "wb") as f:
        np.savez(f, **arrays)
    # the payload is live: plain unpickling would run it
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    with pytest.raises(CheckpointError, match="has dtype object; only numbers and text"):
        _open_and_serve(path)
    with pytest.raises(CheckpointError):
        Recommender.load(path)
    assert not marker.exists()


def test_inconsistent_arrays(tmp_path: Path) -> None:
    path = _good(tmp_path)
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["base.item_counts"] = np.zeros(7)
    with open(path / "arrays.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match="item counts do not match"):
        _open_and_serve(path)


# -- crafted checkpoints (issue 11: each of these was a raw traceback, a huge allocation, or
# loaded silently and broke reads later) ---------------------------------------------------------
def _edit_meta(path: Path, change: Any) -> None:
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def _rewrite_arrays(path: Path, change: Any, *, compress: bool = False) -> None:
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    with open(path / "arrays.npz", "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)


@pytest.mark.parametrize(
    ("craft", "message"),
    [
        (lambda p: _edit_meta(p, lambda m: m.update(format_version=1, model=["pop"])),
         "unknown model class"),
        (lambda p: (p / "meta.json").write_text((p / "meta.json").read_text().replace(
            '"n_events": 2', '"n_events": 1e400')), "n_events must be a whole number"),
        (lambda p: (p / "meta.json").write_text(
            (p / "meta.json").read_text()[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000
            + "}"), "JSON nested 100001 deep"),
        (lambda p: _edit_meta(p, lambda m: m.update(last_timestamp="yesterday")),
         "last_timestamp must be a finite number"),
        (lambda p: _rewrite_arrays(p, lambda a: a.update(
            {"base.item_counts": a["base.item_counts"].reshape(1, -1)})),
         "item counts do not match"),
        (lambda p: _rewrite_arrays(p, lambda a: a.update(
            {"base.history_items": np.array([0, 7])})), "item indices outside 0..1"),
        (lambda p: _rewrite_arrays(p, lambda a: a.update(
            {"base.item_counts": np.zeros(50_000_000)}), compress=True),
         "is compressed; checkpoints store arrays uncompressed"),
        (lambda p: _rewrite_arrays(p, lambda a: a.update(
            {"base.item_counts": np.array([-1.0, 2.0])})), "finite and >= 0"),
    ],
    ids=["model-list", "n-events-1e400", "meta-nested", "timestamp-text", "counts-2d",
         "history-out-of-range", "zip-bomb", "negative-counts"],
)
def test_crafted_checkpoints_are_refused_with_a_clear_error(
    tmp_path: Path, craft: Any, message: str
) -> None:
    path = _good(tmp_path)
    craft(path)
    with pytest.raises(CheckpointError, match=message):
        _open_and_serve(path)


def test_an_array_header_that_lies_about_its_size_is_refused_before_reading(tmp_path: Path) -> None:
    import zipfile

    path = _good(tmp_path)
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    with zipfile.ZipFile(path / "arrays.npz", "w", zipfile.ZIP_STORED) as archive:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr)
            data = buf.getvalue()
            if name == "base.item_counts":  # claim a billion items, hold two
                data = data.replace(b"(2,)", b"(1000000000,)", 1)
            archive.writestr(name + ".npy", data)
    with pytest.raises(CheckpointError, match=r"claims shape \(1000000000,\)"):
        _open_and_serve(path)
