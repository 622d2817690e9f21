"""A recommender run live: one writer thread applies accepted events in order; a read normally
waits for at most the one run of events being applied.

:class:`LiveService` owns one model (any :class:`~nmrn.training.contract.Recommender`). The life of
an event:

1. :meth:`LiveService.submit` checks the events, writes them to the :class:`Journal` under
   consecutive sequence numbers and queues them, then waits for the journal's group commit (one
   fsync shared by every request waiting for it); only then does it return, so an event the
   caller saw accepted survives a crash.
2. The writer thread takes queued events in order once they are durable (an event is never
   applied, so never seen by a read, before it is on the disk), merging small requests into
   one run of at most ``apply_batch`` events (waiting up to ``apply_wait`` seconds for a run to
   fill), and calls ``model.learn`` on it under the model lock. A read
   (:meth:`LiveService.recommend`) takes the same lock, so it sees the state before or after a
   run, never half of one, and normally waits for at most one run (the lock is not strictly
   fair; the writer pauses briefly after a run that reads waited for). A single lock (rather
   than a readers-writer lock or a copy-on-write snapshot) is what a model of any kind can be
   trusted with: some models fill caches while scoring, so even two reads may not overlap.
3. Every ``checkpoint_every`` applied events, every ``checkpoint_seconds``, on
   :meth:`LiveService.checkpoint` and on :meth:`LiveService.close`, the writer saves the model
   with the last applied sequence number in ``model.extra["journal_seq"]`` (the save is atomic),
   then drops the journal entries the checkpoint covers.

On start the service replays the journal entries after the checkpoint's sequence number: nothing
accepted is lost, nothing is applied twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmrn.data.events import EventBatch
from nmrn.data.idmap import as_id_array
from nmrn.errors import ConfigError, NMRNError
from nmrn.io import remove_stale_temporaries, write_checkpoint
from nmrn.models import load_model
from nmrn.serving.journal import Journal, JournalError
from nmrn.serving.metrics import ServiceMetrics
from nmrn.serving.quality import LiveQuality
from nmrn.serving.reads import ReadPath
from nmrn.training.contract import Recommender

log = logging.getLogger("nmrn.serving")

SEQ_KEY = "journal_seq"
KEYS_KEY = "idempotency_keys"
# After a batch that reads waited for, the writer pauses this long before taking the model again.
READER_TURN_SECONDS = 0.0005
class IdempotencyConflict(NMRNError, ValueError):
    """An idempotency key was reused for different events (HTTP 422)."""


@dataclass(frozen=True)
class _Accepted:
    """What an idempotency key was first answered with."""

    first: int
    last: int
    digest: str
    at: float  # time.time() when accepted


def events_digest(events: Sequence[Sequence[Any]]) -> str:
    """A digest of ``(user, item, timestamp[, weight])`` rows that tells a retry of the same
    request from a different one (ids keep their type; numbers compare as floats)."""
    rows = [[r[0], r[1], *(float(x) for x in r[2:])] for r in events]
    text = json.dumps(rows, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


class ServiceUnavailable(NMRNError, RuntimeError):
    """The service cannot take the request now (closed, or too far behind); HTTP 503."""


class _CheckpointRequest:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None


def default_journal_path(checkpoint: str | os.PathLike[str]) -> Path:
    """``<checkpoint>.journal``, next to (never inside) the checkpoint directory, which every
    save replaces."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".journal")


class LiveService(ReadPath):
    """One model, served live: ordered single-writer updates, durable ingest, checkpoints.

    The service is running once constructed (journal replayed, writer thread started); call
    :meth:`close` (or use it as a context manager) to apply what is queued, checkpoint and stop.

    Parameters
    ----------
    model
        Any :class:`~nmrn.training.contract.Recommender`. ``model.extra["journal_seq"]`` (absent: 0)
        is the last journal sequence number the model already holds.
    checkpoint_path
        Where checkpoints are written; ``None`` disables them (and journal truncation).
    journal_path
        The journal file; ``None`` keeps nothing on disk (accepted events are then lost on a
        crash: for tests and benchmarks only).
    checkpoint_every
        Checkpoint after this many applied events (``None``: never by count).
    checkpoint_seconds
        Checkpoint when this many seconds have passed since the last one and events were
        applied since (``None``: never by time).
    apply_batch
        Most events one ``learn`` call gets: the longest a read can wait is one such call.
    apply_wait
        Seconds the writer may wait for more events before applying fewer than
        ``apply_batch`` (0: apply whatever is durable at once). Events from many requests then
        share one ``learn`` call, whose fixed cost (milliseconds for NMRN) dominates small
        batches; the price is at most this much extra delay before an event is seen by reads.
    max_pending
        Most accepted-but-unapplied events; :meth:`submit` refuses more with
        :class:`ServiceUnavailable` (backpressure instead of an unbounded queue).
    fsync
        fsync the journal on every accepted request (turn off only for tests and benchmarks).
    idempotency_window
        Seconds an idempotency key is remembered (:meth:`submit_once`): a retry within it is
        answered as the first request was and applies nothing.
    max_idempotency_keys
        Most keys remembered (the oldest are forgotten first): bounds memory and checkpoints.
    live_quality
        Events per second (on average) ranked against the recommendations their users would
        have got just before (:class:`~nmrn.serving.quality.LiveQuality`: a moving Hits@10 and
        NDCG@10 on live traffic); each costs one read under the model lock. 0 turns it off.

    Raises
    ------
    JournalError
        The journal is damaged, or it starts after the checkpoint's sequence number (events in
        between are missing: the journal belongs to a newer checkpoint).
    """

    def __init__(
        self,
        model: Recommender,
        *,
        checkpoint_path: str | os.PathLike[str] | None = None,
        journal_path: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = 10_000,
        checkpoint_seconds: float | None = 60.0,
        apply_batch: int = 256,
        apply_wait: float = 0.05,
        max_pending: int = 1_000_000,
        fsync: bool = True,
        live_quality: float = 10.0,
        idempotency_window: float = 86_400.0,
        max_idempotency_keys: int = 100_000,
    ) -> None:
        if not isinstance(model, Recommender):
            raise ConfigError(f"LiveService needs a Recommender, got {type(model).__name__}")
        for name, value in (("apply_batch", apply_batch), ("max_pending", max_pending)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ConfigError(
                f"checkpoint_every must be an int >= 1 or None, got {checkpoint_every!r}"
            )
        if isinstance(apply_wait, bool) or not isinstance(apply_wait, (int, float)) or not (
            0 <= apply_wait < float("inf")
        ):
            raise ConfigError(f"apply_wait must be a finite number of seconds >= 0, got "
                              f"{apply_wait!r}")
        if checkpoint_seconds is not None and not checkpoint_seconds > 0:
            raise ConfigError(f"checkpoint_seconds must be > 0 or None, got {checkpoint_seconds!r}")
        self.model = model
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.apply_batch = apply_batch
        self.apply_wait = float(apply_wait)
        self.max_pending = max_pending

        self._init_reads()  # the model lock, its wake-ups, the last reads' durations
        self._submit_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._cond = threading.Condition()
        # (first seq, events, time.monotonic() when accepted), in sequence order
        self._queue: deque[tuple[int, EventBatch, float]] = deque()
        self._checkpoint_requests: list[_CheckpointRequest] = []
        self._stopping = False
        self._closed = False

        self.quality = LiveQuality(per_second=live_quality)
        if not (isinstance(idempotency_window, (int, float)) and 0 < idempotency_window < 1e12):
            raise ConfigError(f"idempotency_window must be a number of seconds > 0, got "
                              f"{idempotency_window!r}")
        if isinstance(max_idempotency_keys, bool) or not isinstance(max_idempotency_keys, int) \
                or max_idempotency_keys < 1:
            raise ConfigError(f"max_idempotency_keys must be an int >= 1, got "
                              f"{max_idempotency_keys!r}")
        self.idempotency_window = float(idempotency_window)
        self.max_idempotency_keys = max_idempotency_keys
        # key -> what it was first answered with, oldest first; survives restarts through
        # checkpoints (model.extra) and the journal (entries record their key)
        self._keys: OrderedDict[str, _Accepted] = OrderedDict()
        self._load_keys(model.extra.get(KEYS_KEY))
        # (time.monotonic(), applied_seq) after each run: the status page's events/s (its read
        # latency percentiles come from ReadPath's _read_seconds)
        self._progress: deque[tuple[float, int]] = deque(maxlen=4096)
        self.metrics = ServiceMetrics(self)
        self.checkpoints = 0
        self.last_checkpoint_time = time.time()
        self.started = time.time()

        extra_seq = model.extra.get(SEQ_KEY, 0)
        if isinstance(extra_seq, bool) or not isinstance(extra_seq, int) or extra_seq < 0:
            raise JournalError(f"model.extra[{SEQ_KEY!r}] must be an int >= 0, got {extra_seq!r}")
        self.applied_seq = extra_seq
        self.checkpoint_seq = extra_seq
        self.replayed = 0
        self.journal: Journal | None = None
        if journal_path is not None:
            self.journal = Journal(journal_path, start_seq=extra_seq + 1, fsync=fsync)
            first = self.journal.first_seq
            if first > extra_seq + 1:
                self.journal.close()
                raise JournalError(
                    f"{journal_path}: the journal starts at event {first} but the model holds "
                    f"events up to {extra_seq}; events {extra_seq + 1}..{first - 1} are missing "
                    "(is this the journal of a newer checkpoint?)"
                )
            for entry in self.journal.entries():  # keys accepted after the checkpoint too
                if entry.key is not None and entry.digest is not None:
                    self._remember(entry.key, _Accepted(entry.seq, entry.last, entry.digest,
                                                        entry.accepted_at or time.time()))
            self._replay()
            self.accepted_seq = self.journal.next_seq - 1
        else:
            self.accepted_seq = extra_seq
        self._writer = threading.Thread(target=self._run, name="nmrn-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(
        cls,
        checkpoint: str | os.PathLike[str],
        *,
        journal: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> LiveService:
        """Load a checkpoint (any model) and serve it; the journal defaults to
        ``<checkpoint>.journal``. ``options`` go to the constructor. Temporary directories that
        killed saves left next to the checkpoint are removed first (the service is the one
        writer of its checkpoint)."""
        model = load_model(checkpoint)  # repairs an interrupted save first
        remove_stale_temporaries(checkpoint)
        return cls(
            model,
            checkpoint_path=checkpoint,
            journal_path=default_journal_path(checkpoint) if journal is None else journal,
            **options,
        )

    def __repr__(self) -> str:
        return (
            f"<LiveService {type(self.model).__name__} accepted={self.accepted_seq} "
            f"applied={self.applied_seq}>"
        )

    def __enter__(self) -> LiveService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- ingest ----------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Accepted events not applied yet."""
        return self.accepted_seq - self.applied_seq

    @property
    def writer_alive(self) -> bool:
        """Whether the writer thread is running."""
        return self._writer.is_alive()

    # -- idempotency keys --------------------------------------------------------------------------
    def _remember(self, key: str, accepted: _Accepted) -> None:
        self._keys[key] = accepted
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_idempotency_keys:
            self._keys.popitem(last=False)

    def _prune_keys(self, now: float) -> None:
        horizon = now - self.idempotency_window
        while self._keys:
            key, accepted = next(iter(self._keys.items()))
            if accepted.at >= horizon:
                break
            del self._keys[key]

    def _load_keys(self, saved: Any) -> None:
        if saved is None:
            return
        if not isinstance(saved, list):
            raise JournalError(f"model.extra[{KEYS_KEY!r}] must be a list, got "
                               f"{type(saved).__name__}")
        for row in saved:
            ok = (isinstance(row, list) and len(row) == 5 and isinstance(row[0], str)
                  and all(isinstance(x, int) and not isinstance(x, bool) for x in row[1:3])
                  and isinstance(row[3], str) and isinstance(row[4], (int, float)))
            if not ok:
                raise JournalError(f"model.extra[{KEYS_KEY!r}] holds a malformed key record")
            self._remember(row[0], _Accepted(row[1], row[2], row[3], float(row[4])))
        self._prune_keys(time.time())

    def _saved_keys(self) -> list[list[Any]]:
        with self._submit_lock:
            self._prune_keys(time.time())
            return [[k, a.first, a.last, a.digest, a.at] for k, a in self._keys.items()]

    def submit_once(
        self, events: Sequence[Sequence[Any]], key: str
    ) -> tuple[int, int, bool]:
        """:meth:`submit`, idempotent: ``(first, last, replayed)``.

        The first request with ``key`` is accepted as :meth:`submit` accepts it. A request with
        the same key and the same events within ``idempotency_window`` seconds is answered
        with the first one's sequence numbers (``replayed=True``, once they are durable) and
        applies nothing; the same key with other events raises :class:`IdempotencyConflict`.
        Keys survive a crash: the journal records them, checkpoints keep the recent ones.
        """
        if not isinstance(key, str) or not key:
            raise ValueError("an idempotency key is a non-empty string")
        digest = events_digest(events)
        batch = _batch(events)
        if len(batch) == 0:
            raise ValueError("no events to submit")
        with self._submit_lock:
            self._prune_keys(time.time())
            seen = self._keys.get(key)
            if seen is None:
                first, last = self._submit_locked(events, batch, (key, digest, time.time()))
                self._remember(key, _Accepted(first, last, digest, time.time()))
        if seen is not None:
            if seen.digest != digest:
                raise IdempotencyConflict(
                    f"idempotency-key: {key!r} was used for different events (accepted as "
                    f"{seen.first}..{seen.last}); use a new key for a new request"
                )
            if self.journal is not None:
                self._sync_or_refuse(seen.last)
            return seen.first, seen.last, True
        self._after_accept(last)
        return first, last, False

    def submit(self, events: Sequence[Sequence[Any]]) -> tuple[int, int]:
        """Accept events: journal them (durably) and queue them; returns ``(first, last)`` seq.

        Parameters
        ----------
        events
            ``(user, item, timestamp[, weight])`` tuples with int/str ids and finite numbers
            (the HTTP layer has checked them; they are checked again here).

        Raises
        ------
        ServiceUnavailable
            The service is closing, or ``max_pending`` events are already waiting.
        nmrn.errors.DataError
            Malformed events.
        """
        batch = _batch(events)
        if len(batch) == 0:
            raise ValueError("no events to submit")
        with self._submit_lock:
            first, last = self._submit_locked(events, batch, None)
        self._after_accept(last)
        return first, last

    def _submit_locked(
        self, events: Sequence[Sequence[Any]], batch: EventBatch,
        key: tuple[str, str, float] | None,
    ) -> tuple[int, int]:
        """Journal and queue (the caller holds the submit lock)."""
        if self._stopping:
            raise ServiceUnavailable("the service is shutting down; events are not accepted")
        if not self.writer_alive:
            raise ServiceUnavailable("the writer thread has stopped; events are not accepted")
        if self.pending + len(batch) > self.max_pending:
            raise ServiceUnavailable(
                f"{self.pending} events are waiting to be applied (limit {self.max_pending}); "
                "retry later"
            )
        if self.journal is not None:
            try:
                first, last = self.journal.write(events, key)
            except JournalError as err:
                raise ServiceUnavailable(f"events are not accepted: {err}") from err
        else:
            first, last = self.accepted_seq + 1, self.accepted_seq + len(batch)
        with self._cond:
            self._queue.append((first, batch, time.monotonic()))
            self.accepted_seq = last
        return first, last

    def _sync_or_refuse(self, last: int) -> None:
        assert self.journal is not None
        try:
            self.journal.sync(last)
        except JournalError as err:
            with self._cond:
                self._cond.notify()  # the writer drops what can no longer become durable
            raise ServiceUnavailable(f"events are not accepted: {err}") from err

    def _after_accept(self, last: int) -> None:
        if self.journal is not None:
            # group commit, outside the submit lock: requests arriving meanwhile write their
            # lines and share the next fsync
            self._sync_or_refuse(last)
        with self._cond:
            self._cond.notify()  # durable now: the writer may apply it

    def wait_applied(self, seq: int | None = None, timeout: float = 10.0) -> bool:
        """Block until events up to ``seq`` (default: every accepted one) are applied."""
        target = self.accepted_seq if seq is None else seq
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.applied_seq < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self.writer_alive:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # -- reads: ReadPath (recommend, try_recommend, notify_when_free) ---------------------------

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self, timeout: float = 120.0) -> dict[str, Any]:
        """Checkpoint now (on the writer thread, between two batches); returns
        ``{"seq", "seconds", "path"}``.

        Raises
        ------
        ServiceUnavailable
            No checkpoint path is configured, the service is closed, or it timed out.
        """
        if self.checkpoint_path is None:
            raise ServiceUnavailable("no checkpoint path is configured for this service")
        request = _CheckpointRequest()
        with self._cond:
            if self._closed or not self.writer_alive:
                raise ServiceUnavailable("the service is closed")
            self._checkpoint_requests.append(request)
            self._cond.notify()
        if not request.done.wait(timeout):
            raise ServiceUnavailable(f"the checkpoint did not finish within {timeout} s")
        if request.error is not None:
            raise ServiceUnavailable(f"the checkpoint failed: {request.error}")
        assert request.result is not None
        return request.result

    def take_snapshot(self) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
        """``(seq, arrays, meta)``: a copy of the model as of event ``seq``, taken under the
        model lock (what reader processes load; :mod:`nmrn.serving.snapshots`). The
        idempotency keys stay out of it: readers do not need them."""
        self._model_lock.acquire()
        try:
            seq = self.applied_seq
            self.model.extra[SEQ_KEY] = seq
            arrays, meta = self.model.snapshot()
        finally:
            self._release_model()
        meta["extra"].pop(KEYS_KEY, None)
        return seq, arrays, meta

    def _save(self) -> dict[str, Any]:
        assert self.checkpoint_path is not None
        with self._save_lock:  # the writer's and close()'s saves never overlap
            return self._save_locked()

    def _save_locked(self) -> dict[str, Any]:
        assert self.checkpoint_path is not None
        start = time.perf_counter()
        # Only the snapshot needs a still model; reads wait for it, not for the disk.
        self._model_lock.acquire()
        try:
            seq = self.applied_seq
            self.model.extra[SEQ_KEY] = seq
            self.model.extra[KEYS_KEY] = self._saved_keys()
            arrays, meta = self.model.snapshot()
        finally:
            self._release_model()
        self.metrics.checkpoint_last_snapshot_seconds.set(time.perf_counter() - start)
        write_checkpoint(self.checkpoint_path, arrays, meta)
        seconds = time.perf_counter() - start
        if self.journal is not None:
            self.journal.truncate(seq)
        self.checkpoint_seq = seq
        self.checkpoints += 1
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.inc(seconds)
        self.metrics.checkpoint_last_seconds.set(seconds)
        self.last_checkpoint_time = time.time()
        log.info("checkpoint at event %d in %.3f s: %s", seq, seconds, self.checkpoint_path)
        return {"seq": seq, "seconds": seconds, "path": str(self.checkpoint_path)}

    def _checkpoint_due(self) -> bool:
        if self.checkpoint_path is None or self.applied_seq == self.checkpoint_seq:
            return False
        if self.checkpoint_every is not None:
            if self.applied_seq - self.checkpoint_seq >= self.checkpoint_every:
                return True
        if self.checkpoint_seconds is not None:
            return time.time() - self.last_checkpoint_time >= self.checkpoint_seconds
        return False

    # -- the writer ------------------------------------------------------------------------------
    def _apply(self, first: int, parts: list[EventBatch], *, mark: bool = True) -> None:
        """Apply consecutive requests' events (``parts``, from sequence number ``first``) in
        one ``learn`` call. If it fails, each part is tried on its own, so that one bad request
        cannot take the others with it; a part that fails is logged, counted and skipped. The
        journal records the runs as called (``mark``), so that a replay repeats them."""
        n = sum(len(p) for p in parts)
        last = first + n - 1
        self._model_lock.acquire()
        try:
            start = time.perf_counter()
            batch = EventBatch.concat(parts)
            try:  # ranked against the state just before: the service's own test-then-train
                self.quality.measure(self.model, batch)
            except Exception as err:  # noqa: BLE001 - a measurement must never stop the writer
                self.count_error("live_quality")
                log.warning("live quality measurement failed: %s", err)
            runs = [(first, last)]
            try:
                self.model.learn(batch)
            except Exception as err:  # noqa: BLE001 - one bad batch must not stop the service
                if len(parts) == 1:
                    self.count_error("learn")
                    log.error("learn failed on events %d..%d (skipped): %s", first, last, err)
                else:
                    runs = []
                    at = first
                    for part in parts:
                        runs.append((at, at + len(part) - 1))
                        try:
                            self.model.learn(part)
                        except Exception as part_err:  # noqa: BLE001 - as above
                            self.count_error("learn")
                            log.error("learn failed on events %d..%d (skipped): %s", at,
                                      at + len(part) - 1, part_err)
                        at += len(part)
            if mark and self.journal is not None:
                for run_first, run_last in runs:
                    self.journal.mark_run(run_first, run_last)
            self.model.extra[SEQ_KEY] = last
            self.metrics.learn_seconds.observe(time.perf_counter() - start)
            with self._cond:
                self.applied_seq = last
                self._cond.notify_all()
            self._progress.append((time.monotonic(), last))
        finally:
            woken = self._release_model()
        if woken:
            # reads were waiting for this run: give them the model before the next run
            # (threading.Lock is not fair, and this thread would otherwise take it straight back)
            time.sleep(READER_TURN_SECONDS)

    def _replay(self) -> None:
        """Apply the journalled events after the checkpoint: the runs the writer recorded, as
        they were applied (the same ``learn`` calls, so the same state for any model), then the
        events no run covers, entry by entry."""
        assert self.journal is not None
        start = self.applied_seq + 1
        rows: list[list[Any]] = []  # event start + j is rows[j]
        bounds: list[tuple[int, int]] = []  # the entries, (first, last)
        for entry in self.journal.entries(after=self.applied_seq):
            rows += entry.events
            bounds.append((entry.seq, entry.last))
        end = start + len(rows) - 1  # the last journalled event
        pos = start
        for run in self.journal.runs(after=self.applied_seq):
            if run.first < pos or run.last > end:
                continue  # already covered, or beyond the file (cannot be: checked by the scan)
            if run.first > pos:  # events applied without a marker (lost): regroup them
                self._replay_entries(pos, run.first - 1, rows, bounds, start)
            self._apply(run.first, [_batch(rows[run.first - start : run.last - start + 1])],
                        mark=False)
            self.replayed += run.last - run.first + 1
            pos = run.last + 1
        if pos <= end:
            self._replay_entries(pos, end, rows, bounds, start)
        if self.replayed:
            log.info("replayed %d journalled events, up to %d", self.replayed, self.applied_seq)

    def _replay_entries(self, lo: int, hi: int, rows: list[list[Any]],
                        bounds: list[tuple[int, int]], start: int) -> None:
        """Replay events ``lo .. hi`` that no run marker covers: per journal entry (request), in
        runs of at most ``apply_batch`` events, recorded as runs from now on."""
        for first, last in bounds:
            a, b = max(first, lo), min(last, hi)
            for run_first in range(a, b + 1, self.apply_batch):
                run_last = min(b, run_first + self.apply_batch - 1)
                self._apply(run_first, [_batch(rows[run_first - start : run_last - start + 1])])
                self.replayed += run_last - run_first + 1

    def _take(self) -> tuple[int, list[EventBatch]] | float | None:
        """The next run of queued durable events for one ``learn`` call (caller holds
        ``_cond``): at most ``apply_batch`` events, merged across requests, in order.

        Returns ``None`` when no event is ready, or the seconds to wait for more when fewer
        than ``apply_batch`` are ready and the oldest arrived less than ``apply_wait`` ago
        (one ``learn`` call for many small requests costs far less than one call each).
        """
        if not self._queue:
            return None
        durable = self.journal.durable_seq if self.journal is not None else self.accepted_seq
        first, batch, arrived = self._queue[0]
        if first + len(batch) - 1 > durable:
            if self.journal is not None and self.journal.failed:
                # never acknowledged, and never to be: drop them
                dropped = sum(len(b) for _, b, _ in self._queue)
                log.error("dropping %d events the failed journal could not make durable",
                          dropped)
                self._queue.clear()
                self.accepted_seq = self.applied_seq
            return None
        if self.apply_wait > 0 and not self._stopping:
            ready = 0
            for f, b, _ in self._queue:
                if f + len(b) - 1 > durable or ready >= self.apply_batch:
                    break
                ready += len(b)
            left = arrived + self.apply_wait - time.monotonic()
            if ready < self.apply_batch and left > 0:
                return left
        parts: list[EventBatch] = []
        taken = 0
        while self._queue and taken < self.apply_batch:
            f, b, t = self._queue[0]
            if f + len(b) - 1 > durable:
                break
            room = self.apply_batch - taken
            if len(b) <= room:
                self._queue.popleft()
                parts.append(b)
                taken += len(b)
            else:
                self._queue[0] = (f + room, b[room:], t)
                parts.append(b[:room])
                taken += room
        return first, parts

    def _wait_seconds(self) -> float:
        if self.checkpoint_seconds is None or self.checkpoint_path is None:
            return 1.0
        due = self.last_checkpoint_time + self.checkpoint_seconds - time.time()
        return float(min(max(due, 0.01), 1.0))

    def _run(self) -> None:
        while True:
            with self._cond:
                found = self._take()
                while not (
                    isinstance(found, tuple)
                    or self._checkpoint_requests
                    or (self._stopping and not self._queue)
                ):
                    if self._checkpoint_due():
                        break
                    wait = self._wait_seconds()
                    self._cond.wait(wait if found is None else min(found, wait))
                    found = self._take()
                work = found if isinstance(found, tuple) else None
                requests, self._checkpoint_requests = self._checkpoint_requests, []
                stop = self._stopping and not self._queue and work is None
            if work is not None:
                self._apply(*work)
            if requests or (not stop and self._checkpoint_due()):
                try:
                    result = self._save() if self.checkpoint_path is not None else None
                except Exception as err:  # noqa: BLE001 - reported to the callers, counted
                    self.count_error("checkpoint")
                    log.error("checkpoint failed: %s", err)
                    for r in requests:
                        r.error = err
                        r.done.set()
                else:
                    for r in requests:
                        r.result = result
                        r.done.set()
            if stop:
                return

    # -- shutdown --------------------------------------------------------------------------------
    def close(self, *, checkpoint: bool = True, timeout: float = 120.0) -> None:
        """Stop accepting, apply what is queued, checkpoint (if a path is set) and stop."""
        if self._closed:
            return
        with self._submit_lock, self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._writer.join(timeout)
        with self._cond:
            self._closed = True
            pending = self._checkpoint_requests
            self._checkpoint_requests = []
        for r in pending:
            r.error = ServiceUnavailable("the service closed")
            r.done.set()
        unsaved = self.applied_seq != self.checkpoint_seq
        if checkpoint and self.checkpoint_path is not None and unsaved:
            self._save()
        if self.journal is not None:
            self.journal.close()

    def abandon(self) -> None:
        """Stop the writer without applying the queue or checkpointing (a crash, for tests):
        whatever was accepted is only in the journal."""
        with self._submit_lock, self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        self._writer.join(10.0)
        self._closed = True
        if self.journal is not None:
            self.journal.close()

    # -- metrics ---------------------------------------------------------------------------------
    def count_error(self, kind: str) -> None:
        """Count one error of ``kind`` (``nmrn_errors_total{kind=...}``)."""
        self.metrics.errors.labels(kind=kind).inc()

    def status(self) -> dict[str, Any]:
        """What the status page shows: progress, events/s over the last 10 s, read latency
        percentiles over the last reads, the checkpoint's age, the live quality."""
        now = time.monotonic()
        rate = 0.0
        progress = list(self._progress)
        if progress and now - progress[-1][0] <= 10.0:
            # from the last run older than the window (or the first run there is) to now
            ref_t, ref_s = next(
                ((t, s) for t, s in reversed(progress) if now - t > 10.0), progress[0]
            )
            if now > ref_t and progress[-1][1] > ref_s:
                rate = (progress[-1][1] - ref_s) / (now - ref_t)
        reads = sorted(self._read_seconds)

        def pct(q: float) -> float | None:
            return None if not reads else reads[min(len(reads) - 1, int(q * len(reads)))]

        quality = self.quality.snapshot()
        return {
            "model": self.model.preset or type(self.model).__name__,
            "writer": "running" if self.writer_alive else "stopped",
            "users": len(self.model.users),
            "items": len(self.model.items),
            "accepted_seq": self.accepted_seq,
            "applied_seq": self.applied_seq,
            "apply_lag": self.pending,
            "events_per_s": rate,
            "read_ms": {"p50": None if pct(0.5) is None else 1000 * pct(0.5),
                        "p99": None if pct(0.99) is None else 1000 * pct(0.99),
                        "reads": len(reads)},
            "checkpoint_seq": self.checkpoint_seq,
            "checkpoints_written": self.checkpoints,
            "checkpoint_age_s": time.time() - self.last_checkpoint_time,
            "uptime_s": time.time() - self.started,
            "live_quality": {key: (None if isinstance(v, float) and math.isnan(v) else v)
                             for key, v in quality.items()},
        }

    @property
    def errors(self) -> dict[str, int]:
        """Errors counted so far, by kind."""
        return self.metrics.error_counts()


def _batch(events: Sequence[Sequence[Any]]) -> EventBatch:
    """``(user, item, timestamp[, weight])`` rows -> :class:`EventBatch` (weights default 1)."""
    rows = list(events)
    users = as_id_array([r[0] for r in rows], "user")
    items = as_id_array([r[1] for r in rows], "item")
    ts = np.array([float(r[2]) for r in rows], dtype=np.float64)
    weights = None
    if any(len(r) > 3 for r in rows):
        weights = np.array([float(r[3]) if len(r) > 3 else 1.0 for r in rows], dtype=np.float64)
    return EventBatch(users, items, ts, weights)
