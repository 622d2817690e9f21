"""The streaming test-then-train protocol (DESIGN §3).

The protocol walks a time-ordered log and talks to the model only through its public contract:

- ``fit(events)`` on the history (the first ``base_fraction`` of the log);
- ``score(users, items) -> [n, c]`` (higher is better) with ``items`` a 1-D candidate list;
- ``learn(events)`` on each part of the test stream, *after* that part was scored.

Two walks of the test stream are offered:

``"blocks"`` (the paper's setting)
    ``n_blocks`` consecutive, equal blocks (``numpy.array_split``). Every event of a block whose
    user and item appeared before the block is tested against the model's state at the start of
    the block; then the block is learned. The headline is the mean of the block means.
``"chunks"`` (the live setting)
    Consecutive chunks of ``chunk_size`` events, each tested against the state at its start and
    then learned. The headline is the mean over all tested events; segments report it per fifth
    of the test stream.

Ranking of a test event ``(u, v)`` at position ``p``: ``v`` against every item that appeared in
the log before the block/chunk (the protocol's own notion of "known", the same for every
model), leaving out the items ``u`` interacted with before ``p`` (in the history, in earlier
blocks and earlier in the same block) but never ``v`` itself, since consuming an item again is a
legitimate event. Ties are resolved by expectation under uniformly random tie-breaking (see
:mod:`nmrn.evaluation.metrics`). The sampled metric ranks ``v`` against ``n_sampled`` of the
remaining candidates, drawn once per event by :func:`sample_negatives` from ``seed`` and the
event's position only, so every model sees the same draws.

Order of operations, fixed: score every tested event of a part with the state at its start,
accumulate the metrics, then ``learn`` the whole part in order. Nothing of a part is learned
before all of it is scored, so no event can leak into its own test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from nmrn.config import Int
from nmrn.data.events import EventBatch, as_events
from nmrn.errors import ConfigError, DataError, ModelFitError
from nmrn.evaluation.metrics import expected_hits, expected_ndcg, expected_rr, rank_counts

__all__ = [
    "HITS_KS",
    "METRICS",
    "NEW_USER_EVENTS",
    "PROTOCOLS",
    "SAMPLED_HITS",
    "EvalResult",
    "Evaluation",
    "SegmentResult",
    "evaluate",
    "iter_evaluate",
    "sample_negatives",
]

PROTOCOLS = ("blocks", "chunks")
HITS_KS = (1, 5, 10, 20)
NDCG_K = 10
SAMPLED_K = 10
SAMPLED_HITS = "Hits@10 (sampled)"
#: Names of the reported metrics, in display order.
METRICS = (*(f"Hits@{k}" for k in HITS_KS), f"NDCG@{NDCG_K}", "MRR", SAMPLED_HITS)
#: Number of report segments of the test stream in chunk mode.
N_CHUNK_SEGMENTS = 5
#: A tested event is a "new user" event when its user had fewer earlier events than this.
NEW_USER_EVENTS = 5

ProgressFn = Callable[[int, int], None]


class StreamingModel(Protocol):
    """What the protocol needs of a model (every :class:`~nmrn.training.contract.Recommender`)."""

    def fit(self, events: Any) -> Any: ...

    def learn(self, events: Any) -> Any: ...

    def score(self, users: Any, items: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class SegmentResult:
    """Metrics of one report segment of the test stream (a block, or a fifth in chunk mode).

    Attributes
    ----------
    index
        0-based segment number.
    start, stop
        Positions ``[start, stop)`` of the segment in the whole (time-sorted) log.
    n_tested, n_skipped
        Events ranked, and events skipped because their user or item was new (cold).
    metrics
        Mean of each metric over the segment's tested events (NaN if none was tested).
    """

    index: int
    start: int
    stop: int
    n_tested: int
    n_skipped: int
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-friendly dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentResult:
        """Inverse of :meth:`to_dict` (``None`` metric values read back as NaN)."""
        return cls(
            index=int(data["index"]),
            start=int(data["start"]),
            stop=int(data["stop"]),
            n_tested=int(data["n_tested"]),
            n_skipped=int(data["n_skipped"]),
            metrics=_floats(data["metrics"]),
        )


@dataclass(frozen=True)
class EvalResult:
    """Everything one run of the protocol measured.

    Attributes
    ----------
    model
        The model's display name.
    protocol
        ``"blocks"`` or ``"chunks"``.
    params
        The protocol's settings (``base_fraction``, ``n_blocks`` or ``chunk_size``,
        ``n_sampled``, ``seed``, ``batch_size``) and, when the model offers ``get_params()``,
        its hyper-parameters under ``"model_params"``.
    metrics
        The headline figures (see :data:`METRICS`): the mean of the block means in block mode,
        the mean over every tested event in chunk mode. NaN if nothing was tested.
    segments
        One :class:`SegmentResult` per block, or per fifth of the test stream in chunk mode.
    n_tested, n_skipped, n_base
        Tested and cold-skipped events of the test stream; events in the history.
    fit_seconds, learn_seconds
        Wall time of ``fit`` and of all ``learn`` calls together.
    fit_events_per_s, learn_events_per_s
        Throughput of each (NaN when the time measured is zero).
    n_tested_new, new_user_metrics
        The tested events whose user had fewer than :data:`NEW_USER_EVENTS` earlier events in
        the log (history included), and the mean of each metric over them, in both protocols
        (NaN if there is none). Where memory of a user's first steps should show.
    """

    model: str
    protocol: str
    params: dict[str, Any]
    metrics: dict[str, float]
    segments: list[SegmentResult]
    n_tested: int
    n_skipped: int
    n_base: int
    fit_seconds: float
    learn_seconds: float
    fit_events_per_s: float
    learn_events_per_s: float
    n_tested_new: int = 0
    new_user_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        """The protocol with its size: ``"blocks"``, or ``"chunks 1000"``."""
        size = self.params.get("chunk_size")
        return f"chunks {size}" if self.protocol == "chunks" and size is not None else self.protocol

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every field, segments included."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict` (``None`` in a float field reads back as NaN)."""
        return cls(
            model=str(data["model"]),
            protocol=str(data["protocol"]),
            params=dict(data["params"]),
            metrics=_floats(data["metrics"]),
            segments=[SegmentResult.from_dict(s) for s in data["segments"]],
            n_tested=int(data["n_tested"]),
            n_skipped=int(data["n_skipped"]),
            n_base=int(data["n_base"]),
            **{key: _float(data[key]) for key in _TIMING_FIELDS},
            # absent from results written before the new-user figures existed
            n_tested_new=int(data.get("n_tested_new", 0)),
            new_user_metrics=_floats(data.get("new_user_metrics") or {}),
        )


_TIMING_FIELDS = ("fit_seconds", "learn_seconds", "fit_events_per_s", "learn_events_per_s")


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def _floats(d: dict[str, Any]) -> dict[str, float]:
    return {str(k): _float(v) for k, v in d.items()}


# -- sampled negatives --------------------------------------------------------------------------
_U64 = np.uint64
_GOLDEN = np.array([0x9E3779B97F4A7C15], dtype=_U64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def sample_negatives(
    seed: int, positions: Any, eligible: Any, n_sampled: int
) -> np.ndarray:
    """Draw, for each event, ``n_sampled`` eligible candidate columns without replacement.

    Each candidate column ``j`` of event row ``i`` gets the key ``hash(seed, positions[i], j)``
    (splitmix64); the sample is the ``n_sampled`` eligible columns with the smallest keys, which
    is a uniform draw without replacement. The draw depends only on the seed, the event's
    position in the log and the candidates' columns, never on a model, on the batch an event
    falls in or on any global random state: every model is ranked against the same items.

    Parameters
    ----------
    seed
        Any int.
    positions
        ``[n]`` non-negative event positions in the log.
    eligible
        bool ``[n, m]``: the candidates each event may draw from (known items, not consumed by
        the user before the event, not the target). Column ``j`` must mean the same item for
        every call that should agree (the protocol numbers items by first appearance).
    n_sampled
        How many to draw per event.

    Returns
    -------
    numpy.ndarray
        int64 ``[n, min(n_sampled, m)]`` columns; rows with fewer eligible candidates than
        that are padded with ``-1``. Within a row, columns come in order of their keys.

    Examples
    --------
    >>> eligible = np.array([[True, True, False, True], [False, False, True, False]])
    >>> cols = sample_negatives(0, [7, 8], eligible, 2)
    >>> sorted(cols[0].tolist()) in ([0, 1], [0, 3], [1, 3]), cols[1].tolist()
    (True, [2, -1])
    >>> bool((sample_negatives(0, [7, 8], eligible, 2) == cols).all())
    True
    """
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.ndim != 2:
        raise ValueError(f"eligible must be [n, m], got shape {eligible.shape}")
    n, m = eligible.shape
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if positions.shape != (n,):
        raise ValueError(f"positions must be [{n}], got shape {positions.shape}")
    if n and positions.min() < 0:
        raise ValueError("positions must be non-negative")
    if n_sampled < 0:
        raise ValueError(f"n_sampled must be >= 0, got {n_sampled}")
    size = min(int(n_sampled), m)
    if size == 0 or n == 0:
        return np.full((n, size), -1, dtype=np.int64)
    seed_key = _mix64(np.array([seed % 2**64], dtype=_U64) + _GOLDEN)
    row_key = _mix64(seed_key ^ _mix64(positions.astype(_U64) + _GOLDEN))  # [n]
    col_key = np.arange(m, dtype=_U64) * _GOLDEN  # [m]
    keys = _mix64(row_key[:, None] ^ col_key[None, :])  # [n, m]
    keys[~eligible] = np.iinfo(_U64).max
    if size < m:
        cols = np.argpartition(keys, size - 1, axis=1)[:, :size]  # [n, size], unordered
    else:
        cols = np.broadcast_to(np.arange(m), (n, m)).copy()
    order = np.argsort(np.take_along_axis(keys, cols, axis=1), axis=1, kind="stable")
    cols = np.take_along_axis(cols, order, axis=1)
    cols[~np.take_along_axis(eligible, cols, axis=1)] = -1
    return cols.astype(np.int64)


# -- the protocol --------------------------------------------------------------------------------
def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.nan


class _Stream:
    """The log as dense protocol indices, with per-user histories by position.

    Items and users are numbered in order of first appearance, so the items known before
    position ``s`` are exactly the indices ``0 .. n_known_items(s) - 1``.
    """

    def __init__(self, events: EventBatch) -> None:
        self.events = events
        self.user_idx, self.user_ids = pd.factorize(events.users, sort=False)
        self.item_idx, self.item_ids = pd.factorize(events.items, sort=False)
        self.user_idx = self.user_idx.astype(np.int64)
        self.item_idx = self.item_idx.astype(np.int64)
        self.item_ids = np.asarray(self.item_ids)
        self.user_ids = np.asarray(self.user_ids)
        # Codes follow first appearance, so np.unique's first indices come out increasing.
        self.user_first = np.unique(self.user_idx, return_index=True)[1].astype(np.int64)
        self.item_first = np.unique(self.item_idx, return_index=True)[1].astype(np.int64)
        # CSR of each user's items in log order, and each event's rank within its user.
        order = np.argsort(self.user_idx, kind="stable")
        self.user_items = self.item_idx[order]
        self.indptr = np.zeros(len(self.user_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.user_idx, minlength=len(self.user_ids)), out=self.indptr[1:])
        self.rank_in_user = np.empty(len(events), dtype=np.int64)
        self.rank_in_user[order] = np.arange(len(events)) - self.indptr[self.user_idx[order]]

    def n_known_items(self, start: int) -> int:
        """How many distinct items appear before position ``start``."""
        return int(np.searchsorted(self.item_first, start, side="left"))

    def warm(self, start: int, stop: int) -> np.ndarray:
        """bool ``[stop - start]``: the events whose user and item appeared before ``start``."""
        users = self.user_idx[start:stop]
        items = self.item_idx[start:stop]
        return (self.user_first[users] < start) & (self.item_first[items] < start)

    def earlier_items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, items)``: every item each event's user consumed before the event."""
        counts = self.rank_in_user[positions]  # [n]
        total = int(counts.sum())
        rows = np.repeat(np.arange(len(positions)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = np.repeat(self.indptr[self.user_idx[positions]], counts) + offsets
        return rows, self.user_items[flat]


class Evaluation(Iterator[SegmentResult]):
    """One run of the protocol, as an iterator of segment results.

    Iterating fits the model on the history, then walks the test stream, yielding a
    :class:`SegmentResult` as soon as each segment is complete. Once exhausted, :attr:`result`
    holds the :class:`EvalResult`. :meth:`run` does all of it at once. Build it with
    :func:`iter_evaluate`; the parameters are documented there.

    Attributes
    ----------
    result
        The :class:`EvalResult`, or ``None`` until the iteration has finished.
    """

    def __init__(
        self,
        model: StreamingModel,
        events: Any,
        *,
        protocol: str = "blocks",
        base_fraction: float = 0.6,
        n_blocks: int = 5,
        chunk_size: int = 1000,
        n_sampled: int = 100,
        seed: int = 0,
        batch_size: int = 1024,
        name: str | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if (
            isinstance(base_fraction, bool)
            or not isinstance(base_fraction, (int, float, np.floating))
            or not 0.0 < float(base_fraction) < 1.0
        ):
            raise ConfigError(
                f"base_fraction must be a number strictly between 0 and 1, got {base_fraction!r}"
            )
        self.protocol = protocol
        self.base_fraction = float(base_fraction)
        positive = Int(low=1)
        self.n_blocks = positive("n_blocks", n_blocks)
        self.chunk_size = positive("chunk_size", chunk_size)
        self.n_sampled = positive("n_sampled", n_sampled)
        self.seed = Int(low=-(2**63))("seed", seed)
        self.batch_size = positive("batch_size", batch_size)
        for method in ("fit", "learn", "score"):
            if not callable(getattr(model, method, None)):
                raise TypeError(
                    f"{type(model).__name__} has no {method}() method; the protocol needs "
                    "fit(events), learn(events) and score(users, items)"
                )
        self.model = model
        self.name = name or getattr(model, "preset", None) or type(model).__name__
        self.progress = progress
        self.events = _checked_events(events)
        n = len(self.events)
        self.n_base = int(math.floor(self.base_fraction * n))
        if self.n_base < 1 or self.n_base >= n:
            raise DataError(
                f"base_fraction={self.base_fraction} of {n} events leaves {self.n_base} for the "
                f"history and {n - self.n_base} for the test stream; both must be non-empty"
            )
        n_test = n - self.n_base
        if protocol == "blocks" and self.n_blocks > n_test:
            raise DataError(
                f"n_blocks={self.n_blocks} is more than the {n_test} events of the test stream"
            )
        self.result: EvalResult | None = None
        self._steps = self._walk()

    def __iter__(self) -> Evaluation:
        return self

    def __next__(self) -> SegmentResult:
        return next(self._steps)

    def run(self) -> EvalResult:
        """Run (or finish) the evaluation and return its :class:`EvalResult`."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    # -- the walk ------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"base_fraction": self.base_fraction}
        if self.protocol == "blocks":
            params["n_blocks"] = self.n_blocks
        else:
            params["chunk_size"] = self.chunk_size
        params.update(n_sampled=self.n_sampled, seed=self.seed, batch_size=self.batch_size)
        get_params = getattr(self.model, "get_params", None)
        if callable(get_params):
            params["model_params"] = dict(get_params())
        return params

    def _walk(self) -> Iterator[SegmentResult]:
        stream = _Stream(self.events)
        n, n_base = len(self.events), self.n_base
        n_test = n - n_base
        test_positions = np.arange(n_base, n)

        # Parts are what is scored then learned; segments are what is reported.
        if self.protocol == "blocks":
            blocks = np.array_split(test_positions, self.n_blocks)
            parts = [(int(b[0]), int(b[-1]) + 1) for b in blocks]
            segments = list(parts)
        else:
            parts = [(s, min(s + self.chunk_size, n)) for s in range(n_base, n, self.chunk_size)]
            segments = [
                (int(b[0]), int(b[-1]) + 1)
                for b in np.array_split(test_positions, min(N_CHUNK_SEGMENTS, n_test))
            ]
        seg_starts = np.array([s for s, _ in segments], dtype=np.int64)
        n_seg = len(segments)
        sums = np.zeros((n_seg, len(METRICS)), dtype=np.float64)
        tested = np.zeros(n_seg, dtype=np.int64)
        skipped = np.zeros(n_seg, dtype=np.int64)
        new_sums = np.zeros(len(METRICS), dtype=np.float64)
        n_new = 0

        start_time = time.perf_counter()
        self.model.fit(self.events[:n_base])
        fit_seconds = time.perf_counter() - start_time
        learn_seconds = 0.0
        if self.progress is not None:
            self.progress(0, n_test)

        done_segments: list[SegmentResult] = []
        for start, stop in parts:
            warm = stream.warm(start, stop)
            seg_of = np.searchsorted(seg_starts, np.arange(start, stop), side="right") - 1
            np.add.at(skipped, seg_of[~warm], 1)
            positions = np.arange(start, stop)[warm]
            if len(positions):
                values = self._score_part(stream, start, positions)  # [n_tested, n_metrics]
                seg_tested = seg_of[warm]
                np.add.at(sums, seg_tested, values)
                np.add.at(tested, seg_tested, 1)
                new = stream.rank_in_user[positions] < NEW_USER_EVENTS
                new_sums += values[new].sum(axis=0)
                n_new += int(new.sum())

            start_time = time.perf_counter()
            self.model.learn(self.events[start:stop])
            learn_seconds += time.perf_counter() - start_time
            if self.progress is not None:
                self.progress(stop - n_base, n_test)

            while len(done_segments) < n_seg and segments[len(done_segments)][1] <= stop:
                j = len(done_segments)
                segment = SegmentResult(
                    index=j,
                    start=segments[j][0],
                    stop=segments[j][1],
                    n_tested=int(tested[j]),
                    n_skipped=int(skipped[j]),
                    metrics=_means(sums[j], int(tested[j])),
                )
                done_segments.append(segment)
                yield segment

        if self.protocol == "blocks":
            # Mean of the block means, over the blocks that tested anything.
            means = np.array([[s.metrics[m] for m in METRICS] for s in done_segments])
            has_tests = tested > 0
            headline = (
                dict(zip(METRICS, means[has_tests].mean(axis=0).tolist(), strict=True))
                if has_tests.any()
                else _means(sums.sum(axis=0), 0)
            )
        else:
            headline = _means(sums.sum(axis=0), int(tested.sum()))
        self.result = EvalResult(
            model=self.name,
            protocol=self.protocol,
            params=self._params(),
            metrics=headline,
            segments=done_segments,
            n_tested=int(tested.sum()),
            n_skipped=int(skipped.sum()),
            n_base=n_base,
            fit_seconds=fit_seconds,
            learn_seconds=learn_seconds,
            fit_events_per_s=_rate(n_base, fit_seconds),
            learn_events_per_s=_rate(n_test, learn_seconds),
            n_tested_new=n_new,
            new_user_metrics=_means(new_sums, n_new),
        )

    def _score_part(self, stream: _Stream, start: int, positions: np.ndarray) -> np.ndarray:
        """Metric values ``[len(positions), len(METRICS)]`` of the tested events of one part.

        Every event is ranked with the model as it stands at ``start``; nothing is learned here.
        """
        n_known = stream.n_known_items(start)
        candidates = stream.item_ids[:n_known]  # column j is protocol item j
        # Group a user's events together so that each score call covers few distinct users;
        # results are written back by row, so the order does not matter otherwise.
        order = np.argsort(stream.user_idx[positions], kind="stable")
        out = np.empty((len(positions), len(METRICS)), dtype=np.float64)
        for lo in range(0, len(positions), self.batch_size):
            rows_out = order[lo : lo + self.batch_size]
            out[rows_out] = self._score_batch(stream, positions[rows_out], candidates)
        return out

    def _score_batch(
        self, stream: _Stream, positions: np.ndarray, candidates: np.ndarray
    ) -> np.ndarray:
        n, m = len(positions), len(candidates)
        users, inverse = np.unique(stream.user_idx[positions], return_inverse=True)
        user_scores = np.asarray(self.model.score(stream.user_ids[users], candidates), float)
        if user_scores.shape != (len(users), m):
            raise ValueError(
                f"{type(self.model).__name__}.score returned shape {user_scores.shape} for "
                f"{len(users)} users and {m} candidate items; expected {(len(users), m)}"
            )
        scores = user_scores[inverse.reshape(-1)]  # [n, m]
        targets = stream.item_idx[positions]  # [n], also their candidate columns

        excluded = np.zeros((n, m), dtype=bool)
        rows, items = stream.earlier_items(positions)
        inside = items < m  # items first seen inside this part are not candidates anyway
        excluded[rows[inside], items[inside]] = True
        excluded[np.arange(n), targets] = False  # the target is never excluded
        if np.isnan(scores).any():
            raise ModelFitError(
                f"{self.name}: score() returned NaN (the model has diverged); lower its "
                f"learning rate or enable gradient clipping"
            )
        n_greater, n_tied = rank_counts(scores, targets, excluded)

        eligible = ~excluded
        eligible[np.arange(n), targets] = False
        sampled = sample_negatives(self.seed, positions, eligible, self.n_sampled)  # [n, s]
        drawn = sampled >= 0
        sampled_scores = np.take_along_axis(scores, np.where(drawn, sampled, 0), axis=1)
        target_scores = scores[np.arange(n), targets][:, None]
        s_greater = ((sampled_scores > target_scores) & drawn).sum(axis=1)
        s_tied = ((sampled_scores == target_scores) & drawn).sum(axis=1)

        columns = [expected_hits(n_greater, n_tied, k) for k in HITS_KS]
        columns.append(expected_ndcg(n_greater, n_tied, NDCG_K))
        columns.append(expected_rr(n_greater, n_tied))
        columns.append(expected_hits(s_greater, s_tied, SAMPLED_K))
        return np.stack(columns, axis=1)


def _means(sums: np.ndarray, count: int) -> dict[str, float]:
    if count == 0:
        return dict.fromkeys(METRICS, math.nan)
    return dict(zip(METRICS, (sums / count).tolist(), strict=True))


def _checked_events(events: Any) -> EventBatch:
    batch = as_events(events, where="evaluation events")
    if len(batch) == 0:
        raise DataError("evaluation events: the log is empty; the protocol needs events")
    decreasing = np.flatnonzero(np.diff(batch.timestamps) < 0)
    if len(decreasing):
        j = int(decreasing[0]) + 1
        raise DataError(
            f"evaluation events: not sorted by time (row {j} has timestamp "
            f"{batch.timestamps[j]!r} < {batch.timestamps[j - 1]!r} of row {j - 1}); sort them "
            "first, e.g. with EventBatch.sorted_by_time()"
        )
    return batch


def iter_evaluate(
    model: StreamingModel,
    events: Any,
    *,
    protocol: str = "blocks",
    base_fraction: float = 0.6,
    n_blocks: int = 5,
    chunk_size: int = 1000,
    n_sampled: int = 100,
    seed: int = 0,
    batch_size: int = 1024,
    name: str | None = None,
    progress: ProgressFn | None = None,
) -> Evaluation:
    """Run the test-then-train protocol step by step (river's generator/printer split).

    Parameters
    ----------
    model
        Any object with ``fit(events)``, ``learn(events)`` and ``score(users, items)`` (1-D
        ``items`` meaning the same candidates for every user, returning ``[n, c]``, higher is
        better). The protocol never looks inside it.
    events
        The log, sorted by time (an :class:`~nmrn.data.events.EventBatch` or anything
        :func:`~nmrn.data.events.as_events` accepts).
    protocol
        ``"blocks"`` (the paper's) or ``"chunks"`` (the live setting).
    base_fraction
        Share of the log used as history for ``fit``, strictly between 0 and 1; the first
        ``floor(base_fraction * n)`` events.
    n_blocks
        Number of equal blocks of the test stream (``"blocks"``).
    chunk_size
        Events per chunk (``"chunks"``).
    n_sampled
        Items drawn per test event for the sampled Hits@10.
    seed
        Seed of those draws (see :func:`sample_negatives`).
    batch_size
        Tested events per ``score`` call (hence at most that many distinct users). Peak memory
        is a few times ``batch_size * n_items * 8`` bytes (scores, sampling keys, masks); lower
        it for catalogues of hundreds of thousands of items.
    name
        Display name; defaults to the model's ``name`` attribute or its class name.
    progress
        Optional ``progress(done, total)``, called with test-stream events learned so far.

    Returns
    -------
    Evaluation
        An iterator of :class:`SegmentResult`; once it is exhausted its ``result`` attribute
        holds the :class:`EvalResult`.

    Raises
    ------
    nmrn.errors.ConfigError
        For a bad setting (``base_fraction`` outside (0, 1), ``n_blocks < 1``, ...).
    nmrn.errors.DataError
        For an empty or unsorted log, or one too short for the split.

    Examples
    --------
    >>> import numpy as np
    >>> class Constant:
    ...     def fit(self, events): pass
    ...     def learn(self, events): pass
    ...     def score(self, users, items): return np.zeros((len(users), len(items)))
    >>> log = [(u, i, t) for t, (u, i) in enumerate([(0, 0), (1, 1), (0, 2), (1, 3)] * 5)]
    >>> run = iter_evaluate(Constant(), log, base_fraction=0.5, n_blocks=2)
    >>> [(s.index, s.n_tested) for s in run]
    [(0, 5), (1, 5)]
    >>> run.result.metrics["Hits@1"]  # 4 items, 2 of them the user's own earlier items: 1/3
    0.3333...
    """
    return Evaluation(
        model,
        events,
        protocol=protocol,
        base_fraction=base_fraction,
        n_blocks=n_blocks,
        chunk_size=chunk_size,
        n_sampled=n_sampled,
        seed=seed,
        batch_size=batch_size,
        name=name,
        progress=progress,
    )


def evaluate(
    model: StreamingModel,
    events: Any,
    *,
    name: str | None = None,
    progress: ProgressFn | None = None,
    **options: Any,
) -> EvalResult:
    """Run the whole test-then-train protocol and return its :class:`EvalResult`.

    Takes the same options as :func:`iter_evaluate`.
    """
    return iter_evaluate(model, events, name=name, progress=progress, **options).run()

