"""OpenAI-compatible chat completions: Z.ai GLM, and any endpoint of that protocol.

Wire facts (https://platform.openai.com/docs/api-reference/chat/streaming,
https://docs.z.ai/api-reference/llm/chat-completion, shared/fixtures/wire/QUIRKS.md):

* ``POST {base_url}/chat/completions`` with ``Authorization: Bearer``.
* Streams are ``data:`` lines ending with ``data: [DONE]``; a stream that delivered its
  ``finish_reason`` and closed without ``[DONE]`` is complete (the answer and usage were sent). GLM puts reasoning in
  ``delta.reasoning_content``; tool calls arrive whole in one delta (GLM) or as fragments keyed by
  ``index`` (OpenAI, GLM ``tool_stream``). Usage comes in the chunk with ``finish_reason`` (GLM) or
  in a trailing ``choices: []`` chunk (OpenAI with ``stream_options.include_usage``).
* GLM finish reasons: ``sensitive`` (content filter), ``model_context_window_exceeded`` (length),
  ``network_error`` (inference failed: an error, not an answer).
* GLM rejects an assistant tool call without ``type: "function"`` (code 1214) and wants
  ``thinking: {"type": "enabled"|"disabled"}``.
* Errors: ``{"error": {"code": "1113", "message": ...}}`` (Z.ai, code a string of digits) or
  ``{"error": {"message", "type", "param", "code"}}`` (OpenAI).
* Structured output: Z.ai's ``response_format`` takes ``text`` and ``json_object`` only
  (https://docs.z.ai/guides/capabilities/struct-output), so a ``json_schema`` is sent as
  ``json_object`` with the schema in a system message. ``seed``, ``frequency_penalty``,
  ``presence_penalty`` and ``tools[].function.strict`` are OpenAI chat-completions parameters that
  Z.ai's reference (https://docs.z.ai/api-reference/llm/chat-completion) does not list: they are
  sent to other OpenAI-compatible endpoints, not to Z.ai's (``/paas/v4`` paths).
* Token counting: Z.ai's tokenizer, ``POST {base_url}/tokenizer`` with ``model``, ``messages``
  and ``tools``, answers ``{"usage": {"prompt_tokens": N}}``
  (https://docs.z.ai/api-reference/tools/tokenizer; listed for glm-4.6, glm-4.6v, glm-4.5).
  Other OpenAI-compatible endpoints have no counting API.
* ``tool_stream: true`` (GLM-4.6 and later, streaming with tools) streams tool arguments; models that
  always think (GLM-5.2 and later) answer 1210 to ``thinking: {type: disabled}``, so it is not sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from providers._errors import http_error, parse_retry_after, safe_code
from providers.base import Call, WireRequest
from router.errors import UpstreamError, UpstreamStreamError
from router.events import (
    End,
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from router.request import Message

__all__ = ["OpenAIAdapter"]

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "model_context_window_exceeded": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "sensitive": "content_filter",
}


# -- wire structs (tolerate unknown fields) --------------------------------------------------
class _Fn(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _Fn | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _ErrorBody(msgspec.Struct):
    code: str | int | None = None
    message: str | None = None
    type: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _ErrorBody | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_encoder = msgspec.json.Encoder()


def _usage(u: _Usage) -> Usage:
    return Usage(
        input_tokens=u.prompt_tokens,
        output_tokens=u.completion_tokens,
        reasoning_tokens=(u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details else 0,
        cached_tokens=(u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0,
    )


def _content(m: Message) -> str | list[dict[str, Any]]:
    """A message's content: its text, or its parts in order when it carries images or files
    (``image_url`` parts, GLM's vision models take URLs and base64 data URLs; ``file`` parts)."""
    if not m.media():
        return m.text()
    parts: list[dict[str, Any]] = []
    for p in m.content or ():
        if isinstance(p, str):
            continue
        part = msgspec.to_builtins(p)
        part.pop("cache_control", None)  # Anthropic's breakpoints: GLM caches by itself
        parts.append(part)
    return parts


def _is_zai(base_url: str) -> bool:
    """Z.ai's OpenAI-compatible endpoints (``/api/paas/v4``, the Coding Plan's
    ``/api/coding/paas/v4``)."""
    return "/paas/v4" in base_url


def schema_instruction(schema: dict[str, Any]) -> str:
    """The system instruction that carries a JSON Schema to an upstream without native schema
    support."""
    return ("Answer with one JSON value only, no prose and no code fence, matching this JSON Schema:\n"
            + msgspec.json.encode(schema).decode())


def _finish(reason: str) -> str:
    """Map a wire finish_reason; ``network_error`` (GLM) and unknown ones raise."""
    mapped = FINISH_REASONS.get(reason)
    if mapped is None:
        raise UpstreamStreamError(f"upstream finished with {safe_code(reason)!r}",
                                  code=safe_code(reason) or "bad_finish_reason", retryable=True)
    return mapped


def _error_in_body(err: _ErrorBody, status: int = 200) -> UpstreamError:
    code = safe_code(err.code if err.code is not None else err.type or "")
    e = http_error(status, code or None, err.message or "", retry_after=None)
    return UpstreamStreamError(f"upstream sent an error in the stream (code {e.code})",
                               code=e.code, retryable=e.retryable, retry_after=e.retry_after,
                               context_overflow=e.context_overflow, content_filter=e.content_filter,
                               quota=e.quota, reset_at=e.reset_at)


class _Decoder:
    """Stream state: tool calls by index, finish reason, usage; terminal at ``[DONE]``."""

    def __init__(self) -> None:
        self._tools: dict[int, list[Any]] = {}  # wire index -> [our index, id, name, [args]]
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._done = False
        self.prompt_tokens: int | None = None  # the OpenAI wire reports usage only at the end

    def feed(self, event: str, data: str) -> list[Event]:
        if self._done:
            return []
        if data == "[DONE]":
            return self._close()
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.DecodeError:
            raise UpstreamStreamError("upstream sent a malformed chunk", code="malformed_chunk",
                                      retryable=True) from None
        return self.apply(chunk)

    def apply(self, chunk: _Chunk) -> list[Event]:
        """The events one decoded chunk completes."""
        if chunk.error is not None:
            raise _error_in_body(chunk.error)
        out: list[Event] = []
        for choice in chunk.choices:
            d = choice.delta or choice.message
            if d is not None:
                if d.reasoning_content:
                    out.append(ReasoningDelta(text=d.reasoning_content))
                if d.content:
                    out.append(TextDelta(text=d.content))
                if d.tool_calls:
                    self._tool_fragments(d.tool_calls, out)
            if choice.finish_reason:
                self._finish = _finish(choice.finish_reason)
                self._end_tools(out)
        if chunk.usage is not None:
            self._usage = _usage(chunk.usage)
        return out

    def _tool_fragments(self, calls: list[_ToolCall], out: list[Event]) -> None:
        for tc in calls:
            wire_index = tc.index if tc.index is not None else len(self._tools)
            st = self._tools.get(wire_index)
            fn = tc.function or _Fn()
            if st is None:
                st = self._tools[wire_index] = [len(self._tools), tc.id or f"call_{wire_index}",
                                                fn.name or "", []]
                out.append(ToolCallStart(index=st[0], id=st[1], name=st[2]))
            elif fn.name and not st[2]:
                st[2] = fn.name
            if fn.arguments:
                st[3].append(fn.arguments)
                out.append(ToolCallDelta(index=st[0], arguments=fn.arguments))

    def _end_tools(self, out: list[Event]) -> None:
        for st in self._tools.values():
            out.append(ToolCallEnd(index=st[0], id=st[1], name=st[2], arguments="".join(st[3]) or "{}"))
        self._tools.clear()

    def _close(self) -> list[Event]:
        if self._finish is None:
            raise UpstreamStreamError("upstream stream ended without a finish_reason",
                                      code="stream_truncated", retryable=True)
        self._done = True
        out: list[Event] = []
        self._end_tools(out)
        out.append(self._usage or Usage())
        out.append(End(finish_reason=self._finish))  # type: ignore[arg-type]
        return out

    def finish(self) -> list[Event]:
        """The body ended. Complete once a ``finish_reason`` arrived, ``[DONE]`` or not (some
        OpenAI-compatible servers close after the usage chunk without it); cut before that, an
        error. Without a usage chunk the answer ends with no ``Usage`` (the record estimates)."""
        if self._done:
            return []
        if self._finish is None:
            raise UpstreamStreamError("upstream stream ended before its finish_reason", code="stream_truncated",
                                      retryable=True)
        self._done = True
        out: list[Event] = []
        self._end_tools(out)
        if self._usage is not None:
            out.append(self._usage)
        out.append(End(finish_reason=self._finish))  # type: ignore[arg-type]
        return out


class _Completion(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None


_completion_decoder = msgspec.json.Decoder(_Completion)


class OpenAIAdapter:
    """The ``openai`` protocol (see the module docstring for the wire facts)."""

    protocol = "openai"

    def encode(self, call: Call, base_url: str, api_key: str | None,
               headers: Mapping[str, str]) -> WireRequest:
        """Encode ``call`` as a chat completions request (streaming asks for usage)."""
        messages: list[dict[str, Any]] = []
        for m in call.messages:
            msg: dict[str, Any] = {"role": m.role}
            if m.role == "assistant":
                msg["content"] = m.text() or None
                if m.tool_calls:
                    msg["tool_calls"] = [
                        {"id": tc.id, "type": "function",
                         "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
                        for tc in m.tool_calls
                    ]
            else:
                msg["content"] = _content(m)
                if m.role == "tool":
                    msg["tool_call_id"] = m.tool_call_id
            if m.name:
                msg["name"] = m.name
            messages.append(msg)
        rf = call.response_format
        if rf is not None and rf.type == "json_schema" and rf.json_schema is not None:
            messages.insert(0, {"role": "system", "content": schema_instruction(rf.json_schema.schema)})
        body: dict[str, Any] = {"model": call.model, "messages": messages}
        if rf is not None and rf.type != "text":
            # Z.ai takes only text and json_object (and ignores json_schema): the schema is stated
            # in the system prompt, and the router checks the answer against it
            body["response_format"] = {"type": "json_object"}
        zai = _is_zai(base_url)
        for key in () if zai else ("seed", "frequency_penalty", "presence_penalty"):
            if (v := getattr(call, key)) is not None:
                body[key] = v
        if call.tools:
            body["tools"] = [{"type": "function", "function": msgspec.to_builtins(t.function)} for t in call.tools]
            if zai:  # Z.ai's reference has no strict on functions
                for t in body["tools"]:
                    t["function"].pop("strict", None)
        if call.tool_choice is not None:
            body["tool_choice"] = msgspec.to_builtins(call.tool_choice)
        for key in ("max_tokens", "temperature", "top_p", "stop") if call.sampling else ("max_tokens", "stop"):
            v = getattr(call, key)
            if v is not None:
                body[key] = v
        if call.thinking is not None and not (call.thinking_style == "always" and not call.thinking):
            body["thinking"] = {"type": "enabled" if call.thinking else "disabled"}  # always-thinking: never disabled
        if call.clear_thinking is not None and zai:  # Z.ai's preserved thinking (thinking-mode guide)
            body.setdefault("thinking", {"type": "enabled"})["clear_thinking"] = call.clear_thinking
        if call.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            if call.tools and call.tool_stream:
                body["tool_stream"] = True
        h = {"content-type": "application/json", **headers}
        if api_key:
            h["authorization"] = f"Bearer {api_key}"
        return WireRequest(f"{base_url}/chat/completions", h, _encoder.encode(body))

    def unsent(self, base_url: str) -> tuple[str, ...]:
        """The canonical parameters this endpoint has no place for (dropped, logged once)."""
        return ("top_k", "seed", "frequency_penalty", "presence_penalty") if _is_zai(base_url) else ("top_k",)

    def encode_count(self, call: Call, base_url: str, api_key: str | None,
                     headers: Mapping[str, str]) -> WireRequest | None:
        """Z.ai's tokenizer request for ``call``'s prompt (model, messages, tools; see the module
        docstring); None for other endpoints."""
        if not _is_zai(base_url):
            return None
        wire = self.encode(call, base_url, api_key, headers)
        body = msgspec.json.decode(wire.body)
        kept = {k: v for k, v in body.items() if k in ("model", "messages", "tools")}
        return WireRequest(f"{base_url}/tokenizer", wire.headers, _encoder.encode(kept))

    def decode_count(self, body: bytes) -> int | None:
        """``usage.prompt_tokens`` of Z.ai's tokenizer answer."""
        got = msgspec.json.decode(body)
        usage = got.get("usage") if isinstance(got, dict) else None
        n = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return n if type(n) is int and n >= 0 else None

    def stream_decoder(self) -> _Decoder:
        return _Decoder()

    def decode_response(self, body: bytes) -> list[Event]:
        """A non-streaming completion as the events its stream would give."""
        try:
            comp = _completion_decoder.decode(body)
        except msgspec.DecodeError:
            raise UpstreamStreamError("upstream sent a malformed response", code="malformed_response",
                                      retryable=True) from None
        if not comp.choices:
            raise UpstreamStreamError("upstream response has no choices", code="malformed_response",
                                      retryable=True)
        dec = _Decoder()
        choice = comp.choices[0]
        msg = choice.message or _Delta()
        for i, tc in enumerate(msg.tool_calls or ()):
            if tc.index is None:
                tc.index = i
        chunk = _Chunk(choices=[_Choice(delta=msg, finish_reason=choice.finish_reason or "stop")],
                       usage=comp.usage)
        return dec.apply(chunk) + dec.feed("", "[DONE]")

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        """Classify an HTTP error; Z.ai business codes decide over the status."""
        code: str | None = None
        text = ""
        try:
            err = msgspec.json.decode(body, type=_Chunk).error
        except msgspec.DecodeError:
            err = None
        if err is not None:
            code = safe_code(err.code) if err.code not in (None, "") else (err.type or None)
            text = err.message or ""
        return http_error(status, code, text, retry_after=parse_retry_after(headers))
