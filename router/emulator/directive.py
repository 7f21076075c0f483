"""The emulator's directive language (DESIGN.md, "Upstream emulator").

A request scripts the emulator with a line ``emulate: {json}`` in a message's text; the last
message carrying one wins. The JSON maps a model name, or ``*``, to a ``Behaviour``::

    emulate: {"glm-4.6": {"status": 429, "retry_after": 1, "times": 1}, "*": {"text": "hi"}}
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = ["Behaviour", "DirectiveError", "ToolCallSpec", "find_directive", "select"]

_LINE = re.compile(r"^\s*emulate:\s*(\{.*\})\s*$", re.MULTILINE)


class ToolCallSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A tool call to answer with; ``arguments`` as JSON text or an object."""

    name: str
    arguments: str | dict[str, Any] = "{}"
    id: str | None = None


class Behaviour(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What the emulator does for one model. Times are milliseconds.

    ``text``/``reasoning``/``tool_calls``: the answer. ``input_tokens``/``output_tokens``: usage
    to report (estimated from the text when absent); ``cached_tokens``, ``cache_write_tokens``
    (and ``cache_write_1h_tokens``): the parts of the prompt read from and written to the cache,
    sent in each protocol's own fields. ``finish_reason``: the wire value to send
    (e.g. GLM ``sensitive``). ``status``/``error_code``/``retry_after``: an HTTP error answer
    (``status: 200`` with an ``error_code``: the error in a 200 JSON body, as Z.ai sends 1305);
    ``error_message`` its message text; with ``times`` only the first N identical requests fail. ``delay_ms``: wait before the first
    byte; ``chunk_delay_ms``: between chunks; ``chunks``: how many pieces the text is cut into.
    ``cut_after``: drop the connection after N chunks (with ``error_code`` and no ``status``: send
    the provider's in-stream error event there instead); a non-streamed answer is dropped halfway. ``malformed``: send a broken chunk (after
    chunk N when a number). ``no_terminator``: end a stream without its terminator (``data: [DONE]``,
    ``message_stop``), after the finish and the usage. ``hang``: never answer. ``replay``: send a recorded body file from the
    ``--fixtures`` directory.
    """

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallSpec] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0  # of input_tokens (the whole prompt): read from the prompt cache
    cache_write_tokens: int = 0  # of input_tokens: written to it (Anthropic), cache_write_1h_tokens of those for 1 h
    cache_write_1h_tokens: int = 0
    finish_reason: str | None = None
    status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    times: int | None = None
    delay_ms: float = 0
    chunk_delay_ms: float = 0
    chunks: int | None = None
    cut_after: int | None = None
    malformed: bool | int = False
    hang: bool = False
    no_terminator: bool = False
    replay: str | None = None


class DirectiveError(ValueError):
    """The ``emulate:`` line is not valid JSON of model -> Behaviour."""


_decoder = msgspec.json.Decoder(dict[str, Behaviour])


def _texts(content: Any) -> list[str]:
    """Text of an OpenAI or Anthropic ``content`` (string, parts or blocks, tool results too)."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif "content" in part:
                    out += _texts(part["content"])
    return out


def find_directive(body: dict[str, Any]) -> dict[str, Behaviour]:
    """The directive of the last message (system prompt first, then messages in order) that
    carries one; ``{}`` when none does. Raises ``DirectiveError``."""
    sources: list[Any] = [body.get("system")] + [m.get("content") for m in body.get("messages") or ()
                                                  if isinstance(m, dict)]
    found: str | None = None
    for content in sources:
        for text in _texts(content):
            for m in _LINE.finditer(text):
                found = m.group(1)
    if found is None:
        return {}
    try:
        return _decoder.decode(found)
    except msgspec.DecodeError as e:
        raise DirectiveError(f"bad emulate directive: {e}") from None


def select(directive: dict[str, Behaviour], model: str) -> Behaviour:
    """The behaviour for ``model``: its own entry, else ``*``, else the default answer."""
    return directive.get(model) or directive.get("*") or Behaviour()
