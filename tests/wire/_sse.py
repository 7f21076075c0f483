"""Feed recorded bodies through the same SSE parser (httpx-sse) and adapters as production."""

from __future__ import annotations

from pathlib import Path

import httpx
from httpx_sse import EventSource

from providers import adapter_for
from router.events import Event

WIRE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wire"


def sse_messages(body: bytes) -> list[tuple[str, str]]:
    """(event, data) of each SSE message in a recorded body."""
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    return [(m.event if m.event != "message" else "", m.data) for m in EventSource(resp).iter_sse()]


def decode_stream(protocol: str, body: bytes) -> list[Event]:
    """Every event the adapter yields for a whole recorded stream, ``finish()`` included."""
    dec = adapter_for(protocol).stream_decoder()
    out: list[Event] = []
    for event, data in sse_messages(body):
        out += dec.feed(event, data)
    return out + dec.finish()
