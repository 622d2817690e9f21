"""The write-ahead journal of accepted events: append-only JSON lines, fsynced by group commit.

Each accepted request becomes one line::

    3f1c2a9b {"seq": 101, "events": [[196, 242, 881250949.0], ["u7", "i3", 5.0, 2.5]]}

Runs. After the writer applies a run of events in one ``learn`` call, it appends a marker line
``{"run": [first, last]}`` (:meth:`Journal.mark_run`, flushed to the OS but not fsynced): the
replay after a crash applies the same runs, so a model whose state depends on how events are
grouped into ``learn`` calls (NMRN, BPR: one gradient step per mini-batch) reaches the same
state as before the crash. A marker lost with a machine crash (not a process crash: the OS keeps
it) only makes the replay regroup that run's events.

An entry that came with an idempotency key also holds it, the digest of its events and the
time it was accepted (``"key"``, ``"digest"``, ``"t"``), so that a restart knows every key it
accepted (:class:`~nmrn.serving.service.LiveService`).

The first field is the CRC-32 (8 hex digits) of the JSON text that follows it. ``seq`` is the
sequence number of the entry's first event; events are numbered consecutively from 1 across the
whole journal, so an entry covers ``seq .. seq + len(events) - 1``. An event is
``[user, item, timestamp]`` or ``[user, item, timestamp, weight]``; JSON keeps an int id an int
and a text id a text.

Crash safety. :meth:`Journal.append` returns only after the line is written and fsynced, so an
acknowledged request survives a crash of the process or of the machine. A crash in the middle of
an append can leave a torn last line; that request was never acknowledged, and opening the
journal drops it (the file is truncated back to the last whole line). A damaged line anywhere
else is not a torn write, and opening raises :class:`JournalError` rather than guess.

Group commit. :meth:`Journal.append` is :meth:`Journal.write` (numbering and writing, under a
short lock) followed by :meth:`Journal.sync` (waiting until the line is on the disk). One thread
at a time fsyncs, outside the write lock, and one fsync covers every line written before it
started: requests that arrive while a fsync runs wait for the next one and share it, so
concurrent appends cost one fsync per round rather than one each, and an acknowledgement still
never comes before the line is durable. If a write or a fsync fails, the journal refuses every
later write (:class:`JournalError`): after a failed fsync nobody can tell which lines reached the
disk, and the safe answer is to stop taking events and restart from the file.

Rotation. After a checkpoint that includes every event up to ``seq``, :meth:`Journal.truncate`
rewrites the file without the entries the checkpoint covers (temporary file, fsync, rename), so
the journal stays as long as the events applied since the last checkpoint, plus those not yet
applied.

Examples
--------
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "events.journal")
>>> j = Journal(path)
>>> j.append([(1, "a", 0.0), (2, "b", 1.0)])
(1, 2)
>>> j.append([(1, "b", 2.0)])
(3, 3)
>>> j.close()
>>> [(e.seq, e.events) for e in Journal(path).entries(after=1)]  # event 1 is skipped
[(2, [[2, 'b', 1.0]]), (3, [[1, 'b', 2.0]])]
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmrn.errors import NMRNError
from nmrn.io import fsync_dir

# How every journal line starts: a CRC (8 hex digits), a space, a JSON object.
_LINE_START = re.compile(rb"[0-9a-f]{8} \{")


class JournalError(NMRNError, ValueError):
    """The journal file is damaged, or does not fit the checkpoint it is replayed onto."""


@dataclass(frozen=True)
class Entry:
    """One journal line: the events of one accepted request.

    Attributes
    ----------
    seq
        Sequence number of the first event (events are numbered from 1).
    events
        ``[user, item, timestamp]`` or ``[user, item, timestamp, weight]`` lists.
    """

    seq: int
    events: list[list[Any]]
    key: str | None = None
    digest: str | None = None
    accepted_at: float | None = None

    @property
    def last(self) -> int:
        """Sequence number of the last event of the entry."""
        return self.seq + len(self.events) - 1


@dataclass(frozen=True)
class Run:
    """A marker: the events ``first .. last`` were applied in one ``learn`` call."""

    first: int
    last: int


def _frame(obj: dict[str, Any]) -> bytes:
    raw = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"%08x " % zlib.crc32(raw) + raw + b"\n"


def _encode(seq: int, events: list[list[Any]], key: tuple[str, str, float] | None = None) -> bytes:
    obj: dict[str, Any] = {"seq": seq, "events": events}
    if key is not None:
        obj["key"], obj["digest"], obj["t"] = key
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    raw = text.encode("utf-8")
    return b"%08x " % zlib.crc32(raw) + raw + b"\n"


def _decode(line: bytes) -> Entry | Run | None:
    """The entry or run marker of a whole line, or ``None`` when the line is damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    raw = line[9:].rstrip(b"\n")
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    if zlib.crc32(raw) != crc:
        return None
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(obj, dict) and "run" in obj:
        run = obj["run"]
        ok = (isinstance(run, list) and len(run) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in run)
              and 1 <= run[0] <= run[1])
        return Run(run[0], run[1]) if ok else None  # type: ignore[return-value]
    if not isinstance(obj, dict) or not isinstance(obj.get("seq"), int):
        return None
    events = obj.get("events")
    if not isinstance(events, list) or not events:
        return None
    key, digest, t = obj.get("key"), obj.get("digest"), obj.get("t")
    if key is not None and not (
        isinstance(key, str) and isinstance(digest, str) and isinstance(t, (int, float))
    ):
        return None
    return Entry(obj["seq"], events, key, digest, None if t is None else float(t))


def _as_row(event: Sequence[Any]) -> list[Any]:
    """``(user, item, timestamp[, weight])`` as a JSON-ready list of plain python values."""
    if len(event) not in (3, 4):
        raise ValueError(f"a journal event is (user, item, timestamp[, weight]), got {event!r}")
    row: list[Any] = []
    for j, x in enumerate(event):
        if j < 2:
            if isinstance(x, bool) or not isinstance(x, (int, str)):
                x = x.item() if hasattr(x, "item") else x  # numpy scalars
            if isinstance(x, bool) or not isinstance(x, (int, str)):
                raise ValueError(f"journal ids must be int or str, got {type(x).__name__} {x!r}")
            row.append(x)
        else:
            value = float(x)
            if not math.isfinite(value):
                raise ValueError(f"journal timestamps and weights must be finite, got {x!r}")
            row.append(value)
    return row


class Journal:
    """An append-only, fsynced log of accepted events with consecutive sequence numbers.

    Parameters
    ----------
    path
        The journal file; created (with its directory) if missing.
    start_seq
        The sequence number the next event gets when the journal is empty (one past what a
        checkpoint already holds). When the file has entries, numbering continues after them.
    fsync
        Flush to the disk on every append (the default; turning it off trades durability on
        a machine crash for speed, and is meant for tests and benchmarks only).

    Raises
    ------
    JournalError
        When a line other than the last one is damaged, or the sequence numbers are not
        consecutive.
    """

    def __init__(self, path: str | os.PathLike[str], *, start_seq: int = 1, fsync: bool = True):
        # a symbolic link is followed on purpose: the journal is the file it points to (the
        # rotation must replace that file, not the link)
        self.path = Path(os.path.realpath(path))
        if self.path.exists() and not self.path.is_file():
            raise JournalError(f"{path}: not a regular file")
        self.fsync = bool(fsync)
        self._lock = threading.Lock()  # numbering, writing, rotating
        self._sync_cond = threading.Condition()  # durable_seq, the fsync in progress, failure
        self._syncing = False
        self._failure: BaseException | None = None
        self.syncs = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._first, last = self._scan_and_repair()
        self.next_seq = max(int(start_seq), last + 1)
        self.durable_seq = self.next_seq - 1
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, next_seq={self.next_seq})"

    # -- opening ---------------------------------------------------------------------------------
    def _scan_and_repair(self) -> tuple[int, int]:
        """Check the file; drop a torn last line. Returns (first seq, last seq), 0 when empty."""
        if not self.path.exists():
            return 0, 0
        first = last = 0
        good_end = 0
        with open(self.path, "rb") as f:
            lines = f.readlines()
        for n, line in enumerate(lines, start=1):
            entry = _decode(line) if line.endswith(b"\n") else None
            if entry is None:
                # A torn write (the request was never acknowledged) is the start of a journal
                # line. Anything else is not ours: never truncate a file that is not a journal.
                if n == len(lines) and (n > 1 or _LINE_START.match(line)):
                    break
                if n == 1 and not _LINE_START.match(line):
                    raise JournalError(f"{self.path}: not an nmrn journal (its first line is not "
                                       "a journal entry); refusing to touch it")
                raise JournalError(f"{self.path}: line {n} is damaged (bad checksum or JSON)")
            if isinstance(entry, Run):
                good_end += len(line)
                continue
            if last and entry.seq != last + 1:
                raise JournalError(
                    f"{self.path}: line {n} starts at seq {entry.seq}, expected {last + 1}"
                )
            first = first or entry.seq
            last = entry.last
            good_end += len(line)
        if good_end < self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return first, last

    # -- reading ---------------------------------------------------------------------------------
    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest event still in the file (0 when it is empty)."""
        return self._first

    def entries(self, after: int = 0) -> Iterator[Entry]:
        """Entries holding events with a sequence number ``> after``, in order.

        An entry that straddles ``after`` is cut so that it starts at ``after + 1``.
        """
        with open(self.path, "rb") as f:
            for line in f:
                entry = _decode(line)
                if entry is None:  # only a torn tail can be damaged (checked on open)
                    return
                if isinstance(entry, Run):
                    continue
                if entry.last <= after:
                    continue
                if entry.seq <= after:
                    entry = Entry(after + 1, entry.events[after + 1 - entry.seq :], entry.key,
                                  entry.digest, entry.accepted_at)
                yield entry

    def runs(self, after: int = 0) -> Iterator[Run]:
        """The run markers of runs that end after ``after``, in the order they were applied."""
        with open(self.path, "rb") as f:
            for line in f:
                marker = _decode(line)
                if marker is None:
                    return
                if isinstance(marker, Run) and marker.last > after:
                    yield marker

    # -- writing ---------------------------------------------------------------------------------
    def mark_run(self, first: int, last: int) -> None:
        """Record that events ``first .. last`` were applied in one ``learn`` call (flushed to
        the OS, not fsynced: see the module docstring). Never raises: a marker that cannot be
        written costs only an exact regrouping after a crash."""
        with self._lock:
            if self._failure is not None or self._file.closed:
                return
            try:
                self._file.write(_frame({"run": [int(first), int(last)]}))
                self._file.flush()
            except OSError:
                pass

    def append(self, events: Sequence[Sequence[Any]]) -> tuple[int, int]:
        """Write the events as one entry and wait until it is durable; returns
        ``(first seq, last seq)``. The same as :meth:`write` then :meth:`sync`.

        Parameters
        ----------
        events
            ``(user, item, timestamp[, weight])`` tuples; at least one.
        """
        first, last = self.write(events)
        self.sync(last)
        return first, last

    @property
    def failed(self) -> bool:
        """Whether a write or a fsync failed (the journal then refuses every write)."""
        return self._failure is not None

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise JournalError(
                f"{self.path}: a write or fsync failed earlier ({self._failure}); the journal "
                "takes no more events (restart the service to recover from the file)"
            )

    def write(
        self, events: Sequence[Sequence[Any]], key: tuple[str, str, float] | None = None
    ) -> tuple[int, int]:
        """Number the events and write them as one entry, without waiting for the disk;
        returns ``(first seq, last seq)``. The entry is durable once :meth:`sync` covering its
        last sequence number returns: nobody may be told it was accepted before that.
        ``key``: ``(idempotency key, digest of the events, time accepted)`` to record with it.

        Raises
        ------
        JournalError
            The journal failed earlier, or this write failed (it then fails from now on).
        """
        rows = [_as_row(e) for e in events]
        if not rows:
            raise ValueError("nothing to append: the entry has no events")
        with self._lock:
            self._check_usable()
            seq = self.next_seq
            try:
                self._file.write(_encode(seq, rows, key))
                self._file.flush()  # into the OS: a fsync by any thread now covers it
            except OSError as err:  # a partial line may be in the file: stop appending to it
                self._fail(err)
                raise JournalError(f"{self.path}: could not write the journal: {err}") from err
            self.next_seq = seq + len(rows)
            self._first = self._first or seq
        return seq, seq + len(rows) - 1

    def sync(self, seq: int | None = None) -> None:
        """Return once every event up to ``seq`` (default: every one written) is on the disk.

        Group commit: when no fsync is running, the caller runs one covering everything written
        so far; otherwise it waits for the running one and, if that does not cover ``seq``,
        for the next one, which one of the waiting callers runs for all of them.

        Raises
        ------
        JournalError
            The fsync failed (now or earlier); what it was meant to cover may not be durable.
        """
        target = self.next_seq - 1 if seq is None else seq
        with self._sync_cond:
            while True:
                self._check_usable()
                if self.durable_seq >= target:
                    return
                if not self._syncing:
                    break
                self._sync_cond.wait()
            self._syncing = True
        upto = self.durable_seq
        try:
            with self._lock:
                self._check_usable()
                upto = self.next_seq - 1
                # a duplicate descriptor: a rotation may close the file while this one syncs
                # (the rotated file is fsynced whole by truncate(), so syncing the old one is
                # then merely redundant)
                fd = os.dup(self._file.fileno())
            try:
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except JournalError:
            with self._sync_cond:
                self._syncing = False
                self._sync_cond.notify_all()
            raise
        except OSError as err:
            with self._lock:
                self._fail(err)
            with self._sync_cond:
                self._syncing = False
                self._sync_cond.notify_all()
            raise JournalError(f"{self.path}: could not fsync the journal: {err}") from err
        with self._sync_cond:
            self.durable_seq = max(self.durable_seq, upto)
            self.syncs += 1
            self._syncing = False
            self._sync_cond.notify_all()

    def _fail(self, err: BaseException) -> None:
        """Record a failed write or fsync (caller holds ``_lock``)."""
        if self._failure is None:
            self._failure = err
        with self._sync_cond:
            self._sync_cond.notify_all()

    def truncate(self, upto: int) -> int:
        """Drop the entries whose events all have a sequence number ``<= upto``.

        Safe at any time: the file is rewritten to a temporary file, fsynced and renamed over the
        old one while appends wait. Returns the number of entries kept.
        """
        with self._lock:
            kept = [
                line
                for line in self._lines()
                if (entry := _decode(line)) is not None and entry.last > upto
            ]
            first_entry = next((e for line in kept if isinstance(e := _decode(line), Entry)),
                               None)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            with open(tmp, "wb") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            self._file.close()
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
            self._file = open(self.path, "ab")  # noqa: SIM115
            self._first = first_entry.seq if first_entry is not None else 0
            written = self.next_seq - 1
        with self._sync_cond:  # every line kept was fsynced with the new file
            if self.fsync and self._failure is None:
                self.durable_seq = max(self.durable_seq, written)
            self._sync_cond.notify_all()
        return len(kept)

    def _lines(self) -> list[bytes]:
        self._file.flush()
        with open(self.path, "rb") as f:
            return f.readlines()

    def close(self) -> None:
        """Close the file (appends after this fail)."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                if self.fsync and self._failure is None:
                    os.fsync(self._file.fileno())
                self._file.close()
