"""Live prequential quality: test-then-train on the live traffic itself.

Before the writer learns a run of events, :class:`LiveQuality` ranks a sample of them against
what the service would have recommended to their users just before: the user's top-k from the
model as it stands (items the user has consumed excluded, as a read excludes them). An event
counts when its user and item are known and the item is new to the user (the evaluation
protocol's rules, docs/protocol.md); only a user's first event of a run is ranked (later ones
would be ranked against a state that is no longer "just before" them). The moving Hits@k and
NDCG@k over the last ``window`` ranked events are what an operator watches for drift, next to
the offline figures of BENCHMARKS.md.

Examples
--------
>>> from nmrn.baselines.popularity import Popularity
>>> from nmrn.data.events import as_events
>>> model = Popularity().fit([("a", 1, 0), ("b", 1, 1), ("c", 2, 2)])
>>> quality = LiveQuality(k=1, window=10)
>>> quality.measure(model, as_events([("c", 1, 3), ("z", 1, 4)]))  # z is unknown: skipped
>>> quality.snapshot()["hits"], quality.snapshot()["events"]
(1.0, 1)
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from nmrn.config import Int, Real
from nmrn.data.events import EventBatch
from nmrn.training.contract import Recommender

__all__ = ["LiveQuality"]


class LiveQuality:
    """A moving Hits@k and NDCG@k of the service's own recommendations on incoming events.

    Parameters
    ----------
    k
        The cut-off of both metrics.
    window
        How many of the most recent ranked events the moving figures average.
    per_second
        At most this many events are ranked per second, on average (a token bucket): each
        costs one read under the model lock, so this bounds the cost whatever the traffic
        (0: off). At 1,000 events/s and the default 10, one event in a hundred is ranked and
        the window covers the last 100 s.
    per_run
        At most this many events (of distinct users) are ranked in one run of events the
        writer applies.
    clock
        The time source (seconds; tests pass their own).
    """

    def __init__(self, k: int = 10, window: int = 1000, per_second: float = 10.0,
                 per_run: int = 8, clock: Any = time.monotonic) -> None:
        self.k = Int(low=1)("LiveQuality.k", k)
        self.window = Int(low=1)("LiveQuality.window", window)
        self.per_second = Real(low=0.0)("LiveQuality.per_second", per_second)
        self.per_run = Int(low=0)("LiveQuality.per_run", per_run)
        self._clock = clock
        self._tokens = float(self.per_run)  # the first run may rank a full sample
        self._last = clock()
        self._recent: deque[tuple[float, float]] = deque(maxlen=self.window)
        self._lock = threading.Lock()
        self.total = 0

    def measure(self, model: Recommender, batch: EventBatch) -> None:
        """Rank a sample of ``batch`` against ``model`` as it stands (call before learning it,
        holding whatever lock keeps the model still)."""
        if self.per_run == 0 or self.per_second == 0 or len(batch) == 0:
            return
        now = self._clock()
        self._tokens = min(float(self.per_run),
                           self._tokens + (now - self._last) * self.per_second)
        self._last = now
        budget = int(self._tokens)
        if budget == 0:
            return
        users = model.users.encode(batch.users, missing=-1)
        items = model.items.encode(batch.items, missing=-1)
        chosen: list[int] = []
        taken: set[int] = set()
        for j in range(len(batch)):
            u, i = int(users[j]), int(items[j])
            if u < 0 or i < 0 or u in taken:
                continue
            taken.add(u)  # a user's later events of the run are not "just before" any more
            if np.any(model.history.items_of(u) == i):
                continue  # a re-consumption: reads exclude it, so it cannot be a hit
            chosen.append(j)
            if len(chosen) == budget:
                break
        if not chosen:
            return
        self._tokens -= len(chosen)
        recs = model.recommend(batch.users[chosen], k=self.k, exclude_seen=True)
        scores = []
        for row, j in enumerate(chosen):
            found = np.flatnonzero(recs.items[row] == batch.items[j])
            if len(found):
                rank = int(found[0]) + 1
                scores.append((1.0, 1.0 / math.log2(rank + 1)))
            else:
                scores.append((0.0, 0.0))
        with self._lock:
            self._recent.extend(scores)
            self.total += len(scores)

    def snapshot(self) -> dict[str, Any]:
        """``{"hits", "ndcg", "events", "total", "k"}``: the moving figures (NaN before any
        event was ranked), how many events they average, how many were ranked since start."""
        with self._lock:
            recent = list(self._recent)
            total = self.total
        if not recent:
            return {"hits": math.nan, "ndcg": math.nan, "events": 0, "total": total, "k": self.k}
        arr = np.asarray(recent)
        return {"hits": float(arr[:, 0].mean()), "ndcg": float(arr[:, 1].mean()),
                "events": len(recent), "total": total, "k": self.k}
