"""Property-based fuzzing of every endpoint (hypothesis): whatever a client sends, the answer is
never a 5xx, the service stays up, and every accepted event is journalled and applied once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmrn.baselines.popularity import Popularity
from nmrn.serving.app import create_app
from nmrn.serving.schemas import Limits
from nmrn.serving.service import LiveService

TOKEN = "fuzz"
READ = "fuzz-read"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# what a reader may send: nothing, either token, another scheme, a wrong token, any text
authorizations = st.sampled_from([None, f"Bearer {READ}", f"Bearer {TOKEN}", f"Basic {READ}",
                                   f"Bearer {READ}x", "Bearer", f"bearer  {READ} "]) | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
VALID = {f"Bearer {READ}", f"Bearer {TOKEN}", f"bearer  {READ} "}
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=40))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                          inner, max_size=4),
    max_leaves=20,
)
ids = st.integers(-(2**63), 2**63 - 1) | st.text(min_size=1, max_size=20)
events = st.fixed_dictionaries(
    {"user": ids, "item": ids, "timestamp": st.floats(allow_nan=False, allow_infinity=False)},
    optional={"weight": st.floats(allow_nan=False, allow_infinity=False)},
)
bodies = (json_values | events | st.fixed_dictionaries({"events": st.lists(events, max_size=4)})
          | st.fixed_dictionaries({"events": json_values}))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    model = Popularity().fit([(1, "a", 0.0), (2, "b", 1.0)])
    service = LiveService(model, checkpoint_path=tmp / "ck", journal_path=tmp / "j",
                          apply_wait=0, checkpoint_every=None, checkpoint_seconds=None)
    client = TestClient(create_app(service, token=TOKEN, read_token=READ,
                                   limits=Limits(max_events=3)),
                        raise_server_exceptions=False)
    accepted: list[int] = []
    yield service, client, accepted, tmp
    service.close(checkpoint=False)


def _ok(response: Any) -> None:
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith(("application/json", "text/"))


def _read(client: TestClient, method: str, url: str, authorization: str | None,
          content: bytes | None = None) -> None:
    """A read with ``authorization``: refused (401/403) exactly when it holds no valid token."""
    headers = {} if authorization is None else {"Authorization": authorization}
    if content is not None:
        headers["Content-Type"] = "application/json"
    r = client.request(method, url, headers=headers, content=content)
    _ok(r)
    if authorization in VALID:
        assert r.status_code not in (401, 403), r.text
    else:
        assert r.status_code in (401, 403), (authorization, r.status_code, r.text)


@SETTINGS
@given(body=bodies, raw=st.booleans())
def test_post_events_never_fails_and_loses_nothing(live: Any, body: Any, raw: bool) -> None:
    service, client, accepted, _ = live
    text = json.dumps(body, allow_nan=True) if raw else None
    if raw:
        r = client.post("/events", content=text, headers={**AUTH, "content-type":
                                                            "application/json"})
    else:
        try:
            r = client.post("/events", json=body, headers=AUTH)
        except ValueError:  # a value JSON cannot hold (NaN) never leaves the client
            return
    _ok(r)
    if r.status_code == 202:
        accepted.append(r.json()["accepted"])


@SETTINGS
@given(body=json_values | st.fixed_dictionaries(
    {"users": st.lists(ids | json_values, max_size=4)}, optional={"k": json_values,
                                                                   "exclude_seen": json_values}),
       authorization=authorizations)
def test_post_recommendations_never_fails(live: Any, body: Any,
                                          authorization: str | None) -> None:
    _, client, _, _ = live
    try:
        content = json.dumps(body, allow_nan=False).encode()
    except ValueError:  # a value JSON cannot hold (NaN) never leaves a client
        return
    _read(client, "POST", "/recommendations", authorization, content)


@SETTINGS
# (a user with "/" is another path: the router's 404, before any token check)
@given(user=st.text(min_size=1, max_size=30).filter(lambda u: "/" not in u
                                                     and u not in (".", "..")),
       query=st.dictionaries(st.sampled_from(["k", "exclude_seen", "x"]),
                             st.text(max_size=12), max_size=3),
       authorization=authorizations)
def test_get_recommendations_never_fails(live: Any, user: str, query: dict[str, str],
                                         authorization: str | None) -> None:
    _, client, _, _ = live
    path = "/recommendations/" + quote(user.encode("utf-8", "surrogatepass"), safe="")
    qs = "&".join(f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in
                  query.items())
    _read(client, "GET", path + ("?" + qs if qs else ""), authorization)


@SETTINGS
@given(path=st.text(max_size=30), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_any_path_and_method_never_fails(live: Any, path: str, method: str) -> None:
    _, client, _, _ = live
    _ok(client.request(method, "/" + quote(path.encode("utf-8", "surrogatepass"), safe="/")))


def test_after_the_fuzzing_every_accepted_event_is_journalled_and_applied(live: Any) -> None:
    # runs after the fuzzing above (same module-scoped service); one accepted event of its own
    # keeps it meaningful when selected alone
    service, client, accepted, tmp = live
    r = client.post("/events", json={"user": 9, "item": "z", "timestamp": 1.0}, headers=AUTH)
    assert r.status_code == 202
    accepted.append(1)
    assert client.get("/healthz").status_code == 200
    assert service.wait_applied()
    assert service.applied_seq == service.accepted_seq == sum(accepted)
    assert service.model.n_events == 2 + sum(accepted)
    assert service.errors.get("internal", 0) == 0  # no 500 was ever answered
