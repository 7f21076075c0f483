"""One request id per request, on every answer: the caller's ``X-Request-ID`` when it is 1-128
safe characters, else a new ``req_...`` id. ``request_id_of(scope)`` computes it once and keeps it
in the scope's state. The doors put it on their answers themselves, the app's exception handler on
every error page (routing's 404 and 405 included), and ``RequestIdMiddleware`` on the answers of
the other routes: nothing wraps the doors' ``send``, so a stream's events pay nothing for it (and, with no middleware on the
door routes, Litestar adds no second exception layer around them)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DOOR_OPT", "RequestIdMiddleware", "new_request_id", "request_id_of"]

DOOR_OPT = "raw_door"  # a route handler's opt key: it sets X-Request-ID itself

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


class RequestIdMiddleware(ASGIMiddleware):
    """Puts ``x-request-id`` on the answers of the routes that do not set it themselves: it is
    registered on the routers of every route but the doors (which also carry
    ``opt={DOOR_OPT: True}``, so it skips them wherever it is put)."""

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = DOOR_OPT

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        rid = request_id_of(scope).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid))
                    message["headers"] = headers
            await send(message)

        await next_app(scope, receive, send_with_id)
