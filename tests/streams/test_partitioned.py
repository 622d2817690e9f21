"""Partitioned ingestion (docs/scaling.md section 5) against a real redis-server on loopback.

The producer's partitioning, the merge order (against the single-stream consumer), malformed
entries, a wrong P, and the proof of the consistent cut: one rank of a 2-process consumer is
killed with SIGKILL at seeded moments, the survivors must exit with an error within bounded
time, and restarts with R = 2, 3, 1 must end in the state of an uninterrupted run: the same
applied prefix of every partition, every history and count exact, and the floats equal up to the
rounding of BPR's data-parallel step (bit-identical when R = 1).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streams.conftest import OrderModel

from nmrn.baselines.bpr import BPR
from nmrn.errors import ConfigError
from nmrn.streams.consumer import Consumer
from nmrn.streams.partitioned import (
    PartitionedConsumer,
    PartitionedProducer,
    partition_of,
    stream_key,
)
from nmrn.streams.position import load_checkpoint, save_checkpoint
from nmrn.streams.redis_source import RedisStreamSource, parse_stream_id
from tests.streams.progress import events_in

P = 4
PREFIX = "ev"


def _log(n: int, seed: int = 7, users: int = 300, ties: bool = False) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    u = rng.integers(1, users, size=n)
    i = np.minimum(rng.zipf(1.3, size=n), 500) + 1000
    t = 880_000_000 + (np.arange(n) // 3 if ties else np.arange(n))
    return [{"user": int(a), "item": int(b), "timestamp": int(c)}
            for a, b, c in zip(u, i, t, strict=True)]


# -- the producer ---------------------------------------------------------------------------
def test_partition_of_is_crc32_of_the_canonical_id_and_agrees_across_processes() -> None:
    assert partition_of(196, 4) == zlib.crc32(b"196") % 4 == partition_of("196", 4)
    assert partition_of("usér", 7) == zlib.crc32("usér".encode()) % 7
    code = "from nmrn.streams.partitioned import partition_of as f; print([f(u, 5) for u in " \
           "['a', 'b', 'u17', 3, 'é']])"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1  # not Python's salted hash
    with pytest.raises(ValueError, match="partitions"):
        partition_of(1, 0)
    with pytest.raises(TypeError, match="int or a str"):
        partition_of(1.5, 3)  # type: ignore[arg-type]


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, "a", "b", "zz", 99]),
                          st.integers(0, 50)), min_size=1, max_size=60))
def test_producer_puts_each_user_in_one_partition_in_order(redis_server: str, rows: Any) -> None:
    import redis

    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    events = [{"user": u, "item": i, "timestamp": k} for k, (u, i) in enumerate(rows)]
    producer = PartitionedProducer(redis_server, PREFIX, P)
    assert producer.send(events) == len(events)
    producer.close()
    with redis.Redis.from_url(redis_server) as client:
        assert client.get(f"{PREFIX}:partitions") == b"4"
        for p in range(P):
            got = [(f[b"user"].decode(), int(f[b"timestamp"]))
                   for _, f in client.xrange(stream_key(PREFIX, p))]
            want = [(str(e["user"]), e["timestamp"]) for e in events
                    if partition_of(e["user"], P) == p]
            assert got == want


def test_nmrn_produce_cli_and_wrong_p_refused(redis_url: str, tmp_path: Path) -> None:
    import redis

    path = tmp_path / "ev.jsonl"
    lines = [json.dumps(e) for e in _log(50)] + ["{not json"]
    path.write_text("\n".join(lines) + "\n")
    run = [sys.executable, "-m", "nmrn", "produce", "--source", f"file:{path}",
           "--redis", redis_url, "--stream", PREFIX]
    out = subprocess.run([*run, "--partitions", "4"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["sent"] == 50 and stats["invalid"] == 1 and sum(stats["per_partition"]) == 50
    with redis.Redis.from_url(redis_url) as client:
        assert [client.xlen(stream_key(PREFIX, p)) for p in range(4)] == stats["per_partition"]
    # a second producer with another P, and a consumer with another P, are refused
    bad = subprocess.run([*run, "--partitions", "3"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "partitioned into 4 partitions" in bad.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "nmrn", "consume", "--checkpoint", str(tmp_path / "c"),
         "--model", "pop", "--source", redis_url, "--stream", PREFIX, "--group", "g",
         "--partitions", "5", "--idle-timeout", "0.2"],
        capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not 5; use --partitions 4" in bad.stderr
    assert not (tmp_path / "c").exists()


# -- the merge ------------------------------------------------------------------------------
def _consume(model: Any, url: str, ckpt: Path, group: str = "g", prefix: str = PREFIX,
             **kw: Any) -> Any:
    consumer = PartitionedConsumer(model, url, prefix, group, P, ckpt,
                                   batch_size=kw.pop("batch_size", 16),
                                   checkpoint_every=kw.pop("checkpoint_every", 64),
                                   poll_timeout=0.05)
    try:
        return consumer.run(idle_timeout=0.2, **kw)
    finally:
        consumer.close()


def test_merged_order_equals_the_single_stream_order(redis_url: str, tmp_path: Path) -> None:
    import redis

    events = _log(700)
    with redis.Redis.from_url(redis_url) as client:
        for e in events:
            client.xadd("single", e)
    PartitionedProducer(redis_url, PREFIX, P).send(events)
    single = OrderModel()
    src = RedisStreamSource("single", "g", url=redis_url)
    Consumer(single, src, tmp_path / "single", batch_size=16, checkpoint_every=64).run(
        idle_timeout=0.2)
    src.close()
    merged = OrderModel()
    stats = _consume(merged, redis_url, tmp_path / "merged")
    assert stats.applied == 700 and stats.total_applied == 700
    np.testing.assert_array_equal(merged.w, single.w)  # same events, same order
    assert merged.batch_sizes == single.batch_sizes  # and the same batches
    _, position = load_checkpoint(tmp_path / "merged")
    assert position is not None and position["events"] == 700
    with redis.Redis.from_url(redis_url) as client:
        for p in range(P):
            last = client.xrevrange(stream_key(PREFIX, p), count=1)[0][0].decode()
            assert position["ids"][str(p)] == last
            assert client.xpending(stream_key(PREFIX, p), "g")["pending"] == 0


def test_ties_are_ordered_by_partition_then_entry_id(redis_url: str, tmp_path: Path) -> None:
    events = _log(300, ties=True)
    producer = PartitionedProducer(redis_url, PREFIX, P)
    producer.send(events)
    # the expected order: (timestamp, partition, production order within the partition)
    order = sorted(range(len(events)), key=lambda k: (
        events[k]["timestamp"], partition_of(events[k]["user"], P), k))
    expected = OrderModel()
    for lo in range(0, len(order), 16):
        chunk = [events[k] for k in order[lo : lo + 16]]
        expected.learn([(e["user"], e["item"], float(e["timestamp"])) for e in chunk])
    got = OrderModel()
    _consume(got, redis_url, tmp_path / "c")
    np.testing.assert_array_equal(got.w, expected.w)


def test_malformed_entries_are_dead_lettered_and_the_rest_applied(
    redis_url: str, tmp_path: Path
) -> None:
    import redis

    events = _log(200)
    PartitionedProducer(redis_url, PREFIX, P).send(events[:100])
    with redis.Redis.from_url(redis_url) as client:
        client.xadd(stream_key(PREFIX, 1), {"user": "1", "item": "2"})  # no timestamp
        client.xadd(stream_key(PREFIX, 3), {"json": "{broken"})
    PartitionedProducer(redis_url, PREFIX, P).send(events[100:])
    model = OrderModel()
    stats = _consume(model, redis_url, tmp_path / "c")
    assert stats.applied == 200 and stats.invalid == 2
    reference = OrderModel()
    _consume_clean = PartitionedProducer(redis_url, "clean", P)
    _consume_clean.send(events)
    _consume(reference, redis_url, tmp_path / "r", prefix="clean")
    np.testing.assert_array_equal(model.w, reference.w)
    _, position = load_checkpoint(tmp_path / "c")
    assert position is not None and position["invalid"] == 2
    with redis.Redis.from_url(redis_url) as client:
        dead = client.xrange(f"{PREFIX}:dead")
        assert sorted(f[b"stream"].decode() for _, f in dead) == ["ev:1", "ev:3"]
        for p in range(P):
            assert client.xpending(stream_key(PREFIX, p), "g")["pending"] == 0


def test_a_checkpoint_with_another_p_or_group_is_refused(redis_url: str, tmp_path: Path) -> None:
    PartitionedProducer(redis_url, PREFIX, P).send(_log(40))
    _consume(OrderModel(), redis_url, tmp_path / "c")
    model, _ = load_checkpoint(tmp_path / "c")
    with pytest.raises(ConfigError, match="partitions 4, not 2; P is fixed"):
        PartitionedConsumer(model, redis_url, "other", "g", 2, tmp_path / "c")
    with pytest.raises(ConfigError, match="group 'g', not 'h'"):
        PartitionedConsumer(model, redis_url, PREFIX, "h", P, tmp_path / "c")


# -- the consistent cut under SIGKILL -------------------------------------------------------
N_KILL = 6000
CKPT_EVERY = 300
BATCH = 50


def _bpr() -> BPR:
    return BPR(dim=8, learn_passes=1, epochs=1, batch_size=25, seed=3)


def _state(model: Any) -> dict[str, np.ndarray]:
    arrays, _ = model._state()
    indptr, hist = model.history.to_arrays()
    return {**arrays, "history_indptr": indptr, "history_items": hist,
            "item_counts": model.item_counts}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _launch(url: str, ckpt: Path, nproc: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "nmrn", "consume", "--checkpoint", str(ckpt),
         "--source", url, "--stream", PREFIX, "--group", "crash", "--partitions", str(P),
         "--nproc", str(nproc), "--checkpoint-every", str(CKPT_EVERY),
         "--batch-size", str(BATCH), "--idle-timeout", "0.5", "--dist-timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_one_rank_then_restart_with_any_r_equals_an_uninterrupted_run(
    redis_url: str, tmp_path: Path
) -> None:
    import redis

    events = _log(N_KILL, users=400)
    PartitionedProducer(redis_url, PREFIX, P).send(events)
    reference = _bpr()
    _consume(reference, redis_url, tmp_path / "ref", group="ref", batch_size=BATCH,
             checkpoint_every=CKPT_EVERY)
    assert reference.n_events == N_KILL

    ckpt = tmp_path / "crash.ckpt"
    save_checkpoint(_bpr(), ckpt, position=None)
    rng = random.Random(11)
    targets = sorted(rng.sample(range(900, N_KILL - 1500, CKPT_EVERY), 3))
    kills: list[int] = []
    restarts = iter([2, 3, 1])  # each restart with another R
    nproc = 2
    started: list[int] = []
    try:
        while True:
            proc = _launch(redis_url, ckpt, nproc)
            started.append(proc.pid)
            if len(kills) < len(targets):
                deadline = time.monotonic() + 120
                while events_in(ckpt) < targets[len(kills)] and proc.poll() is None:
                    assert time.monotonic() < deadline, "the consumer made no progress"
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.1))
                # the checkpoint a restart resumes from may already be past the next target
                # (the last kill came late): then the ranks are still starting; wait for them
                ranks = _children(proc.pid)
                while len(ranks) < nproc and proc.poll() is None:
                    assert time.monotonic() < deadline, "the ranks did not start"
                    time.sleep(0.005)
                    ranks = _children(proc.pid)
                assert len(ranks) == nproc, (ranks, proc.poll())
                started.extend(ranks)
                victim = ranks[rng.randrange(nproc)]
                os.kill(victim, signal.SIGKILL)
                kills.append(events_in(ckpt))
                # the launcher notices, stops the survivors, and fails: bounded, never a hang
                _, err = proc.communicate(timeout=45)
                assert proc.returncode == 1, err.decode()
                assert "was killed by signal 9" in err.decode()
                assert not any(_alive(r) for r in ranks)
                nproc = next(restarts)
                continue
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
            stats = json.loads(out.decode().strip().splitlines()[-1])
            assert stats["ranks"] == nproc and stats["total_applied"] == N_KILL
            break
    finally:
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert len(kills) == 3 and all(k < N_KILL for k in kills), kills

    model, position = load_checkpoint(ckpt)
    assert position is not None and position["events"] == N_KILL
    ref_model, ref_position = load_checkpoint(tmp_path / "ref")
    assert position["ids"] == ref_position["ids"]  # the same applied prefix of each partition
    # nothing lost, nothing doubled: every user's history, event by event
    expected: dict[int, list[int]] = {}
    for e in sorted(events, key=lambda e: e["timestamp"]):
        expected.setdefault(e["user"], []).append(e["item"])
    for u, items in expected.items():
        assert model.items.decode(model.history.items_of(model.users.get(u))).tolist() == items
    ref_state, got_state = _state(reference), _state(model)
    assert ref_state.keys() == got_state.keys()
    for key in ref_state:
        got, want = got_state[key], ref_state[key]
        if np.issubdtype(want.dtype, np.floating):
            # BPR's step is data-parallel under the consumer's process group: with R > 1 its
            # row gradients are summed in another order, so floats agree up to rounding (the
            # bound tests/training/test_distributed.py justifies; relative for the Adagrad sums,
            # which grow into the hundreds). Events lost or applied twice move them far more.
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=key)
        else:  # ids, counts, generator state, history: exact
            np.testing.assert_array_equal(got, want, err_msg=key)
    with redis.Redis.from_url(redis_url) as client:
        for p in range(P):
            assert client.xpending(stream_key(PREFIX, p), "crash")["pending"] == 0


@pytest.mark.parametrize("memory", ["shared", "per-user"])
def test_nmrn_learns_data_parallel_under_two_ranks(
    redis_url: str, tmp_path: Path, memory: str
) -> None:
    """NMRN's learn step is split across the consumer's ranks too (docs/scaling.md §5): the
    2-rank run ends where the one-process consumer does, floats up to summation order."""
    from nmrn.training.nmrn import NMRN

    def fresh() -> NMRN:
        return NMRN(dim=8, memory_slots=4, learn_passes=1, epochs=1, batch_size=25, seed=3,
                    per_user_memory=memory == "per-user", context_len=3 * (memory == "per-user"))

    events = _log(1200, users=100)
    PartitionedProducer(redis_url, PREFIX, P).send(events)
    reference = fresh()
    _consume(reference, redis_url, tmp_path / "ref", group="ref", batch_size=BATCH,
             checkpoint_every=CKPT_EVERY)
    ckpt = tmp_path / "two.ckpt"
    save_checkpoint(fresh(), ckpt, position=None)
    out = subprocess.run(
        [sys.executable, "-m", "nmrn", "consume", "--checkpoint", str(ckpt), "--source",
         redis_url, "--stream", PREFIX, "--group", "two", "--partitions", str(P), "--nproc", "2",
         "--batch-size", str(BATCH), "--checkpoint-every", str(CKPT_EVERY),
         "--idle-timeout", "0.5", "--dist-timeout", "20"],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    model, position = load_checkpoint(ckpt)
    assert position is not None and position["events"] == 1200 == reference.n_events
    want, got = _state(reference), _state(model)
    assert not np.array_equal(got["net.item_emb"], want["net.item_emb"])  # really split
    for key in want:
        if np.issubdtype(want[key].dtype, np.floating):  # the bound of test_distributed_nmrn
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=2e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_applied_but_unacknowledged_entries_are_skipped_on_restart(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank killed after the checkpoint is durable but before its ack: the entries at or
    below each partition's id are pending again, and must be skipped, not applied twice."""
    import redis

    events = _log(400)
    PartitionedProducer(redis_url, PREFIX, P).send(events)
    reference = OrderModel()
    _consume(reference, redis_url, tmp_path / "ref", group="ref")

    with monkeypatch.context() as m:  # the acks are lost
        m.setattr(RedisStreamSource, "ack", lambda self, position: None)
        first = _consume(OrderModel(), redis_url, tmp_path / "c", max_events=160)
    assert first.total_applied == 160
    with redis.Redis.from_url(redis_url) as client:
        pending = sum(client.xpending(stream_key(PREFIX, p), "g")["pending"] for p in range(P))
    assert pending >= 160  # the applied ones, and the read-ahead
    model, _ = load_checkpoint(tmp_path / "c")
    consumer = PartitionedConsumer(model, redis_url, PREFIX, "g", P, tmp_path / "c",
                                   batch_size=16, checkpoint_every=64, poll_timeout=0.05)
    stats = consumer.run(idle_timeout=0.2)
    skipped = sum(src.n_skipped for src in consumer.sources.values())
    consumer.close()
    assert stats.total_applied == 400 and skipped == 160
    np.testing.assert_array_equal(model.w, reference.w)
    assert model.batch_sizes == reference.batch_sizes


def test_sigterm_to_the_launcher_stops_every_rank_at_a_cut(redis_url: str, tmp_path: Path) -> None:
    import redis

    events = _log(N_KILL, users=400)
    PartitionedProducer(redis_url, PREFIX, P).send(events)
    ckpt = tmp_path / "crash.ckpt"
    save_checkpoint(_bpr(), ckpt, position=None)
    proc = _launch(redis_url, ckpt, 2)
    try:
        deadline = time.monotonic() + 120
        while events_in(ckpt) < 600 and proc.poll() is None:
            assert time.monotonic() < deadline, "the consumer made no progress"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        for pid in [*_children(proc.pid), proc.pid]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err.decode()
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["stopped"] == "stop" and stats["total_applied"] < N_KILL
    _, position = load_checkpoint(ckpt)
    assert position is not None and position["events"] == stats["total_applied"]
    with redis.Redis.from_url(redis_url) as client:
        for p in range(P):  # acknowledged: everything the final cut covers, nothing after
            cut = parse_stream_id(position["ids"][str(p)])
            pending = client.xpending_range(stream_key(PREFIX, p), "crash", min="-", max="+",
                                            count=10_000)
            assert all(parse_stream_id(row["message_id"].decode()) > cut for row in pending)
            acked = client.xrange(stream_key(PREFIX, p), max=position["ids"][str(p)])
            assert not {i for i, _ in acked} & {row["message_id"] for row in pending}


# -- event_id deduplication ---------------------------------------------------------------
def _with_retries(events: list[dict[str, Any]], seed: int, share: float = 0.1,
                  gap: int = 600) -> tuple[list[dict[str, Any]], int]:
    """``events`` with an event_id each, and a copy of a ``share`` of them produced again up to
    ``gap`` events later (a producer's retry: the same event, the same id)."""
    rng = random.Random(seed)
    tagged = [{**e, "event_id": f"ev-{k}"} for k, e in enumerate(events)]
    out = list(tagged)
    copies = sorted(rng.sample(range(len(tagged)), int(share * len(tagged))), reverse=True)
    for k in copies:
        out.insert(min(len(out), out.index(tagged[k]) + 1 + rng.randrange(gap)), dict(tagged[k]))
    return out, len(copies)


def test_a_retried_event_is_learned_once(redis_url: str, tmp_path: Path) -> None:
    import redis

    events = _log(800)
    sent, n_dup = _with_retries(events, seed=5)
    PartitionedProducer(redis_url, PREFIX, P).send(sent)
    PartitionedProducer(redis_url, "clean", P).send([{**e, "event_id": f"ev-{k}"}
                                                     for k, e in enumerate(events)])
    model = OrderModel()
    stats = _consume(model, redis_url, tmp_path / "c")
    assert n_dup == 80 and stats.duplicates == n_dup and stats.applied == 800
    reference = OrderModel()
    assert _consume(reference, redis_url, tmp_path / "r", prefix="clean").duplicates == 0
    # the same events, the same order and batches as the log without the retries
    np.testing.assert_array_equal(model.w, reference.w)
    assert model.batch_sizes == reference.batch_sizes
    _, position = load_checkpoint(tmp_path / "c")
    assert position is not None and position["duplicates"] == n_dup
    assert sum(len(v.split("\n")) for v in position["event_ids"].values()) == 800
    with redis.Redis.from_url(redis_url) as client:
        for p in range(P):  # the dropped copies are acknowledged too
            assert client.xpending(stream_key(PREFIX, p), "g")["pending"] == 0
            last = client.xrevrange(stream_key(PREFIX, p), count=1)[0][0].decode()
            assert position["ids"][str(p)] == last
    # a window of 0 turns it off: every copy is learned
    off = OrderModel()
    c = PartitionedConsumer(off, redis_url, PREFIX, "off", P, tmp_path / "off",
                            batch_size=16, checkpoint_every=64, poll_timeout=0.05,
                            dedupe_window=0)
    assert c.run(idle_timeout=0.2).applied == 880
    c.close()


def test_drops_that_empty_a_full_queue_end_the_batch_in_order(redis_url: str, tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    """A burst of retries longer than a batch fills one partition's read-ahead queue with
    copies only; dropping them empties it before the batch has its events, while its unread
    entries may come before the other partitions' heads. The batch then ends (shorter than the
    others): the events learned, in their order, are still those of the log without retries."""
    ua, ub = next((a, b) for a in range(50) for b in range(50)
                  if partition_of(a, P) != partition_of(b, P))
    # both users on the same three items: an event of one learned out of turn with the other's
    # changes w
    clean = [{"user": ua if t % 2 == 0 else ub, "item": t % 3, "timestamp": t,
              "event_id": f"e{t}"} for t in range(80)]
    mine = [e for e in clean if e["user"] == ua]
    burst = [dict(e) for e in mine[:6]] * 3  # 18 retries, right after ua's first 8 events
    sent = [e for e in clean if e["user"] == ub] + mine[:8] + burst + mine[8:]
    PartitionedProducer(redis_url, PREFIX, P).send(sent)  # per partition, in this order
    PartitionedProducer(redis_url, "clean", P).send(clean)
    merges: list[tuple[int, int, int, int]] = []  # (limit, taken, dropped, entries left)
    merge = PartitionedConsumer._merge

    def spy(self: PartitionedConsumer, limit: int) -> Any:
        taken, dropped = merge(self, limit)
        merges.append((limit, len(taken), dropped, sum(len(q) for q in self.queues.values())))
        return taken, dropped

    monkeypatch.setattr(PartitionedConsumer, "_merge", spy)
    model = OrderModel()
    stats = _consume(model, redis_url, tmp_path / "c", batch_size=4)
    assert (stats.applied, stats.duplicates) == (80, 18)
    # the case happened: a batch cut short by drops while other entries waited
    assert any(d > 0 and t < lim and left > 0 for lim, t, d, left in merges)
    reference = OrderModel()
    clean_run = _consume(reference, redis_url, tmp_path / "r", prefix="clean", batch_size=4)
    assert clean_run.duplicates == 0
    np.testing.assert_array_equal(model.w, reference.w)
    assert model.batch_sizes != reference.batch_sizes  # cut otherwise, learned the same


def test_a_window_of_one_partition_holds_the_latest_ids(redis_url: str, tmp_path: Path) -> None:
    """The bound: per partition, the latest ``dedupe_window`` applied ids; a retry that comes
    later than that is learned again (documented in docs/scaling.md)."""
    user = 5
    events = [{"user": user, "item": 1000 + k, "timestamp": k, "event_id": f"e{k}"}
              for k in range(10)]
    retries = [dict(events[7]), dict(events[2])]  # 7 is within the last 3 ids, 2 is not
    PartitionedProducer(redis_url, PREFIX, P).send(events + retries)
    model = OrderModel()
    c = PartitionedConsumer(model, redis_url, PREFIX, "g", P, tmp_path / "c", batch_size=4,
                            checkpoint_every=64, poll_timeout=0.05, dedupe_window=3)
    stats = c.run(idle_timeout=0.2)
    c.close()
    assert (stats.applied, stats.duplicates) == (11, 1)
    _, position = load_checkpoint(tmp_path / "c")
    assert position is not None
    assert position["event_ids"] == {str(partition_of(user, P)): "e8\ne9\ne2"}


def test_retries_are_learned_once_across_sigkill_and_restart(
    redis_url: str, tmp_path: Path
) -> None:
    import redis

    from nmrn.baselines.popularity import Popularity

    events = _log(3000, users=200, seed=9)
    sent, n_dup = _with_retries(events, seed=2, gap=900)  # many copies cross a cut
    PartitionedProducer(redis_url, PREFIX, P).send(sent)
    PartitionedProducer(redis_url, "clean", P).send([{**e, "event_id": f"ev-{k}"}
                                                     for k, e in enumerate(events)])
    reference = Popularity()
    c = PartitionedConsumer(reference, redis_url, "clean", "ref", P, tmp_path / "ref",
                            batch_size=BATCH, checkpoint_every=CKPT_EVERY, poll_timeout=0.05)
    c.run(idle_timeout=0.2)
    c.close()
    ckpt = tmp_path / "crash.ckpt"
    save_checkpoint(Popularity(), ckpt, position=None)
    rng = random.Random(4)
    started: list[int] = []
    kills = []
    try:
        for target in (900, 1800):
            proc = _launch(redis_url, ckpt, 2)
            started.append(proc.pid)
            deadline = time.monotonic() + 120
            while events_in(ckpt) < target and proc.poll() is None:
                assert time.monotonic() < deadline, "the consumer made no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.1))
            ranks = _children(proc.pid)
            while len(ranks) < 2 and proc.poll() is None:
                assert time.monotonic() < deadline, "the ranks did not start"
                time.sleep(0.005)
                ranks = _children(proc.pid)
            assert len(ranks) == 2, (ranks, proc.poll())
            started.extend(ranks)
            os.kill(ranks[rng.randrange(2)], signal.SIGKILL)
            kills.append(events_in(ckpt))
            _, err = proc.communicate(timeout=45)
            assert proc.returncode == 1, err.decode()
        proc = _launch(redis_url, ckpt, 2)
        started.append(proc.pid)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    finally:
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert all(k < 3000 for k in kills), kills
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["total_applied"] == 3000 and stats["total_duplicates"] == n_dup
    model, position = load_checkpoint(ckpt)
    assert position is not None and position["events"] == 3000
    assert position["duplicates"] == n_dup  # each copy counted once, across the kills
    for u in {e["user"] for e in events}:
        assert model.history.items_of(model.users.get(u)).tolist() == \
            reference.history.items_of(reference.users.get(u)).tolist()
    ref_state, got_state = _state(reference), _state(model)
    for key in ref_state:
        np.testing.assert_array_equal(got_state[key], ref_state[key], err_msg=key)
    with redis.Redis.from_url(redis_url) as client:
        for p in range(P):
            assert client.xpending(stream_key(PREFIX, p), "crash")["pending"] == 0


# -- the replicas' state digests ------------------------------------------------------------
@pytest.mark.parametrize("perturb", [None, 1])
def test_a_diverged_replica_stops_every_rank_naming_it(
    redis_url: str, tmp_path: Path, perturb: int | None
) -> None:
    import multiprocessing

    from live_server import free_port

    from tests.streams.replica_worker import run_rank

    PartitionedProducer(redis_url, PREFIX, P).send(_log(200))
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    ckpt = tmp_path / "c"
    procs = [ctx.Process(target=run_rank, args=(r, 2, port, redis_url, PREFIX, P, str(ckpt),
                                                str(tmp_path), perturb)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout=120)
            assert proc.exitcode == 0, proc.exitcode
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()  # by PID
                proc.join()
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    if perturb is None:
        assert all(r["ok"] and r["total_applied"] == 200 for r in results), results
        return
    for r in results:  # every rank stops, with the same message, before anything is saved
        assert not r["ok"] and r["error"] == "ReplicaDivergenceError", r
        assert "rank(s) [1] hold another model state than rank(s) [0]" in r["message"]
    assert not ckpt.exists()
