"""The HTTP endpoints, as one FastAPI ``APIRouter`` over the service in ``app.state``.

======  ==========================  =====================================================
GET     ``/``                       the live status page (HTML, polls ``/status.json``)
GET     ``/status.json``            progress, events/s, read latency, live quality
POST    ``/events``                 ingest one event or ``{"events": [...]}``; 202
GET     ``/recommendations/{user}`` top-k for one user (``?k=10&exclude_seen=true``)
POST    ``/recommendations``        top-k for ``{"users": [...], "k": 10}``
GET     ``/healthz``                liveness and progress (503 when the writer stopped)
GET     ``/metrics``                Prometheus text format
GET     ``/openapi.json``           the API schema (behind the read token when one is set)
POST    ``/checkpoint``             checkpoint now
======  ==========================  =====================================================

A handler only parses, calls the service and shapes the answer; it raises on any problem. Every
route of the router is a :class:`GuardedRoute`, which turns whatever a handler raises into one
JSON refusal (:func:`refusal`): a :class:`~nmrn.serving.schemas.BadRequest` gives its own 4xx,
:class:`~nmrn.serving.service.ServiceUnavailable` a 503, any other
:class:`~nmrn.errors.NMRNError` a 422, and anything unexpected a 500 whose details stay in the
server log: no stack trace ever reaches a client. The app registers :func:`http_error` for the
router's own 404 and 405, so they take the same shape.

The state a handler reads (``request.app.state``): ``service`` (the
:class:`~nmrn.serving.service.LiveService`), ``limits``, ``access`` (an :class:`Access`: the write
and read tokens) and ``reads`` (a :class:`Reads`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException

from nmrn.data.validation import EventError, loads_json
from nmrn.errors import ConfigError, NMRNError
from nmrn.serving.metrics import CONTENT_TYPE
from nmrn.serving.schemas import (
    BadRequest,
    Limits,
    parse_events,
    parse_id,
    parse_query,
    parse_recommend,
    recommendation_rows,
)
from nmrn.serving.service import LiveService, ServiceUnavailable
from nmrn.serving.status import PAGE

log = logging.getLogger("nmrn.serving")

__all__ = ["Access", "GuardedRoute", "Reads", "http_error", "read_one", "refusal", "router"]

# Reads for at most INLINE_USERS users run on the event loop itself; larger ones in a worker
# thread, so that the loop keeps serving while they run.
INLINE_USERS = 8
# A read waiting for the writer's batch tries again after this long even if no wake-up came.
WAKE_TIMEOUT = 0.05
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # what a client can send after "Bearer "
KINDS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 500: "internal", 503: "unavailable",
}


# -- refusals --------------------------------------------------------------------------------------
def refusal(service: LiveService, err: Exception) -> tuple[int, dict[str, str], dict[str, str]]:
    """``(status, body, headers)`` answering a request that raised ``err``; counted in the
    service's ``nmrn_errors_total`` by kind."""
    if isinstance(err, BadRequest):
        status, message = err.status, str(err)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
    elif isinstance(err, ServiceUnavailable):
        status, message, headers = 503, str(err), {"Retry-After": "1"}
    elif isinstance(err, NMRNError):  # e.g. a DataError the parser did not anticipate
        status, message, headers = 422, str(err), {}
    else:
        log.error("internal error", exc_info=err)
        status, message, headers = 500, "internal error (see the server log)", {}
    service.count_error(KINDS.get(status, str(status)))
    return status, {"error": message}, headers


class GuardedRoute(APIRoute):
    """A route whose handler's exceptions become JSON refusals (:func:`refusal`)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as err:  # noqa: BLE001 - never a stack trace to the client
                status, body, headers = refusal(request.app.state.service, err)
                return JSONResponse(body, status_code=status, headers=headers or None)

        return guarded


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """The router's own refusals (unknown path: 404, wrong method: 405) as JSON."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    request.app.state.service.count_error(KINDS.get(exc.status_code, str(exc.status_code)))
    message = f"{request.method} {request.url.path}: {detail.lower()}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


# -- request pieces --------------------------------------------------------------------------------
class Access:
    """Who may do what: the write token (``None``: writes are open) and the read token
    (``None``: reads are open).

    The write token holds both scopes, so a writer never needs two tokens; the read token only
    reads. Reads are ``GET``/``POST /recommendations`` and the API schema
    (``/openapi.json``); ``/``, ``/status.json``, ``/healthz`` and ``/metrics`` hold only
    aggregate figures (counts, rates, latency, live quality), never a user's data, and stay
    open so that probes and scrapers need no secret (docs/serving.md, section 5).
    """

    __slots__ = ("read", "write")

    def __init__(self, write: str | None = None, read: str | None = None) -> None:
        for name, value in (("token", write), ("read_token", read)):
            if value is not None and (not isinstance(value, str) or not _TOKEN.fullmatch(value)):
                raise ConfigError(f"{name} must be 1 to 4096 visible ASCII characters, without "
                                  f"spaces (or None: open)")
        if read is not None and write is None:
            # with open writes anyone could post (user, item) and watch the live quality move
            # (it skips repeats): an oracle for a user's history; a read token alone protects
            # nothing
            raise ConfigError("a read token needs a write token too: with open writes, the "
                              "history that reads protect can be probed through ingest")
        self.write = write
        self.read = read

    def _given(self, header: str | None) -> bytes:
        if header is None:
            raise BadRequest("authorization: missing; send 'Authorization: Bearer <token>'", 401)
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise BadRequest("authorization: expected 'Bearer <token>'", status=401)
        return given.strip().encode()

    def check_write(self, header: str | None) -> None:
        """Refuse a write without the write token (401) or with another one (403)."""
        if self.write is None:
            return
        if not hmac.compare_digest(self._given(header), self.write.encode()):
            raise BadRequest("authorization: the token is not valid", status=403)

    def check_read(self, header: str | None) -> None:
        """Refuse a read, when reads are protected, without the read or the write token."""
        if self.read is None:
            return
        given = self._given(header)
        # compare with both, always: the time taken does not tell which one nearly matched
        ok = hmac.compare_digest(given, self.read.encode())
        if self.write is not None:
            ok |= hmac.compare_digest(given, self.write.encode())
        if not ok:
            raise BadRequest("authorization: the token is not valid for reads", status=403)


def check_token(request: Request) -> None:
    """Refuse a write without the configured write token (401) or with another one (403)."""
    request.app.state.access.check_write(request.headers.get("authorization"))


def check_read(request: Request) -> None:
    """Refuse a read without the read token when reads are protected (401/403)."""
    request.app.state.access.check_read(request.headers.get("authorization"))


async def json_body(request: Request, limits: Limits) -> Any:
    """The request body parsed as JSON, within ``limits.max_body_bytes``."""
    body = await read_body(request, limits)
    try:
        return loads_json(body, "body")  # depth, integer size, finite numbers, UTF-8
    except EventError as err:
        raise BadRequest(str(err), status=400) from None


async def read_body(request: Request, limits: Limits) -> bytearray:
    """The raw body of a JSON request: its content type, its size (``limits.max_body_bytes``)
    and its arrival time (``limits.body_seconds``) checked, not empty. Reader processes check
    a write with it before they forward it to the writer (:mod:`nmrn.serving.reader`)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        shown = ctype or "none"
        raise BadRequest(f"content-type: must be application/json, got {shown}", status=415)
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise BadRequest(f"content-length: {length!r} is not a number", status=400)
        if int(length) > limits.max_body_bytes:
            raise BadRequest(
                f"body: {int(length)} bytes; the limit is {limits.max_body_bytes}", status=413
            )
    body = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limits.max_body_bytes:
                raise BadRequest(f"body: more than the limit of {limits.max_body_bytes} bytes", 413)

    try:  # a slow body must not hold a handler (wait_for, not asyncio.timeout: Python 3.10)
        await asyncio.wait_for(receive(), limits.body_seconds)
    except asyncio.TimeoutError:  # TimeoutError itself from 3.11 on, another class in 3.10
        raise BadRequest(f"body: did not arrive within {limits.body_seconds} s", 408) from None
    if not body.strip():
        raise BadRequest("body: is empty; send a JSON object", status=400)
    return body


# -- reads -----------------------------------------------------------------------------------------
class Reads:
    """Answers reads without parking them in threads while the writer holds the model.

    A small read runs right on the event loop: a recommend costs well under a millisecond, less
    than a hop to a worker thread. If the writer is inside a run, the read waits for the run's
    end (the loop serves other requests meanwhile) and tries again; reads are never parked in
    threads, where each would hold the model lock in turn and push the next read off the loop
    too. A large read (more than :data:`INLINE_USERS` users) runs in slices of that many users
    in a worker thread, one large read at a time, so that it cannot starve small ones.
    """

    def __init__(self, service: LiveService) -> None:
        self.service = service
        self._free: asyncio.Future[None] | None = None  # resolved when the writer's run ends
        self._large: tuple[Any, asyncio.Semaphore] | None = None  # (loop, one large read)

    async def _model_free(self) -> None:
        """Wait (without blocking the loop) until the model lock is next released."""
        loop = asyncio.get_running_loop()
        future = self._free
        if future is None or future.done() or future.get_loop() is not loop:
            future = self._free = loop.create_future()

            def resolve() -> None:
                if not future.done():
                    future.set_result(None)

            def wake() -> None:  # runs in the thread that released the lock
                if not loop.is_closed():
                    loop.call_soon_threadsafe(resolve)

            if not self.service.notify_when_free(wake):
                resolve()  # already free: try again at once
            else:  # belt and braces: a missed wake-up costs a retry, never a hung read
                loop.call_later(WAKE_TIMEOUT, resolve)
        # shared by every waiting read: one read being cancelled must not cancel the others
        await asyncio.shield(future)

    async def answer(
        self, users: list[Any], k: int, exclude: bool, *, text: bool
    ) -> list[dict[str, Any]]:
        """The response rows of a read (``text``: ids came as text, e.g. in a URL path)."""
        service = self.service
        if len(users) <= INLINE_USERS:
            while (found := service.try_recommend(users, k, exclude, text_ids=text)) is None:
                await self._model_free()
            looked_up, recs = found
            return recommendation_rows(looked_up, recs.items, recs.scores, recs.cold)
        # A large read goes in slices of INLINE_USERS users, one at a time (the semaphore), each
        # in a worker thread: between slices the model lock is free, so single-user reads and
        # the writer are never stuck behind a large read. Each slice sees a consistent state;
        # successive slices may see successive ones.
        rows: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        if self._large is None or self._large[0] is not loop:
            self._large = (loop, asyncio.Semaphore(1))
        async with self._large[1]:
            for lo in range(0, len(users), INLINE_USERS):
                looked_up, recs = await run_in_threadpool(
                    service.recommend, users[lo : lo + INLINE_USERS], k, exclude, text_ids=text
                )
                rows += recommendation_rows(looked_up, recs.items, recs.scores, recs.cold)
        return rows


def raw_user(scope: Any, prefix: str) -> str | bytes:
    """The user segment of ``scope``'s path: the raw, still percent-encoded bytes when the
    server gives them (``raw_path``), else the decoded text. Servers decode a path leniently
    (a byte that is not UTF-8 becomes U+FFFD, so different bad ids would read as one user);
    :func:`read_one` decodes the raw bytes strictly instead."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw.startswith(prefix.encode()):
        return raw.split(b"?", 1)[0][len(prefix):]
    return str(scope["path"])[len(prefix):]


async def read_one(
    state: Any, user: str | bytes, query: bytes, authorization: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    """``GET /recommendations/{user}``: ``(status, body, headers)``. Shared by the route and
    the fast path in front of the app (:class:`nmrn.serving.app.ServingApp`); ``user`` is the
    path segment, raw (bytes, percent-encoded) or decoded (text)."""
    try:
        state.access.check_read(authorization)
        if isinstance(user, bytes):
            try:
                user = (unquote_to_bytes(user) if b"%" in user else user).decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("user: the path is not valid UTF-8 once percent-decoded",
                                 status=422) from None
        uid = parse_id(user, "user", state.limits)
        k, exclude = (10, True) if not query else parse_query(QueryParams(query), state.limits)
        return 200, (await state.reads.answer([uid], k, exclude, text=True))[0], {}
    except Exception as err:  # noqa: BLE001 - never a stack trace to the client
        return refusal(state.service, err)


# -- the routes ------------------------------------------------------------------------------------
router = APIRouter(route_class=GuardedRoute)


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 visible ASCII characters, or absent."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise BadRequest("idempotency-key: must be 1 to 255 visible ASCII characters (no "
                         "spaces), e.g. a UUID", status=400)
    return key


@router.post("/events", status_code=202)
async def post_events(request: Request) -> JSONResponse:
    state = request.app.state
    check_token(request)
    key = idempotency_key(request)
    rows = parse_events(await json_body(request, state.limits), state.limits)
    if key is None:
        first, last = await run_in_threadpool(state.service.submit, rows)
        headers = None
    else:
        first, last, replayed = await run_in_threadpool(state.service.submit_once, rows, key)
        headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse({"accepted": len(rows), "first_seq": first, "seq": last},
                        status_code=202, headers=headers)


@router.get("/recommendations/{user}")
async def get_recommendations(user: str, request: Request) -> JSONResponse:
    status, body, headers = await read_one(
        request.app.state, raw_user(request.scope, "/recommendations/"),
        request.scope.get("query_string", b""), request.headers.get("authorization"),
    )
    return JSONResponse(body, status_code=status, headers=headers or None)


@router.post("/recommendations")
async def post_recommendations(request: Request) -> JSONResponse:
    state = request.app.state
    check_read(request)
    if request.query_params:
        raise BadRequest("query: POST /recommendations takes its arguments in the body")
    users, k, exclude = parse_recommend(await json_body(request, state.limits), state.limits)
    rows = await state.reads.answer(users, k, exclude, text=False)
    return JSONResponse({"results": rows})


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    service: LiveService = request.app.state.service
    alive = service.writer_alive
    body = {
        "status": "ok" if alive else "writer stopped",
        "model": service.model.preset or type(service.model).__name__,
        "accepted_seq": service.accepted_seq,
        "applied_seq": service.applied_seq,
        "apply_lag": service.pending,
        "checkpoint_seq": service.checkpoint_seq,
        "users": len(service.model.users),
        "items": len(service.model.items),
    }
    return JSONResponse(body, status_code=200 if alive else 503)


@router.get("/")
async def status_page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


@router.get("/status.json")
async def status_json(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.service.status())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request) -> JSONResponse:
    """The OpenAPI schema, behind the same choice as reads."""
    check_read(request)
    return JSONResponse(request.app.openapi())


@router.post("/checkpoint")
async def post_checkpoint(request: Request) -> JSONResponse:
    check_token(request)
    return JSONResponse(await run_in_threadpool(request.app.state.service.checkpoint))
