"""The HTTP/1.1 connection handling of ``nmrn serve``: uvicorn's, with the bounds it lacks.

uvicorn's httptools protocol reads request lines and headers without a size limit (a 256 MB
header was accepted whole) and never closes a connection that has not sent a request yet (300
silent sockets used up a 256-file-descriptor limit). :func:`bounded_protocol` returns a subclass
that, per connection:

- answers ``408`` and closes it when no request arrives within ``request_timeout`` seconds of
  the connection opening, or a request does not finish its headers within ``request_timeout``
  seconds of its first byte (a silent or slow client: *slowloris*); between requests on a
  kept-alive connection, uvicorn's own keep-alive timeout closes an idle connection;
- answers ``431`` and closes when the request line and headers exceed ``max_header_bytes``, or
  there are more than ``max_headers`` headers (``414`` for a request line alone too long).

The body has its own bound and timeout in the application (``Limits.max_body_bytes``, and
:func:`nmrn.serving.routes.json_body`'s deadline). The number of connections is bounded by
uvicorn's ``limit_concurrency`` (503 above it) and idle keep-alive connections by its
``timeout_keep_alive``, both set by ``nmrn serve``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["bounded_protocol"]


class _Refused(Exception):
    """Stops the parser once a bound is exceeded (the answer has been written)."""


class _BoundedHttpTools(HttpToolsProtocol):
    max_header_bytes = 32_768
    max_headers = 100
    request_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._bytes = 0
        self._count = 0
        self._in_headers = True  # bytes received since the last request's headers ended
        self._header_phase = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._answer(408, b"request timeout: the request did not arrive in time")

    def _answer(self, status: int, message: bytes) -> None:
        reason = {408: b"Request Timeout", 414: b"URI Too Long",
                  431: b"Request Header Fields Too Large"}[status]
        body = b'{"error": "' + message + b'"}'
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._bytes = 0
        self._count = 0
        self._arm()  # this request's headers have request_timeout seconds to arrive

    def on_url(self, url: bytes) -> None:
        self._bytes += len(url)
        if self._bytes > self.max_header_bytes:
            self._answer(414, b"request line: longer than %d bytes" % self.max_header_bytes)
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._bytes += len(name) + len(value) + 4
        self._count += 1
        if self._bytes > self.max_header_bytes or self._count > self.max_headers:
            self._answer(431, b"headers: more than %d bytes or %d fields"
                         % (self.max_header_bytes, self.max_headers))
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True
        self._header_phase = 0

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():  # not after the answer of a refusal above
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused already: ignore what the client still sends
        if self._in_headers:
            self._header_phase += len(data)
        super().data_received(data)
        # httptools hands a header over only once it is complete: a header that never ends is
        # caught here, by the bytes that arrived while the headers were still incomplete
        if (self._in_headers and self._header_phase > self.max_header_bytes
                and not self.transport.is_closing()):
            self._answer(431, b"headers: more than %d bytes or %d fields"
                         % (self.max_header_bytes, self.max_headers))


def bounded_protocol(
    *, max_header_bytes: int = 32_768, max_headers: int = 100, request_timeout: float = 10.0
) -> type[Any]:
    """uvicorn's httptools protocol with these bounds (module docstring)."""
    return type(
        "BoundedHttpToolsProtocol",
        (_BoundedHttpTools,),
        {"max_header_bytes": int(max_header_bytes), "max_headers": int(max_headers),
         "request_timeout": float(request_timeout)},
    )
