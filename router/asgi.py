"""Raw ASGI helpers for the front doors' Litestar ``@asgi`` handlers (the hot path): read a
bounded body, answer, stream SSE.

ASGI facts (https://asgi.readthedocs.io/en/latest/specs/www.html): header names arrive lowercased;
``receive`` yields ``http.request`` messages until ``more_body`` is false, then blocks until
``http.disconnect``; a response is ``http.response.start`` then ``http.response.body`` messages,
the last with ``more_body`` false.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Self

from router.clock import Clock
from router.errors import PayloadTooLarge, RequestTimeout, RouterError

log = logging.getLogger("llm_router")

__all__ = ["CallerLeft", "CallerWatch", "Receive", "Scope", "Send", "read_body", "respond", "stream_sse"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class CallerLeft(Exception):
    """The caller disconnected before its request body was complete."""


async def read_body(receive: Receive, limit: int, timeout: float | None = None, clock: Clock | None = None) -> bytes:
    """The request body; raises ``PayloadTooLarge`` as soon as it passes ``limit`` bytes (the
    rest is never buffered), ``CallerLeft`` if the caller disconnects first, and
    ``RequestTimeout`` (408) when it has not all arrived ``timeout`` seconds after the headers
    (on ``clock``: a body trickled a byte at a time cannot hold a connection for long)."""
    if timeout is None or clock is None:
        return await _read(receive, limit)
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = clock.call_at(clock.now() + timeout, expire)
    try:
        return await _read(receive, limit)
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise RequestTimeout(f"the request body did not arrive within {timeout:g} seconds") from None
        raise
    finally:
        timer.cancel()


async def _read(receive: Receive, limit: int) -> bytes:
    chunks, size, more = [], 0, True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise CallerLeft
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes, the limit")
        chunks.append(chunk)
        more = msg.get("more_body", False)
    return b"".join(chunks)  # one chunk (the usual case) is returned as it is, not copied


def _raw(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def respond(send: Send, status: int, body: bytes, media_type: str, headers: Mapping[str, str]) -> None:
    """One whole response with ``content-type`` and ``content-length``."""
    raw = _raw(headers)
    raw.append((b"content-type", media_type.encode("latin-1")))
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class CallerWatch:
    """``async with``: while the block runs, a caller that disconnects (``receive()`` answers
    ``http.disconnect``; call only once the request body is read) cancels the block's task, unless
    ``done()`` says the answer is already complete; the block then ends quietly (``left`` is
    True). Upstream calls inside the block are closed by that cancellation, so a caller who leaves
    stops the work done for it, streamed or not."""

    __slots__ = ("done", "left", "receive", "task", "watcher")

    def __init__(self, receive: Receive, done: Callable[[], bool] = lambda: False) -> None:
        self.receive, self.done, self.left = receive, done, False
        self.task: asyncio.Task[Any] | None = None
        self.watcher: asyncio.Future[None] | None = None

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if not self.done() and self.task is not None:
            self.left = True
            self.task.cancel()

    async def __aenter__(self) -> Self:
        self.task = asyncio.current_task()
        self.watcher = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if self.watcher is None or self.task is None:  # not entered, or already exited
            return False
        # let go of both tasks: the cancelled watcher keeps its CancelledError, whose traceback
        # holds the watch's frame (this object); a reference back to the watcher would make a
        # cycle that keeps the request's objects (its ASGI cycle, scope, run) until a full
        # collection, instead of freeing them as the request ends
        watcher, task, self.watcher, self.task = self.watcher, self.task, None, None
        watcher.cancel()
        if self.left and kind is not None and issubclass(kind, asyncio.CancelledError):
            # the caller went away: nothing is left to answer, unless someone else (shutdown)
            # cancelled the task as well
            return task.uncancel() == 0
        return False


async def stream_sse(send: Send, chunks: AsyncIterator[bytes], headers: Mapping[str, str],
                     on_error: Callable[[RouterError], bytes]) -> None:
    """Send ``chunks`` as a ``text/event-stream`` response, each one as soon as it is made (one
    ``http.response.body`` message per chunk: never batched). ``chunks`` is always closed. If
    ``chunks`` raises after the response began, the stream ends with ``on_error(error)`` (the
    door's terminal error event), never a second response start: a stream is never left looking
    complete. A failing ``send`` (the connection is gone) propagates; a caller who leaves is seen
    by the ``CallerWatch`` around this."""
    raw = _raw(headers)
    raw.append((b"content-type", b"text/event-stream; charset=utf-8"))
    del headers  # sent once: not kept for the stream's life (about 1 KB per open stream)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        del raw
        next_chunk = chunks.__anext__
        while True:
            try:
                chunk = await next_chunk()
            except StopAsyncIteration:
                break
            except Exception as exc:  # after the start, an error can only end the stream
                log.error("stream failed after it began: %s", type(exc).__name__, exc_info=exc)
                err = exc if isinstance(exc, RouterError) else RouterError("internal error")
                await send({"type": "http.response.body", "body": on_error(err), "more_body": True})
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
