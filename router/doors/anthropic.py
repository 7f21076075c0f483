"""The Anthropic-compatible door, ``POST /v1/messages``.

Wire facts (https://docs.anthropic.com/en/api/messages, .../messages-streaming, .../errors):
``system`` as a string or text blocks; content blocks ``text``, ``tool_use``, ``tool_result``,
``thinking`` (with ``signature``), ``redacted_thinking``; ``tools`` with ``input_schema``;
``tool_choice`` ``{"type": "auto"|"any"|"tool"|"none"}``; ``thinking`` ``{"type": "enabled",
"budget_tokens"}``/``{"type": "adaptive"}``/``{"type": "disabled"}``. The stream is
``message_start``, ``ping``, per block ``content_block_start``/``_delta``*/``_stop`` (thinking with
``thinking_delta`` and ``signature_delta``, text, tool_use with ``input_json_delta``),
``message_delta`` (stop_reason, usage), ``message_stop``; errors are
``{"type": "error", "error": {"type", "message"}}``. ``model`` names a task or ``provider/model``.
GLM reasoning arrives as thinking blocks (without a signature).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from router.doors.answers import (
    AnthropicError,
    AnthropicErrorBody,
    AnthropicUsage,
    MessageResponse,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
)
from router.doors.base import PathMap, canonical
from router.errors import RequestError, RouterError
from router.events import (
    Answer,
    End,
    Error,
    Event,
    ReasoningDelta,
    Start,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from router.request import TaskRequest, decode_body
from router.stores.base import Store

__all__ = ["AnthropicDoor", "AnthropicOptions"]

_enc = msgspec.json.Encoder()
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}


class ContentBlockParam(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    source: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None


class MessageParam(msgspec.Struct):
    role: str
    content: str | list[ContentBlockParam]


class ToolParam(msgspec.Struct):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] = {}
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None


class OutputFormat(msgspec.Struct):
    type: str
    schema: dict[str, Any] | None = None


class OutputConfig(msgspec.Struct):
    """Structured outputs (https://docs.claude.com/en/docs/build-with-claude/structured-outputs)."""

    format: OutputFormat | None = None


class ToolChoiceParam(msgspec.Struct):
    type: str
    name: str | None = None


class ThinkingParam(msgspec.Struct):
    type: str
    budget_tokens: int | None = None


class MessagesRequest(msgspec.Struct):
    """The request; unknown fields are ignored."""

    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: str | list[ContentBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None


_decoder = msgspec.json.Decoder(MessagesRequest)


_RENAMES = ((r"^response_format\.json_schema\.schema", "output_config.format.schema"),
            (r"^tools\[(\d+)\]\.function\.parameters", r"tools[\1].input_schema"),
            (r"^tools\[(\d+)\]\.function\.", r"tools[\1]."), (r"^tool_choice\.function\.", "tool_choice."),
            (r"^stop\b", "stop_sequences"), (r"^metadata\.user\b", "metadata.user_id"))


class AnthropicOptions(msgspec.Struct):
    model: str


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def _media(b: ContentBlockParam, where: str) -> dict[str, Any]:
    """An ``image`` or ``document`` block as the canonical part: base64 sources become data URLs,
    image URLs stay URLs (https://docs.anthropic.com/en/docs/build-with-claude/vision, .../pdf-support)."""
    src = b.source or {}
    kind = src.get("type")
    if kind == "base64" and isinstance(src.get("data"), str) and isinstance(src.get("media_type"), str):
        url = f"data:{src['media_type']};base64,{src['data']}"
        return ({"type": "image_url", "image_url": {"url": url}} if b.type == "image"
                else {"type": "file", "file": {"file_data": url}})
    if kind == "url" and b.type == "image" and isinstance(src.get("url"), str):
        return {"type": "image_url", "image_url": {"url": src["url"]}}
    raise RequestError(f"a {b.type} source of type {kind!r} is not carried; send base64"
                       + (" or url" if b.type == "image" else ""), f"{where}.source.type")


def _messages(r: MessagesRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The canonical messages, and where each came from in the request (for error paths)."""
    out: list[dict[str, Any]] = []
    origins: list[str] = []
    if isinstance(r.system, list) and any(b.cache_control for b in r.system):  # breakpoints kept, block by block
        out.append({"role": "system", "content": [{"type": "text", "text": b.text or "", **(
            {"cache_control": b.cache_control} if b.cache_control else {})} for b in r.system]})
        origins.append("system")
    elif system := (r.system if isinstance(r.system, str) else "".join(b.text or "" for b in r.system or ())):
        out.append({"role": "system", "content": system})
        origins.append("system")
    for i, m in enumerate(r.messages):
        blocks = [ContentBlockParam(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        if m.role == "user":
            parts: list[dict[str, Any]] = []
            for j, b in enumerate(blocks):
                if b.type == "tool_result":
                    out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": _text(b.content),
                                **({"cache_control": b.cache_control} if b.cache_control else {})})
                    origins.append(f"messages[{i}].content[{j}]")
                elif b.type == "text":
                    parts.append({"type": "text", "text": b.text or "", **({"cache_control": b.cache_control}
                                                                            if b.cache_control else {})})
                elif b.type in ("image", "document"):
                    parts.append(_media(b, f"messages[{i}].content[{j}]"))
                else:  # never a silent drop
                    raise RequestError(f"content block type {b.type!r} is not carried in a user turn; send text, "
                                       "image, document or tool_result blocks", f"messages[{i}].content[{j}].type")
            if parts:
                texts_only = all(p["type"] == "text" and "cache_control" not in p for p in parts)
                out.append({"role": "user", "content": "".join(p["text"] for p in parts) if texts_only else parts})
                origins.append(f"messages[{i}]")
        elif m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant"}
            text, calls = [], []
            for b in blocks:
                if b.type == "text":
                    text.append(b.text or "")
                elif b.type == "thinking":
                    msg["reasoning"], msg["reasoning_signature"] = b.thinking or "", b.signature
                elif b.type == "redacted_thinking" and b.data:
                    msg.setdefault("reasoning_redacted", []).append(b.data)
                elif b.type == "tool_use":
                    calls.append({"id": b.id, "function": {"name": b.name, "arguments": json.dumps(b.input or {})}})
            msg["content"] = "".join(text) or None
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
            origins.append(f"messages[{i}]")
        else:
            raise RequestError(f"role must be user or assistant, got {m.role!r}", f"messages[{i}].role")
    return out, origins


def _error_event(code: str, message: str, retryable: bool) -> bytes:
    """A stream's terminal ``event: error`` (overloaded_error when trying again may help)."""
    kind = "overloaded_error" if retryable else "api_error"
    return b"event: error\ndata: " + _enc.encode({"type": "error", "error": {"type": kind,
                                                                           "message": f"{message} ({code})"}}) + b"\n\n"


class AnthropicDoor:
    """``POST /v1/messages`` (see the module docstring)."""

    media_type = "application/json"
    restarts = False
    queues = False

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    async def decode(self, body: bytes, headers: Mapping[str, str], store: Store) -> tuple[TaskRequest, AnthropicOptions]:
        r = decode_body(body, _decoder, self.max_body_bytes)
        messages, origins = _messages(r)
        obj: dict[str, Any] = {"task": r.model, "messages": messages, "max_tokens": r.max_tokens,
                               "stream": r.stream}
        if r.tools:
            obj["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema,
                **({"strict": t.strict} if t.strict is not None else {})},
                **({"cache_control": t.cache_control} if t.cache_control else {})} for t in r.tools]
        fmt = r.output_config.format if r.output_config is not None else None
        if fmt is not None and fmt.type == "json_schema":
            if fmt.schema is None:
                raise RequestError("a json_schema format needs its schema", "output_config.format.schema")
            obj["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt.schema}}
        elif fmt is not None:
            raise RequestError(f"output_config.format type {fmt.type!r} is not supported; use json_schema",
                               "output_config.format.type")
        if r.tool_choice is not None:
            tc = r.tool_choice
            obj["tool_choice"] = ({"type": "function", "function": {"name": tc.name}} if tc.type == "tool"
                                  else {"auto": "auto", "any": "required", "none": "none"}.get(tc.type, "auto"))
        if r.thinking is not None:
            obj["thinking"] = r.thinking.type != "disabled"
        for key, value in (("stop", r.stop_sequences), ("temperature", r.temperature), ("top_p", r.top_p),
                           ("top_k", r.top_k)):
            if value is not None:
                obj[key] = value
        beta = [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]
        if beta:
            obj["anthropic_beta"] = beta
        if r.metadata and isinstance(r.metadata.get("user_id"), str):
            obj["metadata"] = {"user": r.metadata["user_id"]}
        return canonical(obj, PathMap(origins, {"tool_call_id": "tool_use_id"}, _RENAMES)), AnthropicOptions(model=r.model)

    async def stream(self, events: AsyncIterator[Event], req: TaskRequest, opts: AnthropicOptions) -> AsyncIterator[bytes]:
        index = -1
        open_kind: str | None = None
        usage: Usage | None = None

        def event(name: str, obj: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + _enc.encode({"type": name, **obj}) + b"\n\n"

        def close() -> bytes:
            nonlocal open_kind
            if open_kind is None:
                return b""
            open_kind = None
            return event("content_block_stop", {"index": index})

        def open_(kind: str, block: dict[str, Any]) -> bytes:
            nonlocal index, open_kind
            out = close()
            index += 1
            open_kind = kind
            return out + event("content_block_start", {"index": index, "content_block": block})

        async for ev in events:
            match ev:
                case TextDelta(text=t):
                    out = b"" if open_kind == "text" else open_("text", {"type": "text", "text": ""})
                    yield out + event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": t}})
                case ReasoningDelta(text=t, signature=sig, redacted=red):
                    if red is not None:
                        yield open_("redacted", {"type": "redacted_thinking", "data": red}) + close()
                        continue
                    out = b"" if open_kind == "thinking" else open_(
                        "thinking", {"type": "thinking", "thinking": "", "signature": ""})
                    if t:
                        out += event("content_block_delta", {"index": index, "delta": {"type": "thinking_delta", "thinking": t}})
                    if sig:
                        out += event("content_block_delta", {"index": index, "delta": {"type": "signature_delta", "signature": sig}})
                    yield out
                case ToolCallStart(id=tid, name=name):
                    yield open_("tool", {"type": "tool_use", "id": tid, "name": name, "input": {}})
                case ToolCallDelta(arguments=a):
                    yield event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": a}})
                case ToolCallEnd():
                    yield close()
                case Start(id=rid, model=model, input_tokens=prompt):
                    yield event("message_start", {"message": {
                        "id": "msg_" + rid.removeprefix("req_"), "type": "message", "role": "assistant",
                        "model": model or opts.model, "content": [], "stop_reason": None, "stop_sequence": None,
                        "usage": {"input_tokens": prompt or 0, "output_tokens": 0}}}) + b'event: ping\ndata: {"type": "ping"}\n\n'
                case Usage():
                    usage = ev
                case End(finish_reason=fr):
                    u = usage or Usage()
                    yield close() + event("message_delta", {
                        "delta": {"stop_reason": STOP_REASONS.get(fr, "end_turn"), "stop_sequence": None},
                        "usage": {"input_tokens": u.input_tokens - u.cached_tokens - u.cache_write_tokens,
                                  "output_tokens": u.output_tokens, "cache_read_input_tokens": u.cached_tokens,
                                  "cache_creation_input_tokens": u.cache_write_tokens, "cost_usd": u.cost_usd}}) + \
                        event("message_stop", {})
                case Error(code=code, message=message, retryable=retryable):
                    yield _error_event(code, message, retryable)

    async def answer(self, answer: Answer, req: TaskRequest, opts: AnthropicOptions) -> bytes:
        content: list[ThinkingBlock | RedactedThinkingBlock | TextBlock | ToolUseBlock] = []
        if answer.reasoning or answer.reasoning_signature:
            content.append(ThinkingBlock(thinking=answer.reasoning, signature=answer.reasoning_signature or ""))
        content += [RedactedThinkingBlock(data=d) for d in answer.reasoning_redacted]
        if answer.text:
            content.append(TextBlock(text=answer.text))
        for t in answer.tool_calls:
            content.append(ToolUseBlock(id=t.id, name=t.function["name"],
                                        input=json.loads(t.function["arguments"] or "{}")))
        u = answer.usage
        return _enc.encode(MessageResponse(
            id="msg_" + answer.id.removeprefix("req_"), model=answer.model or opts.model, content=content,
            stop_reason=STOP_REASONS.get(answer.finish_reason, "end_turn"),
            usage=AnthropicUsage(input_tokens=u.input_tokens - u.cached_tokens - u.cache_write_tokens,
                                 output_tokens=u.output_tokens, cache_creation_input_tokens=u.cache_write_tokens,
                                 cost_usd=u.cost_usd,
                                 cache_read_input_tokens=u.cached_tokens)))

    def error(self, err: RouterError) -> tuple[int, bytes]:
        kind = ERROR_TYPES.get(err.status, "api_error")
        path = getattr(err, "path", None)
        message = f"{path}: {err.message}" if path else err.message
        return err.status, _enc.encode(AnthropicErrorBody(AnthropicError(type=kind, message=message)))

    def error_event(self, err: RouterError, seq: int) -> bytes:
        return _error_event(getattr(err, "code", None) or err.type, err.message, err.retryable)
