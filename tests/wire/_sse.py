"""Feed recorded bodies through the same SSE parser (``router.sse``) and adapters as production.

The recorded bodies live in the repository (``tests/fixtures/wire``, with SOURCES.md and QUIRKS.md),
so a clone in any directory runs these tests."""

from __future__ import annotations

import json
from pathlib import Path

from providers import adapter_for
from router.events import Event
from router.sse import SSEParser

WIRE = Path(__file__).resolve().parents[1] / "fixtures" / "wire"


def sse_messages(body: bytes) -> list[tuple[str, str]]:
    """(event, data) of each SSE message in a recorded body."""
    return SSEParser().feed(body)


def decode_stream(protocol: str, body: bytes) -> list[Event]:
    """Every event the adapter yields for a whole recorded stream, ``finish()`` included."""
    dec = adapter_for(protocol).stream_decoder()
    out: list[Event] = []
    for event, data in sse_messages(body):
        out += dec.feed(event, data)
    return out + dec.finish()


def finishing(protocol: str, event: str, data: str) -> bool:
    """Whether this SSE message delivers the answer's finish: an OpenAI chunk with a
    ``finish_reason``, an Anthropic ``message_delta`` with a ``stop_reason``. A stream is complete
    from this message on, its terminator (``[DONE]``, ``message_stop``) or not."""
    if data == "[DONE]" or not data.startswith("{"):
        return False
    obj = json.loads(data)
    if protocol == "anthropic":
        return obj.get("type") == "message_delta" and bool((obj.get("delta") or {}).get("stop_reason"))
    return any(c.get("finish_reason") for c in obj.get("choices") or ())
