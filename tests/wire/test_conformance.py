"""One conformance suite over every adapter: the same scripted answers, in every wire flavour,
streamed and not, must decode to the same unified answer."""

from __future__ import annotations

import json

import msgspec
import pytest

from providers import ADAPTERS, adapter_for
from router.emulator import wire
from router.emulator.directive import Behaviour, ToolCallSpec
from router.errors import UpstreamStreamError
from router.events import End, fold
from tests.wire._sse import decode_stream, finishing, sse_messages

FLAVOURS = ["glm", "openai", "anthropic"]

SCENARIOS = {
    "text": Behaviour(text="The quick brown fox jumps over the lazy dog."),
    "reasoning": Behaviour(reasoning="First think, then answer.", text="Forty-two."),
    "parallel_tools": Behaviour(tool_calls=[ToolCallSpec(name="add", arguments={"a": 2, "b": 3}),
                                            ToolCallSpec(name="mul", arguments='{"a": 2, "b": 3}')]),
    "text_then_tool": Behaviour(text="Let me look.", tool_calls=[ToolCallSpec(name="weather", arguments={"city": "Oslo"})]),
    "tool_no_args": Behaviour(tool_calls=[ToolCallSpec(name="now")]),
    "one_chunk": Behaviour(text="Short answer in one piece.", chunks=1),
    "many_chunks": Behaviour(text="abcdefghij", chunks=10, input_tokens=7, output_tokens=3),
    "length": Behaviour(text="cut off", finish_reason="length"),
}


def _bodies(flavour: str, b: Behaviour) -> tuple[str, bytes, bytes]:
    s = wire.script(b, {"messages": [{"role": "user", "content": "hi"}]}, "m", "id_")
    if flavour == "anthropic":
        return "anthropic", b"".join(wire.anthropic_stream(s, "m")), wire.anthropic_json(s, "m")
    glm = flavour == "glm"
    return "openai", b"".join(wire.openai_stream(s, "m", glm, True)), wire.openai_json(s, "m", glm)


def _normal(answer):  # type: ignore[no-untyped-def]
    """The answer as builtins, tool arguments parsed: Anthropic returns ``input`` as an object in
    a whole message but streams the model's JSON text, so only their JSON values must agree."""
    out = msgspec.to_builtins(answer)
    for tc in out["tool_calls"]:
        tc["function"]["arguments"] = json.loads(tc["function"]["arguments"])
    return out


def test_registry_has_both_protocols() -> None:
    assert set(ADAPTERS) == {"openai", "anthropic"}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_stream_and_response_agree(flavour: str, scenario: str) -> None:
    b = SCENARIOS[scenario]
    protocol, stream, response = _bodies(flavour, b)
    streamed = fold(decode_stream(protocol, stream))
    whole = fold(adapter_for(protocol).decode_response(response))
    assert _normal(streamed) == _normal(whole)
    # and both equal what was scripted
    assert streamed.text == (b.text or "")
    assert streamed.reasoning == (b.reasoning or "")
    expected_tools = [(t.name, json.loads(t.arguments) if isinstance(t.arguments, str) else t.arguments)
                      for t in b.tool_calls or ()]
    assert [(t.function["name"], json.loads(t.function["arguments"])) for t in streamed.tool_calls] == expected_tools
    assert streamed.finish_reason == (b.finish_reason or ("tool_calls" if b.tool_calls else "stop"))
    if b.input_tokens is not None:
        assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (b.input_tokens, b.output_tokens)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_thinking_signature_survives(flavour: str) -> None:
    protocol, stream, response = _bodies(flavour, SCENARIOS["reasoning"])
    sig = fold(decode_stream(protocol, stream)).reasoning_signature
    if flavour == "anthropic":
        assert sig == wire.signature_for("First think, then answer.")
    else:
        assert sig is None


@pytest.mark.parametrize(("wire_reason", "expected"), [
    ("sensitive", "content_filter"), ("model_context_window_exceeded", "length"),
    ("content_filter", "content_filter"), ("length", "length"), ("stop", "stop")])
def test_glm_finish_reasons(wire_reason: str, expected: str) -> None:
    _, stream, response = _bodies("glm", Behaviour(text="x", finish_reason=wire_reason))
    assert fold(decode_stream("openai", stream)).finish_reason == expected
    assert fold(adapter_for("openai").decode_response(response)).finish_reason == expected


def test_glm_network_error_finish_is_an_error_not_an_answer() -> None:
    _, stream, _ = _bodies("glm", Behaviour(text="partial", finish_reason="network_error"))
    with pytest.raises(UpstreamStreamError) as info:
        decode_stream("openai", stream)
    assert info.value.code == "network_error" and info.value.retryable


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_malformed_chunk_is_an_error(flavour: str) -> None:
    protocol, stream, _ = _bodies(flavour, SCENARIOS["text"])
    broken = stream.replace(b"\n\n", b"\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"brok\n\n", 1)
    with pytest.raises(UpstreamStreamError) as info:
        decode_stream(protocol, broken)
    assert info.value.code == "malformed_chunk"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_in_stream_error_event_is_an_error(flavour: str) -> None:
    protocol, stream, _ = _bodies(flavour, SCENARIOS["text"])
    head = stream.split(b"\n\n")[:3]
    err = wire.anthropic_stream_error("overloaded_error") if protocol == "anthropic" else wire.openai_stream_error("1305")
    with pytest.raises(UpstreamStreamError) as info:
        decode_stream(protocol, b"\n\n".join(head) + b"\n\n" + err)
    assert info.value.retryable
    assert info.value.code == ("overloaded_error" if protocol == "anthropic" else "1305")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_stream_prefix_is_an_error_or_complete(flavour: str) -> None:
    """Cut the stream after each message: complete (the whole stream's answer) once the finish
    arrived (``finish_reason`` / ``message_delta``'s ``stop_reason``), terminator or not; cut
    before it always ``stream_truncated``, never ``End``."""
    protocol, stream, _ = _bodies(flavour, SCENARIOS["text_then_tool"])
    parts = [p for p in stream.split(b"\n\n") if p]
    whole = fold(decode_stream(protocol, stream))
    finished_at = next(i for i, p in enumerate(parts)
                       if any(finishing(protocol, e, d) for e, d in sse_messages(p + b"\n\n")))
    for n in range(len(parts)):
        body = b"\n\n".join(parts[:n]) + b"\n\n" if n else b""
        if n <= finished_at:
            with pytest.raises(UpstreamStreamError) as info:
                decode_stream(protocol, body)
            assert info.value.code == "stream_truncated"
            continue
        events = decode_stream(protocol, body)
        assert isinstance(events[-1], End)
        answer = fold(events)
        if flavour == "openai" and n == finished_at + 1:  # OpenAI's usage chunk follows the finish
            answer.usage = whole.usage
        assert _normal(answer) == _normal(whole)
