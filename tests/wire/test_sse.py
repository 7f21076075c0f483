"""The SSE parser (``router.sse``) on every recorded stream, in every framing an upstream may use,
and on the corner cases of the WHATWG rules. httpx-sse's public ``EventSource`` is the oracle."""

from __future__ import annotations

import httpx
import pytest
from httpx_sse import EventSource

from router.sse import SSEParser
from tests.wire._sse import WIRE

STREAMS = sorted(str(p.relative_to(WIRE)) for p in WIRE.glob("*/*.sse"))


def _chunks(parser: SSEParser, chunks: list[bytes]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for c in chunks:
        out += parser.feed(c)
    return out


def _oracle(body: bytes) -> list[tuple[str, str]]:
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    return [(m.event if m.event != "message" else "", m.data) for m in EventSource(resp).iter_sse()]


def test_every_recorded_stream_is_covered() -> None:
    assert len(STREAMS) >= 10


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("framing", ["whole", "1-byte", "crlf-1-byte", "cr-only", "bom-crlf", "per-event"])
def test_framings_agree(name: str, framing: str) -> None:
    body = (WIRE / name).read_bytes().replace(b"\r\n", b"\n")
    expected = SSEParser().feed(body)
    assert expected and expected == _oracle(body)
    if framing == "whole":
        got = SSEParser().feed(body)
    elif framing == "1-byte":
        got = _chunks(SSEParser(), [body[i:i + 1] for i in range(len(body))])
    elif framing == "crlf-1-byte":
        crlf = body.replace(b"\n", b"\r\n")
        got = _chunks(SSEParser(), [crlf[i:i + 1] for i in range(len(crlf))])
    elif framing == "per-event":  # one read per event, as a paced upstream sends them (the parser's fast path)
        got = _chunks(SSEParser(), [e + b"\n\n" for e in body.split(b"\n\n") if e] + [b"\n"] * body.endswith(b"\n\n\n"))
    elif framing == "cr-only":
        cr = body.replace(b"\n", b"\r")
        got = _chunks(SSEParser(), [cr[i:i + 7] for i in range(0, len(cr), 7)])
    else:
        bom = b"\xef\xbb\xbf" + body.replace(b"\n", b"\r\n")
        got = _chunks(SSEParser(), [bom[i:i + 2] for i in range(0, len(bom), 2)])
    assert got == expected


def test_a_one_line_event_read_alone_keeps_what_came_before_it() -> None:
    """The fast path for a read of exactly one ``data:`` event applies only with nothing pending."""
    p = SSEParser()
    assert p.feed(b"data: first\n\n") == [("", "first")]
    assert p.feed(b"data: x\n\n") == [("", "x")]
    assert p.feed(b"event: named\n") == [] and p.feed(b"data: y\n\n") == [("named", "y")]
    assert p.feed(b"data: a\n") == [] and p.feed(b"data: b\n\n") == [("", "a\nb")]
    assert p.feed(b"data: par") == [] and p.feed(b"data: tial\n\n") == [("", "pardata: tial")]
    assert p.feed(b"data: cr\r") == [] and p.feed(b"\ndata: z\n\n") == [("", "cr\nz")]
    assert p.feed(b"data: caf\xc3\xa9\n\n") == [("", "caf\u00e9")]


def test_rules() -> None:
    p = SSEParser()
    assert p.feed(b": a comment\n") == []
    assert p.feed(b"event: ping\ndata:a\ndata:  b\n\n") == [("ping", "a\n b")]
    assert p.feed(b"data\n\n") == [("", "")]  # a field with no colon: empty value, still data
    assert p.feed(b"event: lonely\n\n") == []  # no data line: dropped, and the type is reset
    assert p.feed(b"data: x\n\n") == [("", "x")]
    assert p.feed(b"event: message\ndata: y\n\n") == [("", "y")]
    assert p.feed(b"id: 7\nretry: 10\ndata: z\n\n") == [("", "z")]
    assert p.feed(b"") == []


def test_split_character_and_cr_lf_across_chunks() -> None:
    p = SSEParser()
    snow = "data: \u2603\n\n".encode()
    assert p.feed(snow[:7]) == [] and p.feed(snow[7:]) == [("", "\u2603")]
    assert p.feed(b"data: a\r") == [] and p.feed(b"\n\r\n") == [("", "a")]
    assert p.feed(b"data: bad \xff\n\n") == [("", "bad \ufffd")]


def test_unterminated_event_is_never_dispatched() -> None:
    p = SSEParser()
    assert p.feed(b"data: {\"partial\": tr") == []
    assert p.feed(b"ue}\n") == []  # the line ended, the event did not
