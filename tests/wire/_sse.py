"""Feed recorded bodies through the same SSE parser (``router.sse``) and adapters as production.

The recorded bodies live in the repository (``tests/fixtures/wire``, with SOURCES.md and QUIRKS.md),
so a clone in any directory runs these tests."""

from __future__ import annotations

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
