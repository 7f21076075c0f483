"""The door interface, and what the doors share.

A door keeps no state of its own: ``decode`` (body -> canonical request + the door's own options;
it may read the shared store, as the Responses door does for ``previous_response_id``), ``stream``
(unified events -> the door's stream bytes), ``answer`` (folded answer -> the door's JSON),
``error`` (a router error -> status and body in the door's error shape, for every status) and
``error_event`` (a router error -> the door's terminal stream event, for a failure after a stream
began: the HTTP status is already sent, so the stream must say it failed).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from router.errors import RequestError, RouterError
from router.events import Answer, Event
from router.request import TaskRequest, check_request, msgspec_error_path
from router.stores.base import Store

__all__ = ["Door", "PathMap", "canonical", "error_headers"]


class Door(Protocol):
    """One client protocol."""

    media_type: str  # of non-streamed answers and errors
    # whether its stream can tell the caller that the answer starts over (a second ``start``);
    # where it cannot, a task's ``midstream: restart`` acts as ``error``: two answers are never
    # spliced into one
    restarts: bool
    # whether ``"mode": "async"`` / ``Prefer: respond-async`` queue the request (``/v1/tasks`` only)
    queues: bool

    async def decode(self, body: bytes, headers: Mapping[str, str], store: Store) -> tuple[TaskRequest, Any]:
        """The canonical request and door options; ``store`` is the router's shared store (Redis
        or in-memory) for a door whose requests continue earlier answers. Raises
        ``RequestError``/``PayloadTooLarge`` (and ``StoreError`` when the store fails)."""
        ...

    def stream(self, events: AsyncIterator[Event], req: TaskRequest, opts: Any) -> AsyncIterator[bytes]:
        """The door's stream bytes for these events (one chunk per event at most)."""
        ...

    async def answer(self, answer: Answer, req: TaskRequest, opts: Any) -> bytes:
        """The door's JSON for a complete answer (a door may record the answer first, as the
        Responses door does, so a follow-up to any replica finds it)."""
        ...

    def error(self, err: RouterError) -> tuple[int, bytes]:
        """Status and body of an error answered before any stream began."""
        ...

    def error_event(self, err: RouterError, seq: int) -> bytes:
        """The door's terminal error event for ``err`` (``seq``: the next event number)."""
        ...


def error_headers(err: RouterError) -> dict[str, str]:
    """Headers every door sends with an error: ``Retry-After`` on 429 (always) and on 503 (when
    the moment is known: a chain cooling down), the rate-limit headers."""
    out: dict[str, str] = dict(getattr(err, "headers", {}) or {})
    wait = getattr(err, "retry_after", None)
    if err.status == 429 or (err.status == 503 and wait is not None):
        out["retry-after"] = str(max(1, math.ceil(wait or 1)))
    return out


_MESSAGE = re.compile(r"messages\[(\d+)\](?:\.([A-Za-z_]+))?")


class PathMap(msgspec.Struct, frozen=True):
    """How a door's request maps onto the canonical one, for error paths: ``origins[k]`` is the
    door's path of canonical message ``k`` (a door may add, drop or split messages), ``fields``
    renames a message's field (``tool_call_id`` -> ``tool_use_id``), ``renames`` are
    ``(pattern, replacement)`` rewrites of the rest (``stop`` -> ``stop_sequences``)."""

    origins: Sequence[str] = ()
    fields: Mapping[str, str] = msgspec.field(default_factory=dict)
    renames: Sequence[tuple[str, str]] = ()

    def __call__(self, path: str | None) -> str | None:
        """``path`` (canonical) in the door's terms."""
        if path is None:
            return None
        m = _MESSAGE.match(path)
        if m is not None and int(m.group(1)) < len(self.origins):
            field, rest = m.group(2), path[m.end():]
            where = self.origins[int(m.group(1))]
            return where + rest if field is None else f"{where}.{self.fields.get(field, field)}{rest}"
        for pattern, replacement in self.renames:
            path = re.sub(pattern, replacement, path)
        return path


def canonical(obj: dict[str, Any], paths: PathMap | None = None) -> TaskRequest:
    """Convert a dict in the canonical shape to a checked ``TaskRequest``; errors name the field
    in the door's own terms (``paths``). Raises ``RequestError``."""
    try:
        try:
            req = msgspec.convert(obj, TaskRequest)
        except msgspec.ValidationError as e:
            msg, path = msgspec_error_path(e)
            raise RequestError(msg, path) from None
        check_request(req)
    except RequestError as e:
        if paths is None:
            raise
        raise RequestError(e.message, paths(e.path)) from None
    return req
