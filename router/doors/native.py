"""The native door, ``POST /v1/tasks``: the canonical request in, the unified events out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from router.errors import RouterError
from router.events import Answer, Error, Event, encode_json, encode_sse
from router.request import TaskRequest, decode_task_request
from router.stores.base import Store

__all__ = ["NativeDoor"]


class NativeDoor:
    """DESIGN.md's own contract: SSE of unified events, or the folded ``Answer``."""

    media_type = "application/json"
    restarts = True
    queues = True  # "mode": "async" (router.worker)

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    async def decode(self, body: bytes, headers: Mapping[str, str], store: Store) -> tuple[TaskRequest, Any]:
        return decode_task_request(body, self.max_body_bytes), None

    async def stream(self, events: AsyncIterator[Event], req: TaskRequest, opts: Any) -> AsyncIterator[bytes]:
        async for ev in events:
            yield encode_sse(ev)

    async def answer(self, answer: Answer, req: TaskRequest, opts: Any) -> bytes:
        return encode_json(answer)

    def error(self, err: RouterError) -> tuple[int, bytes]:
        return err.status, encode_json(err.to_body())

    def error_event(self, err: RouterError, seq: int) -> bytes:
        return encode_sse(Error(code=getattr(err, "code", None) or err.type, message=err.message,
                                retryable=err.retryable, seq=seq))
