from __future__ import annotations

import json

import pytest

from router.errors import PayloadTooLarge, RequestError
from router.request import decode_task_request


def _decode(obj: object, limit: int = 1 << 20):  # type: ignore[no-untyped-def]
    return decode_task_request(json.dumps(obj).encode(), limit)


def _path(obj: object) -> str | None:
    with pytest.raises(RequestError) as info:
        _decode(obj)
    return info.value.path


USER = [{"role": "user", "content": "hi"}]


def test_good_request() -> None:
    req = _decode({"task": "t", "messages": [{"role": "system", "content": [{"type": "text", "text": "a"},
                                                                             {"type": "text", "text": "b"}]}],
                   "stream": True, "metadata": {"user": "u-1"}})
    assert req.messages[0].text() == "ab" and req.stream and req.metadata == {"user": "u-1"}


def test_paths_name_the_field() -> None:
    assert _path({"task": "t"}) == "messages"
    assert _path({"task": "t", "messages": [{"content": "x"}]}) == "messages[0].role"
    assert _path({"task": "t", "messages": USER, "max_token": 5}) == "max_token"
    assert _path({"task": "t", "messages": [{"role": "robot", "content": "x"}]}) == "messages[0].role"
    assert _path({"task": "t", "messages": "hi"}) == "messages"
    assert _path({"task": "t", "messages": USER, "max_tokens": "many"}) == "max_tokens"
    assert _path({"task": "t", "messages": []}) == "messages"
    assert _path({"task": "t", "messages": USER, "temperature": 9}) == "temperature"


def test_missing_messages_message() -> None:
    with pytest.raises(RequestError) as info:
        _decode({"task": "t"})
    assert "messages" in info.value.message


def test_unknown_field_is_rejected_by_name() -> None:
    with pytest.raises(RequestError) as info:
        _decode({"task": "t", "messages": USER, "max_token": 5})
    assert "max_token" in info.value.message


def test_malformed_json() -> None:
    with pytest.raises(RequestError) as info:
        decode_task_request(b'{"task": "t", "messages": [', 1000)
    assert info.value.message.startswith("malformed JSON")


def test_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_task_request(b" " * 101, 100)


def test_tool_history_checks() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ok = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]},
          {"role": "tool", "tool_call_id": "c1", "content": "r"}]
    assert len(_decode({"task": "t", "messages": ok}).messages) == 3
    orphan = [*USER, {"role": "tool", "tool_call_id": "c9", "content": "r"}]
    assert _path({"task": "t", "messages": orphan}) == "messages[1].tool_call_id"
    before = [*USER, {"role": "tool", "tool_call_id": "c1", "content": "r"},
              {"role": "assistant", "tool_calls": [call]}]
    assert _path({"task": "t", "messages": before}) == "messages[1].tool_call_id"
    bad_args = [*USER, {"role": "assistant", "tool_calls": [{**call, "function": {"name": "f", "arguments": "[1]"}}]}]
    assert _path({"task": "t", "messages": bad_args}) == "messages[1].tool_calls[0].function.arguments"
    user_calls = [{"role": "user", "content": "x", "tool_calls": [call]}]
    assert _path({"task": "t", "messages": user_calls}) == "messages[0].tool_calls"


def test_tool_choice_must_name_a_tool() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    choice = {"type": "function", "function": {"name": "g"}}
    assert _path({"task": "t", "messages": USER, "tools": tools, "tool_choice": choice}) == "tool_choice.function.name"
