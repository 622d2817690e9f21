"""Safe retries: an Idempotency-Key makes POST /events apply at most once, across crashes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nmrn.baselines.popularity import Popularity
from nmrn.serving.app import create_app
from nmrn.serving.service import IdempotencyConflict, LiveService, default_journal_path

HISTORY = [(1, "a", 0.0), (2, "b", 1.0)]
EVENTS = [(3, "c", 2.0), (3, "a", 3.0)]


def test_a_retried_request_is_answered_as_the_first_and_applies_nothing() -> None:
    with LiveService(Popularity().fit(HISTORY), apply_wait=0) as service:
        client = TestClient(create_app(service))
        body = {"events": [{"user": 3, "item": "c", "timestamp": 2}]}
        first = client.post("/events", json=body, headers={"Idempotency-Key": "req-1"})
        again = client.post("/events", json=body, headers={"Idempotency-Key": "req-1"})
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json() == {"accepted": 1, "first_seq": 1, "seq": 1}
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        other = client.post("/events", json={"user": 4, "item": "c", "timestamp": 3},
                            headers={"Idempotency-Key": "req-1"})
        assert other.status_code == 422 and "was used for different events" in other.json()[
            "error"]
        bad = client.post("/events", json=body, headers={"Idempotency-Key": "has space"})
        assert bad.status_code == 400 and "idempotency-key" in bad.json()["error"]
        fresh = client.post("/events", json=body, headers={"Idempotency-Key": "req-2"})
        assert fresh.json()["seq"] == 2  # a new key is a new request
        assert service.wait_applied()
        assert service.model.n_events == len(HISTORY) + 2


def test_keys_survive_a_crash_and_a_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "pop.ckpt"
    Popularity().fit(HISTORY).save(ckpt)
    service = LiveService.open(ckpt, apply_wait=0)
    assert service.submit_once(EVENTS, "k1") == (1, 2, False)
    service.abandon()  # a crash: k1 is only in the journal
    service = LiveService.open(ckpt, apply_wait=0)
    try:
        assert service.submit_once(EVENTS, "k1") == (1, 2, True)  # replayed, not re-applied
        assert service.wait_applied()
        assert service.model.n_events == len(HISTORY) + 2
        service.checkpoint()  # the journal is truncated: k1 now lives in the checkpoint
        assert default_journal_path(ckpt).read_bytes() == b""
    finally:
        service.close()
    service = LiveService.open(ckpt, apply_wait=0)
    try:
        assert service.submit_once(EVENTS, "k1") == (1, 2, True)
        with pytest.raises(IdempotencyConflict):
            service.submit_once(EVENTS[:1], "k1")
        assert service.wait_applied() and service.model.n_events == len(HISTORY) + 2
    finally:
        service.close()


def test_keys_are_forgotten_after_the_window_and_beyond_the_cap() -> None:
    model = Popularity().fit(HISTORY)
    with LiveService(model, idempotency_window=0.2, max_idempotency_keys=2) as service:
        assert service.submit_once(EVENTS[:1], "old")[2] is False
        time.sleep(0.3)
        assert service.submit_once(EVENTS[:1], "old")[2] is False  # a new request now
        service.submit_once(EVENTS[:1], "a")
        service.submit_once(EVENTS[:1], "b")  # "old" (the oldest) is forgotten: at most 2
        assert service.submit_once(EVENTS[:1], "old")[2] is False
        assert service.submit_once(EVENTS[:1], "b")[2] is True
