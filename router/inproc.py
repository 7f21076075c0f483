"""In-process upstream transports for tests: no socket, no real time.

``ASGITransport(app)`` sends each wire request to an ASGI app in this process (the upstream
emulator, ``router.emulator.create_emulator(clock=...)``, so every scripted behaviour of the
emulator drives it: statuses, Retry-After, delays, hangs, cut streams, malformed chunks, recorded
bodies). ``ScriptedTransport(reply)`` answers with hand-written ``Reply`` objects: status, headers
and body parts, where a ``float`` part waits that many seconds on the clock, an exception part is
raised as the transport would raise it, and ``hang`` waits until the caller gives up.
Both implement ``router.transport.Transport`` and record what was sent (``sent``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from multidict import CIMultiDict

from providers import WireRequest
from router.clock import Clock, LoopClock
from router.transport import UpstreamResponse, transport_error

__all__ = ["ASGITransport", "Reply", "ScriptedTransport"]


class Reply(msgspec.Struct, kw_only=True):
    """One scripted answer: ``body`` parts are bytes (sent), floats (seconds to wait on the
    clock) or exceptions (raised at that point, mapped like a transport failure); ``hang``: after
    the parts, wait forever (until the router's deadline cancels the call)."""

    status: int = 200
    headers: dict[str, str] = msgspec.field(default_factory=lambda: {"content-type": "text/event-stream"})
    body: list[Any] = []
    hang: bool = False


class _Response:
    def __init__(self, status: int, headers: Mapping[str, str], parts: AsyncIterator[bytes],
                 on_close: Callable[[], None]) -> None:
        self.status = status
        self.headers: Mapping[str, str] = CIMultiDict(headers)
        self.content_type = self.headers.get("content-type", "").split(";")[0].strip()
        self._parts, self._on_close, self._closed = parts, on_close, False

    def chunks(self) -> AsyncIterator[bytes]:
        return self._parts

    async def read(self) -> bytes:
        return b"".join([c async for c in self._parts])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()


class ScriptedTransport:
    """Answers each request with ``reply(request)`` (or the next of a list of replies)."""

    def __init__(self, reply: Callable[[WireRequest], Reply] | list[Reply], clock: Clock | None = None) -> None:
        self._reply = reply
        self.clock: Clock = clock or LoopClock()
        self.sent: list[WireRequest] = []
        self.closed = 0

    async def send(self, request: WireRequest, *, connect: float, name: str, provider: str) -> UpstreamResponse:
        self.sent.append(request)
        r = self._reply.pop(0) if isinstance(self._reply, list) else self._reply(request)
        parts = list(r.body)
        while parts and not isinstance(parts[0], bytes):  # waits and failures before the status line
            part = parts.pop(0)
            if isinstance(part, BaseException):
                raise transport_error(part, name, provider, got_bytes=False)
            await self.clock.sleep(float(part))

        async def body() -> AsyncIterator[bytes]:
            got = False
            for part in parts:
                if isinstance(part, bytes):
                    got = True
                    yield part
                elif isinstance(part, BaseException):
                    raise transport_error(part, name, provider, got_bytes=got)
                else:
                    await self.clock.sleep(float(part))
            if r.hang:
                await asyncio.get_running_loop().create_future()

        return _Response(r.status, r.headers, body(), self._closed)

    def _closed(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        return None


def _scope(request: WireRequest) -> dict[str, Any]:
    """The ASGI HTTP scope of a POST of ``request``."""
    scheme, _, rest = request.url.partition("://")
    host, _, path = rest.partition("/")
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": scheme, "path": "/" + path, "raw_path": ("/" + path).encode(), "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
            "server": (host, 80), "client": ("127.0.0.1", 1)}


class ASGITransport:
    """Sends requests to ``app`` (an ASGI callable) in this process. The app's exceptions after
    the status line are a cut connection; before it, a failed connect."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: list[WireRequest] = []
        self._running: set[asyncio.Task[None]] = set()

    async def send(self, request: WireRequest, *, connect: float, name: str, provider: str) -> UpstreamResponse:
        self.sent.append(request)
        scope = _scope(request)
        messages: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        gone = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as e:  # noqa: BLE001 - the app's failure is what the router sees
                await messages.put(e)
            else:
                await messages.put(ConnectionResetError("the app returned without finishing"))

        task = asyncio.ensure_future(run())
        self._running.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self._running.discard)

        def close() -> None:  # the app sees the caller leave (http.disconnect) and ends by itself
            gone.set()

        try:
            first = await messages.get()
        except BaseException:  # the router gave up waiting: the app sees the caller leave
            close()
            raise
        if isinstance(first, BaseException):
            close()
            raise transport_error(first, name, provider, got_bytes=False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in first.get("headers", [])}

        async def body() -> AsyncIterator[bytes]:
            got = False
            while True:
                msg = await messages.get()
                if isinstance(msg, BaseException):
                    raise transport_error(msg, name, provider, got_bytes=got)
                if msg.get("body"):
                    got = True
                    yield msg["body"]
                if not msg.get("more_body", False):
                    return

        return _Response(int(first["status"]), headers, body(), close)

    async def aclose(self) -> None:
        return None
