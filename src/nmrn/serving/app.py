"""The ASGI application: the FastAPI app of :mod:`nmrn.serving.routes` behind a fast read path.

:func:`create_app` builds a FastAPI application around one
:class:`~nmrn.serving.service.LiveService` (the endpoints, their refusals and the token rule are
in :mod:`nmrn.serving.routes`) and puts :class:`ServingApp` in front of it, which answers the hot
read, ``GET /recommendations/{user}``, without FastAPI's machinery.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from nmrn.serving.routes import Access, Reads, http_error, raw_user, read_one, router
from nmrn.serving.schemas import Limits
from nmrn.serving.service import LiveService

__all__ = ["ServingApp", "create_app"]


def _json_bytes(body: Any) -> bytes:
    """``body`` as compact UTF-8 JSON, as :class:`JSONResponse` renders it."""
    return json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


class ServingApp:
    """The ASGI application :func:`create_app` returns.

    It answers the hot read, ``GET /recommendations/{user}``, itself, in front of everything
    else: no middleware stack, routing, dependency resolution or response classes (about a
    tenth of a millisecond a request, as much as a popularity model's own answer). It calls the
    same function as the FastAPI route (:func:`nmrn.serving.routes.read_one`), so answers and
    refusals are byte for byte the route's. Every other request (and any path this class does
    not recognise, which then gets the router's 404) goes to the FastAPI application,
    :attr:`app`.
    """

    PREFIX = "/recommendations/"

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    @property
    def state(self) -> Any:
        """The FastAPI application's ``state`` (``service``, ``limits``, ``access``, ``reads``)."""
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
        state = self.app.state
        authorization = None
        if state.access.read is not None:
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
        status, body, headers = await read_one(
            state, raw_user(scope, self.PREFIX), scope["query_string"], authorization
        )
        payload = _json_bytes(body)
        raw_headers = [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", b"application/json"),
        ]
        raw_headers += [(key.lower().encode(), value.encode()) for key, value in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})


def create_app(
    service: LiveService,
    *,
    token: str | None = None,
    read_token: str | None = None,
    limits: Limits | None = None,
    close_on_shutdown: bool = False,
) -> ServingApp:
    """The ASGI application serving ``service`` (FastAPI behind a fast read path).

    Parameters
    ----------
    service
        The live model. The app does not own it unless ``close_on_shutdown``.
    token
        When set, writes need ``Authorization: Bearer <token>``.
    read_token
        When set, reads (``/recommendations``, ``/openapi.json``) need
        ``Authorization: Bearer <read_token>`` (or the write token); otherwise they are open.
        Open reads let anyone infer what a user consumed (docs/serving.md, section 5).
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
    access = Access(write=token, read=read_token)  # refuses an empty or non-string token

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_on_shutdown:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="nmrn",
        summary="Streaming recommendations, live",
        lifespan=lifespan,
        docs_url=None,  # no docs page: it would load its scripts from a CDN
        redoc_url=None,
        openapi_url=None,  # served by the router, behind the read token (routes.openapi_schema)
    )
    app.state.service = service
    app.state.limits = Limits() if limits is None else limits
    app.state.access = access
    app.state.reads = Reads(service)
    app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, http_error)
    return ServingApp(app)
