"""Helpers for talking to the router as a client would."""

from __future__ import annotations

import json
from typing import Any

import httpx
from httpx_sse import EventSource


def directive(spec: dict[str, Any]) -> str:
    """An ``emulate:`` line scripting the emulator."""
    return "emulate: " + json.dumps(spec)


def ask(text: str, spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One user message, with a directive line when ``spec`` is given."""
    return [{"role": "user", "content": text + ("\n" + directive(spec) if spec else "")}]


def stream_events(client: httpx.Client, url: str, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """POST a streaming task; every SSE message's data, after checking event name == data.type.
    (Not httpx-sse's ``connect_sse``: it always sends ``Cache-Control: no-store``.)"""
    out = []
    with client.stream("POST", url + "/v1/tasks", json={**body, "stream": True},
                       headers={"accept": "text/event-stream", **(headers or {})}) as response:
        es = EventSource(response)
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for sse in es.iter_sse():
            data = json.loads(sse.data)
            assert data["type"] == sse.event
            out.append(data)
    assert [e["seq"] for e in out] == list(range(len(out)))
    assert sum(e["type"] in ("end", "error") for e in out) == 1 and out[-1]["type"] in ("end", "error")
    return out


def fold_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client assembles from a stream: the same fields as the non-streaming answer."""
    start = next(e for e in events if e["type"] == "start")
    usage = next((e for e in events if e["type"] == "usage"), {})
    end = events[-1]
    return {
        "provider": start["provider"], "model": start["model"],
        "text": "".join(e["text"] for e in events if e["type"] == "text.delta"),
        "reasoning": "".join(e.get("text", "") for e in events if e["type"] == "reasoning.delta"),
        "reasoning_signature": next((e["signature"] for e in events
                                     if e["type"] == "reasoning.delta" and e.get("signature")), None),
        "tool_calls": [(e["id"], e["name"], json.loads(e["arguments"]))
                       for e in events if e["type"] == "tool_call.end"],
        "finish_reason": end.get("finish_reason"),
        "usage": {k: v for k, v in usage.items() if k not in ("type", "seq")},
    }


def answer_fields(answer: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming answer in ``fold_events``'s terms. Tool arguments are compared as JSON
    values: Anthropic returns ``input`` as an object when not streaming, so only whitespace may
    differ from the streamed text."""
    keys = ("provider", "model", "text", "reasoning", "reasoning_signature", "finish_reason", "usage")
    out = {k: answer[k] for k in keys}
    out["tool_calls"] = [(t["id"], t["function"]["name"], json.loads(t["function"]["arguments"]))
                         for t in answer["tool_calls"]]
    return out
