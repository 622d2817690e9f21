"""A synthetic interaction log at any scale, for benchmarks and tests: **synthetic, not data**.

Real logs large enough to measure 10^5-10^7 users or items are not freely redistributable, so
the scale benchmarks (catalogue size, users, memory per user) run on this generator. Its figures
say how fast and how big, never how accurate: accuracy is measured on real logs only.

What it models (all drawn from one seed, see :class:`SynthConfig`)
    Item popularity
        Zipf: an item of popularity rank ``r`` (a random permutation of the items) has base weight
        ``(r + 1) ** -zipf``.
    Sessions with co-occurrence
        Events come in sessions of geometric length (mean ``session_mean``); every item of a
        session is drawn from one *topic* (items are split into ``topics`` random groups), so
        items of one topic co-occur. A session is in one of the user's two own topics with
        probability ``affinity``, else in a topic drawn by the topics' current popularity.
    Drift
        A topic's popularity follows a slow wave of its own frequency and phase, and a new item
        is ``trend_boost`` times more attractive on arrival, fading with half-life ``trend_half``
        (both in fractions of the log's time span).
    New users and items
        ``initial_users`` / ``initial_items`` of them exist at the start; the others arrive
        uniformly over the span, in order of their ids (ids grow with time, as in real logs). A
        user's first session is in the window after their arrival (while a window has sessions
        left), so a log of enough events holds nearly every user; users present from the start
        appear only as their activity draws them.
    User activity
        Log-normal: a few heavy users, many light ones.

The log is made in time windows of ``chunk_events`` events; items and users arrive at window
granularity, and a window's events are sorted by time (stable), so the whole log is in time order
while only one window is ever in memory: O(users + items + chunk_events) memory for any
``events``. The output is a pure function of the config (same config, same bytes).

Examples
--------
>>> cfg = SynthConfig(users=50, items=200, events=1_000, seed=1, chunk_events=300)
>>> chunks = list(synth_chunks(cfg))
>>> [len(c) for c in chunks]
[300, 300, 300, 100]
>>> bool(all((c.timestamps[1:] >= c.timestamps[:-1]).all() for c in chunks))
True
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from nmrn.data.events import EventBatch
from nmrn.errors import DataError

__all__ = ["SynthConfig", "SynthStats", "item_topics", "synth_chunks", "write_synth"]

_DAY = 86_400


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`synth_chunks` generates; every field is checked on construction."""

    users: int
    items: int
    events: int
    seed: int = 0
    topics: int = 100  #: item groups that co-occur in sessions (capped at ``items``)
    zipf: float = 1.1  #: exponent of item popularity
    session_mean: float = 6.0  #: mean events per session (geometric)
    affinity: float = 0.8  #: share of a user's sessions in their own two topics
    initial_users: float = 0.3  #: share of users present at the start
    initial_items: float = 0.5  #: share of items present at the start
    trend_boost: float = 4.0  #: extra attraction of a new item on arrival
    trend_half: float = 0.02  #: half-life of that boost, as a fraction of the span
    start: int = 1_600_000_000  #: first timestamp (Unix seconds)
    span_days: float = 365.0  #: time the log covers
    chunk_events: int = 100_000  #: events per time window (the memory bound)

    def __post_init__(self) -> None:
        for name in ("users", "items", "events", "topics", "chunk_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise DataError(f"synth: {name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise DataError(f"synth: seed must be a non-negative integer, got {self.seed!r}")
        checks = {
            "zipf": self.zipf >= 0,
            "session_mean": self.session_mean >= 1,
            "affinity": 0 <= self.affinity <= 1,
            "initial_users": 0 < self.initial_users <= 1,
            "initial_items": 0 < self.initial_items <= 1,
            "trend_boost": self.trend_boost >= 0,
            "trend_half": self.trend_half > 0,
            "span_days": self.span_days > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or not ok:
                raise DataError(f"synth: {name}={value!r} is out of range")


@dataclass(frozen=True)
class SynthStats:
    """What :func:`write_synth` wrote: events, and the distinct users and items among them."""

    events: int
    users: int
    items: int


def item_topics(config: SynthConfig) -> np.ndarray:
    """The topic of every item (``[items]`` int64): items of one topic co-occur in sessions."""
    return _World(config).topic


class _World:
    """What stays fixed over the log: arrivals, popularity, topics, users' tastes."""

    def __init__(self, cfg: SynthConfig) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
        n_topics = min(cfg.topics, cfg.items)
        self.item_arrival = _arrivals(rng, cfg.items, cfg.initial_items)
        self.topic = rng.integers(0, n_topics, cfg.items)
        self.base = (rng.permutation(cfg.items) + 1.0) ** -cfg.zipf
        self.user_arrival = _arrivals(rng, cfg.users, cfg.initial_users)
        self.activity = rng.lognormal(0.0, 1.0, cfg.users)
        self.taste = rng.integers(0, n_topics, (cfg.users, 2))
        self.topic_freq = rng.uniform(0.5, 3.0, n_topics)  # waves per span
        self.topic_phase = rng.uniform(0.0, 2 * np.pi, n_topics)
        self.by_topic = np.argsort(self.topic, kind="stable")  # items grouped by topic
        self.topic_end = np.cumsum(np.bincount(self.topic, minlength=n_topics))
        self.n_topics = n_topics


def _arrivals(rng: np.random.Generator, n: int, initial: float) -> np.ndarray:
    """Arrival times in [0, 1), non-decreasing in id: the first ``initial`` share at 0."""
    n0 = max(1, int(round(initial * n)))
    return np.concatenate([np.zeros(n0), np.sort(rng.random(n - n0))])


def synth_chunks(config: SynthConfig) -> Iterator[EventBatch]:
    """The log as time-ordered :class:`EventBatch` windows of ``config.chunk_events`` events
    (the last one shorter), with int64 user and item ids ``0..users-1`` / ``0..items-1`` and
    integer-second timestamps."""
    cfg = config
    world = _World(cfg)
    n_windows = -(-cfg.events // cfg.chunk_events)
    span = cfg.span_days * _DAY
    seeds = np.random.SeedSequence([cfg.seed, 1]).spawn(n_windows)
    for w in range(n_windows):
        n = min(cfg.chunk_events, cfg.events - w * cfg.chunk_events)
        t0, t1 = w / n_windows, (w + 1) / n_windows
        yield _window(world, cfg, np.random.default_rng(seeds[w]), n, t0, t1, span)


def _window(world: _World, cfg: SynthConfig, rng: np.random.Generator, n: int,
            t0: float, t1: float, span: float) -> EventBatch:
    # users and items that exist at the window's start, and the items' weights at its middle
    n_users = int(np.searchsorted(world.user_arrival, t0, side="right"))
    t_prev = t0 - (t1 - t0)
    n_items = int(np.searchsorted(world.item_arrival, t0, side="right"))
    mid = (t0 + t1) / 2
    weight = np.zeros(cfg.items)
    age = mid - world.item_arrival[:n_items]
    weight[:n_items] = world.base[:n_items] * (1 + cfg.trend_boost * 0.5 ** (age / cfg.trend_half))
    # cumulative weights along the items grouped by topic (a topic is one range of it, and the
    # items of a topic that exist are a prefix of that range: ids grow with arrival time)
    cum = np.concatenate([[0.0], np.cumsum(weight[world.by_topic])])
    starts = np.concatenate([[0], world.topic_end[:-1]])
    before = cum[starts]
    mass = cum[world.topic_end] - before
    last = starts + np.bincount(world.topic[:n_items], minlength=world.n_topics) - 1
    live = mass > 0
    topic_pop = np.exp(np.sin(2 * np.pi * world.topic_freq * mid + world.topic_phase)) * mass
    topic_pop /= topic_pop.sum()

    # sessions: lengths until n events, then their user, topic and start time
    lengths = rng.geometric(1 / cfg.session_mean, n // max(1, int(cfg.session_mean)) + 8)
    while lengths.sum() < n:
        lengths = np.concatenate([lengths, rng.geometric(1 / cfg.session_mean, len(lengths))])
    n_sessions = int(np.searchsorted(np.cumsum(lengths), n)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= lengths.sum() - n
    act = world.activity[:n_users]
    users = rng.choice(n_users, n_sessions, p=act / act.sum())
    # a user who arrived since the last window starts with a session of their own (arriving is
    # doing something), so nearly every user of the config appears in a long enough log
    arrived = np.arange(int(np.searchsorted(world.user_arrival, t_prev, side="right"))
                        if t0 > 0 else n_users, n_users)[:n_sessions]
    users[: len(arrived)] = arrived
    own = world.taste[users, (rng.random(n_sessions) < 0.3).astype(np.int64)]
    drawn = rng.choice(world.n_topics, n_sessions, p=topic_pop)
    topic = np.where((rng.random(n_sessions) < cfg.affinity) & live[own], own, drawn)
    start = rng.uniform(t0, t1, n_sessions) * span

    # events: each session's items from its topic, a few minutes apart, clipped to the window
    sess = np.repeat(np.arange(n_sessions), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    gaps = rng.exponential(180.0, n)
    gaps[first] = 0.0
    offset = np.cumsum(gaps)
    offset -= np.repeat(offset[np.cumsum(lengths) - lengths], lengths)
    ts = np.minimum(start[sess] + offset, t1 * span - 1)
    tp = topic[sess]
    # cum[j] < target <= cum[j + 1] picks item j with probability weight / mass (target > cum
    # at the range's start as 1 - random() > 0; the clip only catches rounding at its end)
    target = before[tp] + (1.0 - rng.random(n)) * mass[tp]
    pos = np.clip(np.searchsorted(cum, target, side="left") - 1, starts[tp], last[tp])
    items = world.by_topic[pos]
    order = np.argsort(ts, kind="stable")
    stamps = (cfg.start + np.floor(ts[order])).astype(np.int64)
    return EventBatch(users[sess][order].astype(np.int64), items[order].astype(np.int64),
                      stamps.astype(np.float64))


_OPENERS: dict[str, Callable[..., IO[Any]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def write_synth(config: SynthConfig, out: str | os.PathLike[str],
                progress: Callable[[int], None] | None = None) -> SynthStats:
    """Write the log to ``out`` (``.csv``/``.tsv``, optionally ``.gz``/``.bz2``/``.xz``, or
    ``.parquet`` with pyarrow) with the columns ``user,item,timestamp``; return what was
    written. The file appears whole or not at all (written beside it, then renamed); an existing
    ``out`` is refused. ``progress(n)`` is called after each window with its event count."""
    path = Path(out)
    if path.exists():
        raise DataError(f"synth: {path} exists; choose another --out or remove it")
    suffixes = [s.lower() for s in path.suffixes]
    compress = suffixes[-1] if suffixes and suffixes[-1] in _OPENERS else None
    kind = (suffixes[-2] if compress and len(suffixes) > 1 else suffixes[-1]) if suffixes else ""
    if kind not in (".csv", ".tsv", ".parquet") or (kind == ".parquet" and compress):
        raise DataError(f"synth: cannot tell the format of {path.name}: name it .csv, .tsv "
                        "(optionally .gz, .bz2 or .xz) or .parquet")
    if not path.parent.is_dir():
        raise DataError(f"synth: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    mask = os.umask(0o22)  # read the umask (mkstemp makes 0600; the file is an ordinary output)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    users = np.zeros(config.users, dtype=bool)
    items = np.zeros(config.items, dtype=bool)

    def chunks() -> Iterator[EventBatch]:
        for chunk in synth_chunks(config):
            users[chunk.users] = True
            items[chunk.items] = True
            yield chunk
            if progress is not None:
                progress(len(chunk))

    total = 0
    try:
        if kind == ".parquet":
            total = _write_parquet(chunks(), tmp)
        else:
            sep = "," if kind == ".csv" else "\t"
            opener = _OPENERS.get(compress or "", open)
            with opener(tmp, "wt", encoding="ascii", newline="") as fh:
                fh.write(sep.join(("user", "item", "timestamp")) + "\n")
                for chunk in chunks():
                    block = np.stack([chunk.users, chunk.items,
                                      chunk.timestamps.astype(np.int64)], axis=1)
                    np.savetxt(fh, block, fmt="%d", delimiter=sep)
                    total += len(chunk)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return SynthStats(total, int(users.sum()), int(items.sum()))


def _write_parquet(chunks: Iterator[EventBatch], tmp: str) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise DataError("synth: writing .parquet needs pyarrow (pip install nmrn[parquet])") \
            from err
    schema = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("timestamp", pa.int64())])
    total = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for chunk in chunks:
            writer.write_table(pa.table({"user": chunk.users, "item": chunk.items,
                                         "timestamp": chunk.timestamps.astype(np.int64)},
                                        schema=schema))
            total += len(chunk)
    return total

