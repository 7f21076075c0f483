"""The failover issue's behaviours over real processes, with the official SDKs as clients: a
silent primary, a stream whose status waits for its commit, a stream without its terminator,
a hedged slow first token, and who answered."""

from __future__ import annotations

import json
import time
import uuid

import anthropic
import httpx
import openai
import pytest

from tests.e2e._client import directive

pytestmark = pytest.mark.e2e

GLM, CLAUDE = "glm-4.6", "claude-sonnet-5-5"


def say(spec: dict) -> str:  # type: ignore[type-arg]
    return uuid.uuid4().hex[:8] + "\n" + directive(spec)


def test_a_silent_primary_is_left_after_one_first_token_timeout_streamed_or_not(oai: openai.OpenAI,
                                                                                  ant: anthropic.Anthropic) -> None:
    spec = {GLM: {"hang": True}, CLAUDE: {"text": "from claude"}}
    t0 = time.monotonic()
    r = oai.chat.completions.create(model="failover", messages=[{"role": "user", "content": say(spec)}])
    took = time.monotonic() - t0
    assert r.choices[0].message.content == "from claude" and r.model == CLAUDE
    assert 0.25 <= took < 2.0  # one 0.25 s first-token timeout, no retry of the silent target
    t0 = time.monotonic()
    with ant.messages.stream(model="failover", max_tokens=64, messages=[{"role": "user", "content": say(spec)}]) as s:
        final = s.get_final_message()
    assert final.model == CLAUDE and final.content[0].text == "from claude"  # type: ignore[union-attr]
    assert time.monotonic() - t0 < 2.5


def test_a_streams_status_waits_for_its_commit(oai: openai.OpenAI, router: str) -> None:
    failing = {GLM: {"status": 503}, CLAUDE: {"status": 503}}
    with pytest.raises(openai.APIStatusError) as info:  # not a 200 stream that says so
        list(oai.chat.completions.create(model="failover", stream=True,
                                         messages=[{"role": "user", "content": say(failing)}]))
    assert info.value.status_code == 502
    with httpx.stream("POST", router + "/v1/chat/completions", timeout=10, json={
            "model": "failover", "stream": True,
            "messages": [{"role": "user", "content": say({GLM: {"status": 503}, CLAUDE: {"text": "x"}})}]}) as r:
        assert r.status_code == 200
        assert (r.headers["x-llm-router-target"], r.headers["x-llm-router-task"]) == ("claude/" + CLAUDE, "failover")
        assert '"model":"claude-sonnet-5-5"' in r.read().decode()


def test_streams_without_their_terminator_are_complete(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    spec = {"*": {"text": "whole answer", "no_terminator": True, "input_tokens": 9, "output_tokens": 2}}
    chunks = list(oai.chat.completions.create(model="glm_task", stream=True, stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": say(spec)}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "whole answer"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    with ant.messages.stream(model="claude_task", max_tokens=64, messages=[{"role": "user", "content": say(spec)}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 2


def test_a_slow_first_token_is_hedged(oai: openai.OpenAI) -> None:
    spec = {GLM: {"delay_ms": 3000, "text": "slow"}, CLAUDE: {"text": "hedge"}}
    t0 = time.monotonic()
    r = oai.chat.completions.create(model="hedged", messages=[{"role": "user", "content": say(spec)}])
    assert r.choices[0].message.content == "hedge" and r.model == CLAUDE
    assert 0.15 <= time.monotonic() - t0 < 2.0
    outcomes = [(a["target"], a["outcome"]) for a in r.model_extra["router"]["attempts"]]  # type: ignore[index]
    assert outcomes == [("glm/glm-4.6", "cancelled"), ("claude/claude-sonnet-5-5", "ok")]


def test_a_recovered_primary_gets_traffic_back_within_its_cooldown(oai: openai.OpenAI) -> None:
    """``cooldown: {failures: 2, duration: 0.3}``: tripped, a failed probe re-opens for 0.3 s
    again (not 0.6 s), and the next probe after the recovery serves."""
    down = {"glm-flaky": {"status": 503}, CLAUDE: {"text": "fallback"}}

    def ask(spec: dict) -> str:  # type: ignore[type-arg]
        r = oai.chat.completions.create(model="recovering", messages=[{"role": "user", "content": say(spec)}])
        return r.model

    assert [ask(down), ask(down)] == [CLAUDE, CLAUDE]  # two failures: tripped
    assert ask({}) == CLAUDE  # skipped while cooling
    time.sleep(0.35)  # a real cooldown on a real process: nothing here to inject a clock into
    assert ask(down) == CLAUDE  # the probe fails: open for `duration` again
    time.sleep(0.35)
    assert ask({}) == "glm-flaky"  # recovered: the probe serves
    assert [ask({}) for _ in range(3)] == ["glm-flaky"] * 3


def test_the_anthropic_sdks_count_tokens(ant: anthropic.Anthropic) -> None:
    counted = ant.messages.count_tokens(model="claude_task", messages=[{"role": "user", "content": "Count me, please."}])
    assert counted.input_tokens > 0


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
          "required": ["city", "temp"], "additionalProperties": False}


def test_structured_output_and_images_through_both_sdks(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
    good = oai.chat.completions.create(model="glm_task", response_format=rf,  # type: ignore[arg-type]
                                       messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert json.loads(good.choices[0].message.content or "") == {"city": "", "temp": 0}  # the emulator's example
    with pytest.raises(openai.APIStatusError) as info:  # every target answered invalid JSON: the SDK raises
        oai.chat.completions.create(model="glm_task", response_format=rf,  # type: ignore[arg-type]
                                    messages=[{"role": "user", "content": say({"*": {"text": "not json"}})}])
    assert info.value.status_code == 502 and "invalid_output" in str(info.value.body)
    m = ant.messages.create(model="claude_task", max_tokens=64, messages=[{"role": "user", "content": "Weather?"}],
                            extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}})
    assert json.loads(m.content[0].text) == {"city": "", "temp": 0}  # type: ignore[union-attr]
    oc = {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    with pytest.raises(anthropic.APIStatusError) as refused:  # invalid from every target, not streamed: a 502
        ant.messages.create(model="claude_task", max_tokens=64, extra_body=oc,
                            messages=[{"role": "user", "content": say({"*": {"text": '{"city": 1}'}})}])
    assert refused.value.status_code == 502 and "does not match" in str(refused.value.body)
    with pytest.raises(anthropic.APIStatusError, match="does not match|invalid_output"), \
            ant.messages.stream(model="claude_task", max_tokens=64, extra_body=oc,
                                messages=[{"role": "user", "content": say({"*": {"text": '{"city": "x"}'}})}]) as s:
        s.get_final_message()  # streamed, then found invalid: the stream's error event, which the SDK raises
    png = "iVBORw0KGgo="
    r = oai.chat.completions.create(model="claude_task", messages=[{"role": "user", "content": [  # type: ignore[list-item]
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]}])
    assert r.choices[0].message.content == "I see 1 image(s) or document(s) (the claude-sonnet-5-5 emulator)."
    a = ant.messages.create(model="claude_task", max_tokens=64, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "text", "text": "And this?"}]}])
    assert "1 image(s)" in a.content[0].text  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError):  # glm_task's model has no vision
        oai.chat.completions.create(model="glm_task", messages=[{"role": "user", "content": [  # type: ignore[list-item]
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]}])
