"""The HTTP API over a :class:`~nmrn.serving.service.LiveService` (FastAPI).

======  ==========================  =====================================================
POST    ``/events``                 ingest one event or ``{"events": [...]}``; 202
GET     ``/recommendations/{user}`` top-k for one user (``?k=10&exclude_seen=true``)
POST    ``/recommendations``        top-k for ``{"users": [...], "k": 10}``
GET     ``/healthz``                liveness and progress (503 when the writer stopped)
GET     ``/metrics``                Prometheus text format
POST    ``/checkpoint``             checkpoint now
======  ==========================  =====================================================

Writes (``/events``, ``/checkpoint``) need ``Authorization: Bearer <token>`` when a token is
configured: 401 without the header, 403 with a wrong token. Reads stay open. Every refusal is a
4xx (5xx when the service cannot take work) with a JSON body ``{"error": "<field>: <problem>"}``;
no stack trace ever reaches a client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from nmrn.errors import ConfigError, NMRNError
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

log = logging.getLogger("nmrn.serving")

# Reads for at most INLINE_USERS users run on the event loop itself; larger ones in a worker
# thread, so that the loop keeps serving while they run.
INLINE_USERS = 8
# A read waiting for the writer's batch tries again after this long even if no wake-up came.
WAKE_TIMEOUT = 0.05
_KINDS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 500: "internal", 503: "unavailable",
}


def _error(service: LiveService, status: int, message: str, **headers: str) -> JSONResponse:
    service.count_error(_KINDS.get(status, str(status)))
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _refusal(err: Exception) -> tuple[int, str, dict[str, str]]:
    """``(status, message, headers)`` answering a request that raised ``err``."""
    if isinstance(err, BadRequest):
        return err.status, str(err), {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
    if isinstance(err, ServiceUnavailable):
        return 503, str(err), {"Retry-After": "1"}
    if isinstance(err, NMRNError):  # e.g. a DataError the parser did not anticipate
        return 422, str(err), {}
    log.error("internal error", exc_info=err)
    return 500, "internal error (see the server log)", {}


def _json_bytes(body: Any) -> bytes:
    """``body`` as compact UTF-8 JSON, as :class:`JSONResponse` renders it."""
    return json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


class ServingApp:
    """The ASGI application :func:`create_app` returns.

    It answers the hot read, ``GET /recommendations/{user}``, itself, in front of everything
    else: no middleware stack, routing, dependency resolution or response classes (about a
    tenth of a millisecond a request, as much as a popularity model's own answer). Its answers
    and refusals are byte for byte those of the FastAPI route. Every other request (and any path
    this class does not recognise, which then gets the router's 404) goes to the FastAPI
    application, :attr:`app`.
    """

    PREFIX = "/recommendations/"

    def __init__(self, app: FastAPI, answer: Callable[..., Any], service: LiveService,
                 limits: Limits) -> None:
        self.app = app
        self.answer = answer
        self.service = service
        self.limits = limits

    @property
    def state(self) -> Any:
        """The FastAPI application's ``state`` (``service``, ``limits``)."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        user = path[len(self.PREFIX) :]
        if not path.startswith(self.PREFIX) or not user or "/" in user:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        try:
            uid = parse_id(user, "user", self.limits)
            query = scope["query_string"]
            k, exclude = (10, True) if not query else parse_query(
                QueryParams(query), self.limits
            )
            status, body = 200, (await self.answer([uid], k, exclude, text=True))[0]
        except Exception as err:  # noqa: BLE001 - never a stack trace to the client
            status, message, headers = _refusal(err)
            self.service.count_error(_KINDS.get(status, str(status)))
            body = {"error": message}
        payload = _json_bytes(body)
        raw_headers = [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", b"application/json"),
        ]
        raw_headers += [(key.lower().encode(), value.encode()) for key, value in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"body: {name} is not valid JSON (numbers must be finite)", status=400)


async def _json_body(request: Request, limits: Limits) -> Any:
    """The request body parsed as JSON, within ``limits.max_body_bytes``."""
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
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise BadRequest(f"body: more than the limit of {limits.max_body_bytes} bytes", 413)
    if not body.strip():
        raise BadRequest("body: is empty; send a JSON object", status=400)
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("body: is not UTF-8 text", status=400) from None
    except json.JSONDecodeError as err:
        raise BadRequest(
            f"body: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
            status=400,
        ) from None
    except RecursionError:
        raise BadRequest("body: JSON nested too deeply", status=400) from None


def create_app(
    service: LiveService,
    *,
    token: str | None = None,
    limits: Limits | None = None,
    close_on_shutdown: bool = False,
) -> ServingApp:
    """The ASGI application serving ``service`` (FastAPI behind a fast read path).

    Parameters
    ----------
    service
        The live model. The app does not own it unless ``close_on_shutdown``.
    token
        When set, writes need ``Authorization: Bearer <token>``; reads stay open.
    limits
        Request limits (default :class:`~nmrn.serving.schemas.Limits`).
    close_on_shutdown
        Close the service (apply the queue, final checkpoint) when the server shuts down.

    Notes
    -----
    ``nmrn serve`` also makes three process-wide settings that an embedding server should
    make too: ``sys.setswitchinterval(0.0005)``, ``torch.set_num_threads(1)`` and, after
    loading, ``gc.freeze()`` (docs/serving.md, section 8, has the measurements).
    """
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ConfigError("token must be a non-empty string (or None for no authentication)")
    limits = Limits() if limits is None else limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_on_shutdown:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="nmrn",
        summary="Streaming recommendations, live",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.limits = limits

    def check_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization")
        if header is None:
            raise BadRequest("authorization: missing; send 'Authorization: Bearer <token>'", 401)
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise BadRequest("authorization: expected 'Bearer <token>'", status=401)
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise BadRequest("authorization: the token is not valid", status=403)

    async def guarded(work: Callable[[], Any]) -> Any:
        try:
            return await work()
        except Exception as err:  # noqa: BLE001 - never a stack trace to the client
            status, message, headers = _refusal(err)
            return _error(service, status, message, **headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        message = f"{request.method} {request.url.path}: {detail.lower()}"
        return _error(service, exc.status_code, message, **(exc.headers or {}))

    @app.post("/events", status_code=202)
    async def post_events(request: Request) -> Any:
        async def work() -> Any:
            check_token(request)
            rows = parse_events(await _json_body(request, limits), limits)
            first, last = await run_in_threadpool(service.submit, rows)
            return JSONResponse(
                {"accepted": len(rows), "first_seq": first, "seq": last}, status_code=202
            )

        return await guarded(work)

    free: dict[str, asyncio.Future[None]] = {}  # "next": resolved when the writer's run ends

    async def model_free() -> None:
        """Wait (without blocking the loop) until the model lock is next released."""
        loop = asyncio.get_running_loop()
        future = free.get("next")
        if future is None or future.done() or future.get_loop() is not loop:
            future = free["next"] = loop.create_future()

            def resolve() -> None:
                if not future.done():
                    future.set_result(None)

            def wake() -> None:  # runs in the thread that released the lock
                if not loop.is_closed():
                    loop.call_soon_threadsafe(resolve)

            if not service.notify_when_free(wake):
                resolve()  # already free: try again at once
            else:  # belt and braces: a missed wake-up costs a retry, never a hung read
                loop.call_later(WAKE_TIMEOUT, resolve)
        # shared by every waiting read: one read being cancelled must not cancel the others
        await asyncio.shield(future)

    async def _answer(users: list[Any], k: int, exclude: bool, *, text: bool
                      ) -> list[dict[str, Any]]:
        # A small read runs right here on the event loop: a recommend costs well under a
        # millisecond, less than a hop to a worker thread. If the writer is inside a batch, the
        # read waits for the batch's end (the loop serves other requests meanwhile) and tries
        # again; reads are never parked in threads, where each would hold the model lock in
        # turn and push the next read off the loop too. A large read runs in a worker thread.
        if len(users) <= INLINE_USERS:
            while (found := service.try_recommend(users, k, exclude, text_ids=text)) is None:
                await model_free()
        else:
            found = await run_in_threadpool(service.recommend, users, k, exclude, text_ids=text)
        looked_up, recs = found
        return recommendation_rows(looked_up, recs.items, recs.scores, recs.cold)

    @app.get("/recommendations/{user}")
    async def get_recommendations(user: str, request: Request) -> Any:
        async def work() -> Any:
            uid = parse_id(user, "user", limits)
            k, exclude = parse_query(request.query_params, limits)
            rows = await _answer([uid], k, exclude, text=True)
            return JSONResponse(rows[0])

        return await guarded(work)

    @app.post("/recommendations")
    async def post_recommendations(request: Request) -> Any:
        async def work() -> Any:
            if request.query_params:
                raise BadRequest("query: POST /recommendations takes its arguments in the body")
            users, k, exclude = parse_recommend(await _json_body(request, limits), limits)
            rows = await _answer(users, k, exclude, text=False)
            return JSONResponse({"results": rows})

        return await guarded(work)

    @app.get("/healthz")
    async def healthz() -> Any:
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

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(
            service.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post("/checkpoint")
    async def post_checkpoint(request: Request) -> Any:
        async def work() -> Any:
            check_token(request)
            return JSONResponse(await run_in_threadpool(service.checkpoint))

        return await guarded(work)

    return ServingApp(app, answer=_answer, service=service, limits=limits)
