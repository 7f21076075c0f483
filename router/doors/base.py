"""The door interface, and what the doors share.

A door is stateless: ``decode`` (body -> canonical request + the door's own options), ``stream``
(unified events -> the door's stream bytes), ``answer`` (folded answer -> the door's JSON),
``error`` (a router error -> status and body in the door's error shape, for every status) and
``error_event`` (a router error -> the door's terminal stream event, for a failure after a stream
began: the HTTP status is already sent, so the stream must say it failed).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import msgspec

from router.errors import RequestError, RouterError
from router.events import Answer, Event
from router.request import TaskRequest, check_request, msgspec_error_path

__all__ = ["Door", "canonical", "error_headers"]


class Door(Protocol):
    """One client protocol."""

    media_type: str  # of non-streamed answers and errors

    def decode(self, body: bytes, headers: Mapping[str, str]) -> tuple[TaskRequest, Any]:
        """The canonical request and door options; raises ``RequestError``/``PayloadTooLarge``."""
        ...

    def stream(self, events: AsyncIterator[Event], req: TaskRequest, opts: Any) -> AsyncIterator[bytes]:
        """The door's stream bytes for these events (one chunk per event at most)."""
        ...

    def answer(self, answer: Answer, req: TaskRequest, opts: Any) -> bytes:
        """The door's JSON for a complete answer."""
        ...

    def error(self, err: RouterError) -> tuple[int, bytes]:
        """Status and body of an error answered before any stream began."""
        ...

    def error_event(self, err: RouterError, seq: int) -> bytes:
        """The door's terminal error event for ``err`` (``seq``: the next event number)."""
        ...


def error_headers(err: RouterError) -> dict[str, str]:
    """Headers every door sends with an error: ``Retry-After`` on 429, the rate-limit headers."""
    out: dict[str, str] = dict(getattr(err, "headers", {}) or {})
    if err.status == 429:
        out["retry-after"] = str(max(1, math.ceil(getattr(err, "retry_after", None) or 1)))
    return out


def canonical(obj: dict[str, Any], field_prefix: str = "") -> TaskRequest:
    """Convert a dict in the canonical shape to a checked ``TaskRequest``; errors name the field
    (``field_prefix`` maps canonical paths back to the door's own names where they differ)."""
    try:
        req = msgspec.convert(obj, TaskRequest)
    except msgspec.ValidationError as e:
        msg, path = msgspec_error_path(e)
        raise RequestError(msg, (field_prefix + path) if path else None) from None
    check_request(req)
    return req
