"""Event sources: where a consumer reads ``(position, event)`` pairs from.

A source hands out :class:`Entry` pairs in stream order. ``entry.value`` is either a valid event
(a dict with ``user``, ``item``, ``timestamp`` and maybe ``weight``) or an :class:`InvalidEvent`
carrying the reason and the raw record: a malformed record never stops the stream. The position
is a small JSON-serialisable dict that the consumer stores in its checkpoint; on restart the
source is told to :meth:`EventSource.resume_after` it, and delivers only what comes after.

Acknowledgement is explicit: :meth:`EventSource.ack` tells the source that every entry up to a
position is durably applied (a broker may then forget them); :meth:`EventSource.reject` hands it
a malformed entry (a broker moves it to a dead-letter stream). Files need neither.

Event validation is :mod:`nmrn.data.validation`'s, shared with the HTTP service: ids are ints
(int64) or valid Unicode text without control characters; timestamps and weights finite
numbers; JSON documents bounded in depth and integer size. In text formats (CSV, Redis fields)
a canonical integer literal becomes an int and numbers may be spelled as text; in JSON the
value's type is kept. Fields other than the event's are ignored.
"""

from __future__ import annotations

import csv
import os
import re
import select
import stat
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from nmrn.data.validation import EventError, check_event, loads_json
from nmrn.errors import NMRNError

__all__ = [
    "Entry",
    "EventSource",
    "FileSource",
    "InvalidEvent",
    "SourceError",
    "parse_event",
]

_INT_LITERAL = re.compile(r"(0|-?[1-9][0-9]*)\Z")
_INT64 = (-(2**63), 2**63 - 1)
FIELDS = ("user", "item", "timestamp")


class SourceError(NMRNError, RuntimeError):
    """A source cannot be read or resumed (bad file, wrong position, broker error)."""


@dataclass(frozen=True)
class InvalidEvent:
    """A record that is not a valid event.

    Attributes
    ----------
    reason
        What is wrong, in words (e.g. ``"missing field 'item'"``).
    raw
        The record as read: field names to values (for a file line, ``{"line": text}``).
    """

    reason: str
    raw: Mapping[str, Any] = field(default_factory=dict)


class Entry(NamedTuple):
    """One record of a stream: ``(position, event dict or InvalidEvent)``."""

    position: dict[str, Any]
    value: dict[str, Any] | InvalidEvent

    @property
    def ok(self) -> bool:
        """Whether the record is a valid event."""
        return not isinstance(self.value, InvalidEvent)


# -- validation ------------------------------------------------------------------------------
EVENT_ID = "event_id"
# 1 to 255 characters, none of them a control character (so that ids can be stored one per line)
_EVENT_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,255}")


def parse_event(record: Mapping[str, Any], *, text: bool) -> dict[str, Any]:
    """Validate one record and return the event
    ``{"user", "item", "timestamp"[, "weight"][, "event_id"]}``.

    The rules are :mod:`nmrn.data.validation`'s, the same as over HTTP; other fields are
    ignored. An ``event_id`` (a string of 1 to 255 characters without control characters, or an
    integer; e.g. a UUID the producer made) lets the consumer drop a producer's retried copy of
    an event (:class:`~nmrn.streams.consumer.Consumer`, ``dedupe_window``); an ``event_id`` that
    does not qualify is ignored, never a reason to drop the event.

    Parameters
    ----------
    record
        Field names to values.
    text
        ``True`` for text formats (CSV, Redis), where ids are strings and integer literals
        become ints; ``False`` for JSON, where the value's type is kept.

    Raises
    ------
    ValueError
        An :class:`~nmrn.data.validation.EventError` naming the field and the problem.

    Examples
    --------
    >>> parse_event({"user": "196", "item": "x7", "timestamp": "881250949"}, text=True)
    {'user': 196, 'item': 'x7', 'timestamp': 881250949.0}
    >>> parse_event({"user": "196", "item": 3, "timestamp": 1.5}, text=False)
    {'user': '196', 'item': 3, 'timestamp': 1.5}
    >>> parse_event({"user": 1, "timestamp": 2}, text=False)
    Traceback (most recent call last):
    ...
    nmrn.data.validation.EventError: item: missing (an event needs user, item and timestamp)
    """
    fields = check_event(record, text=text, strict=False)
    event = dict(zip(("user", "item", "timestamp", "weight"), fields, strict=False))
    event_id = record.get(EVENT_ID)
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    # an id that cannot serve (empty, too long, a control character, another type) is
    # ignored: the event itself is valid and must not be lost for its id
    if isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id):
        event[EVENT_ID] = event_id
    return event


def parse_json_event(text: str) -> dict[str, Any]:
    """Parse one JSON object (within :func:`~nmrn.data.validation.loads_json`'s bounds) and
    validate it as an event (JSON types kept)."""
    obj = loads_json(text, "json")
    if not isinstance(obj, dict):
        raise EventError("json", f"JSON value is a {type(obj).__name__}, expected an object")
    return parse_event(obj, text=False)


# -- the interface ---------------------------------------------------------------------------
class EventSource(ABC):
    """A stream of :class:`Entry` records, read in order, resumable after a position."""

    kind: str = ""

    @abstractmethod
    def resume_after(self, position: dict[str, Any] | None) -> None:
        """Deliver only entries after ``position`` (``None``: from the beginning).

        Call once, before the first :meth:`poll`.

        Raises
        ------
        SourceError
            If the position does not belong to this source.
        """

    @abstractmethod
    def poll(self, max_count: int, timeout: float) -> list[Entry]:
        """Up to ``max_count`` entries, waiting at most ``timeout`` seconds for the first one.

        Returns ``[]`` when nothing arrived in time, or when the stream is :attr:`exhausted`.
        """

    @property
    @abstractmethod
    def exhausted(self) -> bool:
        """Whether the stream has ended (end of file, a sentinel, or :meth:`stop`)."""

    def ack(self, position: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Every entry up to and including ``position`` is durably applied."""

    def reject(self, entry: Entry) -> None:  # noqa: B027 - optional hook
        """A malformed entry (``entry.value`` is an :class:`InvalidEvent`) was skipped."""

    def reject_mark(self) -> str | None:
        """A mark of where this source's rejects stand now, stored with each checkpoint's
        position (``None``: the source needs none)."""
        return None

    def rejected_since(self, mark: str | None) -> int:
        """How many entries this source rejected for good after ``mark`` (a
        :meth:`reject_mark` from the checkpoint; ``None``: the checkpoint has none). Called
        after :meth:`resume_after`.

        A source that delivers a rejected entry again after a restart (a file) returns 0: the
        consumer counts it again when it rejects it again. A Redis source acknowledges a dead
        letter at once, so a consumer killed after a reject but before its checkpoint would
        otherwise lose that entry from its count.
        """
        return 0

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Ask the source to end the stream at the next :meth:`poll` (signal-handler safe)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Entry]:
        """Every entry until the stream ends (an idle broker stream never ends)."""
        while not self.exhausted:
            yield from self.poll(256, 1.0)


# -- files and stdin -------------------------------------------------------------------------
class _LineReader:
    """Complete lines from a file descriptor, with a timeout; tails regular files if asked."""

    _CHUNK = 1 << 16

    def __init__(self, fd: int, *, follow: bool, poll_interval: float) -> None:
        self.fd = fd
        self.follow = follow
        self.poll_interval = poll_interval
        self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self.buf = bytearray()
        self.eof = False

    def seek(self, offset: int) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.buf.clear()
        self.eof = False

    def readline(self, timeout: float) -> bytes | None:
        """A line (with its newline), ``b""`` at the end, ``None`` if none is complete in time.

        Without ``follow``, a last line lacking its newline is returned at the end of the file;
        with ``follow`` it is held back until its newline arrives (it may still be written).
        """
        deadline = time.monotonic() + timeout
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[: nl + 1])
                del self.buf[: nl + 1]
                return line
            if self.eof:
                line = bytes(self.buf)
                self.buf.clear()
                return line
            remaining = deadline - time.monotonic()
            if self.regular:
                chunk = os.read(self.fd, self._CHUNK)
                if not chunk:
                    if not self.follow:
                        self.eof = True
                        continue
                    if remaining <= 0:
                        return None
                    time.sleep(min(self.poll_interval, remaining))
                    continue
            else:
                ready, _, _ = select.select([self.fd], [], [], max(remaining, 0.0))
                if not ready:
                    return None
                chunk = os.read(self.fd, self._CHUNK)
                if not chunk:  # a pipe's writer closed it: that end is final, even when following
                    self.eof = True
                    continue
            self.buf += chunk


class FileSource(EventSource):
    """Events from a JSON-lines or CSV file, or from stdin (``path="-"``).

    Parameters
    ----------
    path
        A file path, or ``"-"`` for standard input.
    format
        ``"jsonl"``: one JSON object per line. ``"csv"``: a header line naming the columns
        (``user``, ``item``, ``timestamp``, optionally ``weight``; others are ignored), then one
        event per line (quoted fields may not contain newlines).
    follow
        Tail a regular file: at its end, wait for more lines instead of stopping (like
        ``tail -f``). The stream then ends at a ``sentinel`` line or when :meth:`stop` is called.
        A file that is truncated or replaced while followed is not detected.
    sentinel
        A line that ends the stream (compared after stripping whitespace), e.g. ``"__END__"``.
    poll_interval
        Seconds between checks for new data at the end of a followed file.
    delimiter
        The CSV delimiter.

    Notes
    -----
    The position of an entry is ``{"source": "file", "path", "format", "line", "offset"}``:
    its 1-based line number and the byte offset just after it. A regular file resumes by seeking
    to the offset (and checks that a line ends there); stdin, which cannot seek, resumes by
    skipping lines up to the stored line number. Blank lines are skipped. Nothing needs
    acknowledging.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "events.jsonl")
    >>> with open(path, "w") as f:
    ...     _ = f.write('{"user": 1, "item": "a", "timestamp": 10}\\n{"user": 2}\\n')
    >>> with FileSource(path) as source:
    ...     entries = source.poll(10, timeout=0)
    >>> [e.position["line"] for e in entries], entries[0].value
    ([1, 2], {'user': 1, 'item': 'a', 'timestamp': 10.0})
    >>> entries[1].value.reason
    'item: missing (an event needs user, item and timestamp)'
    """

    kind = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: str = "jsonl",
        follow: bool = False,
        *,
        sentinel: str | None = None,
        poll_interval: float = 0.1,
        delimiter: str = ",",
    ) -> None:
        if format not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', got {format!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        self.path = "-" if str(path) == "-" else str(path)
        self.format = format
        self.follow = bool(follow)
        self.sentinel = sentinel
        self.delimiter = delimiter
        if self.path == "-":
            self._fd = sys.stdin.buffer.fileno()
            self._owns_fd = False
        else:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as err:
                raise SourceError(f"cannot open {self.path}: {err.strerror}") from None
            self._owns_fd = True
        self._reader = _LineReader(self._fd, follow=self.follow, poll_interval=poll_interval)
        self._line = 0
        self._offset = 0
        self._skip_to_line = 0
        self._seek_to: int | None = None
        self._resume_line = 0
        self._header: list[str] | None = None
        self._done = False
        self._stop_requested = False
        self._started = False

    def __repr__(self) -> str:
        return f"FileSource({self.path!r}, format={self.format!r}, follow={self.follow})"

    @property
    def exhausted(self) -> bool:
        return self._done

    def stop(self) -> None:
        self._stop_requested = True

    def close(self) -> None:
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._done = True

    def _position(self) -> dict[str, Any]:
        return {
            "source": self.kind,
            "path": self.path,
            "format": self.format,
            "line": self._line,
            "offset": self._offset,
        }

    def resume_after(self, position: dict[str, Any] | None) -> None:
        if self._started:
            raise SourceError("resume_after must be called before the first poll")
        if position is None:
            return
        if position.get("source") != self.kind:
            raise SourceError(
                f"the checkpoint's stream position is from a {position.get('source')!r} source, "
                f"not a file: {position}"
            )
        if position.get("format") != self.format:
            raise SourceError(
                f"the checkpoint was taken reading {position.get('format')!r}, not {self.format!r}"
            )
        line, offset = position.get("line"), position.get("offset")
        if not isinstance(line, int) or not isinstance(offset, int) or line < 0 or offset < 0:
            raise SourceError(f"bad file position in the checkpoint: {position}")
        if self._reader.regular and self.path != "-":
            size = os.fstat(self._fd).st_size
            if offset > size:
                raise SourceError(
                    f"{self.path} has {size} bytes but the checkpoint resumes at byte {offset}; "
                    "was the file replaced or truncated?"
                )
            if 0 < offset < size:
                os.lseek(self._fd, offset - 1, os.SEEK_SET)
                if os.read(self._fd, 1) != b"\n":
                    raise SourceError(
                        f"{self.path}: byte {offset} is not the start of a line; the file has "
                        "changed since the checkpoint"
                    )
                os.lseek(self._fd, 0, os.SEEK_SET)
            self._seek_to = offset
            self._resume_line = line
        else:
            self._skip_to_line = line

    def _next_line(self, timeout: float) -> bytes | None:
        raw = self._reader.readline(timeout)
        if raw:
            self._line += 1
            self._offset += len(raw)
        return raw

    def _start(self, timeout: float) -> bool:
        """Read the CSV header and seek to the resume offset; ``False`` if not possible yet."""
        if self.format == "csv" and self._header is None:
            raw = self._next_line(timeout)
            if raw is None:
                return False
            if raw == b"":
                self._done = True
                return False
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise SourceError(f"{self.path}: the CSV header is not valid UTF-8") from None
            self._header = [h.strip() for h in next(csv.reader([text], delimiter=self.delimiter))]
            missing = [c for c in FIELDS if c not in self._header]
            if missing:
                raise SourceError(
                    f"{self.path}: the CSV header {self._header} lacks column(s) {missing}"
                )
        if self._seek_to is not None and self._seek_to > self._offset:
            self._reader.seek(self._seek_to)
            self._offset, self._line = self._seek_to, self._resume_line
        self._seek_to = None
        self._started = True
        return True

    def poll(self, max_count: int, timeout: float) -> list[Entry]:
        out: list[Entry] = []
        if self._done:
            return out
        if not self._started and not self._start(timeout):
            return out
        while len(out) < max_count:
            if self._stop_requested:
                self._done = True
                break
            raw = self._next_line(0.0 if out else timeout)
            if raw is None:
                break
            if raw == b"":
                self._done = True
                break
            if self._line <= self._skip_to_line:
                continue
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                original = {"line": raw.decode("utf-8", "replace")}
                bad = InvalidEvent("line is not valid UTF-8", original)
                out.append(Entry(self._position(), bad))
                continue
            if self.sentinel is not None and text == self.sentinel:
                self._done = True
                break
            if not text:
                continue
            out.append(Entry(self._position(), self._parse(text)))
        return out

    def _parse(self, text: str) -> dict[str, Any] | InvalidEvent:
        try:
            if self.format == "jsonl":
                return parse_json_event(text)
            assert self._header is not None
            row = next(csv.reader([text], delimiter=self.delimiter))
            if len(row) != len(self._header):
                raise ValueError(f"row has {len(row)} fields, the header has {len(self._header)}")
            return parse_event(dict(zip(self._header, row, strict=True)), text=True)
        except ValueError as err:
            return InvalidEvent(str(err), {"line": text})

