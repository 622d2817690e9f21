"""One validation of an event, shared by every way events arrive: HTTP, Redis, files, stdin.

An event is ``user``, ``item``, ``timestamp`` and an optional ``weight``. The rules:

- **ids** are ints in the int64 range (never bools) or non-empty strings of at most
  ``max_length`` characters that are valid Unicode text: no lone surrogates (they cannot be
  encoded as UTF-8, so they could never be written back in a response or a checkpoint) and no
  control characters. In *JSON* the value's own type is kept (``196`` and ``"196"`` are
  different ids). In *text* formats (CSV fields, Redis fields) every value is a string, and a
  canonical integer literal (``"196"``, ``"-3"``; not ``"007"``, ``"+5"`` or ``"1e3"``) within
  int64 becomes an int.
- **timestamp** and **weight** are finite numbers: a JSON number in JSON, or a string that
  spells one (at most 64 characters) in text formats. A JSON string is not a number.
- **JSON** documents are checked before they are parsed: nested at most :data:`MAX_JSON_DEPTH`
  deep, and no integer of more than 4,300 digits (Python's own limit; past it ``json`` raises).

Every problem raises :class:`EventError`, a ``ValueError`` whose message is
``"<field>: <problem>"``, the same wherever the event came from.

Examples
--------
>>> check_event({"user": 196, "item": "x7", "timestamp": 881250949}, text=False)
(196, 'x7', 881250949.0)
>>> check_event({"user": "196", "item": "x7", "timestamp": "881250949"}, text=True)
(196, 'x7', 881250949.0)
>>> check_event({"user": "u", "item": "\\udc80", "timestamp": 1}, text=False)
Traceback (most recent call last):
...
nmrn.data.validation.EventError: item: is not valid Unicode text (a lone surrogate at 0)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from nmrn.errors import DataError

__all__ = [
    "EVENT_FIELDS",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_ID_LENGTH",
    "MAX_JSON_DEPTH",
    "EventError",
    "check_event",
    "check_id",
    "check_number",
    "loads_json",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EVENT_FIELDS = ("user", "item", "timestamp", "weight")
MAX_ID_LENGTH = 256
MAX_JSON_DEPTH = 32
MAX_NUMBER_TEXT = 64
_CANONICAL_INT = re.compile(r"(0|-?[1-9][0-9]{0,18})\Z")
# C0 and C1 control characters (and DEL); tabs and newlines inside an id are refused too
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class EventError(DataError):
    """An event, or a document carrying events, is malformed; ``field`` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _type_name(x: Any) -> str:
    return {dict: "object", list: "array", type(None): "null", bool: "bool"}.get(
        type(x), type(x).__name__
    )


def _show(x: Any) -> str:
    text = ascii(x) if isinstance(x, str) else repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def check_text(value: str, field: str, max_length: int = MAX_ID_LENGTH) -> str:
    """``value`` if it is a non-empty, valid Unicode string without control characters of at
    most ``max_length`` characters; else :class:`EventError`."""
    if not value:
        raise EventError(field, "must not be an empty string")
    if len(value) > max_length:
        raise EventError(field, f"text id is {len(value)} characters long; the limit is "
                         f"{max_length}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise EventError(field, f"is not valid Unicode text (a lone surrogate at {err.start})"
                         ) from None
    bad = _CONTROL.search(value)
    if bad is not None:
        raise EventError(field, f"contains the control character {bad.group()!r} at "
                         f"{bad.start()}")
    return value


def check_id(value: Any, field: str, *, text: bool = False,
             max_length: int = MAX_ID_LENGTH) -> int | str:
    """An id by the rules of the module docstring (``text``: a text format's field)."""
    if text:
        if not isinstance(value, str):
            raise EventError(field, f"must be text, got {_type_name(value)}")
        if _CANONICAL_INT.match(value):
            number = int(value)
            if INT64_MIN <= number <= INT64_MAX:
                return number
        return check_text(value, field, max_length)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        shown = "" if isinstance(value, (dict, list)) else f" {_show(value)}"
        raise EventError(field, f"must be an int or a string, got {_type_name(value)}{shown}")
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise EventError(field, f"int id {_show(value)} is outside the 64-bit range")
        return value
    return check_text(value, field, max_length)


def check_number(value: Any, field: str, *, text: bool = False) -> float:
    """A finite number: a JSON number, or (``text``) a string that spells one."""
    if isinstance(value, str) and text:
        spelled = value.strip()
        if len(spelled) > MAX_NUMBER_TEXT:
            raise EventError(field, f"{len(spelled)} characters is too long for a number")
        try:
            number = float(spelled)
        except ValueError:
            raise EventError(field, f"must be a number, got {_show(value)}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(field, f"must be a number, got {_type_name(value)} {_show(value)}")
    else:
        try:
            number = float(value)
        except OverflowError:
            raise EventError(field, f"{_show(value)} is too large") from None
    if not math.isfinite(number):
        raise EventError(field, f"must be a finite number, got {_show(value)}")
    return number


def check_event(
    record: Any,
    *,
    text: bool,
    where: str = "",
    strict: bool = True,
    max_id_length: int = MAX_ID_LENGTH,
) -> tuple[Any, ...]:
    """``(user, item, timestamp[, weight])`` from one record.

    Parameters
    ----------
    record
        A mapping of field names to values.
    text
        The record comes from a text format (every value a string).
    where
        Prefix of the field names in messages (``"events[3]"`` gives ``"events[3].user: ..."``).
    strict
        Refuse fields other than the event's (HTTP); ``False`` ignores them (a stream entry
        may carry other fields, such as an event id).
    """
    dot = f"{where}." if where else ""
    if not isinstance(record, Mapping):
        raise EventError(where or "event", f"an event must be a JSON object, got "
                         f"{_type_name(record)}")
    if strict:
        unknown = [key for key in record if key not in EVENT_FIELDS]
        if unknown:
            raise EventError(where or "event", f"unknown field {_show(unknown[0])} (an event has "
                             "user, item, timestamp and an optional weight)")
    for key in ("user", "item", "timestamp"):
        # a text format's absent field reads as None; in JSON null is a value of the wrong type
        if key not in record or (text and record[key] is None):
            raise EventError(f"{dot}{key}", "missing (an event needs user, item and timestamp)")
    user = check_id(record["user"], f"{dot}user", text=text, max_length=max_id_length)
    item = check_id(record["item"], f"{dot}item", text=text, max_length=max_id_length)
    ts = check_number(record["timestamp"], f"{dot}timestamp", text=text)
    weight = record.get("weight")
    if weight is None or (text and weight == ""):
        return (user, item, ts)
    return (user, item, ts, check_number(weight, f"{dot}weight", text=text))


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in a JSON document (strings are skipped)."""
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return data.count(b"[") + data.count(b"{")  # an upper bound that is already fine
    bare = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    opens = (bare == ord("[")) | (bare == ord("{"))
    closes = (bare == ord("]")) | (bare == ord("}"))
    step = opens.astype(np.int64) - closes.astype(np.int64)
    return int(np.cumsum(step).max(initial=0))


def loads_json(data: bytes | str, field: str = "body", *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON document within the module's bounds (depth, integer size, finite numbers,
    UTF-8); every refusal is an :class:`EventError` naming ``field``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    depth = json_depth(raw)
    if depth > max_depth:
        raise EventError(field, f"JSON nested {depth} deep; the limit is {max_depth}")

    def constant(name: str) -> Any:
        raise EventError(field, f"{name} is not valid JSON (numbers must be finite)")

    try:
        return json.loads(raw, parse_constant=constant)
    except UnicodeDecodeError:
        raise EventError(field, "is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise EventError(field, f"not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno})") from None
    except EventError:
        raise
    except (ValueError, RecursionError) as err:  # an integer past 4,300 digits, say
        raise EventError(field, f"not acceptable JSON ({str(err).split(';')[0]})") from None
