"""Every recorded provider body in shared/fixtures/wire decoded into the expected events.

Expected values were read off the recordings by hand (texts, tool arguments, usage numbers).
"""

from __future__ import annotations

import json

import pytest

from providers import adapter_for
from router.errors import UpstreamHTTPError, UpstreamStreamError
from router.events import (
    End,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    fold,
)
from tests.wire._sse import WIRE, decode_stream, finishing, sse_messages

PROTOCOL = {"anthropic": "anthropic", "zai": "openai", "openai": "openai"}

# file -> expected folded answer: text prefix, reasoning prefix, tool calls (name, args), finish,
# usage (input, output, reasoning, cached)
STREAMS = {
    "anthropic/text-basic.haiku-4-5.sse": ("Hello", "", [], "stop", (10, 4, 0, 0)),
    "anthropic/text-max-tokens.claude-3-opus.sse":
        ('The phrase "I think, therefore I am"', "", [], "length", (27, 15, 0, 0)),
    "anthropic/text-stop-sequence.haiku-4-5.sse": ("\ndef pelican():", "", [], "stop", (16, 28, 0, 0)),
    "anthropic/thinking-text.haiku-4-5.sse":
        ("1. **Pouch**", "The user wants two names for a", [], "stop", (46, 133, 0, 0)),
    "anthropic/thinking-tool-use.sonnet-4.sse":
        ("", "The user is asking for weather", [("weather", {"location": "Florence, Italy"})],
         "tool_calls", (424, 119, 0, 0)),
    "anthropic/redacted-thinking-text.sonnet-4-5.sse":
        ("I notice that you've sent", "", [], "stop", (92, 189, 0, 0)),
    "anthropic/tool-use-single.sonnet-4.sse":
        ("I'll get the weather information for Florence, Italy for you.", "",
         [("weather", {"location": "Florence,Italy"})], "tool_calls", (394, 67, 0, 0)),
    "anthropic/tool-use-parallel.sonnet-4.sse":
        ("I'll add and multiply the numbers 2 and 3 for you.", "",
         [("add", {"a": 2, "b": 3}), ("multiply", {"a": 2, "b": 3})], "tool_calls", (502, 137, 0, 0)),
    "anthropic/tool-use-parallel-empty-input.haiku-4-5.sse":
        ("", "", [("pelican_name_generator", {}), ("pelican_name_generator", {})], "tool_calls",
         (542, 62, 0, 0)),
    "anthropic/server-tool-search-then-tool-use.sonnet-4-6.sse":
        ("Let me search for a tool", "",
         [("get_exchange_rate", {"from_currency": "USD", "to_currency": "EUR"})], "tool_calls",
         (1591, 175, 0, 0)),
    "zai/thinking-text.glm-4-7.sse": ("4", "\n1.  **Analyze the User's Requ", [], "stop", (13, 564, 561, 0)),
    "zai/thinking-tool-call-single.glm-4-7-flash.sse":
        ("I'll get the current weather information for Florence, Italy", "The user is asking for the wea",
         [("weather", {"location": "Florence,Italy"})], "tool_calls", (173, 93, 65, 172)),
    "zai/thinking-tool-calls-parallel.glm-4-7-flash.sse":
        ("I'll both add and multiply", "The user wants me to both add",
         [("add", {"a": 2, "b": 3}), ("multiply", {"a": 2, "b": 3})], "tool_calls", (275, 112, 64, 43)),
    "zai/thinking-text-after-tool-results.glm-4-7-flash.sse":
        ("I've calculated both operations for you", "I got the results", [], "stop", (395, 79, 41, 251)),
    "openai/text-with-usage-chunk.gpt-4o.sse":
        ("The capital of Mexico is Mexico City.", "", [], "stop", (14, 8, 0, 0)),
    "openai/text-length-cached-usage.gpt-4o.sse":
        ("Structuring a database schema", "", [], "length", (1420, 100, 0, 1280)),
    "openai/tool-call-single.gpt-4o-mini.sse": ("", "", [("get_capital", {"country": "UK"})], "tool_calls", (53, 15, 0, 0)),
    "openai/tool-calls-parallel.gpt-4o.sse":
        ("", "", [("get_weather", {"city": "Mexico City"}), ("get_product_name", {})], "tool_calls", (417, 44, 0, 0)),
}

RESPONSES = {
    "anthropic/message-parallel-tool-use.sonnet-4.json":
        ("I'll add and multiply the numbers 2 and 3 for you.", "",
         [("add", {"a": 2, "b": 3}), ("multiply", {"a": 2, "b": 3})], "tool_calls", (507, 137, 0, 0)),
    "anthropic/message-thinking-tool-use.sonnet-4.json":
        ("", "The user is asking about the weather in Florence", [("weather", {"location": "Florence, Italy"})],
         "tool_calls", None),
    "zai/completion-thinking-text.glm-4-7-flash.json": ("Olá! (Oh-lah)", "1.  **Analyze the Request:**", [], "stop", None),
    "zai/completion-parallel-tool-calls.glm-4-7-flash.json":
        ("I'll add and multiply 2 and 3", "The user is asking me to add",
         [("add", {"a": 2, "b": 3}), ("multiply", {"a": 2, "b": 3})], "tool_calls", None),
    "openai/completion-parallel-tool-calls.gpt-4o.json":
        ("", "", [("add", {"a": 2, "b": 3}), ("multiply", {"a": 2, "b": 3})], "tool_calls", None),
}

# file -> (HTTP status, protocol used to decode it, code, retryable, context_overflow)
ERRORS = {
    "anthropic/error-400-invalid-request.json": (400, "anthropic", "invalid_request_error", False, False),
    "anthropic/error-529-overloaded.json": (529, "anthropic", "overloaded_error", True, False),
    "zai/error-429-1113-insufficient-balance.json": (429, "openai", "1113", False, False),
    "zai/error-429-1302-high-concurrency.json": (429, "openai", "1302", True, False),
    "zai/error-400-1261-prompt-exceeds-max-length.json": (400, "openai", "1261", False, True),
    "zai/anthropic-compat-error-429-1113.json": (429, "anthropic", "1113", False, False),
    "zai/anthropic-compat-error-429-1302.json": (429, "anthropic", "1302", True, False),
    "openai/error-401-invalid-api-key.json": (401, "openai", "invalid_api_key", False, False),
}

MIDSTREAM = {"anthropic/error-midstream-overloaded.sse": ("anthropic", "overloaded_error", True)}


def test_every_recorded_file_is_covered() -> None:
    recorded = {str(p.relative_to(WIRE)) for p in WIRE.glob("*/*") if p.suffix in (".sse", ".json")}
    covered = set(STREAMS) | set(RESPONSES) | set(ERRORS) | set(MIDSTREAM)
    assert recorded == covered


def _check(answer, expected) -> None:  # type: ignore[no-untyped-def]
    text, reasoning, tools, finish, usage = expected
    assert answer.text.startswith(text) and (text or not answer.text or finish == "tool_calls")
    assert answer.reasoning.startswith(reasoning)
    assert [(t.function["name"], json.loads(t.function["arguments"])) for t in answer.tool_calls] == tools
    assert answer.finish_reason == finish
    if usage is not None:
        u = answer.usage
        assert (u.input_tokens, u.output_tokens, u.reasoning_tokens, u.cached_tokens) == usage


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_stream(name: str) -> None:
    events = decode_stream(PROTOCOL[name.split("/")[0]], (WIRE / name).read_bytes())
    assert isinstance(events[-1], End)
    assert sum(isinstance(e, End) for e in events) == 1
    _check(fold(events), STREAMS[name])
    # tool-call events are well formed: start, deltas that concatenate to the end's arguments
    for end in (e for e in events if isinstance(e, ToolCallEnd)):
        starts = [e for e in events if isinstance(e, ToolCallStart) and e.index == end.index]
        frags = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == end.index)
        assert len(starts) == 1 and (starts[0].id, starts[0].name) == (end.id, end.name)
        assert (frags or "{}") == end.arguments


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_stream_cut_before_its_finish_is_an_error(name: str) -> None:
    """Drop every message from the one that delivers the finish (``finish_reason`` /
    ``message_delta``'s ``stop_reason``) on: never reported as End."""
    protocol = PROTOCOL[name.split("/")[0]]
    messages = sse_messages((WIRE / name).read_bytes())
    cut = next(i for i, (e, d) in enumerate(messages) if finishing(protocol, e, d))
    dec = adapter_for(protocol).stream_decoder()
    events = []
    with pytest.raises(UpstreamStreamError) as info:
        for event, data in messages[:cut]:
            events += dec.feed(event, data)
        dec.finish()
    assert info.value.code == "stream_truncated" and info.value.retryable
    assert not any(isinstance(e, End) for e in events)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_stream_without_its_terminator_is_complete(name: str) -> None:
    """Drop only the terminator ([DONE] / message_stop): the finish and the usage were sent, so
    the answer is the whole stream's."""
    protocol = PROTOCOL[name.split("/")[0]]
    body = (WIRE / name).read_bytes()
    messages = [m for m in sse_messages(body) if m[1] != "[DONE]" and m[0] != "message_stop"]
    assert len(messages) == len(sse_messages(body)) - 1
    dec = adapter_for(protocol).stream_decoder()
    events = [ev for event, data in messages for ev in dec.feed(event, data)] + dec.finish()
    assert isinstance(events[-1], End)
    assert fold(events) == fold(decode_stream(protocol, body))


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_recorded_response(name: str) -> None:
    events = adapter_for(PROTOCOL[name.split("/")[0]]).decode_response((WIRE / name).read_bytes())
    _check(fold(events), RESPONSES[name])


def test_recorded_thinking_signature_and_redacted_blocks_are_kept() -> None:
    thinking = decode_stream("anthropic", (WIRE / "anthropic/thinking-text.haiku-4-5.sse").read_bytes())
    sigs = [e.signature for e in thinking if isinstance(e, ReasoningDelta) and e.signature]
    assert len(sigs) == 1 and sigs[0].startswith("EuYDCmMIDB")
    assert fold(thinking).reasoning_signature == sigs[0]
    redacted = decode_stream("anthropic", (WIRE / "anthropic/redacted-thinking-text.sonnet-4-5.sse").read_bytes())
    blocks = [e.redacted for e in redacted if isinstance(e, ReasoningDelta) and e.redacted]
    assert len(blocks) == 2 and all(len(b) > 100 for b in blocks)
    assert fold(redacted).reasoning_redacted == blocks
    response = adapter_for("anthropic").decode_response(
        (WIRE / "anthropic/message-thinking-tool-use.sonnet-4.json").read_bytes())
    assert fold(response).reasoning_signature.startswith("Es8DCkYICxgCKkBROcM3239o")


def test_recorded_streams_keep_text_order() -> None:
    events = decode_stream("openai", (WIRE / "openai/text-with-usage-chunk.gpt-4o.sse").read_bytes())
    assert [e.text for e in events if isinstance(e, TextDelta)][:3] == ["The", " capital", " of"]


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_recorded_error(name: str) -> None:
    status, protocol, code, retryable, overflow = ERRORS[name]
    err = adapter_for(protocol).decode_error(status, {}, (WIRE / name).read_bytes())
    assert isinstance(err, UpstreamHTTPError)
    assert (err.code, err.retryable, err.context_overflow, err.upstream_status) == (code, retryable, overflow, status)
    body = (WIRE / name).read_text()
    assert "recharge" not in err.message and "Incorrect API key" not in err.message and len(err.message) < 120
    del body


@pytest.mark.parametrize("name", sorted(MIDSTREAM))
def test_recorded_midstream_error(name: str) -> None:
    protocol, code, retryable = MIDSTREAM[name]
    with pytest.raises(UpstreamStreamError) as info:
        decode_stream(protocol, (WIRE / name).read_bytes())
    assert (info.value.code, info.value.retryable) == (code, retryable)
