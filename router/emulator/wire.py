"""Bodies in the providers' exact wire formats, built from one scripted answer.

OpenAI chat completions chunks (https://platform.openai.com/docs/api-reference/chat/streaming):
first chunk with ``role`` and ``content: ""``, tool calls as a header fragment then argument
fragments, a finish chunk with an empty delta, a ``choices: []`` usage chunk when
``stream_options.include_usage`` is set, ``data: [DONE]``.
GLM flavour (https://docs.z.ai/api-reference/llm/chat-completion, shared/fixtures/wire/zai/):
``role`` repeated in every chunk, ``reasoning_content`` before ``content``, each tool call whole
in one delta, ``finish_reason`` and ``usage`` in the same last chunk, then ``data: [DONE]``;
non-stream bodies with sorted keys and ``request_id``; errors ``{"error": {"code": "1302", ...}}``.
Anthropic Messages (https://docs.anthropic.com/en/api/messages-streaming): ``message_start``,
``ping``, thinking (thinking_delta*, one signature_delta), text, tool_use (input_json_delta with
an empty first fragment), ``message_delta`` with cumulative usage, ``message_stop``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from typing import Any

import msgspec

from router.emulator.directive import Behaviour

__all__ = ["Scripted", "anthropic_error", "anthropic_json", "anthropic_stream", "anthropic_stream_error",
           "openai_error", "openai_json", "openai_stream", "openai_stream_error", "script"]

_WORDS = re.compile(r"\s*\S+\s*|\s+")
_enc = msgspec.json.Encoder()

ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         402: "billing_error", 403: "permission_error", 404: "not_found_error",
                         413: "request_too_large",
                         429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "content_filter": "refusal"}


class Scripted(msgspec.Struct, kw_only=True):
    """One planned answer: text and reasoning already cut into chunk-sized pieces."""

    reasoning: list[str]
    text: list[str]
    tools: list[tuple[str, str, str]]  # (id, name, arguments JSON text)
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    finish_reason: str | None  # wire value when scripted, else derived per protocol
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0


def _pieces(text: str, n: int | None) -> list[str]:
    """Cut ``text`` into ``n`` pieces on word boundaries (by characters when there are fewer
    words than ``n``); one piece per word when ``n`` is not given."""
    if not text:
        return []
    words = _WORDS.findall(text)
    if not n:
        return words
    if n >= len(words):
        n = min(n, len(text))
        return [text[len(text) * i // n:len(text) * (i + 1) // n] for i in range(n)]
    return ["".join(words[len(words) * i // n:len(words) * (i + 1) // n]) for i in range(n)]


def _prompt_chars(body: dict[str, Any]) -> int:
    return len(json.dumps(body.get("messages") or [])) + len(json.dumps(body.get("system") or ""))


def _media_count(body: dict[str, Any]) -> int:
    """Images and documents in a request: OpenAI ``image_url``/``file`` parts, Anthropic
    ``image``/``document`` blocks."""
    n = 0
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") in ("image_url", "file", "image", "document"):
                n += 1
    return n


def example_of(schema: Any) -> Any:
    """The smallest value a simple JSON Schema accepts (objects with their required properties,
    the first enum value, zero, empty strings and arrays): the emulator's structured answer."""
    if not isinstance(schema, dict):
        return {}
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: example_of(props.get(k, {})) for k in schema.get("required") or ()}
    return {"array": [], "string": "", "integer": 0, "number": 0, "boolean": False, "null": None}.get(kind or "", {})


def _default_text(body: dict[str, Any], model: str) -> str:
    """The unscripted answer: JSON when structured output was asked for (the schema's smallest
    example: OpenAI ``response_format``, Anthropic ``output_config.format``, or the schema GLM
    gets in its system message), a description of the images when there are any, else a greeting."""
    fmt = body.get("response_format") or {}
    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
    if schema is None and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
    if schema is None and isinstance(fmt, dict) and fmt.get("type") == "json_object":
        for m in body.get("messages") or ():  # the router states the schema in a system message for GLM
            text = m.get("content") if isinstance(m, dict) else None
            if m.get("role") == "system" and isinstance(text, str) and "JSON Schema:\n" in text:
                try:
                    schema = json.loads(text.split("JSON Schema:\n", 1)[1])
                except ValueError:
                    pass
        if schema is None:
            return "{}"
    if schema is not None:
        return json.dumps(example_of(schema))
    media = _media_count(body)
    if media:
        return f"I see {media} image(s) or document(s) (the {model} emulator)."
    return f"Hello from the {model} emulator."


def script(b: Behaviour, body: dict[str, Any], model: str, tool_id_prefix: str) -> Scripted:
    """Plan the answer ``b`` describes for a request ``body`` to ``model``."""
    has_tools = bool(b.tool_calls)
    text = b.text if b.text is not None else ("" if has_tools else _default_text(body, model))
    reasoning = b.reasoning or ""
    tools = []
    for i, tc in enumerate(b.tool_calls or ()):
        args = tc.arguments if isinstance(tc.arguments, str) else json.dumps(tc.arguments)
        tools.append((tc.id or f"{tool_id_prefix}{secrets.token_hex(12)}{i}", tc.name, args))
    rtok = max(1, len(reasoning) // 4) if reasoning else 0
    out = b.output_tokens if b.output_tokens is not None else \
        max(1, (len(text) + sum(len(t[2]) for t in tools)) // 4) + rtok
    return Scripted(reasoning=_pieces(reasoning, b.chunks), text=_pieces(text, b.chunks), tools=tools,
                    input_tokens=b.input_tokens if b.input_tokens is not None else max(1, _prompt_chars(body) // 4),
                    output_tokens=out, reasoning_tokens=min(rtok, out), finish_reason=b.finish_reason,
                    cached_tokens=b.cached_tokens, cache_write_tokens=b.cache_write_tokens,
                    cache_write_1h_tokens=b.cache_write_1h_tokens)


def _sse_data(obj: Any) -> bytes:
    return b"data: " + _enc.encode(obj) + b"\n\n"


# -- OpenAI / GLM --------------------------------------------------------------------------
def _openai_finish(s: Scripted) -> str:
    return s.finish_reason or ("tool_calls" if s.tools else "stop")


def _openai_usage(s: Scripted) -> dict[str, Any]:
    return {"prompt_tokens": s.input_tokens, "completion_tokens": s.output_tokens,
            "total_tokens": s.input_tokens + s.output_tokens,
            "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": s.reasoning_tokens}}


def _glm_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(10)


def openai_stream(s: Scripted, model: str, glm: bool, include_usage: bool) -> list[bytes]:
    """The SSE messages of a streamed completion, ``data: [DONE]`` last."""
    cid, created = (_glm_id() if glm else "chatcmpl-" + secrets.token_hex(12)), int(time.time())
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], **extra: Any) -> bytes:
        if glm:
            delta = {"role": "assistant", **delta}
        return _sse_data({**head, "choices": [{"index": 0, **extra, "delta": delta}]})

    out: list[bytes] = []
    if not glm:
        out.append(chunk({"role": "assistant", "content": "" if not s.tools else None}))
    out += [chunk({"reasoning_content": p}) for p in s.reasoning]
    out += [chunk({"content": p}) for p in s.text]
    for i, (tid, name, args) in enumerate(s.tools):
        if glm:
            out.append(chunk({"tool_calls": [{"id": tid, "index": i, "type": "function",
                                              "function": {"name": name, "arguments": args}}]}))
        else:
            out.append(chunk({"tool_calls": [{"index": i, "id": tid, "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}))
            half = len(args) // 2
            out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                    for part in (args[:half], args[half:]) if part]
    fin = _openai_finish(s)
    if glm:
        out.append(_sse_data({**head, "choices": [{"index": 0, "finish_reason": fin,
                                                    "delta": {"role": "assistant", "content": ""}}],
                              "usage": _openai_usage(s)}))
    else:
        out.append(chunk({}, finish_reason=fin))
        if include_usage:
            out.append(_sse_data({**head, "choices": [], "usage": _openai_usage(s)}))
    out.append(b"data: [DONE]\n\n")
    return out


def openai_json(s: Scripted, model: str, glm: bool) -> bytes:
    """A non-streamed chat completion."""
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(s.text) or (None if s.tools else "")}
    if s.reasoning:
        msg["reasoning_content"] = "".join(s.reasoning)
    if s.tools:
        msg["tool_calls"] = [{"id": tid, "index": i, "type": "function",
                              "function": {"name": name, "arguments": args}}
                             for i, (tid, name, args) in enumerate(s.tools)]
    body: dict[str, Any] = {"id": _glm_id() if glm else "chatcmpl-" + secrets.token_hex(12),
                            "object": "chat.completion", "created": int(time.time()), "model": model,
                            "choices": [{"index": 0, "message": msg, "finish_reason": _openai_finish(s)}],
                            "usage": _openai_usage(s)}
    if glm:
        body["request_id"] = body["id"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return json.dumps(body, indent=2).encode() + b"\n"


def openai_error(status: int, code: str | None, glm: bool, message: str | None = None) -> bytes:
    """An error body: GLM ``{"error": {"code", "message"}}`` or OpenAI's four-field envelope."""
    text = message or f"emulated error {code or status}"
    if glm:
        return _enc.encode({"error": {"code": code or str(status), "message": text}, "request_id": _glm_id()})
    return json.dumps({"error": {"message": text, "type": "api_error",
                                 "param": None, "code": code}}, indent=4).encode() + b"\n"


def openai_stream_error(code: str) -> bytes:
    """An error reported inside a stream after HTTP 200."""
    return _sse_data({"error": {"code": code, "message": f"emulated error {code}"}})


# -- Anthropic -----------------------------------------------------------------------------
def _event(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _enc.encode({"type": name, **obj}) + b"\n\n"


def signature_for(reasoning: str) -> str:
    """A deterministic stand-in for Anthropic's opaque thinking signature."""
    return base64.b64encode(hashlib.sha256(reasoning.encode()).digest() * 3).decode()


def _anthropic_usage(s: Scripted) -> dict[str, Any]:
    uncached = max(0, s.input_tokens - s.cached_tokens - s.cache_write_tokens)
    return {"input_tokens": uncached, "cache_creation_input_tokens": s.cache_write_tokens,
            "cache_read_input_tokens": s.cached_tokens, "output_tokens": s.output_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": s.cache_write_tokens - s.cache_write_1h_tokens,
                               "ephemeral_1h_input_tokens": s.cache_write_1h_tokens}}


def _stop_reason(s: Scripted) -> str:
    if s.finish_reason:
        return ANTHROPIC_STOP.get(s.finish_reason, s.finish_reason)
    return "tool_use" if s.tools else "end_turn"


def anthropic_stream(s: Scripted, model: str) -> list[bytes]:
    """The SSE events of a streamed message, ``message_stop`` last."""
    mid = "msg_" + secrets.token_hex(12)
    out = [_event("message_start", {"message": {
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {**_anthropic_usage(s), "output_tokens": 1}}}),
        b'event: ping\ndata: {"type": "ping"}\n\n']
    index = 0
    if s.reasoning:
        out.append(_event("content_block_start", {"index": index, "content_block":
                                                  {"type": "thinking", "thinking": "", "signature": ""}}))
        out += [_event("content_block_delta", {"index": index, "delta": {"type": "thinking_delta", "thinking": p}})
                for p in s.reasoning]
        out.append(_event("content_block_delta", {"index": index, "delta": {
            "type": "signature_delta", "signature": signature_for("".join(s.reasoning))}}))
        out.append(_event("content_block_stop", {"index": index}))
        index += 1
    if s.text:
        out.append(_event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
        out += [_event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": p}})
                for p in s.text]
        out.append(_event("content_block_stop", {"index": index}))
        index += 1
    for tid, name, args in s.tools:
        out.append(_event("content_block_start", {"index": index, "content_block": {
            "type": "tool_use", "id": tid, "name": name, "input": {}}}))
        half = len(args) // 2  # an empty first fragment, as Anthropic sends
        fragments = ["", args[:half], args[half:]] if args and args != "{}" else [""]
        out += [_event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": p}})
                for p in fragments]
        out.append(_event("content_block_stop", {"index": index}))
        index += 1
    out.append(_event("message_delta", {"delta": {"stop_reason": _stop_reason(s), "stop_sequence": None},
                                        "usage": _anthropic_usage(s)}))
    out.append(_event("message_stop", {}))
    return out


def anthropic_json(s: Scripted, model: str) -> bytes:
    """A non-streamed message."""
    content: list[dict[str, Any]] = []
    if s.reasoning:
        r = "".join(s.reasoning)
        content.append({"type": "thinking", "thinking": r, "signature": signature_for(r)})
    if s.text:
        content.append({"type": "text", "text": "".join(s.text)})
    content += [{"type": "tool_use", "id": tid, "name": name, "input": json.loads(args or "{}")}
                for tid, name, args in s.tools]
    return _enc.encode({"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
                        "model": model, "content": content, "stop_reason": _stop_reason(s),
                        "stop_sequence": None, "usage": _anthropic_usage(s)})


def anthropic_error(status: int, code: str | None, message: str | None = None) -> bytes:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``; a numeric ``code`` is
    sent the way Z.ai's Anthropic-compatible endpoint does, as ``error.code``."""
    err: dict[str, Any] = {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"),
                           "message": message or f"emulated error {code or status}"}
    if code and code.isdigit():
        err["code"] = code
    elif code:
        err["type"] = code
    return _enc.encode({"type": "error", "error": err, "request_id": "req_" + secrets.token_hex(12)})


def anthropic_stream_error(code: str) -> bytes:
    """The in-stream ``event: error`` Anthropic sends after HTTP 200."""
    return _event("error", {"error": {"details": None, "type": code, "message": f"emulated {code}"}})
