"""One call to one target: send the encoded request, yield unified events, within its timeouts.

The upstream transport is aiohttp's client (its connection pool and C HTTP parser), used directly:
an earlier version went through httpx's API over aiohttp, and that layer alone cost about 240 us of
CPU per request (456 -> 212 us per proxied request at c=1 in a side-by-side micro-benchmark, see
the README's performance section). SSE framing is parsed (the WHATWG event-stream rules: ``\\r\\n``, ``\\r`` or ``\\n`` line ends, ``data`` lines joined,
comments skipped) by the project's own incremental parser (``router.sse``), fed with aiohttp's body
chunks.

This is the one place where transport exceptions become router errors (``router.errors``):
connect failures and resets before any byte of the answer -> ``UpstreamConnectError``; timeouts ->
``UpstreamTimeout``; a connection dropped or a body broken after HTTP 200 ->
``UpstreamStreamError``. HTTP error statuses are decoded by the target's adapter. The response is
always released, also when the consumer stops early (the caller went away): a response not read to
its end is closed, which closes its connection and so stops the upstream's generation.

Timeouts (seconds, routing.yaml ``timeouts``): ``connect`` bounds getting a connection (pool wait
and TCP connect); ``first_token`` bounds the wait from sending to the first event (for a
non-streamed call, whose first event is the whole answer, ``total`` is used instead); ``idle``
bounds each gap between later events; ``total`` bounds the whole call. They are deadlines around
each wait for the next event, never around a ``yield``, so they cannot fire into the consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from typing import Any

import aiohttp
import msgspec

from providers import Adapter, Call, adapter_for
from router.config import DEFAULT_TIMEOUTS, ModelSpec, Provider, Timeouts, overlay
from router.errors import (UpstreamConnectError, UpstreamError, UpstreamStreamError,
                           UpstreamTimeout)
from router.events import Event
from router.sse import SSEParser

__all__ = ["Target", "UpstreamClient", "call_target", "make_targets"]


class UpstreamClient:
    """One provider's pooled HTTP/1.1 keep-alive client (an ``aiohttp.ClientSession``).

    ``max_connections``: the most connections open to the provider at once (every open stream
    holds one; a request beyond the cap waits for a free one, up to its ``connect`` timeout).
    ``keepalive_expiry``: seconds an idle connection is kept. No cookies are kept, no proxy
    variables read, TCP_NODELAY is set. Make it inside a running event loop; ``aclose`` it.
    """

    def __init__(self, max_connections: int = 10_000, keepalive_expiry: float = 60) -> None:
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0,
                                         keepalive_timeout=keepalive_expiry, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=aiohttp.ClientTimeout(total=None), trust_env=False,
                                             auto_decompress=True)

    async def aclose(self) -> None:
        await self.session.close()


class Target(msgspec.Struct, kw_only=True):
    """A ``provider/model`` entry of a chain, resolved against routing.yaml.

    ``unusable_reason`` is set when the target cannot be called (its key is unset).
    """

    name: str
    provider: str
    model: str
    spec: ModelSpec
    adapter: Adapter
    base_url: str
    api_key: str | None
    headers: dict[str, str]
    unusable_reason: str | None = None


def make_targets(providers: Mapping[str, Provider]) -> dict[str, Target]:
    """Every ``provider/model`` of the config as a ``Target``."""
    out: dict[str, Target] = {}
    for pname, p in providers.items():
        for mname, spec in p.models.items():
            name = f"{pname}/{mname}"
            out[name] = Target(
                name=name, provider=pname, model=mname, spec=spec, adapter=adapter_for(p.protocol),
                base_url=p.base_url, api_key=p.api_key, headers=p.headers,
                unusable_reason=p.unusable_reason,
            )
    return out


@lru_cache(maxsize=64)
def _client_timeout(connect: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for one call: ``connect`` (seconds) bounds the pool wait and the TCP
    connect; the reads are bounded by ``call_target``'s deadlines instead."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)


def _transport_error(e: BaseException, target: Target, got_bytes: bool) -> UpstreamError:
    """The router error for a transport failure, before or after the first byte of the body.
    aiohttp's timeouts (``ConnectionTimeoutError``, ``SocketTimeoutError``) are ``TimeoutError``s."""
    if isinstance(e, TimeoutError):
        return UpstreamTimeout(f"{target.name}: {type(e).__name__}", retryable=True, provider=target.provider,
                               code="read_timeout" if got_bytes else "connect_timeout")
    if got_bytes:
        return UpstreamStreamError(f"{target.name}: the connection broke ({type(e).__name__})",
                                   code="stream_truncated", retryable=True, provider=target.provider)
    return UpstreamConnectError(f"{target.name}: could not get a response ({type(e).__name__})",
                                code="connect_error", retryable=True, provider=target.provider)


async def _sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` of each server-sent event of the body, as it arrives (``event`` is ``""``
    when the event has no ``event:`` field). Chunks are parsed as they come, never batched; an
    event cut off unterminated is dropped, as the standard says."""
    parser = SSEParser()
    async for chunk in response.content.iter_any():
        for item in parser.feed(chunk):
            yield item


async def _raw_events(session: aiohttp.ClientSession, target: Target, call: Call,
                      connect: float) -> AsyncIterator[Event]:
    wire = target.adapter.encode(call, target.base_url, target.api_key, target.headers)
    got_bytes = False
    try:
        try:
            response = await session.post(wire.url, data=wire.body, headers=wire.headers,
                                          timeout=_client_timeout(connect))
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise _transport_error(e, target, got_bytes=False) from None
        finished = False
        try:
            if response.status >= 400:
                body = await response.read()
                finished = True
                raise target.adapter.decode_error(response.status, response.headers, body)
            if not call.stream:
                body = await response.read()
                finished = got_bytes = True
                for ev in target.adapter.decode_response(body):
                    yield ev
                return
            if response.content_type != "text/event-stream":
                raise UpstreamStreamError(f"{target.name}: the answer is not an event stream",
                                          code="not_event_stream", retryable=True)
            decoder = target.adapter.stream_decoder()
            async for event, data in _sse(response):
                got_bytes = True
                for ev in decoder.feed(event, data):
                    yield ev
            finished = True
            for ev in decoder.finish():
                yield ev
        finally:
            if finished:
                response.release()  # read to its end: the connection goes back to the pool
            else:
                response.close()  # cut short: drop the connection, which stops the upstream
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise _transport_error(e, target, got_bytes) from None
    except UpstreamError as e:
        e.provider = target.provider
        raise


class _Watchdog:
    """The deadline of one upstream call's current wait, on one lazily moved timer.

    ``asyncio.timeout`` schedules and cancels a timer around every wait, which for a stream is
    every event (about 4% of a stream's CPU in a profile). Here a wait only records its deadline;
    the timer is set once and, when it fires early (a later wait moved the deadline on), sets
    itself again for the current deadline. When it fires during a wait whose deadline has passed it
    cancels the waiting task, as ``asyncio.timeout`` does; ``expired`` tells that cancellation
    apart from any other. Never fires outside a wait, so never into the consumer.
    """

    __slots__ = ("deadline", "expired", "handle", "loop", "task", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.waiting = self.expired = False

    def arm(self, deadline: float) -> None:
        """A wait begins, to end by ``deadline`` (loop time, seconds)."""
        self.task, self.deadline, self.waiting = asyncio.current_task(), deadline, True
        if self.handle is None or self.handle.when() > deadline:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self.handle = None
        if not self.waiting:
            return  # between waits: the next wait sets the timer again
        if self.loop.time() < self.deadline:
            self.handle = self.loop.call_at(self.deadline, self._fire)
        elif self.task is not None:
            self.expired = True
            self.task.cancel()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def call_target(client: UpstreamClient, target: Target, call: Call,
                      timeouts: Timeouts | None = None) -> AsyncIterator[Event]:
    """Yield the unified events of one upstream call (``call.stream`` picks the wire mode).

    ``timeouts`` are merged over the defaults. Raises ``UpstreamError`` subclasses with
    ``provider`` set; a timeout raises ``UpstreamTimeout`` with code ``first_token_timeout``,
    ``idle_timeout`` or ``total_timeout``.
    """
    t = overlay(DEFAULT_TIMEOUTS, timeouts)
    loop = asyncio.get_running_loop()
    total_deadline = loop.time() + t.total
    gen = _raw_events(client.session, target, call, t.connect)
    limit, phase = (t.first_token, "first_token") if call.stream else (t.total, "total")
    dog = _Watchdog(loop)
    try:
        while True:
            deadline = loop.time() + limit
            if deadline >= total_deadline:
                deadline, phase = total_deadline, "total"
            dog.arm(deadline)
            try:
                ev = await anext(gen)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if dog.expired and dog.task is not None and dog.task.uncancel() == 0:
                    raise UpstreamTimeout(f"{target.name}: no event within the {phase} timeout",
                                          code=f"{phase}_timeout", retryable=True,
                                          provider=target.provider) from None
                raise
            finally:
                dog.waiting = False
            yield ev
            limit, phase = t.idle, "idle"
    finally:
        dog.close()
        await gen.aclose()
