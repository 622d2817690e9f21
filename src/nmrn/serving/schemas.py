"""Request parsing and response shapes of the HTTP service.

Requests are parsed by hand rather than by a schema library, for two reasons: ids must keep
their JSON type (an int id stays an int, ``3.0`` and ``true`` are refused instead of being
coerced), and every refusal must name the offending field in one short message. Each function
here either returns plain, checked values or raises :class:`BadRequest` with the HTTP status and
that message.

Request bodies::

    POST /events           {"user": 196, "item": 242, "timestamp": 881250949}
                           {"events": [{"user": "u1", "item": "i9", "timestamp": 5, "weight": 2}]}
    POST /recommendations  {"users": [196, "u1"], "k": 10, "exclude_seen": true}

Examples
--------
>>> limits = Limits(max_events=2)
>>> parse_events({"user": 1, "item": "a", "timestamp": 3}, limits)
[(1, 'a', 3.0)]
>>> parse_events({"events": [{"user": 1.5, "item": "a", "timestamp": 3}]}, limits)
Traceback (most recent call last):
...
nmrn.serving.schemas.BadRequest: events[0].user: must be an int or a string, got float 1.5
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nmrn.data.validation import EventError, check_event, check_id
from nmrn.errors import ConfigError, NMRNError

# k in a query string: ASCII digits, a sign, and few enough of them for int() to stay cheap
_WHOLE = re.compile(r"[+-]?[0-9]{1,18}")
RECOMMEND_FIELDS = ("users", "k", "exclude_seen")
QUERY_FIELDS = ("k", "exclude_seen")


class BadRequest(NMRNError, ValueError):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get a 4xx naming the limit.

    Attributes
    ----------
    max_body_bytes
        Largest request body (413 above it).
    max_events
        Most events in one ``POST /events`` (413 above it).
    max_users
        Most users in one ``POST /recommendations`` (413 above it).
    max_k
        Largest ``k`` (422 above it).
    max_id_length
        Longest text id, in characters (422 above it).
    max_work
        Most users × k in one read (413 above it): bounds what one read costs and sends.
    body_seconds
        Seconds a request body may take to arrive (408 after it: a slow body holds a
        connection and a handler).
    """

    max_body_bytes: int = 1_048_576
    max_events: int = 10_000
    max_users: int = 1_000
    max_k: int = 1_000
    max_id_length: int = 256
    max_work: int = 20_000
    body_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_events", "max_users", "max_k", "max_id_length",
                     "max_work"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Limits.{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.body_seconds, (int, float)) and 0 < self.body_seconds < 1e9):
            raise ConfigError(f"Limits.body_seconds must be a number > 0, got "
                              f"{self.body_seconds!r}")



def _bounded_list(value: Any, field: str, of: str, limit: int) -> list[Any]:
    """``value`` as a non-empty JSON array of at most ``limit`` elements (else BadRequest)."""
    if not isinstance(value, list):
        raise BadRequest(f"{field}: must be an array of {of}, got {_type_name(value)}")
    if not value:
        raise BadRequest(f"{field}: is empty; send at least one")
    if len(value) > limit:
        raise BadRequest(
            f"{field}: {len(value)} {field} in one request; the limit is {limit}", status=413
        )
    return value

def _type_name(x: Any) -> str:
    return {dict: "object", list: "array", type(None): "null", bool: "bool"}.get(
        type(x), type(x).__name__
    )


def _show(x: Any) -> str:
    text = ascii(x) if isinstance(x, str) else repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_id(x: Any, field: str, limits: Limits) -> int | str:
    """A JSON value as an id (:func:`nmrn.data.validation.check_id`)."""
    try:
        return check_id(x, field, max_length=limits.max_id_length)
    except EventError as err:
        raise BadRequest(str(err)) from None


def _event(obj: Any, where: str, limits: Limits) -> tuple[Any, ...]:
    try:
        return check_event(obj, text=False, where=where, max_id_length=limits.max_id_length)
    except EventError as err:
        raise BadRequest(str(err)) from None


def parse_events(body: Any, limits: Limits) -> list[tuple[Any, ...]]:
    """The events of a ``POST /events`` body, as ``(user, item, timestamp[, weight])`` tuples.

    A body is one event object or ``{"events": [event, ...]}`` (at least one, at most
    ``limits.max_events``).
    """
    if not isinstance(body, dict):
        raise BadRequest(
            f"body: must be a JSON object (one event or {{\"events\": [...]}}), got "
            f"{_type_name(body)}"
        )
    if "events" not in body:
        return [_event(body, "event", limits)]
    extra = [key for key in body if key != "events"]
    if extra:
        raise BadRequest(f"body: unknown field {extra[0]!r} next to 'events'")
    events = _bounded_list(body["events"], "events", "event objects", limits.max_events)
    return [_event(e, f"events[{j}]", limits) for j, e in enumerate(events)]


def parse_k(x: Any, limits: Limits, field: str = "k") -> int:
    """``k`` from JSON (an int) or from a query string (text holding a whole number)."""
    if isinstance(x, str):
        text = x.strip()
        if not _WHOLE.fullmatch(text):
            raise BadRequest(f"{field}: must be a whole number, got {_show(x)}")
        x = int(text)
    elif isinstance(x, bool) or not isinstance(x, int):
        raise BadRequest(f"{field}: must be an int, got {_type_name(x)} {_show(x)}")
    if x < 1:
        raise BadRequest(f"{field}: must be >= 1, got {x}")
    if x > limits.max_k:
        raise BadRequest(f"{field}: {x} is larger than the limit {limits.max_k}")
    return x


def parse_bool(x: Any, field: str) -> bool:
    """A JSON bool, or query text ``true/false/1/0`` (any case)."""
    if isinstance(x, bool):
        return x
    if isinstance(x, str) and x.strip().lower() in ("true", "1", "false", "0"):
        return x.strip().lower() in ("true", "1")
    raise BadRequest(f"{field}: must be true or false, got {_type_name(x)} {_show(x)}")


def parse_query(params: Mapping[str, str], limits: Limits) -> tuple[int, bool]:
    """``(k, exclude_seen)`` from the query string of ``GET /recommendations/{user}``."""
    unknown = [key for key in params if key not in QUERY_FIELDS]
    if unknown:
        raise BadRequest(f"query: unknown parameter {unknown[0]!r} (known: k, exclude_seen)")
    k = parse_k(params["k"], limits) if "k" in params else 10
    exclude = True
    if "exclude_seen" in params:
        exclude = parse_bool(params["exclude_seen"], "exclude_seen")
    return k, exclude


def parse_recommend(body: Any, limits: Limits) -> tuple[list[int | str], int, bool]:
    """``(users, k, exclude_seen)`` from a ``POST /recommendations`` body."""
    if not isinstance(body, dict):
        raise BadRequest(f"body: must be a JSON object with 'users', got {_type_name(body)}")
    unknown = [key for key in body if key not in RECOMMEND_FIELDS]
    if unknown:
        raise BadRequest(f"body: unknown field {unknown[0]!r} (known: users, k, exclude_seen)")
    if "users" not in body:
        raise BadRequest("users: missing (send {\"users\": [id, ...]})")
    users = _bounded_list(body["users"], "users", "ids", limits.max_users)
    ids = [parse_id(u, f"users[{j}]", limits) for j, u in enumerate(users)]
    k, exclude = body.get("k", 10), body.get("exclude_seen", True)
    if isinstance(k, bool) or not isinstance(k, int):  # JSON must say 10, not "10"
        raise BadRequest(f"k: must be an int, got {_type_name(k)} {_show(k)}")
    if not isinstance(exclude, bool):
        raise BadRequest(f"exclude_seen: must be true or false, got {_type_name(exclude)} "
                         f"{_show(exclude)}")
    k = parse_k(k, limits)
    if len(ids) * k > limits.max_work:
        raise BadRequest(f"users x k: {len(ids)} x {k} = {len(ids) * k} exceeds the limit of "
                         f"{limits.max_work} per read; ask for fewer users or a smaller k",
                         status=413)
    return ids, k, exclude


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def recommendation_rows(
    users: list[int | str], items: np.ndarray, scores: np.ndarray, cold: np.ndarray
) -> list[dict[str, Any]]:
    """JSON rows ``{"user", "items", "scores", "cold"}`` from ``[n, k]`` arrays.

    Slots a user has no candidate for (``None`` item, score ``-inf``) are left out.
    """
    rows = []
    item_rows = items.tolist()
    score_rows = scores.tolist()
    for j, user in enumerate(users):
        keep = [c for c, s in enumerate(score_rows[j]) if s != -math.inf]
        rows.append(
            {
                "user": user,
                "items": [item_rows[j][c] for c in keep],
                "scores": [_finite(score_rows[j][c]) for c in keep],
                "cold": bool(cold[j]),
            }
        )
    return rows
