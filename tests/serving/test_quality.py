"""Live prequential quality: the moving figures, worked by hand, and the rules they follow."""

from __future__ import annotations

import math

import pytest

from nmrn.baselines.popularity import Popularity
from nmrn.data.events import as_events
from nmrn.serving.quality import LiveQuality

# popularity: x (3 events) > y (2) > z (1); u has consumed x
BASE = [("u", "x", 0), ("v", "x", 1), ("w", "x", 2), ("v", "y", 3), ("w", "y", 4), ("w", "z", 5)]


def test_hits_and_ndcg_by_hand() -> None:
    model = Popularity().fit(BASE)
    quality = LiveQuality(k=2, window=10)
    # u's top 2 (x excluded): y, z -> u consumes z: hit at rank 2, NDCG 1/log2(3)
    # v's top 2 (x, y excluded): z, then nothing -> v consumes z: hit at rank 1
    quality.measure(model, as_events([("u", "z", 6), ("v", "z", 7)]))
    snap = quality.snapshot()
    assert snap["events"] == snap["total"] == 2
    assert snap["hits"] == 1.0
    assert snap["ndcg"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    # w has consumed everything but nothing new is known: a new item is skipped, not a miss
    quality.measure(model, as_events([("w", "new", 8)]))
    assert quality.snapshot()["total"] == 2


def test_the_rules_unknown_repeats_one_per_user_and_the_cap() -> None:
    model = Popularity().fit(BASE)
    quality = LiveQuality(k=1, window=100, per_run=2)
    batch = as_events([
        ("stranger", "x", 6),  # unknown user: skipped
        ("v", "x", 7),  # a re-consumption (reads exclude it): skipped, and v is done this run
        ("v", "z", 8),  # v's second event of the run: not "just before" any more
        ("u", "z", 9),  # u's top 1 is y: a miss
        ("w", "q", 10),  # unknown item: skipped
    ])
    quality.measure(model, batch)
    snap = quality.snapshot()
    assert (snap["total"], snap["hits"], snap["ndcg"]) == (1, 0.0, 0.0)
    capped = LiveQuality(k=1, per_run=1)
    capped.measure(model, as_events([("u", "y", 6), ("w", "y", 7)]))  # both would count
    assert capped.snapshot()["total"] == 1
    off = LiveQuality(per_run=0)
    off.measure(model, as_events([("u", "y", 6)]))
    assert off.snapshot()["total"] == 0 and math.isnan(off.snapshot()["hits"])


def test_the_window_keeps_the_most_recent() -> None:
    model = Popularity().fit(BASE)
    quality = LiveQuality(k=1, window=2)
    quality.measure(model, as_events([("u", "y", 6)]))  # hit (u's top 1: y)
    quality.measure(model, as_events([("u", "z", 7)]))  # miss
    quality.measure(model, as_events([("u", "z", 8)]))  # miss
    assert quality.snapshot() == {"hits": 0.0, "ndcg": 0.0, "events": 2, "total": 3, "k": 1}


def test_the_service_reports_live_quality_in_status_and_metrics() -> None:
    from fastapi.testclient import TestClient

    from nmrn.serving.app import create_app
    from nmrn.serving.service import LiveService

    with LiveService(Popularity().fit(BASE), apply_wait=0) as service:
        client = TestClient(create_app(service))
        assert client.get("/").text.startswith("<!doctype html>")
        service.submit([("u", "y", 6.0), ("v", "z", 7.0)])  # both hits at k=10
        assert service.wait_applied()
        client.get("/recommendations/u")
        status = client.get("/status.json").json()
        assert status["live_quality"]["hits"] == 1.0 and status["live_quality"]["total"] == 2
        assert status["applied_seq"] == 2 and status["read_ms"]["reads"] == 1
        lines = dict(line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines()
                     if line and not line.startswith("#"))
        assert float(lines["nmrn_live_hits_at_10"]) == 1.0
        assert float(lines["nmrn_live_quality_events_total"]) == 2


def test_a_token_bucket_bounds_the_cost_whatever_the_traffic() -> None:
    model = Popularity().fit(BASE + [(f"n{j}", "x", 10 + j) for j in range(20)])
    now = [0.0]
    quality = LiveQuality(k=1, per_second=2.0, per_run=8, clock=lambda: now[0])
    burst = as_events([(f"n{j}", "y", 100 + j) for j in range(20)])  # 20 known users, all warm
    quality.measure(model, burst)
    assert quality.snapshot()["total"] == 8  # the bucket starts full: one run's worth
    now[0] = 0.5
    quality.measure(model, burst)
    assert quality.snapshot()["total"] == 9  # half a second at 2/s: one more
    now[0] = 100.0
    quality.measure(model, burst)
    assert quality.snapshot()["total"] == 17  # refilled, but never beyond a run's worth
