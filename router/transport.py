"""The upstream transport: one method, ``send(request) -> UpstreamResponse``.

``AiohttpTransport`` is the real one: one pooled HTTP/1.1 keep-alive ``aiohttp.ClientSession``
per provider (its C HTTP parser; a proxy through httpx's API over aiohttp spent about twice the CPU
per request, see the README). ``router.inproc`` serves the same interface in process
(``ASGITransport`` from any ASGI app such as the emulator, ``ScriptedTransport`` from written
replies), for tests with no socket and no real time.

This is the one boundary where transport exceptions become router errors (``router.errors``):
no connection, a reset or a refused connect before the status line -> ``UpstreamConnectError``
(code ``connect_error``); a connect or pool wait past ``connect`` seconds -> ``UpstreamTimeout``
(``connect_timeout``); a connection dropped or a body broken after the status line ->
``UpstreamStreamError`` (``stream_truncated``), unless no byte of the body had come (then it is
``connect_error``: nothing was answered); a socket read timeout -> ``UpstreamTimeout``
(``read_timeout``). aiohttp's timeouts (``ConnectionTimeoutError``, ``SocketTimeoutError``) are
``TimeoutError``s (https://docs.aiohttp.org/en/stable/client_reference.html#hierarchy-of-exceptions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from typing import Protocol

import aiohttp

from providers import WireRequest
from router.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeout,
)

__all__ = ["AiohttpTransport", "Transport", "UpstreamResponse", "transport_error"]


class UpstreamResponse(Protocol):
    """An answer whose status line and headers have arrived. ``headers``: case-insensitive.
    ``chunks()`` yields body bytes as they arrive (raises ``UpstreamError``); ``read()`` the
    whole body; ``close()`` always, once: a body read to its end keeps the connection for reuse,
    one cut short drops it (which stops the upstream's generation)."""

    status: int
    headers: Mapping[str, str]
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Sends one encoded request. ``connect``: seconds to get a connection (pool wait included);
    ``name``/``provider`` only label the errors raised. Raises ``UpstreamError``."""

    async def send(self, request: WireRequest, *, connect: float, name: str,
                   provider: str) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def transport_error(e: BaseException, name: str, provider: str, got_bytes: bool) -> UpstreamError:
    """The router error for a transport failure before (``got_bytes`` False) or after the first
    byte of the answer."""
    if isinstance(e, TimeoutError):
        return UpstreamTimeout(f"{name}: {type(e).__name__}", retryable=True, provider=provider,
                               code="read_timeout" if got_bytes else "connect_timeout")
    if got_bytes:
        return UpstreamStreamError(f"{name}: the connection broke ({type(e).__name__})",
                                   code="stream_truncated", retryable=True, provider=provider)
    return UpstreamConnectError(f"{name}: could not get a response ({type(e).__name__})",
                                code="connect_error", retryable=True, provider=provider)


_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


@lru_cache(maxsize=64)
def _client_timeout(connect: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for one call: ``connect`` bounds the pool wait and the TCP connect; the
    reads are bounded by the router's own deadlines (``router.upstream``)."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)


class _Chunks:
    """The body's chunks as they arrive: ``StreamReader.readany`` called directly (what aiohttp's
    ``iter_any`` does, without its generator and ours: two fewer frames on every read)."""

    __slots__ = ("_got", "_response")

    def __init__(self, response: _AiohttpResponse) -> None:
        self._response, self._got = response, False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        r = self._response
        try:
            chunk = await r._r.content.readany()
        except _ERRORS as e:
            raise transport_error(e, r._name, r._provider, got_bytes=self._got) from None
        if not chunk:
            r._done = True
            raise StopAsyncIteration
        self._got = True
        return chunk


class _AiohttpResponse:
    __slots__ = ("_done", "_name", "_provider", "_r", "content_type", "headers", "status")

    def __init__(self, r: aiohttp.ClientResponse, name: str, provider: str) -> None:
        self._r, self._name, self._provider, self._done = r, name, provider, False
        self.status, self.content_type = r.status, r.content_type
        self.headers: Mapping[str, str] = r.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self)

    async def read(self) -> bytes:
        try:
            body = await self._r.read()
        except _ERRORS as e:  # nothing of the answer is usable: as if no answer came
            raise transport_error(e, self._name, self._provider, got_bytes=False) from None
        self._done = True
        return body

    def close(self) -> None:
        if self._done:
            self._r.release()  # read to its end: the connection goes back to the pool
        else:
            self._r.close()  # cut short: drop the connection, which stops the upstream


class AiohttpTransport:
    """One provider's pooled client. ``max_connections``: the most connections open to the
    provider at once (every open stream holds one; a request beyond the cap waits for a free one,
    up to its ``connect`` timeout); ``keepalive_expiry``: seconds an idle connection is kept. No
    cookies, no proxy variables, TCP_NODELAY (aiohttp's default). Make it inside a running event
    loop; ``aclose`` it."""

    def __init__(self, max_connections: int = 10_000, keepalive_expiry: float = 60) -> None:
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0,
                                         keepalive_timeout=keepalive_expiry, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=aiohttp.ClientTimeout(total=None), trust_env=False,
                                             auto_decompress=True)

    async def send(self, request: WireRequest, *, connect: float, name: str, provider: str) -> UpstreamResponse:
        try:
            r = await self.session.post(request.url, data=request.body, headers=request.headers,
                                        timeout=_client_timeout(connect))
        except _ERRORS as e:
            raise transport_error(e, name, provider, got_bytes=False) from None
        return _AiohttpResponse(r, name, provider)

    async def aclose(self) -> None:
        await self.session.close()
