"""The read side that the writer (:class:`~nmrn.serving.service.LiveService`) and a reader
process (:class:`~nmrn.serving.reader.SnapshotService`) share: one model lock, reads under it,
and wake-ups for the HTTP loop when the lock is next released.

A subclass calls :meth:`ReadPath._init_reads` in its ``__init__`` and provides ``model`` and
``metrics`` (a :class:`~nmrn.serving.metrics.ServiceMetrics`); whatever else must not overlap a
read (a learned batch, a swap to a new snapshot) runs between ``self._model_lock.acquire()``
and :meth:`_release_model`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nmrn.serving.metrics import ServiceMetrics
    from nmrn.training.contract import Recommendations, Recommender

log = logging.getLogger("nmrn.serving")

__all__ = ["ReadPath"]


class ReadPath:
    """Reads of ``self.model`` under ``self._model_lock``, timed into ``self.metrics``."""

    model: Recommender
    metrics: ServiceMetrics

    def _init_reads(self) -> None:
        self._model_lock = threading.Lock()
        # callbacks to run once the model lock is next released (see notify_when_free)
        self._free_lock = threading.Lock()
        self._free_callbacks: list[Callable[[], None]] = []
        self._read_seconds: deque[float] = deque(maxlen=2048)

    def recommend(
        self, users: Sequence[int | str], k: int = 10, exclude_seen: bool = True,
        *, text_ids: bool = False,
    ) -> tuple[list[int | str], Recommendations]:
        """Top-``k`` for ``users`` from a consistent state; returns ``(users as looked up, recs)``.

        With ``text_ids`` (ids that arrived as text, e.g. in a URL path), an id the model does
        not know as text but knows as an int (``"196"`` -> ``196``) is looked up as the int.
        ``recs.items``/``recs.scores`` are ``[n, k']``, ``recs.cold`` is ``[n]``.
        """
        self._model_lock.acquire()
        try:
            return self._recommend_locked(users, k, exclude_seen, text_ids)
        finally:
            self._release_model()

    def try_recommend(
        self, users: Sequence[int | str], k: int = 10, exclude_seen: bool = True,
        *, text_ids: bool = False,
    ) -> tuple[list[int | str], Recommendations] | None:
        """:meth:`recommend` if the model is free now, else ``None`` at once (never waits).

        The HTTP layer calls this on its event loop, where a read of a millisecond is cheaper
        than a hop to a worker thread; when the writer is inside a batch, the loop asks
        :meth:`notify_when_free` to wake it when the batch ends, serves other requests
        meanwhile, and tries again.
        """
        if not self._model_lock.acquire(blocking=False):
            return None
        try:
            return self._recommend_locked(users, k, exclude_seen, text_ids)
        finally:
            self._release_model()

    def notify_when_free(self, callback: Callable[[], None]) -> bool:
        """Call ``callback()`` (from the releasing thread) when the model lock is next released.

        Returns ``False``, registering nothing, if the lock is free now (try again at once).
        The check and the registration are one step with respect to a release, so a wake-up is
        never missed. ``callback`` must be quick and must not raise, e.g.
        ``loop.call_soon_threadsafe(...)``.
        """
        with self._free_lock:
            if not self._model_lock.locked():
                return False
            self._free_callbacks.append(callback)
            return True

    def _release_model(self) -> int:
        """Release the model lock and run the waiting callbacks; returns how many ran."""
        self._model_lock.release()
        with self._free_lock:
            callbacks, self._free_callbacks = self._free_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a waiter's problem must not stop the lock holder
                log.exception("a model-free callback failed")
        return len(callbacks)

    def _recommend_locked(
        self, users: Sequence[int | str], k: int, exclude_seen: bool, text_ids: bool
    ) -> tuple[list[int | str], Recommendations]:
        start = time.perf_counter()
        if text_ids:
            users = [self.model.users.resolve_text(u) for u in users]
        recs = self.model.recommend(list(users), k=k, exclude_seen=exclude_seen)
        elapsed = time.perf_counter() - start
        self.metrics.recommend_seconds.observe(elapsed)
        self._read_seconds.append(elapsed)
        return list(users), recs
