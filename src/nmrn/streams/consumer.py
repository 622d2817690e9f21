"""The consumer loop: read events from a source, learn them in order, checkpoint, acknowledge.

Guarantees (for one consumer, the single writer of its checkpoint):

- **In order.** Events are applied with ``model.learn`` in stream order, in small batches.
- **Nothing applied twice, nothing lost.** Every ``checkpoint_every`` events (and at idle and at
  stop) the model is saved *with the position of the last entry it has consumed* inside the
  checkpoint (:func:`~nmrn.streams.position.save_checkpoint`, atomic). Entries are
  acknowledged to the source only after that save has returned. On restart the consumer loads
  the checkpoint and the source resumes strictly after its position; a Redis source re-reads the
  group's pending entries and skips those at or before it.
- **Reproducible batches.** Batch boundaries fall at multiples of ``batch_size`` and of
  ``checkpoint_every`` in the count of applied events, which the checkpoint stores, so a consumer
  that was killed and restarted learns the same batches as one that ran straight through, as
  long as it never had to wait for events mid-batch (a stream that goes idle flushes the
  partial batch so that events are not held back).
- **Bad records never stop the stream.** A malformed entry is handed to ``source.reject`` (a Redis
  source moves it to its dead-letter stream) and counted; the entries around it are applied.
  The count survives crashes exactly: a source that rejects for good before the checkpoint
  (Redis acknowledges a dead letter at once) stores a mark with each checkpoint and reports, on
  restart, what it rejected after it (:meth:`~nmrn.streams.sources.EventSource.rejected_since`).
- **A producer's retry is applied once.** An entry whose ``event_id`` is among the last
  ``dedupe_window`` event ids is skipped and counted as a duplicate. The window is part of the
  checkpoint, so a restarted consumer makes the same decisions as one that never stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmrn.data.events import EventBatch
from nmrn.data.idmap import as_id_array
from nmrn.io import checkpoint_exists, remove_stale_temporaries
from nmrn.streams.position import STREAM_KEY, save_checkpoint
from nmrn.streams.sources import Entry, EventSource, InvalidEvent
from nmrn.training.contract import Recommender

__all__ = ["ConsumeStats", "Consumer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumeStats:
    """What one :meth:`Consumer.run` did.

    Attributes
    ----------
    applied
        Events learned in this run.
    invalid
        Malformed entries rejected in this run.
    duplicates
        Entries skipped in this run because their ``event_id`` was seen within the window.
    checkpoints
        Checkpoints written in this run.
    total_applied
        Events learned from the stream over the checkpoint's whole life.
    position
        The last consumed position (as stored in the checkpoint), or ``None``.
    stopped
        Why the run ended: ``"end"`` (the source is exhausted), ``"max_events"``, ``"idle"``,
        ``"signal"`` or ``"stop"``.
    elapsed_s
        Wall time of the run, in seconds.
    """

    applied: int
    invalid: int
    duplicates: int
    checkpoints: int
    total_applied: int
    position: dict[str, Any] | None
    stopped: str
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        """Applied events per second of wall time."""
        return self.applied / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Consumer:
    """Apply a stream of events to a model, with exact recovery from checkpoints.

    Parameters
    ----------
    model
        Any :class:`~nmrn.training.contract.Recommender`. Its ``extra["stream"]`` (set when it was
        loaded from a consumer's checkpoint) is the position to resume after.
    source
        The :class:`~nmrn.streams.sources.EventSource` to read.
    checkpoint_path
        Where checkpoints are written (atomically replaced each time).
    checkpoint_every
        Checkpoint after every this many applied events.
    batch_size
        Events per ``model.learn`` call (at most).
    poll_timeout
        Seconds one read may wait for new events; bounds how late a stop is noticed.
    dedupe_window
        How many of the latest ``event_id`` values are remembered; an entry carrying one of
        them is a producer's retry and is skipped (0: no deduplication). A count, not a time,
        so that replay after a crash decides exactly as the first run did; the ids are stored
        in the checkpoint (``dedupe_window`` × id length bytes at most).

    Examples
    --------
    >>> import os, tempfile
    >>> from nmrn.baselines.popularity import Popularity
    >>> from nmrn.streams.sources import FileSource
    >>> tmp = tempfile.mkdtemp()
    >>> with open(os.path.join(tmp, "ev.jsonl"), "w") as f:
    ...     for t in range(5):
    ...         _ = f.write(f'{{"user": {t % 2}, "item": {t % 3}, "timestamp": {t}}}\\n')
    >>> source = FileSource(os.path.join(tmp, "ev.jsonl"))
    >>> stats = Consumer(Popularity(), source, os.path.join(tmp, "ckpt"), batch_size=2).run()
    >>> stats.applied, stats.total_applied, stats.position["line"], stats.stopped
    (5, 5, 5, 'end')
    """

    def __init__(
        self,
        model: Recommender,
        source: EventSource,
        checkpoint_path: str | os.PathLike[str],
        *,
        checkpoint_every: int = 1000,
        batch_size: int = 64,
        poll_timeout: float = 1.0,
        dedupe_window: int = 10_000,
    ) -> None:
        if not isinstance(model, Recommender):
            raise TypeError(f"model must be a Recommender, got {type(model).__name__}")
        for name, value in (("checkpoint_every", checkpoint_every), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not poll_timeout > 0:
            raise ValueError(f"poll_timeout must be > 0, got {poll_timeout}")
        if isinstance(dedupe_window, bool) or not isinstance(dedupe_window, int) \
                or dedupe_window < 0:
            raise ValueError(f"dedupe_window must be an int >= 0, got {dedupe_window!r}")
        self.model = model
        self.source = source
        self.checkpoint_path = Path(checkpoint_path)
        self.checkpoint_every = checkpoint_every
        self.batch_size = batch_size
        self.poll_timeout = float(poll_timeout)
        saved = model.extra.get(STREAM_KEY)
        self.position: dict[str, Any] | None = dict(saved) if saved else None
        self.total_applied = int(self.position.get("events", 0)) if self.position else 0
        self.total_invalid = int(self.position.get("invalid", 0)) if self.position else 0
        self.total_duplicates = int(self.position.get("duplicates", 0)) if self.position else 0
        self.dedupe_window = dedupe_window
        # the latest event ids, oldest first; stored in the checkpoint one per line
        saved_ids = self.position.get("event_ids", "") if self.position else ""
        self._event_ids: OrderedDict[str, None] = OrderedDict.fromkeys(
            saved_ids.split("\n") if saved_ids else []
        )
        self._trim_event_ids()
        self._saved_position = self.position
        self._saved_applied = self.total_applied
        self._stop_reason: str | None = None
        self._resumed = False

    def __repr__(self) -> str:
        return (
            f"Consumer({type(self.model).__name__}, {self.source!r}, "
            f"checkpoint={str(self.checkpoint_path)!r}, applied={self.total_applied})"
        )

    def stop(self) -> None:
        """Ask :meth:`run` to finish: flush, write a final checkpoint, acknowledge, return."""
        self._stop_reason = self._stop_reason or "stop"
        self.source.stop()

    # -- the loop ----------------------------------------------------------------------------
    def _room(self, batch: list[dict[str, Any]], remaining: int | None) -> int:
        """How many more events fit before the next batch or checkpoint boundary."""
        count = self.total_applied + len(batch)
        room = min(
            self.batch_size - count % self.batch_size,
            self.checkpoint_every - count % self.checkpoint_every,
        )
        if remaining is not None:
            room = min(room, remaining - len(batch))
        return room

    def _at_boundary(self, pending: int) -> bool:
        count = self.total_applied + pending
        return count % self.batch_size == 0 or count % self.checkpoint_every == 0

    def run(self, max_events: int | None = None, idle_timeout: float | None = None) -> ConsumeStats:
        """Consume until the source ends, ``max_events`` are applied, or a stop is requested.

        Parameters
        ----------
        max_events
            Stop after applying this many events in this run (``None``: no limit).
        idle_timeout
            Stop after this many seconds without a new entry (``None``: wait forever).

        Returns
        -------
        ConsumeStats

        Notes
        -----
        In the main thread, SIGTERM and SIGINT request a clean stop (a final checkpoint);
        a second signal interrupts at once (the last checkpoint stays valid).
        """
        if max_events is not None and max_events < 0:
            raise ValueError(f"max_events must be >= 0, got {max_events}")
        start = time.perf_counter()
        if not self._resumed:
            # what the source rejected for good after the checkpoint (by a run that was then
            # killed) or while it resumes; without a mark in the checkpoint (none yet), from now
            mark = self.position.get("reject_mark") if self.position else None
            if mark is None:
                mark = self.source.reject_mark()
            self.source.resume_after(self.position)
            self.total_invalid += self.source.rejected_since(mark)
            remove_stale_temporaries(self.checkpoint_path)
            self._resumed = True
        applied = invalid = duplicates = checkpoints = 0
        batch: list[dict[str, Any]] = []
        last_entry_at = time.monotonic()
        restore = self._install_signal_handlers()
        stopped = "end"
        try:
            while True:
                if self._stop_reason is not None:
                    stopped = self._stop_reason
                    break
                if max_events is not None and applied + len(batch) >= max_events:
                    stopped = "max_events"
                    break
                if self.source.exhausted:
                    stopped = self._stop_reason or "end"
                    break
                timeout = self.poll_timeout
                if idle_timeout is not None:
                    idle_left = idle_timeout - (time.monotonic() - last_entry_at)
                    timeout = max(0.0, min(timeout, idle_left))
                room = self._room(batch, None if max_events is None else max_events - applied)
                entries = self.source.poll(room, timeout)
                if entries:
                    last_entry_at = time.monotonic()
                for entry in entries:
                    if isinstance(entry.value, InvalidEvent):
                        self._reject(entry)
                        invalid += 1
                    elif self._is_duplicate(entry):
                        duplicates += 1
                    else:
                        batch.append(entry.value)
                    self.position = entry.position
                if batch and (not entries or self._at_boundary(len(batch))):
                    # at a boundary, or the stream is idle: apply what we have
                    applied += self._apply(batch)
                    batch = []
                due = (
                    not batch
                    and self.total_applied % self.checkpoint_every == 0
                    and self.total_applied != self._saved_applied
                )
                if self.position is not self._saved_position and (due or not entries):
                    self._checkpoint()
                    checkpoints += 1
                if (
                    not entries
                    and idle_timeout is not None
                    and time.monotonic() - last_entry_at >= idle_timeout
                ):
                    stopped = "idle"
                    break
            if batch:
                applied += self._apply(batch)
            if self.position is not self._saved_position or not checkpoint_exists(
                self.checkpoint_path
            ):
                self._checkpoint()
                checkpoints += 1
        finally:
            restore()
        return ConsumeStats(
            applied=applied,
            invalid=invalid,
            duplicates=duplicates,
            checkpoints=checkpoints,
            total_applied=self.total_applied,
            position=self._record(),
            stopped=stopped,
            elapsed_s=time.perf_counter() - start,
        )

    def _reject(self, entry: Entry) -> None:
        assert isinstance(entry.value, InvalidEvent)
        log.warning("skipping malformed entry at %s: %s", entry.position, entry.value.reason)
        self.source.reject(entry)
        self.total_invalid += 1

    def _is_duplicate(self, entry: Entry) -> bool:
        """Whether the entry's ``event_id`` is in the window; remembers it if not."""
        assert isinstance(entry.value, dict)
        event_id = entry.value.get("event_id")
        if event_id is None or self.dedupe_window == 0:
            return False
        if event_id in self._event_ids:
            log.info("skipping a retried event at %s: event_id %r was seen", entry.position,
                     event_id)
            self.total_duplicates += 1
            return True
        self._event_ids[event_id] = None
        self._trim_event_ids()
        return False

    def _trim_event_ids(self) -> None:
        while len(self._event_ids) > self.dedupe_window:
            self._event_ids.popitem(last=False)

    def _apply(self, batch: list[dict[str, Any]]) -> int:
        weights = None
        if any("weight" in e for e in batch):
            weights = np.array([e.get("weight", 1.0) for e in batch], dtype=np.float64)
        events = EventBatch(
            as_id_array([e["user"] for e in batch], "user"),
            as_id_array([e["item"] for e in batch], "item"),
            np.array([e["timestamp"] for e in batch], dtype=np.float64),
            weights,
        )
        self.model.learn(events)
        self.total_applied += len(batch)
        return len(batch)

    def _record(self) -> dict[str, Any] | None:
        if self.position is None:
            return None
        record = {**self.position, "events": self.total_applied, "invalid": self.total_invalid}
        mark = self.source.reject_mark()
        if mark is not None:
            record["reject_mark"] = mark
        if self.total_duplicates or self._event_ids:
            record["duplicates"] = self.total_duplicates
            # one string, not a list: JSON writes it at C speed (ids hold no control characters)
            record["event_ids"] = "\n".join(self._event_ids)
        return record

    def _checkpoint(self) -> None:
        record = self._record()
        save_checkpoint(self.model, self.checkpoint_path, position=record)
        # durable now: the source may forget everything up to this position
        if self.position is not None:
            self.source.ack(self.position)
        self._saved_position = self.position
        self._saved_applied = self.total_applied
        log.info("checkpoint %s at %s", self.checkpoint_path,
                 {k: v for k, v in (record or {}).items() if k != "event_ids"})

    def _install_signal_handlers(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_reason == "signal":  # a second signal: stop now
                raise KeyboardInterrupt
            self._stop_reason = "signal"
            self.source.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore
