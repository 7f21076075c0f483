"""The OpenAI Responses API door, ``POST /v1/responses``.

Wire facts: https://platform.openai.com/docs/api-reference/responses (request, the ``response``
object, its ``output`` items ``message`` / ``function_call`` / ``reasoning``) and
https://platform.openai.com/docs/api-reference/responses-streaming (``response.created``,
``response.in_progress``, ``response.output_item.added``/``.done``,
``response.content_part.added``/``.done``, ``response.output_text.delta``/``.done``,
``response.function_call_arguments.delta``/``.done``, ``response.reasoning_summary_part.added``/``.done``,
``response.reasoning_summary_text.delta``/``.done``, ``response.completed``, ``response.failed``;
every event carries ``type`` and ``sequence_number``). ``model`` names a task, alias, model id or
``provider/model`` as on every door; ``input`` is a string or items (messages with
``input_text`` / ``input_image`` / ``input_file`` / ``output_text`` parts, ``function_call`` and
``function_call_output`` items; earlier ``reasoning`` items are accepted and not sent on).
``instructions`` is the system prompt; ``text.format`` the structured output; function tools only.
``previous_response_id`` continues a conversation the router answered within ``RECENT_SECONDS``
(kept in the shared store, so any replica on the same Redis continues any replica's response;
earlier ``instructions`` are not carried, as OpenAI does); an unknown or expired id is a clear
400 naming the field (send the conversation in ``input``). Errors use the OpenAI envelope.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from router.doors.base import PathMap, canonical
from router.doors.openai import OpenAIDoor
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
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from router.request import TaskRequest, decode_body
from router.stores.base import Store, StoreError

__all__ = ["ResponsesDoor", "ResponsesRequest"]

_enc = msgspec.json.Encoder()
log = logging.getLogger("router.responses")
RECENT_SECONDS = 3600.0  # how long a response can be continued
RECENT_MAX_BYTES = 256 * 1024  # a conversation larger than this is not kept


class Recent:
    """The conversations of recent responses (canonical messages, the answer's included), kept in
    the router's store for ``RECENT_SECONDS`` under ``responses:{id}``: what ``previous_response_id``
    continues. With Redis every replica finds every replica's responses; the in-memory store keeps
    this process's (its own bound on entries applies)."""

    def __init__(self, ttl: float = RECENT_SECONDS) -> None:
        self.ttl = ttl

    async def put(self, store: Store, rid: str, req: TaskRequest, answer: dict[str, Any]) -> None:
        """Keep ``req``'s messages (not its system prompt) and the assistant's ``answer``, when
        they encode to at most ``RECENT_MAX_BYTES`` (a conversation full of images is not kept).
        A store that fails is logged, not raised: the answer is still served, and a follow-up
        naming it gets the 400 that says to send the conversation."""
        messages = [m for m in msgspec.to_builtins(req.messages) if m.get("role") != "system"]
        value = _enc.encode([*messages, answer])
        if len(value) > RECENT_MAX_BYTES:
            return
        try:
            await store.kv_set(f"responses:{rid}", value, self.ttl)
        except StoreError as e:
            log.warning("responses: %s not kept for previous_response_id (store: %s)", rid, e)

    async def get(self, store: Store, rid: str) -> list[dict[str, Any]] | None:
        """The conversation up to and including response ``rid``, or None when it is unknown or
        expired. Raises ``StoreError`` (answered 503) when the store fails."""
        raw = await store.kv_get(f"responses:{rid}")
        return None if raw is None else msgspec.json.decode(raw)


def _assistant(text: str, calls: list[tuple[str, str, str]]) -> dict[str, Any]:
    """An answer as the canonical assistant message: its text and tool calls (id, name, args)."""
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = [{"id": cid, "function": {"name": name, "arguments": args}} for cid, name, args in calls]
    return msg


class ResponsesRequest(msgspec.Struct):
    """The request; unknown fields are ignored, as OpenAI-compatible servers do."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)
_RENAMES = ((r"^max_tokens\b", "max_output_tokens"), (r"^response_format\.json_schema\b", "text.format"),
            (r"^response_format\b", "text.format"))


class ResponsesOptions(msgspec.Struct):
    """What the answer needs of the request: its ``model`` name, ``instructions`` and the store
    that keeps the response for ``previous_response_id``."""

    model: str
    instructions: str | None
    store: Store


def _part(p: Any, where: str) -> dict[str, Any]:
    kind = p.get("type") if isinstance(p, dict) else None
    if kind in ("input_text", "output_text") and isinstance(p.get("text"), str):
        return {"type": "text", "text": p["text"]}
    if kind == "input_image" and isinstance(p.get("image_url"), str):
        return {"type": "image_url", "image_url": {"url": p["image_url"], **({"detail": p["detail"]} if p.get("detail") else {})}}
    if kind == "input_file" and isinstance(p.get("file_data"), str):
        return {"type": "file", "file": {"file_data": p["file_data"], **({"filename": p["filename"]} if p.get("filename") else {})}}
    raise RequestError(f"content part type {kind!r} is not carried; send input_text, input_image (image_url) "
                       "or input_file (file_data)", f"{where}.type")


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError("content must be a string or a list of parts", where)
    parts = [_part(p, f"{where}[{j}]") for j, p in enumerate(content)]
    return "".join(p["text"] for p in parts) if all(p["type"] == "text" for p in parts) else parts


def _messages(r: ResponsesRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The canonical messages, and the ``input`` item each came from (for error paths)."""
    out: list[dict[str, Any]] = []
    origins: list[str] = []
    if r.instructions:
        out.append({"role": "system", "content": r.instructions})
        origins.append("instructions")
    if isinstance(r.input, str):
        out.append({"role": "user", "content": r.input})
        origins.append("input")
        return out, origins
    for i, item in enumerate(r.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in ("user", "system", "developer", "assistant"):
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _content(item.get("content", ""), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if out and out[-1]["role"] == "assistant" and origins[-1].startswith("input"):
                out[-1].setdefault("tool_calls", []).append(call)
                continue
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else _enc.encode(output).decode()})
        elif kind == "reasoning":  # an earlier answer's reasoning, echoed back: nothing to send on
            continue
        else:
            raise RequestError(f"input item type {kind!r} is not carried; send messages, function_call and "
                               "function_call_output items", f"{where}.type")
        origins.append(where)
    return out, origins


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools):
        if t.get("type") != "function":
            raise RequestError(f"tool type {t.get('type')!r} is not carried; only function tools", f"tools[{i}].type")
        fn = {"name": t.get("name"), "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
        for key in ("description", "strict"):
            if t.get(key) is not None:
                fn[key] = t[key]
        out.append({"type": "function", "function": fn})
    return out


def _usage(u: Any) -> dict[str, Any]:
    return {"input_tokens": u.input_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.output_tokens, "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.input_tokens + u.output_tokens, "cost_usd": u.cost_usd}


def _response(rid: str, model: str, opts: ResponsesOptions, status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, finish: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": "incomplete" if incomplete else status,
            "model": model, "output": output, "usage": usage, "error": error, "incomplete_details": incomplete,
            "instructions": opts.instructions, "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


class ResponsesDoor(OpenAIDoor):
    """``POST /v1/responses`` (see the module docstring); errors in the OpenAI envelope."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(max_body_bytes)
        self.recent = Recent()

    async def decode(self, body: bytes, headers: Mapping[str, str], store: Store) -> tuple[TaskRequest, ResponsesOptions]:  # type: ignore[override]
        r = decode_body(body, _decoder, self.max_body_bytes)
        messages, origins = _messages(r)
        if r.previous_response_id is not None:
            earlier = await self.recent.get(store, r.previous_response_id)
            if earlier is None:
                raise RequestError(f"response {r.previous_response_id!r} is not one of this router's recent responses; "
                                   "send the conversation in input", "previous_response_id")
            at = 1 if r.instructions else 0  # this request's instructions first, then the conversation so far
            messages[at:at] = earlier
            origins[at:at] = ["previous_response_id"] * len(earlier)
        obj: dict[str, Any] = {"task": r.model, "messages": messages, "stream": r.stream}
        if r.tools:
            obj["tools"] = _tools(r.tools)
        if r.tool_choice is not None:
            tc = r.tool_choice
            obj["tool_choice"] = tc if isinstance(tc, str) else {"type": "function", "function": {"name": tc.get("name")}}
        if r.max_output_tokens is not None:
            if r.max_output_tokens < 1:
                raise RequestError("max_output_tokens must be at least 1", "max_output_tokens")
            obj["max_tokens"] = r.max_output_tokens
        for key in ("temperature", "top_p", "metadata"):
            if getattr(r, key) is not None:
                obj[key] = getattr(r, key)
        fmt = (r.text or {}).get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            obj["response_format"] = {"type": "json_schema", "json_schema": {
                k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}}
        elif isinstance(fmt, dict) and fmt.get("type") in ("json_object", "text"):
            obj["response_format"] = {"type": fmt["type"]}
        if r.reasoning is not None:
            obj["thinking"] = r.reasoning.get("effort") not in ("none", "minimal")
        paths = PathMap(origins, {"tool_call_id": "call_id"}, _RENAMES)
        return canonical(obj, paths), ResponsesOptions(model=r.model, instructions=r.instructions, store=store)

    async def stream(self, events: AsyncIterator[Event], req: TaskRequest,  # type: ignore[override]
                     opts: ResponsesOptions) -> AsyncIterator[bytes]:
        seq = 0
        rid, model = "resp_" + secrets.token_hex(12), opts.model
        output: list[dict[str, Any]] = []
        usage: dict[str, Any] | None = None
        item: dict[str, Any] | None = None  # the open output item
        texts: list[str] = []
        reasoning: list[str] = []

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            seq += 1
            return b"event: " + kind.encode() + b"\ndata: " + _enc.encode({"type": kind, "sequence_number": seq - 1, **fields}) + b"\n\n"

        def close() -> bytes:  # the open item's done events
            nonlocal item
            out = b""
            if item is None:
                return out
            index = len(output)
            if item["type"] == "reasoning":
                text = "".join(reasoning)
                summary = {"type": "summary_text", "text": text}
                out += event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                             summary_index=0, text=text)
                out += event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                             summary_index=0, part=summary)
                item = {**item, "summary": [summary]}
            elif item["type"] == "message":
                text = "".join(texts)
                part = {"type": "output_text", "text": text, "annotations": []}
                out += event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=text)
                out += event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part)
                item = {**item, "status": "completed", "content": [part]}
            out += event("response.output_item.done", output_index=index, item=item)
            output.append(item)
            item = None
            return out

        def open_(new: dict[str, Any]) -> bytes:
            nonlocal item
            out = close()
            item = new
            return out + event("response.output_item.added", output_index=len(output), item=new)

        async for ev in events:
            match ev:
                case Start(model=m):
                    model = m or model
                    skeleton = _response(rid, model, opts, "in_progress", [], None)
                    yield event("response.created", response=skeleton) + event("response.in_progress", response=skeleton)
                case ReasoningDelta(text=t) if t:
                    out = b""
                    if item is None or item["type"] != "reasoning":
                        reasoning.clear()
                        rs = {"type": "reasoning", "id": "rs_" + secrets.token_hex(8), "summary": []}
                        out += open_(rs) + event("response.reasoning_summary_part.added", item_id=rs["id"],
                                                 output_index=len(output), summary_index=0,
                                                 part={"type": "summary_text", "text": ""})
                    reasoning.append(t)
                    assert item is not None
                    yield out + event("response.reasoning_summary_text.delta", item_id=item["id"],
                                      output_index=len(output), summary_index=0, delta=t)
                case TextDelta(text=t):
                    out = b""
                    if item is None or item["type"] != "message":
                        texts.clear()
                        msg = {"type": "message", "id": "msg_" + secrets.token_hex(8), "status": "in_progress",
                               "role": "assistant", "content": []}
                        out += open_(msg) + event("response.content_part.added", item_id=msg["id"], output_index=len(output),
                                                  content_index=0, part={"type": "output_text", "text": "", "annotations": []})
                    texts.append(t)
                    assert item is not None
                    yield out + event("response.output_text.delta", item_id=item["id"], output_index=len(output),
                                      content_index=0, delta=t)
                case ToolCallStart(id=cid, name=name):
                    fc = {"type": "function_call", "id": "fc_" + secrets.token_hex(8), "call_id": cid, "name": name,
                          "arguments": "", "status": "in_progress"}
                    yield open_(fc)
                case ToolCallDelta(arguments=a) if item is not None and item["type"] == "function_call":
                    yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=len(output), delta=a)
                case ToolCallEnd(arguments=a) if item is not None and item["type"] == "function_call":
                    item = {**item, "arguments": a, "status": "completed"}
                    yield event("response.function_call_arguments.done", item_id=item["id"], output_index=len(output),
                                arguments=a) + close()
                case Usage():
                    usage = _usage(ev)
                case Fallback(from_=a, to=b, reason=why):
                    yield f": fallback {a} -> {b} ({why})\n\n".encode()
                case End(finish_reason=fr):
                    out = close()
                    text = "".join(c["text"] for o in output if o["type"] == "message" for c in o["content"])
                    calls = [(o["call_id"], o["name"], o["arguments"]) for o in output if o["type"] == "function_call"]
                    await self.recent.put(opts.store, rid, req, _assistant(text, calls))
                    yield out + event("response.completed", response=_response(rid, model, opts, "completed", output, usage, fr))
                case Error(code=code, message=message):
                    yield event("response.failed", response=_response(rid, model, opts, "failed", output, usage,
                                                                      error={"code": code, "message": message}))

    async def answer(self, answer: Answer, req: TaskRequest, opts: ResponsesOptions) -> bytes:  # type: ignore[override]
        output: list[dict[str, Any]] = []
        if answer.reasoning:
            output.append({"type": "reasoning", "id": "rs_" + secrets.token_hex(8),
                           "summary": [{"type": "summary_text", "text": answer.reasoning}]})
        if answer.text:
            output.append({"type": "message", "id": "msg_" + secrets.token_hex(8), "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": answer.text, "annotations": []}]})
        for tc in answer.tool_calls:
            output.append({"type": "function_call", "id": "fc_" + secrets.token_hex(8), "call_id": tc.id,
                           "name": tc.function["name"], "arguments": tc.function["arguments"], "status": "completed"})
        rid = "resp_" + secrets.token_hex(16)  # ours: never derived from the caller's X-Request-ID
        await self.recent.put(opts.store, rid, req, _assistant(answer.text, [(t.id, t.function["name"], t.function["arguments"])
                                                           for t in answer.tool_calls]))
        body = _response(rid, answer.model or opts.model, opts, "completed", output, _usage(answer.usage),
                         answer.finish_reason)
        return _enc.encode(body)

    def error_event(self, err: RouterError, seq: int) -> bytes:
        body = {"type": "error", "sequence_number": seq, "code": getattr(err, "code", None) or err.type,
                "message": err.message, "param": getattr(err, "path", None)}
        return b"event: error\ndata: " + _enc.encode(body) + b"\n\n"

