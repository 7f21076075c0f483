"""``POST /api/chat``: the contract of the Z.AI FastAPI backend a Next.js front end already uses.

Its request is ``{messages: [{role, content}], model?, stream? (default true), temperature?,
max_tokens?}``. A streamed answer is ``data: <json>`` lines of
``{"choices": [{"delta": {"content": ...}}], "model": ..., "created": ...}`` written by Python's
``json.dumps`` (spaces after ``:`` and ``,``), ended by ``data: {"data": "[DONE]"}``; a failure
mid-stream is ``data: {"error": {"message", "type": "streaming_error"}}``. A non-streamed answer is a
chat completion object. Errors are FastAPI's ``{"detail": ...}``. The request goes to the ``chat``
task unless ``model`` names another task (or a ``provider/model``); the chunks' ``model`` is the
model that served the answer (after a fallback, the fallback's).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from router.doors.answers import ChatBackendError
from router.doors.base import PathMap, canonical
from router.doors.openai import completion_json
from router.errors import RequestError, RouterError
from router.events import Answer, End, Error, Event, Start, TextDelta
from router.request import TaskRequest, decode_body
from router.stores.base import Store

__all__ = ["ChatDoor", "ChatOptions"]

DEFAULT_TASK = "chat"


class ChatBackendMessage(msgspec.Struct):
    role: str
    content: str


class ChatBackendRequest(msgspec.Struct):
    messages: list[ChatBackendMessage]
    model: str | None = None
    stream: bool = True
    temperature: float | None = None
    max_tokens: int | None = None


_decoder = msgspec.json.Decoder(ChatBackendRequest)


class ChatOptions(msgspec.Struct):
    model: str


def _error_line(message: str) -> bytes:
    """The backend's mid-stream failure line."""
    return f"data: {json.dumps({'error': {'message': message, 'type': 'streaming_error'}})}\n\n".encode()


class ChatDoor:
    """``POST /api/chat`` (see the module docstring). ``known`` tells a task or target name."""

    media_type = "application/json"
    restarts = False
    queues = False

    def __init__(self, max_body_bytes: int, known: Any) -> None:
        self.max_body_bytes = max_body_bytes
        self.known = known

    async def decode(self, body: bytes, headers: Mapping[str, str], store: Store) -> tuple[TaskRequest, ChatOptions]:
        r = decode_body(body, _decoder, self.max_body_bytes)
        kept = [(i, m) for i, m in enumerate(r.messages) if m.role and m.content]
        messages = [{"role": m.role, "content": m.content} for _, m in kept]
        if not r.messages:  # the backend's own words (they name the field), kept exactly
            raise RequestError("Messages array is required and cannot be empty")
        if not messages:
            raise RequestError("No valid messages provided")
        task = r.model if r.model and self.known(r.model) else DEFAULT_TASK
        obj: dict[str, Any] = {"task": task, "messages": messages, "stream": r.stream}
        if r.temperature is not None:
            obj["temperature"] = r.temperature
        if r.max_tokens is not None:
            obj["max_tokens"] = r.max_tokens
        return canonical(obj, PathMap([f"messages[{i}]" for i, _ in kept])), ChatOptions(model=r.model or task)

    async def stream(self, events: AsyncIterator[Event], req: TaskRequest, opts: ChatOptions) -> AsyncIterator[bytes]:
        model = opts.model
        async for ev in events:
            if isinstance(ev, Start):
                model = ev.model or model  # the chunks name the model that serves them
            elif isinstance(ev, TextDelta):
                chunk = {"choices": [{"delta": {"content": ev.text}}], "model": model, "created": int(time.time())}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            elif isinstance(ev, End):
                yield f"data: {json.dumps({'data': '[DONE]'})}\n\n".encode()
            elif isinstance(ev, Error):
                yield _error_line(ev.message)

    async def answer(self, answer: Answer, req: TaskRequest, opts: ChatOptions) -> bytes:
        return msgspec.json.encode(completion_json(answer, answer.model or opts.model))

    def error(self, err: RouterError) -> tuple[int, bytes]:
        path = getattr(err, "path", None)
        return err.status, msgspec.json.encode(ChatBackendError(f"{path}: {err.message}" if path else err.message))

    def error_event(self, err: RouterError, seq: int) -> bytes:
        return _error_line(err.message)
