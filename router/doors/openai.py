"""The OpenAI-compatible door, ``POST /v1/chat/completions``.

Wire facts: https://platform.openai.com/docs/api-reference/chat (request, completion object, chunk
object, ``stream_options.include_usage`` usage chunk with ``choices: []``, ``data: [DONE]``, the
error envelope ``{"error": {"message", "type", "param", "code"}}``). GLM conventions kept:
``reasoning_content`` in deltas and messages, ``thinking: {"type": "enabled"|"disabled"}`` in the
request. ``model`` names a task or a pinned ``provider/model``; answers and chunks name the model
that served them (after a fallback, the fallback's). Our extension: assistant
``reasoning_signature`` (a Claude thinking signature), sent in answers and accepted back in
history, so multi-turn thinking conversations with Claude work through this door.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from router.doors.answers import (
    CachedTokens,
    ChatCompletion,
    CompletionChoice,
    CompletionMessage,
    CompletionUsage,
    OpenAIError,
    OpenAIErrorBody,
    ReasoningTokens,
    RouterInfo,
)
from router.doors.base import PathMap, canonical
from router.errors import RequestError, RouterError
from router.events import (
    Answer,
    End,
    Error,
    Event,
    Fallback,
    ReasoningDelta,
    Start,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from router.request import TaskRequest, decode_body
from router.stores.base import Store

__all__ = ["OpenAIDoor", "OpenAIOptions", "completion_json", "openai_error_type"]

_enc = msgspec.json.Encoder()


class ChatContentPart(msgspec.Struct):
    type: str
    text: str | None = None
    cache_control: dict[str, Any] | None = None  # Anthropic's prompt-cache breakpoint, as LiteLLM passes it
    image_url: dict[str, Any] | None = None
    file: dict[str, Any] | None = None


class ChatFunctionCall(msgspec.Struct):
    name: str
    arguments: str = "{}"


class ChatToolCall(msgspec.Struct):
    id: str
    function: ChatFunctionCall
    type: str = "function"


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[ChatContentPart] | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning_signature: str | None = None
    reasoning_redacted: list[str] | None = None
    cache_control: dict[str, Any] | None = None


class ChatStreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatThinking(msgspec.Struct):
    """GLM's ``thinking``: ``type`` and ``clear_thinking`` (false keeps earlier turns' reasoning:
    Z.ai's preserved thinking, https://docs.bigmodel.cn/cn/guide/capabilities/thinking-mode)."""

    type: str = "enabled"
    clear_thinking: bool | None = None


class ChatCompletionRequest(msgspec.Struct):
    """The request; unknown fields are ignored, as OpenAI-compatible servers do."""

    model: str
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: ChatStreamOptions | None = None
    thinking: ChatThinking | None = None
    n: int = 1
    user: str | None = None
    metadata: dict[str, str] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


_decoder = msgspec.json.Decoder(ChatCompletionRequest)


_PATHS = PathMap(renames=((r"^(messages\[\d+\])\.reasoning\b", r"\1.reasoning_content"),))


class OpenAIOptions(msgspec.Struct):
    """What the door remembers for encoding: the model named, and the usage-chunk flag."""

    model: str
    include_usage: bool


def _message(m: ChatMessage, i: int) -> dict[str, Any]:
    role = "system" if m.role == "developer" else m.role
    out: dict[str, Any] = {"role": role}
    if isinstance(m.content, list):
        parts: list[dict[str, Any]] = []
        for j, p in enumerate(m.content):
            if p.type == "text" and p.text is not None:
                parts.append({"type": "text", "text": p.text, **({"cache_control": p.cache_control} if p.cache_control else {})})
            elif p.type == "image_url" and p.image_url is not None:
                parts.append({"type": "image_url", "image_url": p.image_url})
            elif p.type == "file" and p.file is not None and "file_data" in p.file:
                parts.append({"type": "file", "file": {k: v for k, v in p.file.items() if k in ("file_data", "filename")}})
            else:  # never a silent drop
                raise RequestError(f"content part type {p.type!r} is not carried; send text, image_url or "
                                   "file (with file_data) parts", f"messages[{i}].content[{j}].type")
        if all(p["type"] == "text" and "cache_control" not in p for p in parts):
            out["content"] = "".join(p["text"] for p in parts)
        else:
            out["content"] = parts
    elif m.content is not None:
        out["content"] = m.content
    if m.tool_calls:
        out["tool_calls"] = [{"id": tc.id, "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
                             for tc in m.tool_calls]
    for key in ("name", "tool_call_id"):
        if getattr(m, key) is not None:
            out[key] = getattr(m, key)
    if m.reasoning_content is not None:
        out["reasoning"] = m.reasoning_content
    if m.reasoning_signature is not None:
        out["reasoning_signature"] = m.reasoning_signature
    if m.reasoning_redacted:
        out["reasoning_redacted"] = m.reasoning_redacted
    if m.cache_control is not None:
        out["cache_control"] = m.cache_control
    return out


def openai_error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "api_error")


def _usage(u: Usage | TokenUsage) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens,
                           total_tokens=u.input_tokens + u.output_tokens,
                           prompt_tokens_details=CachedTokens(u.cached_tokens),
                           completion_tokens_details=ReasoningTokens(u.reasoning_tokens), cost_usd=u.cost_usd)


def completion_json(answer: Answer, model: str) -> ChatCompletion:
    """A complete answer as an OpenAI ``chat.completion`` object (``model``: the model that
    answered)."""
    msg = CompletionMessage(role="assistant", content=answer.text or (None if answer.tool_calls else ""),
                            reasoning_content=answer.reasoning or None,
                            reasoning_signature=answer.reasoning_signature or None,
                            reasoning_redacted=answer.reasoning_redacted or None,
                            tool_calls=answer.tool_calls or None)
    return ChatCompletion(id="chatcmpl-" + answer.id.removeprefix("req_"), created=int(time.time()), model=model,
                          choices=[CompletionChoice(index=0, message=msg, finish_reason=answer.finish_reason)],
                          usage=_usage(answer.usage),
                          router=RouterInfo(provider=answer.provider, model=answer.model, cached=answer.cached,
                                            attempts=answer.attempts, task=answer.task))


def _error_chunk(message: str, code: str) -> bytes:
    """A stream's terminal error: a ``data:`` line with the OpenAI error envelope, no [DONE]."""
    return b"data: " + _enc.encode({"error": {"message": message, "type": "api_error", "param": None,
                                              "code": code}}) + b"\n\n"


class OpenAIDoor:
    """``POST /v1/chat/completions`` (see the module docstring)."""

    media_type = "application/json"
    restarts = False
    queues = False

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    async def decode(self, body: bytes, headers: Mapping[str, str], store: Store) -> tuple[TaskRequest, OpenAIOptions]:
        r = decode_body(body, _decoder, self.max_body_bytes)
        if r.n != 1:
            raise RequestError("only n=1 is supported", "n")
        obj: dict[str, Any] = {"task": r.model, "messages": [_message(m, i) for i, m in enumerate(r.messages)],
                               "stream": r.stream}
        for key in ("tools", "tool_choice", "temperature", "top_p", "metadata", "response_format", "seed",
                    "frequency_penalty", "presence_penalty"):
            if getattr(r, key) is not None:
                obj[key] = getattr(r, key)
        for name in ("max_completion_tokens", "max_tokens"):
            value = getattr(r, name)
            if value is not None and value < 1:
                raise RequestError(f"{name} must be at least 1", name)
        if r.max_completion_tokens is not None or r.max_tokens is not None:
            obj["max_tokens"] = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
        if r.stop is not None:
            obj["stop"] = [r.stop] if isinstance(r.stop, str) else r.stop
        if r.thinking is not None:
            obj["thinking"] = r.thinking.type != "disabled"
            if r.thinking.clear_thinking is not None:
                obj["clear_thinking"] = r.thinking.clear_thinking
        return canonical(obj, _PATHS), OpenAIOptions(model=r.model, include_usage=bool(
            r.stream_options and r.stream_options.include_usage))

    async def stream(self, events: AsyncIterator[Event], req: TaskRequest, opts: OpenAIOptions) -> AsyncIterator[bytes]:
        cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        prefix = b'{"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":' + str(created).encode()

        def head_for(model: str) -> bytes:  # every chunk names the model that serves it
            return prefix + b',"model":' + _enc.encode(model) + b',"choices":'

        head = head_for(opts.model)
        usage: Usage | None = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + head + _enc.encode([choice]) + b"}\n\n"

        async for ev in events:
            match ev:
                case TextDelta(text=t):
                    yield chunk({"content": t})
                case ReasoningDelta(text=t, signature=sig, redacted=red):
                    d: dict[str, Any] = {"reasoning_content": t}
                    if sig:
                        d["reasoning_signature"] = sig
                    if red is not None:
                        d["reasoning_redacted"] = [red]
                    if t or sig or red is not None:
                        yield chunk(d)
                case ToolCallStart(index=i, id=tid, name=name):
                    yield chunk({"tool_calls": [{"index": i, "id": tid, "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]})
                case ToolCallDelta(index=i, arguments=a):
                    yield chunk({"tool_calls": [{"index": i, "function": {"arguments": a}}]})
                case Start(model=model):
                    head = head_for(model or opts.model)
                    yield chunk({"role": "assistant", "content": ""})
                case Usage():
                    usage = ev
                case Fallback(from_=a, to=b, reason=why):
                    yield f": fallback {a} -> {b} ({why})\n\n".encode()
                case End(finish_reason=fr):
                    yield chunk({}, fr)
                    if opts.include_usage and usage is not None:
                        yield b"data: " + head + b"[],\"usage\":" + _enc.encode(_usage(usage)) + b"}\n\n"
                    yield b"data: [DONE]\n\n"
                case Error(code=code, message=message):
                    yield _error_chunk(message, code)

    async def answer(self, answer: Answer, req: TaskRequest, opts: OpenAIOptions) -> bytes:
        return _enc.encode(completion_json(answer, answer.model or opts.model))

    def error(self, err: RouterError) -> tuple[int, bytes]:
        body = OpenAIError(message=err.message, type=openai_error_type(err.status), param=getattr(err, "path", None),
                           code=getattr(err, "code", None) or err.type, attempts=getattr(err, "attempts", None))
        return err.status, _enc.encode(OpenAIErrorBody(body))

    def error_event(self, err: RouterError, seq: int) -> bytes:
        return _error_chunk(err.message, getattr(err, "code", None) or err.type)
