"""Events from a Redis stream, read through a consumer group.

The stream holds one event per entry, either as separate fields ``user``, ``item``,
``timestamp`` (and optionally ``weight``) or as one field ``json`` holding a JSON object::

    XADD events * user 196 item 242 timestamp 881250949
    XADD events * json '{"user": "u9", "item": 17, "timestamp": 881250950.5}'

Redis stores every value as a string. A ``user`` or ``item`` field that is a canonical integer
literal (``"196"``, ``"-3"``; not ``"007"``) becomes an ``int`` id, any other string stays a
``str`` id; inside ``json`` the JSON types are kept (see :mod:`nmrn.streams.sources`).

Delivery and recovery. Entries are read with ``XREADGROUP``; each one stays in the group's
pending-entries list (PEL) until it is acknowledged. The consumer calls :meth:`ack` only once
the checkpoint holding those events is durable, so a crash leaves every applied-but-not-saved
entry pending. On restart the source first re-reads this consumer's pending entries (from id
``0``), skips those at or before the checkpoint's position (they are in the model; it just
acknowledges them) and delivers the rest, then reads new entries (``>``). Stream ids increase
monotonically, so "at or before" is a comparison of ids. Pending entries of *other* consumer
names in the group are claimed first (``XAUTOCLAIM``), so renaming the consumer loses nothing:
one model is one consumer, the single writer of its checkpoint.

Malformed entries are copied to the dead-letter stream ``<stream>:dead`` (fields ``reason``,
``stream``, ``id``, ``group``, ``consumer``, and every original field as ``field.<name>``) and
acknowledged in the same ``MULTI``/``EXEC`` transaction, so they are never retried forever and
never dead-lettered twice.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from nmrn.streams.sources import Entry, EventSource, InvalidEvent, SourceError, parse_event
from nmrn.streams.sources import parse_json_event as _parse_json_event

__all__ = ["RedisStreamSource", "parse_stream_id"]

_ACK_CHUNK = 1000
_DELETED = "the entry was deleted from the stream before it was processed"


def parse_stream_id(entry_id: str) -> tuple[int, int]:
    """A Redis stream id ``"<ms>-<seq>"`` as a comparable pair.

    Examples
    --------
    >>> parse_stream_id("1700000000000-3") < parse_stream_id("1700000000001-0")
    True
    """
    ms, sep, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq) if sep else 0
    except ValueError:
        raise SourceError(f"{entry_id!r} is not a Redis stream id") from None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def parse_fields(fields: dict[bytes, bytes] | None) -> dict[str, Any] | InvalidEvent:
    """Validate the fields of one stream entry; returns the event or an :class:`InvalidEvent`."""
    if fields is None:
        return InvalidEvent(_DELETED, {})
    raw = dict(fields)  # the original bytes, for the dead-letter stream
    try:
        decoded = {}
        for key, value in fields.items():
            try:
                decoded[_text(key)] = _text(value)
            except UnicodeDecodeError:
                raise ValueError(f"field {_text_lenient(key)!r} is not valid UTF-8") from None
        if "json" in decoded:
            clash = sorted(set(decoded) & {"user", "item", "timestamp", "weight"})
            if clash:
                raise ValueError(f"both a 'json' field and separate field(s) {clash}")
            return _parse_json_event(decoded["json"])
        return parse_event(decoded, text=True)
    except ValueError as err:
        return InvalidEvent(str(err), raw)


def _text_lenient(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisStreamSource(EventSource):
    """A Redis stream read through a consumer group (created with ``MKSTREAM`` if missing).

    Parameters
    ----------
    stream
        The stream key.
    group
        The consumer group. If it does not exist it is created at the checkpoint's position
        (or at ``0``, the start of the stream, for a fresh model).
    consumer
        This consumer's name in the group. Keep it stable across restarts (another name works
        too: pending entries of other names are claimed on start).
    url
        ``redis://HOST:PORT/DB``.
    block_ms
        The longest ``XREADGROUP ... BLOCK`` wait, in milliseconds; bounds how late a stop
        request is noticed.
    dead_letter
        The dead-letter stream key; default ``<stream>:dead``.
    claim_pending
        Claim the pending entries of other consumer names on start (see the module notes).

    Notes
    -----
    The position of an entry is ``{"source": "redis", "stream", "group", "id"}``.
    """

    kind = "redis"

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: str = "nmrn",
        *,
        url: str = "redis://127.0.0.1:6379/0",
        block_ms: int = 1000,
        dead_letter: str | None = None,
        claim_pending: bool = True,
    ) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - redis is in the 'serve' extra
            raise SourceError("reading Redis streams needs 'pip install nmrn[serve]'") from None
        for name, value in (("stream", stream), ("group", group), ("consumer", consumer)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, got {block_ms}")
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.url = url
        self.block_ms = int(block_ms)
        self.dead_letter = dead_letter or f"{stream}:dead"
        self.claim_pending = claim_pending
        self._redis_error = redis.RedisError
        try:
            self._client = redis.Redis.from_url(url, decode_responses=False)
        except ValueError as err:
            raise SourceError(f"bad Redis URL {url!r}: {err}") from None
        self._after: tuple[int, int] | None = None
        self._cursor: str | None = None  # next pending id to read after; None once on ">"
        self._unacked: deque[tuple[tuple[int, int], str]] = deque()
        self._started = False
        self._stopped = False
        self.n_skipped = 0  # pending entries already in the checkpoint

    def __repr__(self) -> str:
        return (
            f"RedisStreamSource({self.stream!r}, {self.group!r}, {self.consumer!r}, "
            f"url={self.url!r})"
        )

    @property
    def exhausted(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True

    def close(self) -> None:
        self._client.close()

    def _position(self, entry_id: str) -> dict[str, Any]:
        return {"source": self.kind, "stream": self.stream, "group": self.group, "id": entry_id}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._redis_error as err:
            raise SourceError(
                f"Redis {what} on {self.stream!r} at {self.url} failed: {err}"
            ) from None

    # -- start -------------------------------------------------------------------------------
    def resume_after(self, position: dict[str, Any] | None) -> None:
        if self._started:
            raise SourceError("resume_after must be called before the first poll")
        start_id = "0"
        if position is not None:
            if position.get("source") != self.kind:
                raise SourceError(
                    f"the checkpoint's stream position is from a {position.get('source')!r} "
                    f"source, not Redis: {position}"
                )
            for key in ("stream", "group"):
                if position.get(key) != getattr(self, key):
                    raise SourceError(
                        f"the checkpoint was taken reading {key} {position.get(key)!r}, not "
                        f"{getattr(self, key)!r}; use a fresh checkpoint for another {key}"
                    )
            start_id = str(position.get("id"))
            self._after = parse_stream_id(start_id)
        self._start(start_id)

    def _start(self, start_id: str) -> None:
        import redis

        try:
            self._client.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise SourceError(
                    f"cannot create group {self.group!r} on {self.stream!r}: {err}"
                ) from None
        except self._redis_error as err:
            raise SourceError(f"cannot reach Redis at {self.url}: {err}") from None
        if self.claim_pending:
            cursor = "0-0"
            while True:
                reply = self._call(
                    "XAUTOCLAIM", self._client.xautoclaim, self.stream, self.group,
                    self.consumer, 0, start_id=cursor, count=1000,
                )
                cursor = _text(reply[0])
                # Redis >= 7 drops deleted entries from the PEL here and reports their ids
                for raw_id in reply[2] if len(reply) > 2 else []:
                    entry_id = _text(raw_id)
                    if self._after is None or parse_stream_id(entry_id) > self._after:
                        self._dead_letter(entry_id, InvalidEvent(_DELETED, {}), ack=False)
                if cursor == "0-0":
                    break
        self._cursor = "0-0"
        self._started = True

    # -- reading -----------------------------------------------------------------------------
    def poll(self, max_count: int, timeout: float) -> list[Entry]:
        if not self._started:
            self.resume_after(None)
        out: list[Entry] = []
        while not self._stopped and not out:
            if self._cursor is not None:
                reply = self._call(
                    "XREADGROUP", self._client.xreadgroup, self.group, self.consumer,
                    {self.stream: self._cursor}, count=max_count,
                )
                entries = reply[0][1] if reply else []
                if not entries:
                    self._cursor = None  # the pending list is drained: read new entries
                    continue
                self._cursor = _text(entries[-1][0])
            else:
                block = int(timeout * 1000)
                reply = self._call(
                    "XREADGROUP", self._client.xreadgroup, self.group, self.consumer,
                    {self.stream: ">"}, count=max_count,
                    block=min(block, self.block_ms) if block > 0 else None,
                )
                entries = reply[0][1] if reply else []
                if not entries:
                    break
            stale = []
            for raw_id, fields in entries:
                entry_id = _text(raw_id)
                key = parse_stream_id(entry_id)
                if self._after is not None and key <= self._after:
                    stale.append(entry_id)  # applied and checkpointed; only the ack was lost
                    continue
                self._unacked.append((key, entry_id))
                out.append(Entry(self._position(entry_id), parse_fields(fields)))
            if stale:
                self.n_skipped += len(stale)
                self._xack(stale)
        return out

    # -- acknowledging -----------------------------------------------------------------------
    def _xack(self, ids: list[str]) -> None:
        for lo in range(0, len(ids), _ACK_CHUNK):
            chunk = ids[lo : lo + _ACK_CHUNK]
            self._call("XACK", self._client.xack, self.stream, self.group, *chunk)

    def ack(self, position: dict[str, Any]) -> None:
        upto = parse_stream_id(str(position["id"]))
        ids = []
        while self._unacked and self._unacked[0][0] <= upto:
            ids.append(self._unacked.popleft()[1])
        if ids:
            self._xack(ids)

    def reject(self, entry: Entry) -> None:
        assert isinstance(entry.value, InvalidEvent)
        entry_id = str(entry.position["id"])
        self._dead_letter(entry_id, entry.value, ack=True)
        key = parse_stream_id(entry_id)
        self._unacked = deque(x for x in self._unacked if x[0] != key)

    def _dead_letter(self, entry_id: str, invalid: InvalidEvent, *, ack: bool) -> None:
        record: dict[Any, Any] = {
            "reason": invalid.reason,
            "stream": self.stream,
            "id": entry_id,
            "group": self.group,
            "consumer": self.consumer,
        }
        for key, value in invalid.raw.items():
            name = key if isinstance(key, bytes) else str(key).encode("utf-8")
            record[b"field." + name] = value
        # one transaction: the entry is dead-lettered and acknowledged, or neither
        pipe = self._client.pipeline(transaction=True)
        pipe.xadd(self.dead_letter, record)
        if ack:
            pipe.xack(self.stream, self.group, entry_id)
        self._call("dead-letter MULTI/EXEC", pipe.execute)

    def reject_mark(self) -> str | None:
        """The dead-letter stream's last id now (``"0-0"`` while it is empty)."""
        info = self._call("XINFO STREAM", self._xinfo_last_id)
        return info

    def _xinfo_last_id(self) -> str:
        import redis

        try:
            return _text(self._client.xinfo_stream(self.dead_letter)["last-generated-id"])
        except redis.ResponseError:  # no such key yet
            return "0-0"

    def rejected_since(self, mark: str | None) -> int:
        """Dead letters of this stream and group written after ``mark`` (read from the
        dead-letter stream, from the mark on; ``None``: nothing)."""
        if mark is None:
            return 0
        found = 0
        start = "(" + mark
        while True:
            rows = self._call("XRANGE", self._client.xrange, self.dead_letter, min=start,
                              max="+", count=1000)
            for _dead_id, fields in rows:
                if (_text_lenient(fields.get(b"stream", b"")),
                        _text_lenient(fields.get(b"group", b""))) == (self.stream, self.group):
                    found += 1
            if len(rows) < 1000:
                return found
            start = "(" + _text(rows[-1][0])

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The first ``count`` entries of the dead-letter stream, decoded (for inspection)."""
        rows = self._call("XRANGE", self._client.xrange, self.dead_letter, count=count)
        return [
            {"dead_id": _text(i), **{_text_lenient(k): _text_lenient(v) for k, v in f.items()}}
            for i, f in rows
        ]

