"""Partitioned ingestion: P Redis streams read by R processes, merged into one time order.

Producer. :class:`PartitionedProducer` (and ``nmrn produce``) appends each event to the stream
``<prefix>:{p}`` with ``p = partition_of(user, P)``: the CRC-32 of the user id's canonical bytes
(``str(id)`` in UTF-8, so ``196`` and ``"196"`` agree, as they do once Redis has stored them)
modulo P. A user's events are in one stream, in the order they were produced. P is recorded in
the key ``<prefix>:partitions`` (``SET NX``) by the first producer or consumer; a producer or
consumer with another P is refused.

Consumer. :class:`PartitionedConsumer` runs on rank r of R (``torch.distributed``, gloo): it
reads the partitions ``{p : p mod R = r}``, each with a
:class:`~nmrn.streams.redis_source.RedisStreamSource` (consumer group ``group``, consumer name
``p<p>``, so a partition's pending entries stay with the partition, whatever rank reads it).
Each step:

1. every rank tops up a read-ahead queue of at most ``batch_size`` valid entries per partition
   (malformed entries are dead-lettered at once, exactly as the single-stream consumer does);
2. the ranks all-gather the entries they read since the last step (:mod:`nmrn.streams.wire`,
   binary: ids travel as they were read, exactly), and every rank appends them to its replica
   of the P queues;
3. every rank runs the same k-way merge over the P partition queues, taking the partition whose
   head is smallest by ``(timestamp, partition, entry id)``, until ``batch_size`` events are
   taken. Each partition gives a prefix of its queue, so "the last applied entry id" of a
   partition describes exactly what is applied. A partition with a full buffer can never run
   dry before the batch is full, so no unread entry of it could have come earlier (if dropped
   retries empty it, the batch ends there); a partition that had nothing more to read is simply
   not waited for (the live stream goes on without it). An entry whose ``event_id`` is among
   its partition's latest ``dedupe_window`` applied ids is dropped and counted;
4. the batch, sorted by ``(timestamp, partition, entry id)`` (stable), is learned with the
   model's ordinary ``learn`` on **every** rank: each replica learns the whole global batch
   (BPR's and NMRN's steps split their work across the ranks' process group).

Entries taken from the buffers are the only ones applied; the rest wait for the next step, so a
partition that runs ahead cannot reorder time beyond one batch.

Consistent cut. Every ``checkpoint_every`` applied events (and at the end), after a barrier
(with R > 1, an all-gather of the replicas' :func:`state_digest`, which must agree), rank 0
saves the model with ``extra["stream"] = {"source": "redis-partitioned", "prefix", "group",
"partitions": P, "ids": {p: last applied entry id}, "events", "invalid", "duplicates",
"event_ids": {p: newline-joined window}}`` (atomic,
:func:`~nmrn.streams.position.save_checkpoint`); after a second barrier (the save is durable)
each rank acknowledges, per partition, the entries at or below that id. On restart each rank
loads the checkpoint and its sources skip pending entries at or below their partition's id
(applied; only the ack was lost). The position is per partition, so a checkpoint written by R
ranks resumes with any R'.

Because a batch is a function of the log and of the applied prefix (not of timing) whenever the
events are already in Redis, a run that is killed and restarted, with any R, learns the same
batches as one that ran straight through.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from nmrn.data.events import EventBatch
from nmrn.data.idmap import as_id_array
from nmrn.errors import ConfigError, NMRNError
from nmrn.io import checkpoint_exists, remove_stale_temporaries
from nmrn.streams import wire
from nmrn.streams.position import STREAM_KEY, save_checkpoint
from nmrn.streams.redis_source import RedisStreamSource
from nmrn.streams.sources import InvalidEvent, SourceError
from nmrn.streams.wire import WireEntry, entry_of
from nmrn.training.contract import Recommender

__all__ = [
    "PartitionedConsumer",
    "PartitionedProducer",
    "PartitionedStats",
    "ReplicaDivergenceError",
    "partition_of",
    "partitions_key",
    "record_partitions",
    "state_digest",
    "stream_key",
]

log = logging.getLogger(__name__)
SOURCE_KIND = "redis-partitioned"


def partition_of(user: int | str, partitions: int) -> int:
    """The partition of a user: CRC-32 of ``str(user)`` in UTF-8, modulo ``partitions``.

    Examples
    --------
    >>> partition_of(196, 4), partition_of("196", 4), partition_of("u9", 4)
    (2, 2, 0)
    """
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be an int >= 1, got {partitions!r}")
    if isinstance(user, bool) or not isinstance(user, (int, str, np.integer)):
        raise TypeError(f"a user id is an int or a str, got {type(user).__name__}")
    return zlib.crc32(str(user).encode("utf-8")) % partitions


def stream_key(prefix: str, partition: int) -> str:
    """The stream of one partition: ``<prefix>:<partition>``."""
    return f"{prefix}:{partition}"


def partitions_key(prefix: str) -> str:
    """The key that records P for ``prefix``."""
    return f"{prefix}:partitions"


def record_partitions(client: Any, prefix: str, partitions: int) -> None:
    """Record P under ``<prefix>:partitions`` if unset; refuse if another P is recorded."""
    key = partitions_key(prefix)
    client.set(key, str(partitions), nx=True)
    held = client.get(key)
    held_text = held.decode() if isinstance(held, bytes) else str(held)
    if held_text != str(partitions):
        raise ConfigError(
            f"the streams {prefix}:* are partitioned into {held_text} partitions (recorded in "
            f"Redis key {key!r}), not {partitions}; use --partitions {held_text}"
        )


class PartitionedProducer:
    """Append events to ``<prefix>:{p}``, ``p = partition_of(user, P)``.

    Parameters
    ----------
    url
        ``redis://HOST:PORT/DB``.
    prefix
        The stream prefix (``events`` gives ``events:0`` … ``events:{P-1}``).
    partitions
        P; recorded in Redis on first use, and checked against the record after.
    """

    def __init__(self, url: str, prefix: str, partitions: int, *, chunk: int = 1000) -> None:
        import redis

        if not prefix:
            raise ValueError("prefix must be a non-empty string")
        partition_of(0, partitions)  # validates partitions
        self.url, self.prefix, self.partitions = url, prefix, partitions
        self.chunk = chunk
        self._client = redis.Redis.from_url(url)
        try:
            record_partitions(self._client, prefix, partitions)
        except redis.RedisError as err:
            raise SourceError(f"cannot reach Redis at {url}: {err}") from None
        self.sent = [0] * partitions

    def send(self, events: Iterable[Mapping[str, Any]]) -> int:
        """XADD each event (a dict with ``user``, ``item``, ``timestamp``, maybe ``weight``,
        ``event_id``) to its partition, pipelined; returns how many were sent."""
        n = 0
        pipe = self._client.pipeline(transaction=False)
        for event in events:
            p = partition_of(event["user"], self.partitions)
            fields = {k: str(event[k]) for k in ("user", "item", "timestamp")}
            for k in ("weight", "event_id"):
                if event.get(k) is not None:
                    fields[k] = str(event[k])
            pipe.xadd(stream_key(self.prefix, p), fields)
            self.sent[p] += 1
            n += 1
            if n % self.chunk == 0:
                pipe.execute()
        pipe.execute()
        return n

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class PartitionedStats:
    """What one :meth:`PartitionedConsumer.run` did (the same on every rank)."""

    applied: int
    invalid: int
    checkpoints: int
    total_applied: int
    ids: dict[str, str]
    stopped: str
    elapsed_s: float
    duplicates: int = 0
    total_duplicates: int = 0

    @property
    def events_per_s(self) -> float:
        return self.applied / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ReplicaDivergenceError(NMRNError, RuntimeError):
    """The replicas of a partitioned consumer hold different model states at a cut."""


def state_digest(model: Recommender) -> str:
    """SHA-256 of everything a checkpoint of ``model`` holds but its stream position.

    The arrays (by name, with dtype and shape) and the metadata as canonical JSON, without
    ``extra`` (rank 0 alone records the stream position there). Equal on two replicas exactly
    when their checkpoints would load into the same model.
    """
    arrays, meta = model.snapshot()
    meta = {k: v for k, v in meta.items() if k != "extra"}
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"\n{name}:{arr.dtype.str}:{arr.shape}\n".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


class _Group:
    """The collectives the consumer needs; world size 1 needs no process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1

    def all_gather_bytes(self, payload: bytes) -> list[bytes]:
        if self.dist is None:
            return [payload]
        import torch

        size = torch.tensor([len(payload)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self.dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        mine = torch.zeros(longest, dtype=torch.uint8)
        if payload:
            mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world)]
        self.dist.all_gather(bufs, mine)
        return [b[: int(s.item())].numpy().tobytes() for b, s in zip(bufs, sizes, strict=True)]

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()


class PartitionedConsumer:
    """One rank of a partitioned consumer (see the module notes).

    Parameters
    ----------
    model
        The replica; every rank holds the same model (loaded from the same checkpoint).
    url, prefix, group
        Redis URL, stream prefix, consumer group (one group name on every partition).
    partitions
        P; must equal what the producer recorded and what the checkpoint holds.
    checkpoint_path
        Written by rank 0 only.
    checkpoint_every, batch_size
        As for :class:`~nmrn.streams.consumer.Consumer`; a checkpoint falls at the first step
        boundary at or after each multiple of ``checkpoint_every``.
    poll_timeout
        Seconds a rank waits on Redis when the last step found nothing to apply.
    dedupe_window
        Per partition, how many of the latest applied ``event_id`` values are remembered; an
        entry carrying one of them is a producer's retry and is dropped (counted, not learned).
        0 turns deduplication off. The windows are in the checkpoint, so a restart decides
        exactly as an uninterrupted run.
    verify_replicas
        At each cut with more than one rank, compare the ranks' :func:`state_digest` and raise
        :class:`ReplicaDivergenceError` (naming the ranks) before anything is saved.
    """

    def __init__(
        self,
        model: Recommender,
        url: str,
        prefix: str,
        group: str,
        partitions: int,
        checkpoint_path: str | os.PathLike[str],
        *,
        checkpoint_every: int = 1000,
        batch_size: int = 64,
        poll_timeout: float = 1.0,
        dead_letter: str | None = None,
        dedupe_window: int = 10_000,
        verify_replicas: bool = True,
    ) -> None:
        import redis

        for name, value in (("checkpoint_every", checkpoint_every), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(dedupe_window, bool) or not isinstance(dedupe_window, int) \
                or dedupe_window < 0:
            raise ValueError(f"dedupe_window must be an int >= 0, got {dedupe_window!r}")
        partition_of(0, partitions)
        self.model, self.url, self.prefix, self.group = model, url, prefix, group
        self.partitions = partitions
        self.checkpoint_path = Path(checkpoint_path)
        self.checkpoint_every, self.batch_size = checkpoint_every, batch_size
        self.poll_timeout = float(poll_timeout)
        self.dedupe_window = dedupe_window
        self.verify_replicas = bool(verify_replicas)
        self.comm = _Group()
        saved = model.extra.get(STREAM_KEY)
        self.ids: dict[str, str] = {}
        self.total_applied = self.total_invalid = self.total_duplicates = 0
        # per partition, the latest applied event ids, oldest first (replicated on every rank)
        self.windows: dict[int, OrderedDict[str, None]] = {
            p: OrderedDict() for p in range(partitions)}
        if saved:
            if saved.get("source") != SOURCE_KIND:
                raise SourceError(
                    f"the checkpoint's stream position is from a {saved.get('source')!r} "
                    f"source, not a partitioned Redis consumer: resume it with the consumer "
                    "that wrote it, or use a fresh checkpoint"
                )
            for key, mine in (("partitions", partitions), ("prefix", prefix), ("group", group)):
                if saved.get(key) != mine:
                    raise ConfigError(
                        f"the checkpoint was taken with {key} {saved.get(key)!r}, not {mine!r}"
                        + ("; P is fixed by the producer" if key == "partitions" else "")
                    )
            self.ids = {str(k): str(v) for k, v in saved.get("ids", {}).items()}
            self.total_applied = int(saved.get("events", 0))
            self.total_invalid = int(saved.get("invalid", 0))
            self.total_duplicates = int(saved.get("duplicates", 0))
            for p, text in (saved.get("event_ids") or {}).items():
                window = self.windows[int(p)]
                window.update(OrderedDict.fromkeys(text.split("\n") if text else []))
                while len(window) > dedupe_window:
                    window.popitem(last=False)
        client = redis.Redis.from_url(url)
        try:
            record_partitions(client, prefix, partitions)
        except redis.RedisError as err:
            raise SourceError(f"cannot reach Redis at {url}: {err}") from None
        finally:
            client.close()
        self.mine = [p for p in range(partitions) if p % self.comm.world == self.comm.rank]
        self.sources: dict[int, RedisStreamSource] = {}
        # every partition's read-ahead queue, replicated on every rank (each entry crosses the
        # wire once, in the step after it is read); `fresh` holds what this rank read since
        self.queues: dict[int, deque[WireEntry]] = {p: deque() for p in range(partitions)}
        self.fresh: dict[int, list[WireEntry]] = {p: [] for p in self.mine}
        for p in self.mine:
            src = RedisStreamSource(
                stream_key(prefix, p), group, f"p{p}", url=url,
                block_ms=max(1, int(self.poll_timeout * 1000)),
                dead_letter=dead_letter or f"{prefix}:dead",
            )
            pid = self.ids.get(str(p))
            src.resume_after(None if pid is None else src._position(pid))
            self.sources[p] = src
        self._saved_consumed = self._consumed = self.total_applied + self.total_duplicates
        self._saved_applied = self.total_applied
        self._stop = False

    def stop(self) -> None:
        """Ask :meth:`run` to end at the next step (all ranks stop together)."""
        self._stop = True

    def close(self) -> None:
        for src in self.sources.values():
            src.close()

    # -- one step ----------------------------------------------------------------------------
    def _fill(self, wait: bool) -> tuple[int, bool]:
        """Top up each partition's queue to ``batch_size``; returns (rejected, anything read)."""
        rejected, read = 0, False
        timeout = self.poll_timeout if wait else 0.0
        for p in self.mine:
            fresh, src = self.fresh[p], self.sources[p]
            while (room := self.batch_size - len(self.queues[p]) - len(fresh)) > 0:
                entries = src.poll(room, timeout)
                if not entries:
                    break
                read = True
                timeout = 0.0  # waited once; the other partitions are just looked at
                for entry in entries:
                    if isinstance(entry.value, InvalidEvent):
                        log.warning("skipping malformed entry at %s: %s", entry.position,
                                    entry.value.reason)
                        src.reject(entry)
                        rejected += 1
                    else:
                        fresh.append(entry_of(p, str(entry.position["id"]), entry.value))
        return rejected, read

    def _gather(self, rejected: int, stop: bool, idle: bool) -> tuple[int, bool, bool]:
        """Exchange the entries read since the last step (binary, :mod:`nmrn.streams.wire`)
        and append them to the replicated queues; returns (rejected, any stop, all idle)."""
        flags = [rejected, int(stop), int(idle)]
        if self.comm.world == 1:
            parts = [(flags, self.fresh)]
        else:
            message = wire.encode(flags, self.fresh)
            parts = [wire.decode(b) for b in self.comm.all_gather_bytes(message)]
        for _flags, fresh in parts:
            for p, entries in fresh.items():
                self.queues[p].extend(entries)
        for entries in self.fresh.values():
            entries.clear()
        return (sum(f[0] for f, _ in parts), any(f[1] for f, _ in parts),
                all(f[2] for f, _ in parts))

    def _merge(self, limit: int) -> tuple[list[WireEntry], int]:
        """Take the next global batch off the queues; returns (events to learn, duplicates).

        A k-way merge over the partitions' heads by ``(timestamp, partition, entry id)`` until
        ``limit`` events are taken, then sorted by that key. An entry whose ``event_id`` is in
        its partition's window is dropped (it does not count towards ``limit``). A partition
        whose queue was full may hold unread entries that come earlier than the other heads: if
        drops empty it, the batch ends there.
        """
        queues = self.queues
        full = {p for p, q in queues.items() if len(q) >= self.batch_size}
        heap = [(q[0][:4], p) for p, q in queues.items() if q]
        heapq.heapify(heap)
        taken: list[WireEntry] = []
        dropped = 0
        while heap and len(taken) < limit:
            _, p = heapq.heappop(heap)
            queue = queues[p]
            entry = queue.popleft()
            self.ids[str(p)] = wire.entry_id(entry)  # a prefix of each partition: the last is max
            if self._is_duplicate(p, entry):
                dropped += 1
            else:
                taken.append(entry)
            if queue:
                heapq.heappush(heap, (queue[0][:4], p))
            elif p in full:
                break  # only drops can empty a full queue before `limit` events are taken
        taken.sort(key=lambda e: e[:4])
        return taken, dropped

    def _is_duplicate(self, p: int, entry: WireEntry) -> bool:
        """Whether the entry's ``event_id`` is in partition ``p``'s window; remembers it if not."""
        event_id = entry[7]
        if event_id is None or not self.dedupe_window:
            return False
        window = self.windows[p]
        if event_id in window:
            log.info("dropping a retried event at %s %s: event_id %r was applied",
                     stream_key(self.prefix, p), wire.entry_id(entry), event_id)
            return True
        window[event_id] = None
        if len(window) > self.dedupe_window:
            window.popitem(last=False)
        return False

    def _apply(self, batch: list[WireEntry]) -> None:
        weights = None
        if any(e[6] is not None for e in batch):
            weights = np.array([1.0 if e[6] is None else e[6] for e in batch], dtype=np.float64)
        self.model.learn(EventBatch(
            as_id_array([e[4] for e in batch], "user"),
            as_id_array([e[5] for e in batch], "item"),
            np.array([e[0] for e in batch], dtype=np.float64),
            weights,
        ))
        self.total_applied += len(batch)

    def _record(self) -> dict[str, Any]:
        record = {
            "source": SOURCE_KIND, "prefix": self.prefix, "group": self.group,
            "partitions": self.partitions, "ids": dict(sorted(self.ids.items())),
            "events": self.total_applied, "invalid": self.total_invalid,
            "duplicates": self.total_duplicates,
        }
        windows = {str(p): "\n".join(w) for p, w in self.windows.items() if w}
        if windows:
            record["event_ids"] = windows  # one string per partition, one id per line
        return record

    def _verify(self) -> None:
        """All-gather every replica's :func:`state_digest`; raise if any two differ."""
        digests = [b.decode() for b in self.comm.all_gather_bytes(
            state_digest(self.model).encode())]
        if len(set(digests)) == 1:
            return
        groups: dict[str, list[int]] = {}
        for rank, digest in enumerate(digests):
            groups.setdefault(digest, []).append(rank)
        # name the ranks apart from the largest group (rank 0's on a tie)
        main = max(groups.values(), key=lambda ranks: (len(ranks), -ranks[0]))
        odd = sorted(r for ranks in groups.values() if ranks is not main for r in ranks)
        raise ReplicaDivergenceError(
            f"the replicas diverged before the cut at {self.total_applied} events: rank(s) "
            f"{odd} hold another model state than rank(s) {main} ("
            + ", ".join(f"rank {r}: sha256 {d[:16]}" for r, d in enumerate(digests))
            + "); nothing was saved: the checkpoint is the last cut where they agreed"
        )

    def _checkpoint(self) -> None:
        """A consistent cut: barrier (and the replicas' digests compared), rank 0 saves,
        barrier (durable), each rank acks."""
        if self.verify_replicas and self.comm.world > 1:
            self._verify()  # an all-gather: also the barrier
        else:
            self.comm.barrier()
        if self.comm.rank == 0:
            save_checkpoint(self.model, self.checkpoint_path, position=self._record())
        self.comm.barrier()  # the checkpoint is durable: forget what it covers
        for p in self.mine:
            if str(p) in self.ids:
                self.sources[p].ack({"id": self.ids[str(p)]})
        self._saved_applied = self.total_applied
        self._saved_consumed = self._consumed

    def run(self, max_events: int | None = None,
            idle_timeout: float | None = None) -> PartitionedStats:
        """Consume until ``max_events``, ``idle_timeout`` seconds without events, or a stop."""
        start = time.perf_counter()
        if self.comm.rank == 0:
            remove_stale_temporaries(self.checkpoint_path)
        applied = invalid = duplicates = checkpoints = 0
        last_event = time.monotonic()
        wait = False
        stopped = "stop"
        while True:
            rejected, _ = self._fill(wait)
            idle = idle_timeout is not None and time.monotonic() - last_event >= idle_timeout
            rej, stop, all_idle = self._gather(rejected, self._stop, idle)
            invalid += rej
            self.total_invalid += rej
            limit = self.batch_size
            if max_events is not None:
                limit = min(limit, max_events - applied)
            batch, dropped = self._merge(limit) if limit > 0 else ([], 0)
            if batch:
                self._apply(batch)
                applied += len(batch)
            duplicates += dropped
            self.total_duplicates += dropped
            self._consumed += len(batch) + dropped
            took = bool(batch) or dropped > 0
            if took or rej:
                last_event = time.monotonic()
            crossed = (self.total_applied // self.checkpoint_every
                       != self._saved_applied // self.checkpoint_every)
            if crossed or (not took and self._consumed != self._saved_consumed):
                self._checkpoint()  # a boundary, or the stream is idle: make it durable
                checkpoints += 1
            # every rank decides from the same gathered data, so all leave the loop together
            if stop:
                stopped = "stop"
                break
            if max_events is not None and applied >= max_events:
                stopped = "max_events"
                break
            if not took and all_idle:
                stopped = "idle"
                break
            wait = not took
        missing = self.comm.rank == 0 and not checkpoint_exists(self.checkpoint_path)
        flags = self.comm.all_gather_bytes(b"\x01" if missing else b"\x00")
        if self._consumed != self._saved_consumed or flags[0] == b"\x01":
            self._checkpoint()
            checkpoints += 1
        return PartitionedStats(
            applied=applied, invalid=invalid, checkpoints=checkpoints,
            total_applied=self.total_applied, ids=dict(sorted(self.ids.items())),
            stopped=stopped, elapsed_s=time.perf_counter() - start,
            duplicates=duplicates, total_duplicates=self.total_duplicates,
        )


def init_distributed(timeout_s: float) -> tuple[int, int]:
    """Join the gloo group named by the torchrun-style environment; returns (rank, world)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
            )
    return rank, world
