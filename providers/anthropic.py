"""Anthropic Messages API (and Z.ai's Anthropic-compatible endpoint).

Wire facts (https://docs.anthropic.com/en/api/messages, .../messages-streaming,
.../extended-thinking, .../errors; shared/fixtures/wire/QUIRKS.md):

* ``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version: 2023-06-01``.
  ``max_tokens`` is required. System prompts go in the top-level ``system``; tools carry
  ``input_schema``; tool results are ``tool_result`` blocks in a user turn.
* Stream: ``message_start`` -> per block ``content_block_start`` / ``_delta``* / ``_stop`` ->
  ``message_delta`` (stop_reason, cumulative usage) -> ``message_stop``; ``ping`` anywhere.
  Deltas: ``text_delta``, ``thinking_delta``, ``signature_delta`` (once, before the thinking block
  stops), ``input_json_delta`` (fragments; the first may be ``""``; none at all means ``{}``).
  ``redacted_thinking`` arrives whole in its ``content_block_start``. Unknown block types
  (``server_tool_use``, ``tool_search_tool_result``, ...) are skipped.
* An ``event: error`` after HTTP 200 ends the stream with no ``message_stop``. A stream that
  delivered ``message_delta`` with its ``stop_reason`` and closed without ``message_stop`` is
  complete (the answer and its final usage were sent).
* Usage: ``message_start`` has input and cache counts; ``message_delta`` has cumulative totals
  (2024 recordings: only ``output_tokens``), so the two are merged, not overwritten.
* Structured output: ``output_config: {format: {type: "json_schema", schema}}`` and strict tool
  use ``tools[].strict: true`` (https://docs.claude.com/en/docs/build-with-claude/structured-outputs);
  ``top_k`` is a Messages parameter (https://docs.anthropic.com/en/api/messages). The schema
  compiler rejects numeric, string-length and most array/object bounds ("For 'integer' type,
  property 'minimum' is not supported": the structured-outputs page's JSON Schema limitations), so
  ``output_config`` carries the schema without them (``claude_schema``); the router still checks
  the answer against the whole schema.
* Thinking: ``{"type": "adaptive"}`` on models configured ``thinking: adaptive`` (Claude 4.6+;
  required on Opus 4.7+ and 5.x), else ``{"type": "enabled", "budget_tokens": N}`` with
  N >= 1024 and < ``max_tokens``. Thinking does not allow ``temperature``/``top_p`` changes, and
  models configured ``sampling: false`` reject them always, so those are then not sent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from providers._errors import ZAI_CODES, http_error, parse_retry_after, safe_code
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
from router.request import CacheControl, FilePart, ImagePart, Message, TextPart

__all__ = ["THINKING_MIN_BUDGET", "AnthropicAdapter"]

ANTHROPIC_VERSION = "2023-06-01"
THINKING_MIN_BUDGET = 1024
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


# -- wire structs (tolerate unknown fields) --------------------------------------------------

_UNSUPPORTED = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
                          "maxLength", "maxItems", "uniqueItems", "minProperties", "maxProperties"})
_SUBSCHEMAS = ("items", "additionalProperties", "not", "contains", "if", "then", "else")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def claude_schema(schema: Any) -> Any:
    """``schema`` without the keywords Claude's structured outputs reject (numeric bounds, string
    lengths, ``maxItems``, ``uniqueItems``, property counts; ``minItems`` above 1), at every
    level; property names are never touched."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _UNSUPPORTED or (k == "minItems" and isinstance(v, int) and v > 1):
            continue
        if k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: claude_schema(sub) for name, sub in v.items()}
        elif k in _SCHEMA_LISTS and isinstance(v, list):
            out[k] = [claude_schema(sub) for sub in v]
        elif k in _SUBSCHEMAS:
            out[k] = [claude_schema(x) for x in v] if isinstance(v, list) else claude_schema(v)
        else:
            out[k] = v
    return out

class _OutDetails(msgspec.Struct):
    thinking_tokens: int | None = None


class _CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: int | None = None
    ephemeral_1h_input_tokens: int | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation: _CacheCreation | None = None
    output_tokens_details: _OutDetails | None = None


class _Block(msgspec.Struct):
    type: str
    id: str | None = None
    name: str | None = None
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    input: Any = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Message(msgspec.Struct):
    usage: _Usage | None = None
    content: list[_Block] = []
    stop_reason: str | None = None


class _ErrorBody(msgspec.Struct):
    type: str | None = None
    code: str | int | None = None
    message: str | None = None


class _Event(msgspec.Struct):
    type: str = ""  # absent in Z.ai's OpenAI-style error envelope on its Anthropic endpoint
    index: int | None = None
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _ErrorBody | None = None


_event_decoder = msgspec.json.Decoder(_Event)
_message_decoder = msgspec.json.Decoder(_Message)
_encoder = msgspec.json.Encoder()


def _classify(err: _ErrorBody | None, status: int, retry_after: float | None,
              should_retry: bool | None) -> UpstreamError:
    """Anthropic types, or a Z.ai code from ``error.code``, a numeric ``error.type`` or a
    ``[NNNN]`` prefix of the message (Z.ai's compatible endpoint uses all three)."""
    err = err or _ErrorBody()
    message = err.message or ""
    code: str | None = None
    for cand in (err.code, err.type, message[1:5] if message.startswith("[") else None):
        if cand is not None and safe_code(cand) in ZAI_CODES:
            code = safe_code(cand)
            break
    if code is None:
        code = err.type or None
    if code == "invalid_request_error" and "prompt is too long" in message:
        code = "prompt_too_long"
    e = http_error(status, code, message, retry_after=retry_after, should_retry=should_retry)
    if code in ("overloaded_error", "rate_limit_error", "api_error"):
        e.retryable = True if should_retry is None else should_retry
    if code == "prompt_too_long":
        e.context_overflow, e.retryable = True, False
    return e


class _Decoder:
    """Stream state per block index; terminal at ``message_stop``."""

    def __init__(self) -> None:
        self._blocks: dict[int, list[Any]] = {}  # block index -> [kind, tool index, id, name, [json]]
        self._tools = 0
        self._usage = _Usage()
        self._stop: str | None = None
        self._done = False
        self.prompt_tokens: int | None = None  # message_start's input_tokens, ahead of the answer

    def feed(self, event: str, data: str) -> list[Event]:
        if self._done:
            return []
        try:
            ev = _event_decoder.decode(data)
        except msgspec.DecodeError:
            raise UpstreamStreamError("upstream sent a malformed event", code="malformed_chunk",
                                      retryable=True) from None
        return self.apply(ev)

    def apply(self, ev: _Event) -> list[Event]:
        """The events one decoded wire event completes."""
        t = ev.type
        if t == "content_block_delta" and ev.delta is not None:
            return self._delta(ev.index or 0, ev.delta)
        if t == "content_block_start" and ev.content_block is not None:
            return self._start(ev.index or 0, ev.content_block)
        if t == "content_block_stop":
            return self._stop_block(ev.index or 0)
        if t == "message_start" and ev.message is not None and ev.message.usage is not None:
            self._merge(ev.message.usage)
            self.prompt_tokens = ev.message.usage.input_tokens
        elif t == "message_delta":
            if ev.delta is not None and ev.delta.stop_reason:
                self._stop = ev.delta.stop_reason
            if ev.usage is not None:
                self._merge(ev.usage)
        elif t == "message_stop":
            return self._close()
        elif t == "error":
            e = _classify(ev.error, 200, None, None)
            raise UpstreamStreamError(f"upstream sent an error event ({e.code})", code=e.code,
                                      retryable=e.retryable, context_overflow=e.context_overflow,
                                      content_filter=e.content_filter, quota=e.quota, retry_after=e.retry_after, reset_at=e.reset_at)
        return []

    def _merge(self, u: _Usage) -> None:
        for f in u.__struct_fields__:
            v = getattr(u, f)
            if v is not None:
                setattr(self._usage, f, v)

    def _start(self, index: int, b: _Block) -> list[Event]:
        if b.type == "tool_use":
            st = self._blocks[index] = ["tool", self._tools, b.id or f"toolu_{index}", b.name or "", []]
            self._tools += 1
            return [ToolCallStart(index=st[1], id=st[2], name=st[3])]
        self._blocks[index] = [b.type]
        if b.type == "redacted_thinking":
            return [ReasoningDelta(redacted=b.data or "")]
        if b.type == "text" and b.text:
            return [TextDelta(text=b.text)]
        if b.type == "thinking" and b.thinking:
            return [ReasoningDelta(text=b.thinking)]
        return []

    def _delta(self, index: int, d: _Delta) -> list[Event]:
        st = self._blocks.get(index)
        kind = st[0] if st else None
        if d.type == "text_delta" and kind == "text" and d.text:
            return [TextDelta(text=d.text)]
        if d.type == "thinking_delta" and kind == "thinking" and d.thinking:
            return [ReasoningDelta(text=d.thinking)]
        if d.type == "signature_delta" and kind == "thinking" and d.signature:
            return [ReasoningDelta(signature=d.signature)]
        if d.type == "input_json_delta" and kind == "tool" and st is not None and d.partial_json:
            st[4].append(d.partial_json)
            return [ToolCallDelta(index=st[1], arguments=d.partial_json)]
        return []

    def _stop_block(self, index: int) -> list[Event]:
        st = self._blocks.pop(index, None)
        if st is not None and st[0] == "tool":
            return [ToolCallEnd(index=st[1], id=st[2], name=st[3], arguments="".join(st[4]) or "{}")]
        return []

    def _close(self) -> list[Event]:
        self._done = True
        u = self._usage
        read, created = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
        usage = Usage(
            input_tokens=(u.input_tokens or 0) + read + created,
            output_tokens=u.output_tokens or 0,
            reasoning_tokens=(u.output_tokens_details.thinking_tokens or 0) if u.output_tokens_details else 0,
            cached_tokens=read,
            cache_write_tokens=created,
            cache_write_1h_tokens=(u.cache_creation.ephemeral_1h_input_tokens or 0) if u.cache_creation else 0,
        )
        out: list[Event] = []
        for index in list(self._blocks):
            out += self._stop_block(index)
        out += [usage, End(finish_reason=STOP_REASONS.get(self._stop or "end_turn", "stop"))]  # type: ignore[arg-type]
        return out

    def finish(self) -> list[Event]:
        """The body ended. Complete once ``message_delta`` delivered a ``stop_reason`` (with the
        final usage), ``message_stop`` or not; cut before that, an error."""
        if self._done:
            return []
        if self._stop is None:
            raise UpstreamStreamError("upstream stream ended before its stop_reason",
                                      code="stream_truncated", retryable=True)
        return self._close()


def _source(url: str) -> dict[str, str]:
    """An image or document source: ``base64`` from a data URL, else ``url``."""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return {"type": "base64", "media_type": head[5:].split(";")[0], "data": data}
    return {"type": "url", "url": url}


def _user_blocks(m: Message) -> list[dict[str, Any]]:
    """A user message with images or documents as ``text``, ``image`` and ``document`` blocks,
    in order (https://docs.anthropic.com/en/docs/build-with-claude/vision, .../pdf-support)."""
    out: list[dict[str, Any]] = []
    for p in m.content or ():
        if isinstance(p, str):
            continue
        if type(p) is TextPart:
            if p.text:
                out.append({"type": "text", "text": p.text, **_breakpoint(p.cache_control)})
        elif type(p) is ImagePart:
            out.append({"type": "image", "source": _source(p.image_url.url)})
        elif type(p) is FilePart:
            out.append({"type": "document", "source": _source(p.file.file_data)})
    return out


def _breakpoint(cc: CacheControl | None) -> dict[str, Any]:
    """``{"cache_control": {...}}`` for a breakpoint, else nothing."""
    return {"cache_control": {"type": cc.type, **({"ttl": cc.ttl} if cc.ttl else {})}} if cc is not None else {}


def _marked(m: Message) -> bool:
    """Whether ``m`` carries a cache breakpoint (on itself or on a text part)."""
    return m.cache_control is not None or (isinstance(m.content, list) and any(
        type(p) is TextPart and p.cache_control is not None for p in m.content))


def _turns(call: Call) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system texts and the alternating user/assistant turns of ``call``'s messages: tool
    results become ``tool_result`` blocks of a user turn, an assistant's reasoning with its
    signature a ``thinking`` block, its tool calls ``tool_use`` blocks; consecutive messages of
    one role merge into one turn, as the Messages API requires. Cache breakpoints go on their
    part's block, or a message's on its last block; the system prompt is returned as blocks."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]], cc: CacheControl | None = None) -> None:
        if not blocks:
            return
        if cc is not None:
            blocks[-1].update(_breakpoint(cc))
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in call.messages:
        text = m.text()
        parted = isinstance(m.content, list) and (m.media() != [] or _marked(m))  # blocks of its own
        plain = [{"type": "text", "text": text}] if text else []
        if m.role == "system":
            own = _user_blocks(m) if parted else plain
            if own and m.cache_control is not None:
                own[-1].update(_breakpoint(m.cache_control))
            system += own
        elif m.role == "user":
            add("user", _user_blocks(m) if parted else plain, m.cache_control)
        elif m.role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": text}], m.cache_control)
        else:
            blocks: list[dict[str, Any]] = []
            if m.reasoning_signature:
                blocks.append({"type": "thinking", "thinking": m.reasoning or "", "signature": m.reasoning_signature})
            blocks += [{"type": "redacted_thinking", "data": d} for d in m.reasoning_redacted or ()]
            if text:
                blocks.append({"type": "text", "text": text})
            for tc in m.tool_calls or ():
                blocks.append({"type": "tool_use", "id": tc.id, "name": tc.function.name,
                               "input": msgspec.json.decode(tc.function.arguments or "{}")})
            add("assistant", blocks, m.cache_control)
    return system, turns


class AnthropicAdapter:
    """The ``anthropic`` protocol (see the module docstring for the wire facts)."""

    protocol = "anthropic"

    def encode(self, call: Call, base_url: str, api_key: str | None,
               headers: Mapping[str, str]) -> WireRequest:
        """Encode ``call`` as a Messages request."""
        system, turns = _turns(call)
        max_tokens = call.max_tokens or DEFAULT_MAX_TOKENS
        body: dict[str, Any] = {"model": call.model, "max_tokens": max_tokens, "messages": turns}
        cached_system = any("cache_control" in b for b in system)
        if system:  # a plain string unless a block is a cache breakpoint
            body["system"] = system if cached_system else "\n\n".join(b["text"] for b in system)
        if call.tools:
            body["tools"] = [{"name": t.function.name, "description": t.function.description or "",
                              "input_schema": t.function.parameters, **({"strict": True} if t.function.strict else {}),
                              **_breakpoint(t.cache_control)}
                             for t in call.tools]
        rf = call.response_format
        if rf is not None and rf.type == "json_schema" and rf.json_schema is not None:
            body["output_config"] = {"format": {"type": "json_schema", "schema": claude_schema(rf.json_schema.schema)}}
        elif rf is not None and rf.type == "json_object":  # no native form: say it
            say = "Answer with one JSON object only, no prose and no code fence."
            body["system"] = [*system, {"type": "text", "text": say}] if cached_system else \
                "\n\n".join([*(b["text"] for b in system), say])
        tc_ = call.tool_choice
        if tc_ is not None and call.tools:
            body["tool_choice"] = ({"auto": {"type": "auto"}, "none": {"type": "none"},
                                    "required": {"type": "any"}}[tc_] if isinstance(tc_, str)
                                   else {"type": "tool", "name": tc_.function.name})
        if call.stop:
            body["stop_sequences"] = call.stop
        if call.thinking and call.thinking_style == "adaptive":
            body["thinking"] = {"type": "adaptive"}
        elif call.thinking:
            budget = max(THINKING_MIN_BUDGET, max_tokens // 2)
            if max_tokens <= budget:  # keep the caller's max_tokens for the visible answer
                body["max_tokens"] = budget + max_tokens
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if not call.thinking and call.sampling:  # thinking allows no sampling changes (top_k included)
            if call.top_k is not None:
                body["top_k"] = call.top_k
            if call.temperature is not None:
                body["temperature"] = call.temperature
            if call.top_p is not None:
                body["top_p"] = call.top_p
        if call.stream:
            body["stream"] = True
        h = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION, **headers}
        if call.anthropic_beta:
            h["anthropic-beta"] = ",".join(call.anthropic_beta)
        if api_key:
            h["x-api-key"] = api_key
        return WireRequest(f"{base_url}/v1/messages", h, _encoder.encode(body))

    def unsent(self, base_url: str) -> tuple[str, ...]:
        """The canonical parameters the Messages API has no place for (dropped, logged once)."""
        return ("seed", "frequency_penalty", "presence_penalty")

    def encode_count(self, call: Call, base_url: str, api_key: str | None,
                     headers: Mapping[str, str]) -> WireRequest:
        """``call``'s prompt as a token-count request: ``POST /v1/messages/count_tokens`` with the
        Messages body's model, system, messages, tools, tool_choice and thinking
        (https://docs.anthropic.com/en/api/messages-count-tokens); the answer is
        ``{"input_tokens": N}``."""
        wire = self.encode(call, base_url, api_key, headers)
        body = msgspec.json.decode(wire.body)
        kept = {k: v for k, v in body.items() if k in ("model", "system", "messages", "tools", "tool_choice", "thinking")}
        return WireRequest(f"{base_url}/v1/messages/count_tokens", wire.headers, _encoder.encode(kept))

    def decode_count(self, body: bytes) -> int | None:
        """``input_tokens`` of the count answer."""
        got = msgspec.json.decode(body)
        n = got.get("input_tokens") if isinstance(got, dict) else None
        return n if type(n) is int and n >= 0 else None

    def stream_decoder(self) -> _Decoder:
        return _Decoder()

    def decode_response(self, body: bytes) -> list[Event]:
        """A non-streaming message as the events its stream would give."""
        try:
            msg = _message_decoder.decode(body)
        except msgspec.DecodeError:
            raise UpstreamStreamError("upstream sent a malformed response", code="malformed_response",
                                      retryable=True) from None
        dec = _Decoder()
        out: list[Event] = dec.apply(_Event(type="message_start", message=_Message(usage=msg.usage)))
        for i, b in enumerate(msg.content):
            out += dec.apply(_Event(type="content_block_start", index=i, content_block=b))
            if b.type == "thinking" and b.signature:
                out += dec.apply(_Event(type="content_block_delta", index=i,
                                        delta=_Delta(type="signature_delta", signature=b.signature)))
            elif b.type == "tool_use":
                args = _encoder.encode(b.input).decode() if b.input else ""
                out += dec.apply(_Event(type="content_block_delta", index=i,
                                        delta=_Delta(type="input_json_delta", partial_json=args)))
            out += dec.apply(_Event(type="content_block_stop", index=i))
        out += dec.apply(_Event(type="message_delta", delta=_Delta(stop_reason=msg.stop_reason)))
        return out + dec.apply(_Event(type="message_stop"))

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes,
                     now: float | None = None) -> UpstreamError:
        """Classify an HTTP error. Honours ``x-should-retry``, ``retry-after`` and, when that is
        absent on a 429, the earliest ``anthropic-ratelimit-*-reset`` (RFC 3339) time."""
        try:
            err = msgspec.json.decode(body, type=_Event).error
        except msgspec.DecodeError:
            err = None
        sr = headers.get("x-should-retry")
        should_retry = None if sr is None else sr.strip().lower() == "true"
        retry_after = parse_retry_after(headers)
        if retry_after is None and status == 429:
            retry_after = _ratelimit_reset(headers, time.time() if now is None else now)
        return _classify(err, status, retry_after, should_retry)


def _ratelimit_reset(headers: Mapping[str, str], now: float) -> float | None:
    waits = []
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        remaining, reset = (headers.get(f"anthropic-ratelimit-{kind}-remaining"),
                            headers.get(f"anthropic-ratelimit-{kind}-reset"))
        if reset and remaining == "0":
            try:
                waits.append(max(0.0, datetime.fromisoformat(reset).timestamp() - now))
            except ValueError:
                continue
    return min(waits) if waits else None
