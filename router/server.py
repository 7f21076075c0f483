"""uvicorn's HTTP protocol with a header read timeout: a client that opens a connection, or starts
a request, and does not finish sending its headers within ``header_timeout`` seconds gets
``408 Request Timeout`` and the connection is closed (uvicorn bounds only the idle time between
requests, so a client trickling its headers could hold a connection, and a worker's memory, for
as long as it liked).

Built on uvicorn's public protocol class (``uvicorn.protocols.http.httptools_impl``, the one
``uvicorn[standard]`` uses; ``uvicorn.Config(http=...)`` takes a protocol class) and its parser
callbacks: the timer starts when the connection is made and when a request's first byte arrives,
and stops when its headers are complete. The request body's own timeout is the door's
(``router.asgi.read_body``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.settings import Settings

__all__ = ["HeaderTimeoutProtocol", "protocol_with"]


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose requests must have their headers within ``header_timeout``
    seconds (``LLM_ROUTER_READ_TIMEOUT``, read when a worker imports this; ``protocol_with``
    makes a subclass with its own). ``serve`` names it to uvicorn by import path
    (``router.server:HeaderTimeoutProtocol``), so every worker process loads it."""

    header_timeout = Settings.from_env().read_timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        body = json.dumps({"error": {"type": "request_timeout", "message":
                                     f"the request headers did not arrive within {self.header_timeout:g} seconds"}}).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()


def protocol_with(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    """A ``HeaderTimeoutProtocol`` subclass bounding header reads to ``header_timeout`` seconds."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})
