"""The Redis Streams source and the consumer over it: delivery, acks, recovery, dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from streams.conftest import OrderModel

from nmrn.streams.consumer import Consumer
from nmrn.streams.position import load_checkpoint, save_checkpoint
from nmrn.streams.redis_source import RedisStreamSource, parse_stream_id
from nmrn.streams.sources import SourceError

STREAM = "ev"


def _add(client: redis.Redis, rows: list[dict[str, Any]]) -> list[str]:
    return [client.xadd(STREAM, row).decode() for row in rows]


def _rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"user": t % 7, "item": t % 5, "timestamp": 1000 + t} for t in range(start, start + n)]


def _straight(rows: list[dict[str, Any]]) -> OrderModel:
    """The model after learning ``rows`` directly, one batch."""
    model = OrderModel()
    model.learn([(int(r["user"]), int(r["item"]), float(r["timestamp"])) for r in rows])
    return model


def _consume(url: str, model: Any, path: Path, group: str = "g", **kw: Any) -> Any:
    source = RedisStreamSource(STREAM, group, "c1", url=url, block_ms=50)
    try:
        consumer = Consumer(
            model, source, path, checkpoint_every=kw.pop("checkpoint_every", 10),
            batch_size=kw.pop("batch_size", 4), poll_timeout=0.05,
        )
        return consumer.run(idle_timeout=kw.pop("idle_timeout", 0.2), **kw)
    finally:
        source.close()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    with redis.Redis.from_url(redis_url) as c:
        yield c


def test_stream_ids_compare_numerically() -> None:
    assert parse_stream_id("9-0") < parse_stream_id("10-0") < parse_stream_id("10-1")
    assert parse_stream_id("5") == (5, 0)
    with pytest.raises(SourceError, match="not a Redis stream id"):
        parse_stream_id("abc")


def test_consume_applies_everything_in_order_and_acks(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    rows = _rows(37)
    ids = _add(client, rows)
    model = OrderModel()
    stats = _consume(redis_url, model, tmp_path / "ck")
    assert (stats.applied, stats.invalid, stats.stopped) == (37, 0, "idle")
    np.testing.assert_array_equal(model.w, _straight(rows).w)
    # batches end at multiples of 4 and of 10 in the event count, then the idle tail
    assert model.batch_sizes == [4, 4, 2, 2, 4, 4, 4, 4, 2, 2, 4, 1]
    assert client.xpending(STREAM, "g")["pending"] == 0
    loaded, position = load_checkpoint(tmp_path / "ck")
    assert position == {"source": "redis", "stream": STREAM, "group": "g", "id": ids[-1],
                        "events": 37, "invalid": 0, "reject_mark": "0-0"}
    np.testing.assert_array_equal(loaded.w, model.w)


def test_integer_literal_ids_become_ints_other_strings_stay(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    _add(client, [
        {"user": "196", "item": "242", "timestamp": "881250949"},
        {"user": "u7", "item": "007", "timestamp": "1.5"},
        {"json": '{"user": "196", "item": 242, "timestamp": 3}'},
    ])
    model = OrderModel()
    _consume(redis_url, model, tmp_path / "ck")
    assert model.known_users.tolist() == [196, "u7", "196"]
    assert model.known_items.tolist() == [242, "007"]


BAD = [
    ({"item": "1", "timestamp": "1"}, "user: missing"),
    ({"user": "1", "timestamp": "1"}, "item: missing"),
    ({"user": "1", "item": "1"}, "timestamp: missing"),
    ({"user": "", "item": "1", "timestamp": "1"}, "user: must not be an empty string"),
    ({"user": "1", "item": "1", "timestamp": "soon"}, "timestamp: must be a number, got 'soon'"),
    ({"user": "1", "item": "1", "timestamp": "inf"}, "timestamp: must be a finite number"),
    ({"user": "1", "item": "1", "timestamp": "nan"}, "timestamp: must be a finite number"),
    ({"user": "1", "item": "1", "timestamp": "1", "weight": "x"}, "weight: must be a number"),
    ({"user": b"\xff", "item": "1", "timestamp": "1"}, "field 'user' is not valid UTF-8"),
    ({"user": "u", "item": "\x07bell", "timestamp": "1"}, "item: contains the control character"),
    ({"json": "{nope"}, "json: not valid JSON"),
    ({"json": "[1, 2]"}, "JSON value is a list, expected an object"),
    ({"json": '{"user": 1.5, "item": 1, "timestamp": 1}'}, "user: must be an int or a string"),
    ({"json": '{"user": true, "item": 1, "timestamp": 1}'}, "got bool True"),
    ({"json": '{"user": "u", "item": "\\udc80", "timestamp": 1}'}, "item: is not valid Unicode"),
    ({"json": "[" * 2000 + "]" * 2000}, "json: JSON nested 2000 deep; the limit is 32"),
    ({"json": '{"user": 1, "item": 1, "timestamp": 1}', "user": "2"}, "both a 'json' field"),
]


def test_each_malformed_entry_is_dead_lettered_with_its_reason(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    good = _rows(len(BAD) + 1)
    expected_ids = []
    for g, (bad, _reason) in zip(good, BAD + [(None, None)], strict=True):
        _add(client, [g])
        if bad is not None:
            expected_ids.append(client.xadd(STREAM, bad).decode())
    model = OrderModel()
    stats = _consume(redis_url, model, tmp_path / "ck")
    # the valid entries around each bad one are applied, in order
    assert (stats.applied, stats.invalid) == (len(good), len(BAD))
    np.testing.assert_array_equal(model.w, _straight(good).w)
    dead = client.xrange(f"{STREAM}:dead")
    assert len(dead) == len(BAD)
    for (_, fields), (bad, reason), entry_id in zip(dead, BAD, expected_ids, strict=True):
        assert reason in fields[b"reason"].decode(), fields
        assert fields[b"id"].decode() == entry_id
        assert fields[b"stream"] == STREAM.encode() and fields[b"group"] == b"g"
        original = {k[len(b"field."):]: v for k, v in fields.items() if k.startswith(b"field.")}
        assert original == {k.encode(): v if isinstance(v, bytes) else v.encode()
                            for k, v in bad.items()}
    # acknowledged: never retried; a restart dead-letters nothing twice
    assert client.xpending(STREAM, "g")["pending"] == 0
    again, _ = load_checkpoint(tmp_path / "ck")
    stats2 = _consume(redis_url, again, tmp_path / "ck")
    assert (stats2.applied, stats2.invalid) == (0, 0)
    assert client.xlen(f"{STREAM}:dead") == len(BAD)


def test_deleted_pending_entry_is_dead_lettered(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    ids = _add(client, _rows(3))
    source = RedisStreamSource(STREAM, "g", "c1", url=redis_url)
    source.resume_after(None)
    assert len(source.poll(10, 0.1)) == 3  # delivered, then the process "dies"
    source.close()
    client.xdel(STREAM, ids[1])
    model = OrderModel()
    stats = _consume(redis_url, model, tmp_path / "ck")
    assert stats.applied == 2 and model.n_events == 2
    (_, dead), = client.xrange(f"{STREAM}:dead")
    assert b"deleted from the stream" in dead[b"reason"] and dead[b"id"].decode() == ids[1]
    assert client.xpending(STREAM, "g")["pending"] == 0


class _Killed(Exception):
    """The process "dies" at a checkpoint: nothing of this run after the last save survives."""


def _run_until_killed(url: str, path: Path, consumer: str, monkeypatch: pytest.MonkeyPatch,
                      saves_before_kill: int) -> None:
    """Consume as ``consumer`` from the checkpoint at ``path`` (or fresh) and die at the
    checkpoint after ``saves_before_kill`` successful ones."""
    from nmrn.streams import consumer as consumer_module

    real, done = consumer_module.save_checkpoint, []

    def save(*args: Any, **kwargs: Any) -> None:
        if len(done) == saves_before_kill:
            raise _Killed
        done.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(consumer_module, "save_checkpoint", save)
    model = load_checkpoint(path)[0] if path.exists() else OrderModel()
    source = RedisStreamSource(STREAM, "g", consumer, url=url, block_ms=50)
    try:
        with pytest.raises(_Killed):
            Consumer(model, source, path, checkpoint_every=4, batch_size=4,
                     poll_timeout=0.05).run(idle_timeout=0.2)
    finally:
        source.close()
        monkeypatch.undo()


def test_the_dead_letter_count_survives_a_kill_and_a_renamed_consumer(
    redis_url: str, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 11, finding 13: a dead letter is acknowledged at once, so a consumer killed after
    # writing one but before its checkpoint never sees the entry again; the count must not die
    # with it, also when the consumer comes back under another name
    rows = _rows(10)
    _add(client, rows[:4])
    bad = client.xadd(STREAM, {"user": "1"}).decode()
    _add(client, rows[4:])
    # checkpoint after 4 events, reject the bad entry, and die at the next checkpoint
    _run_until_killed(redis_url, tmp_path / "ck", "a", monkeypatch, saves_before_kill=1)
    assert client.xlen(f"{STREAM}:dead") == 1
    assert load_checkpoint(tmp_path / "ck")[1]["invalid"] == 0  # the save died with it
    model, _ = load_checkpoint(tmp_path / "ck")
    source = RedisStreamSource(STREAM, "g", "b", url=redis_url, block_ms=50)
    stats = Consumer(model, source, tmp_path / "ck", checkpoint_every=4, batch_size=4,
                     poll_timeout=0.05).run(idle_timeout=0.2)
    source.close()
    _, position = load_checkpoint(tmp_path / "ck")
    assert position["events"] == 10 and position["invalid"] == 1
    (_, dead), = client.xrange(f"{STREAM}:dead")
    assert dead[b"id"].decode() == bad
    assert stats.applied == 6


def test_a_deleted_pending_entry_is_counted_once_over_several_restarts(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    # the dead letter of a deleted entry is written at start, ahead of the checkpoint's
    # position; a later restart must not count it again
    ids = _add(client, _rows(6))
    source = RedisStreamSource(STREAM, "g", "c1", url=redis_url)
    source.resume_after(None)
    assert len(source.poll(10, 0.1)) == 6  # delivered, then the process "dies"
    source.close()
    client.xdel(STREAM, ids[3])
    model = OrderModel()
    first = _consume(redis_url, model, tmp_path / "ck", max_events=2)
    assert first.applied == 2
    _, position = load_checkpoint(tmp_path / "ck")
    assert position["id"] == ids[1] and position["invalid"] == 1
    model, _ = load_checkpoint(tmp_path / "ck")
    _consume(redis_url, model, tmp_path / "ck")
    model, position = load_checkpoint(tmp_path / "ck")
    assert client.xlen(f"{STREAM}:dead") == 1
    assert (position["events"], position["invalid"]) == (5, 1)


def test_a_fresh_checkpoint_does_not_count_an_earlier_life_s_dead_letters(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    _add(client, _rows(3))
    client.xadd(STREAM, {"user": "1"})
    _consume(redis_url, OrderModel(), tmp_path / "old")
    client.xgroup_destroy(STREAM, "g")
    stats = _consume(redis_url, OrderModel(), tmp_path / "new")  # the same group, from 0
    _, position = load_checkpoint(tmp_path / "new")
    assert stats.invalid == 1 and position["invalid"] == 1  # its own reject, not the old one
    assert client.xlen(f"{STREAM}:dead") == 2


def test_nothing_is_acked_before_the_checkpoint_is_durable(
    redis_url: str, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add(client, _rows(20))

    def failing_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("nmrn.streams.consumer.save_checkpoint", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _consume(redis_url, OrderModel(), tmp_path / "ck")
    # every delivered entry is still pending: a restart will see it again
    assert client.xpending(STREAM, "g")["pending"] == 10
    monkeypatch.undo()
    model = OrderModel()
    stats = _consume(redis_url, model, tmp_path / "ck")
    assert stats.applied == 20 and model.n_events == 20
    np.testing.assert_array_equal(model.w, _straight(_rows(20)).w)


def test_restart_skips_pending_entries_already_in_the_checkpoint(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """A crash after the save but before XACK: the pending entries <= the position are skipped."""
    rows = _rows(12)
    ids = _add(client, rows)
    source = RedisStreamSource(STREAM, "g", "c1", url=redis_url)
    source.resume_after(None)
    entries = source.poll(8, 0.1)
    source.close()
    model = OrderModel()
    model.learn([(e.value["user"], e.value["item"], e.value["timestamp"]) for e in entries[:5]])
    position = {**entries[4].position, "events": 5, "invalid": 0}
    save_checkpoint(model, tmp_path / "ck", position=position)  # ... and no XACK: killed here
    assert client.xpending(STREAM, "g")["pending"] == 8

    model, _ = load_checkpoint(tmp_path / "ck")
    source = RedisStreamSource(STREAM, "g", "c1", url=redis_url, block_ms=50)
    stats = Consumer(model, source, tmp_path / "ck", batch_size=4, poll_timeout=0.05).run(
        idle_timeout=0.2
    )
    assert source.n_skipped == 5
    assert stats.applied == 7 and model.n_events == 12
    np.testing.assert_array_equal(model.w, _straight(rows).w)
    assert client.xpending(STREAM, "g")["pending"] == 0
    assert load_checkpoint(tmp_path / "ck")[1]["id"] == ids[-1]


def test_pending_entries_of_another_consumer_name_are_claimed(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    rows = _rows(6)
    _add(client, rows)
    old = RedisStreamSource(STREAM, "g", "old-name", url=redis_url)
    old.resume_after(None)
    assert len(old.poll(4, 0.1)) == 4  # delivered to "old-name", never acked
    old.close()
    model = OrderModel()
    _consume(redis_url, model, tmp_path / "ck")  # consumer "c1"
    np.testing.assert_array_equal(model.w, _straight(rows).w)
    assert client.xpending(STREAM, "g")["pending"] == 0


def test_missing_group_is_created_at_the_checkpoint_position(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    rows = _rows(10)
    ids = _add(client, rows)
    model = OrderModel()
    model.learn([(r["user"], r["item"], r["timestamp"]) for r in rows[:6]])
    position = {"source": "redis", "stream": STREAM, "group": "new", "id": ids[5], "events": 6}
    save_checkpoint(model, tmp_path / "ck", position=position)
    model, _ = load_checkpoint(tmp_path / "ck")
    stats = _consume(redis_url, model, tmp_path / "ck", group="new")
    assert stats.applied == 4
    np.testing.assert_array_equal(model.w, _straight(rows).w)


@pytest.mark.parametrize(
    ("position", "message"),
    [
        ({"source": "file", "line": 3, "offset": 9}, "from a 'file' source"),
        ({"source": "redis", "stream": "other", "group": "g", "id": "1-0"}, "stream 'other'"),
        ({"source": "redis", "stream": STREAM, "group": "h", "id": "1-0"}, "group 'h'"),
    ],
)
def test_a_position_from_another_stream_is_refused(
    redis_url: str, position: dict[str, Any], message: str
) -> None:
    source = RedisStreamSource(STREAM, "g", "c1", url=redis_url)
    with pytest.raises(SourceError, match=message):
        source.resume_after(position)
    source.close()


def test_unreachable_redis_is_a_clear_error() -> None:
    source = RedisStreamSource(STREAM, "g", url="redis://127.0.0.1:1/0")
    with pytest.raises(SourceError, match="cannot reach Redis at redis://127.0.0.1:1/0"):
        source.resume_after(None)
