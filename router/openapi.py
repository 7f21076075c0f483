"""OpenAPI 3.1 for every route: Litestar's document for its handlers, plus the four doors.

The doors are raw ``@asgi`` routes (the hot path), which Litestar's generator does not see, so
their operations are written here from the same msgspec Structs the doors decode and encode: the
request body (``TaskRequest``, ``ChatCompletionRequest``, ``MessagesRequest``,
``ChatBackendRequest``), the JSON answer (``Answer``, ``ChatCompletion``, ``MessageResponse``),
the stream (``text/event-stream``; for ``/v1/tasks`` each message's data is one ``Event``), each
door's error body for every status it answers, and the ``X-Request-ID``, ``Retry-After`` and
``X-RateLimit-*`` headers. Schemas come from ``msgspec.json.schema_components`` (JSON Schema
2020-12, which OpenAPI 3.1 uses). Served at ``/schema/openapi.json``; Swagger UI at ``/schema``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from litestar import Request, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from router.doors.answers import (
    AnthropicErrorBody,
    ChatBackendError,
    ChatCompletion,
    MessageResponse,
    NativeErrorBody,
    OpenAIErrorBody,
    ResponseObject,
)
from router.doors.anthropic import MessagesRequest
from router.doors.openai import ChatCompletionRequest
from router.doors.responses import ResponsesRequest
from router.doors.zchat import ChatBackendRequest
from router.events import Answer, Event
from router.request import TaskRequest
from router.requestid import RequestIdMiddleware

__all__ = ["door_operations", "openapi_config"]

_REF = "#/components/schemas/{name}"
_ERRORS = {400: "Bad input; the body names the offending field", 401: "No API key, or an unknown one",
           403: "The tenant may not use this task", 404: "Unknown task or model (the known ones are listed)",
           405: "Only POST", 413: "Body over the limit", 429: "Over a rate limit (Retry-After says when to retry)",
           500: "Internal error (nothing more is said)", 502: "Every target of the chain failed",
           503: "No target could be called, or the store is down", 504: "Every target timed out"}
_DOORS: list[tuple[str, str, str, type, type, type, str]] = [
    ("/v1/tasks", "tasks", "Run a task: the canonical request; unified events or the folded answer",
     TaskRequest, Answer, NativeErrorBody, "Unified events: `event: <type>` and `data: <Event JSON>` per message"),
    ("/v1/chat/completions", "openai", "OpenAI-compatible chat completions (`model`: a task or provider/model)",
     ChatCompletionRequest, ChatCompletion, OpenAIErrorBody,
     "`data: <chat.completion.chunk>` lines, then `data: [DONE]`; a failure ends with `data: {\"error\": ...}`"),
    ("/v1/messages", "anthropic", "Anthropic-compatible Messages (`model`: a task or provider/model)",
     MessagesRequest, MessageResponse, AnthropicErrorBody,
     "Anthropic stream events (`message_start` ... `message_stop`); a failure ends with `event: error`"),
    ("/v1/responses", "responses", "OpenAI Responses API (`model`: a task, alias, model id or provider/model)",
     ResponsesRequest, ResponseObject, OpenAIErrorBody,
     "Responses stream events (`response.created` ... `response.completed`); a failure ends with `response.failed`"),
    ("/api/chat", "chat", "The Z.AI FastAPI backend's chat contract (task `chat` unless `model` names one)",
     ChatBackendRequest, ChatCompletion, ChatBackendError,
     "`data: {\"choices\": [{\"delta\": {\"content\": ...}}], ...}` lines, then `data: {\"data\": \"[DONE]\"}`"),
]
_HEADER = {"schema": {"type": "string"}}
_SAY = [{"role": "user", "content": "Summarize: the sky is blue."}]
_EXAMPLES: dict[str, dict[str, Any]] = {
    "/v1/tasks": {"task": "quick_summary", "messages": _SAY},
    "/v1/chat/completions": {"model": "quick_summary", "messages": _SAY},
    "/v1/messages": {"model": "quick_summary", "max_tokens": 256, "messages": _SAY},
    "/api/chat": {"messages": _SAY},
    "/v1/responses": {"model": "quick_summary", "input": "Summarize: the sky is blue."},
}


def _headers(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {"X-Request-ID": {**_HEADER, "description": "This request's id (the caller's, when valid)"}}
    if status == 200:
        out["X-LLM-Router-Target"] = {**_HEADER, "description": "The provider/model that served the answer"}
        out["X-LLM-Router-Task"] = {**_HEADER, "description": "The task that routed it"}
        for name in ("Limit", "Remaining", "Reset"):
            for suffix in ("", "-Tokens"):
                out[f"X-RateLimit-{name}{suffix}"] = {**_HEADER, "description": "The tightest caller limit (when limited)"}
    if status in (429, 503):
        out["Retry-After"] = {**_HEADER, "description": "Seconds until the request would fit (503: until a "
                                                        "cooling target may serve again, when known)"}
    return out


@cache
def door_operations() -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of the four doors."""
    types = [t for door in _DOORS for t in door[3:6]] + [Event]
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    paths: dict[str, Any] = {}
    for i, (path, tag, summary, _, _, _, stream) in enumerate(_DOORS):
        request, answer, error = refs[3 * i: 3 * i + 3]
        data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json"}
        if path == "/v1/tasks":
            data["contentSchema"] = {"$ref": _REF.format(name="Event")}
        # Before OpenAPI 3.2 (no ``itemSchema``), an event stream's ``schema`` describes one event
        stream_schema: dict[str, Any] = {"type": "object", "description": stream, "required": ["data"],
                                         "properties": {"data": data, "event": {"type": "string"},
                                                        "id": {"type": "string"}, "retry": {"type": "integer"}}}
        responses: dict[str, Any] = {"200": {"description": "The answer (JSON), or its stream when `stream` is true",
                                             "headers": _headers(200), "content": {
                                                 "application/json": {"schema": answer},
                                                 "text/event-stream": {"schema": stream_schema}}}}
        if path == "/v1/tasks":  # "mode": "async" or Prefer: respond-async (router.worker)
            task = {"type": "object", "description": "The async task (GET /v1/tasks/{id} shows it)",
                    "required": ["id", "object", "status"], "properties": {
                        "id": {"type": "string"}, "object": {"const": "task"},
                        "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]}}}
            loc = {"Location": {**_HEADER, "description": "/v1/tasks/{id}"}, **_headers(202)}
            responses["202"] = {"description": "Queued as an async task (a repeated idempotency_key: the earlier task)",
                                "headers": loc,
                                "content": {"application/json": {"schema": task}}}
        for status, why in _ERRORS.items():
            responses[str(status)] = {"description": why, "headers": _headers(status),
                                      "content": {"application/json": {"schema": error}}}
        paths[path] = {"post": {"tags": [tag], "summary": summary, "operationId": "door_" + tag,
                                "requestBody": {"required": True, "content": {"application/json": {
                                    "schema": request, "examples": {
                                        "answer": {"summary": "One JSON answer", "value": {**_EXAMPLES[path], "stream": False}},
                                        "stream": {"summary": "A stream", "value": {**_EXAMPLES[path], "stream": True}}}}}},
                                "responses": responses}}
    components["Event"] = refs[-1]
    return paths, components


class _WithDoors(JsonRenderPlugin):
    """``/schema/openapi.json``: Litestar's document with the doors' operations merged in."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        paths, components = door_operations()
        merged = {**openapi_schema, "paths": {**paths, **openapi_schema.get("paths", {})}}
        comps = dict(merged.get("components") or {})
        comps["schemas"] = {**components, **(comps.get("schemas") or {})}
        merged["components"] = comps
        return self.render_json(request, merged)


def openapi_config() -> OpenAPIConfig:
    """The app's OpenAPI configuration: Swagger UI at ``/schema``, the document beside it."""
    return OpenAPIConfig(title="llm-router", version="0.1.0", path="/schema",
                         description="Routes LLM tasks to GLM and Claude over their wire protocols.",
                         render_plugins=[SwaggerRenderPlugin(path="/"), _WithDoors()],
                         openapi_router=Router("/schema", route_handlers=[], include_in_schema=False,
                                               middleware=[RequestIdMiddleware()]))
