"""One request id per request, on every answer: the caller's ``X-Request-ID`` when it is 1-128
safe characters, else a new ``req_...`` id. ``request_id_of(scope)`` computes it once and keeps it
in the scope's state; ``add_request_id`` (Litestar's ``before_send`` hook, which sees every
response the app sends, error pages and routing's 404/405 included) puts it on the answer."""

from __future__ import annotations

import re
import secrets
from typing import Any

__all__ = ["add_request_id", "new_request_id", "request_id_of"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def new_request_id() -> str:
    """A response id: ``req_`` and 24 hex digits."""
    return "req_" + secrets.token_hex(12)


def request_id_of(scope: Any) -> str:
    """This request's id (computed on first use, then kept in ``scope["state"]``)."""
    state = scope.setdefault("state", {})
    rid: str | None = state.get("request_id")
    if rid is None:
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = given if given and _REQUEST_ID.fullmatch(given) else new_request_id()
        state["request_id"] = rid
    return rid


async def add_request_id(message: Any, scope: Any) -> None:
    """``before_send``: add ``x-request-id`` to a response start that lacks one."""
    if message["type"] == "http.response.start" and scope.get("type") == "http":
        headers = list(message.get("headers") or ())
        if not any(k.lower() == b"x-request-id" for k, _ in headers):
            headers.append((b"x-request-id", request_id_of(scope).encode()))
            message["headers"] = headers
