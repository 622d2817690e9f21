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
AUTH = {"Authorization": f"Bearer {TOKEN}"}
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
    client = TestClient(create_app(service, token=TOKEN, limits=Limits(max_events=3)),
                        raise_server_exceptions=False)
    accepted: list[int] = []
    yield service, client, accepted, tmp
    service.close(checkpoint=False)


def _ok(response: Any) -> None:
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith(("application/json", "text/"))


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
                                                                   "exclude_seen": json_values}))
def test_post_recommendations_never_fails(live: Any, body: Any) -> None:
    _, client, _, _ = live
    try:
        _ok(client.post("/recommendations", json=body))
    except ValueError:
        pass


@SETTINGS
@given(user=st.text(max_size=30), query=st.dictionaries(st.sampled_from(["k", "exclude_seen",
                                                                          "x"]),
                                                         st.text(max_size=12), max_size=3))
def test_get_recommendations_never_fails(live: Any, user: str, query: dict[str, str]) -> None:
    _, client, _, _ = live
    path = "/recommendations/" + quote(user.encode("utf-8", "surrogatepass"), safe="")
    qs = "&".join(f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in
                  query.items())
    _ok(client.get(path + ("?" + qs if qs else "")))


@SETTINGS
@given(path=st.text(max_size=30), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_any_path_and_method_never_fails(live: Any, path: str, method: str) -> None:
    _, client, _, _ = live
    _ok(client.request(method, "/" + quote(path.encode("utf-8", "surrogatepass"), safe="/")))


def test_after_the_fuzzing_every_accepted_event_is_journalled_and_applied(live: Any) -> None:
    service, client, accepted, tmp = live
    assert client.get("/healthz").status_code == 200
    assert service.wait_applied()
    assert service.applied_seq == service.accepted_seq == sum(accepted)
    assert service.model.n_events == 2 + sum(accepted)
    assert service.errors.get("internal", 0) == 0  # no 500 was ever answered
