"""The unified event schema: one stream shape whatever provider answered.

Each event is a msgspec Struct in one tagged union (tag field ``type``), with a ``seq`` number
(0, 1, 2, ... per response) assigned by the router as events leave it. On the wire (SSE) each is::

    event: text.delta
    data: {"type":"text.delta","seq":3,"text":"Hello"}

A stream ends with exactly one terminal event, ``End`` or ``Error``. Non-streaming answers are
the same events folded into one ``Answer`` by ``fold`` (one translation path, never two).
The contract is DESIGN.md's "Unified stream events" table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

__all__ = [
    "Answer",
    "AttemptRecord",
    "End",
    "Error",
    "Event",
    "Fallback",
    "ReasoningDelta",
    "Start",
    "TextDelta",
    "TokenUsage",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "Usage",
    "coalesce",
    "encode_json",
    "encode_sse",
    "fold",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    seq: int = 0


class Start(_Event, tag="start"):
    """The router committed to a target. ``attempt``: the how-manieth target tried (from 1; 0 for a
    cached answer); ``variant``: the experiment variant the request was assigned to, if any;
    ``input_tokens``: the prompt's (uncached) input tokens when the upstream reported them before
    its answer (Anthropic's ``message_start``), else null; the final count is ``usage``'s;
    ``task_version``: the content hash of the task's definition (its prompt, schemas, chain), null
    for a pinned target or model id."""

    id: str
    task: str
    provider: str
    model: str
    attempt: int = 1
    cached: bool = False
    variant: str | None = None
    input_tokens: int | None = None
    task_version: str | None = None


class ReasoningDelta(_Event, tag="reasoning.delta", omit_defaults=True):
    """Reasoning text. ``signature`` is the provider's signature for the reasoning so far
    (Anthropic ``signature_delta``); ``redacted`` carries an Anthropic ``redacted_thinking``
    block's opaque ``data``, which must be sent back unchanged in later turns."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


class TextDelta(_Event, tag="text.delta"):
    text: str


class ToolCallStart(_Event, tag="tool_call.start"):
    """A tool call begins; ``index`` is its position among this answer's tool calls (0, 1, ...)."""

    index: int
    id: str
    name: str


class ToolCallDelta(_Event, tag="tool_call.delta"):
    """A fragment of the arguments' JSON text; concatenated in order they form the whole."""

    index: int
    arguments: str


class ToolCallEnd(_Event, tag="tool_call.end"):
    """A tool call is complete; ``arguments`` is the whole JSON text (``"{}"`` when none came)."""

    index: int
    id: str
    name: str
    arguments: str


class Usage(_Event, tag="usage"):
    """Token counts for the answer and its cost in USD.

    ``input_tokens`` counts the whole prompt, cached part included; ``cached_tokens`` is the part
    read from the provider's prompt cache, ``cache_write_tokens`` the part written to it
    (Anthropic ``cache_creation_input_tokens``; ``cache_write_1h_tokens`` of those as 1-hour
    entries); ``reasoning_tokens`` is the part of ``output_tokens`` spent on reasoning.
    ``cost_usd`` is priced from routing.yaml (USD per 1M tokens), each class at its price.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0


class Fallback(_Event, tag="fallback", rename={"from_": "from"}):
    """The router moved from one target (``provider/model``) to the next, and why."""

    from_: str
    to: str
    reason: str


class AttemptRecord(msgspec.Struct):
    """One target of the chain: ``outcome`` is ``ok``, ``error`` or ``skipped`` (``code`` says why:
    ``unusable``, ``context_window``, ``cooldown``); ``latency_ms`` from the first send to the first
    event or the last failure, retry waits included; ``retries`` made on this target."""

    target: str
    outcome: str
    code: str | None = None
    message: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    retries: int = 0


class Error(_Event, tag="error"):
    """Terminal: the answer failed. ``provider`` is empty when no single provider was to blame;
    ``attempts`` lists every try of the request, as in a non-streaming error body."""

    code: str
    message: str
    retryable: bool = False
    provider: str = ""
    attempts: list[AttemptRecord] = []


class End(_Event, tag="end"):
    """Terminal: the answer is complete."""

    finish_reason: FinishReason = "stop"


Event = (
    Start | ReasoningDelta | TextDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | Usage
    | Fallback | Error | End
)

_encoder = msgspec.json.Encoder()
_SSE_PREFIX: dict[type, bytes] = {
    cls: b"event: " + cls.__struct_config__.tag.encode() + b"\ndata: "  # type: ignore[union-attr]
    for cls in (Start, ReasoningDelta, TextDelta, ToolCallStart, ToolCallDelta, ToolCallEnd,
                Usage, Fallback, Error, End)
}


def coalesce(events: list[Event]) -> list[Event]:
    """``events`` (decoded from one network read) with each run of adjacent deltas of one kind
    joined into one: text deltas; reasoning text deltas (those without a signature or redacted
    block); one tool call's argument deltas. What arrived together is handed on together, so a
    busy router moves fewer events through its layers, and nothing waits: no event is held for a
    later read. The folded answer is the same."""
    out: list[Event] = []
    last: Event | None = None
    for ev in events:
        t = type(ev)
        if last is not None and t is type(last):
            if t is TextDelta:
                last.text += ev.text  # type: ignore[union-attr]
                continue
            if (t is ReasoningDelta and ev.signature is None and ev.redacted is None  # type: ignore[union-attr]
                    and last.signature is None and last.redacted is None):  # type: ignore[union-attr]
                last.text += ev.text  # type: ignore[union-attr]
                continue
            if t is ToolCallDelta and ev.index == last.index:  # type: ignore[union-attr]
                last.arguments += ev.arguments  # type: ignore[union-attr]
                continue
        out.append(ev)
        last = ev
    return out


def encode_sse(event: Event) -> bytes:
    """One SSE message: ``event: <type>\\ndata: <json>\\n\\n`` (UTF-8 bytes)."""
    return _SSE_PREFIX[type(event)] + _encoder.encode(event) + b"\n\n"


def encode_json(obj: object) -> bytes:
    """JSON bytes of any Struct or builtin, with the shared encoder."""
    return _encoder.encode(obj)


class ToolCallOut(msgspec.Struct):
    """A complete tool call in a non-streaming answer (OpenAI shape)."""

    id: str
    function: dict[str, str]
    type: str = "function"


class TokenUsage(msgspec.Struct):
    """``Usage`` without the event envelope, as it appears in a non-streaming answer."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0


class Answer(msgspec.Struct):
    """A non-streaming answer: the stream's events folded into one object. ``output``: the
    answer's JSON, parsed, when the request asked for structured output (a typed task's
    ``output_schema``, a ``response_format``); ``task_version`` as in ``start``."""

    id: str = ""
    task: str = ""
    provider: str = ""
    model: str = ""
    text: str = ""
    reasoning: str = ""
    reasoning_signature: str | None = None
    reasoning_redacted: list[str] = msgspec.field(default_factory=list)
    tool_calls: list[ToolCallOut] = msgspec.field(default_factory=list)
    finish_reason: str = "stop"
    usage: TokenUsage = msgspec.field(default_factory=TokenUsage)
    attempts: list[AttemptRecord] = msgspec.field(default_factory=list)
    cached: bool = False
    variant: str | None = None
    task_version: str | None = None
    output: Any = None


def fold(events: Iterable[Event], answer: Answer | None = None) -> Answer:
    """Fold a complete event sequence into an ``Answer``.

    Raises ``ValueError`` if the sequence has no terminal event or ends with ``Error`` (the
    caller handles those before folding).
    """
    a = answer or Answer()
    text: list[str] = []
    reasoning: list[str] = []
    terminal = False
    for ev in events:
        match ev:
            case TextDelta(text=t):
                text.append(t)
            case ReasoningDelta(text=t, signature=sig, redacted=red):
                reasoning.append(t)
                if sig:
                    a.reasoning_signature = sig
                if red is not None:
                    a.reasoning_redacted.append(red)
            case ToolCallEnd(id=cid, name=name, arguments=args):
                a.tool_calls.append(ToolCallOut(id=cid, function={"name": name, "arguments": args}))
            case Usage():
                a.usage = TokenUsage(ev.input_tokens, ev.output_tokens, ev.reasoning_tokens,
                                     ev.cached_tokens, ev.cost_usd, ev.cache_write_tokens, ev.cache_write_1h_tokens)
            case Start(id=rid, task=task, provider=prov, model=model, cached=cached, variant=variant, task_version=tv):
                a.id, a.task, a.provider, a.model, a.cached, a.variant = rid, task, prov, model, cached, variant
                a.task_version = tv
                text.clear()  # a midstream restart: the answer is the one that ends, never a splice
                reasoning.clear()
                a.tool_calls, a.reasoning_signature, a.reasoning_redacted = [], None, []
            case End(finish_reason=fr):
                a.finish_reason = fr
                terminal = True
            case Error(code=code, message=msg):
                raise ValueError(f"stream ended with error {code}: {msg}")
    if not terminal:
        raise ValueError("stream ended without a terminal event")
    a.text = "".join(text)
    a.reasoning = "".join(reasoning)
    return a
