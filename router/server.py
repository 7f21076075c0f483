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
import logging
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.settings import Settings

__all__ = ["DRAINING", "DrainingServer", "HeaderTimeoutProtocol", "protocol_with"]

DRAINING = threading.Event()  # set on SIGTERM: /readyz answers 503 (router.routes)


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


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains on SIGTERM/SIGINT: ``DRAINING`` is set at once (``/readyz``
    answers 503 while every request is still served), and only ``grace`` seconds later does
    uvicorn begin its own graceful shutdown (stop accepting, let in-flight requests and streams
    finish within the config's ``timeout_graceful_shutdown``, run the lifespan's shutdown: the
    usage ledger flushed, async tasks' claims given back). A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, grace: float) -> None:
        super().__init__(config)
        self.grace = grace
        self._drain_since: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_since is None and self.grace > 0:
            self._drain_since = time.monotonic()
            DRAINING.set()
            logging.getLogger("llm_router").warning("draining: /readyz is 503 for %g s, then in-flight work finishes",
                                                     self.grace)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_since is not None and not self.should_exit and time.monotonic() - self._drain_since >= self.grace:
            self.should_exit = True
        return await super().on_tick(counter)
